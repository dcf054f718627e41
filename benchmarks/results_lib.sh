# Shared by the results scripts (sourced): RUNS (work files) and DOCS (kept reports) must be set.

timed() {  # timed NAME CMD...: run CMD, log its output to RUNS, record its command and wall time in DOCS
  local name=$1; shift
  echo "\$ $*" | tee "$RUNS/$name.log"
  local start=$SECONDS
  "$@" 2>&1 | tee -a "$RUNS/$name.log"
  echo "{\"command\": \"$*\", \"seconds\": $((SECONDS - start))}" > "$DOCS/$name.time.json"
}

keep() {  # keep RUN_DIR NAME: copy a run's report files (curve.csv/.json/.png) into DOCS under NAME
  for ext in csv json png; do cp "$1/curve.$ext" "$DOCS/$2.$ext"; done
}
