#!/usr/bin/env bash
# The CIFAR-10 (JPEG) measurements behind docs/results.md §4, from the shipped ResNet-20:
#   stage 1  QAT at 2/3 bits (the paper's layout), 2-bit/analog output and 3/3 bits;
#   stage 2+3 each QANN converted and simulated on the test set to T = 32 (float32), the 2/3
#            network also in float64 (exactness: every prediction equal to the QANN's);
#   ablate   qffs ablate on the 2/3 QANN with the other layouts as --also rows (float64);
#   compare  SpikingJelly and sinabs on the same FP checkpoint (needs pip install -e '.[bench]').
# Run on demand (about 1.5 hours on 2 CPU cores):  bash benchmarks/cifar_results.sh [STEP ...]
# STEP: quantize evaluate ablate compare (default: all, in that order; each reuses the earlier ones).
# Work files go to runs/cifar_results/ (ignored by git); the reports to docs/results/cifar10/.
set -euo pipefail
cd "$(dirname "$0")/.."
QFFS=${QFFS:-.venv/bin/qffs}
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/cifar_results}
DOCS=${DOCS:-docs/results/cifar10}
EPOCHS=${EPOCHS:-3}              # QAT epochs of the 2/3 network
OTHER_EPOCHS=${OTHER_EPOCHS:-2}  # QAT epochs of the 2/analog and 3/3 networks
LIMIT=${LIMIT:-}                 # test images for the curves (empty: all 10,000)
ABLATE_LIMIT=${ABLATE_LIMIT:-2000}
COMPARE_SAMPLES=${COMPARE_SAMPLES:-500}
CKPT=${CKPT:-models/resnet20_cifar10.pt}
QUANT_ARGS=${QUANT_ARGS:-}          # more quantize options (a quick check: --limit 256 --test-limit 256)
COMPARE_ARGS=${COMPARE_ARGS:-}      # more compare_converters.py options
export QFFS_PROGRESS=0
mkdir -p "$RUNS" "$DOCS"
steps=${*:-quantize evaluate ablate compare}
limit=${LIMIT:+--limit $LIMIT}

timed() {  # timed NAME CMD...: run CMD, log its output, record its wall time
  local name=$1; shift
  echo "\$ $*" | tee "$RUNS/$name.log"
  local start=$SECONDS
  "$@" 2>&1 | tee -a "$RUNS/$name.log"
  echo "{\"command\": \"$*\", \"seconds\": $((SECONDS - start))}" > "$DOCS/$name.time.json"
}

keep() {  # keep RUN_DIR NAME: copy a run's report files into docs under NAME
  for ext in csv json png; do cp "$1/curve.$ext" "$DOCS/$2.$ext"; done
}

if [[ " $steps " == *" quantize "* ]]; then
  # shellcheck disable=SC2086
  timed quantize_2_3 "$QFFS" quantize "$CKPT" --out "$RUNS/q2_3/qann.pt" --epochs "$EPOCHS" $QUANT_ARGS
  timed quantize_2_analog "$QFFS" quantize "$CKPT" --out "$RUNS/q2_analog/qann.pt" --epochs "$OTHER_EPOCHS" --output-bits 0 $QUANT_ARGS
  timed quantize_3_3 "$QFFS" quantize "$CKPT" --out "$RUNS/q3_3/qann.pt" --epochs "$OTHER_EPOCHS" --bits 3 --output-bits 3 $QUANT_ARGS
  for q in q2_3 q2_analog q3_3; do cp "$RUNS/$q/qann.pt.metrics.json" "$DOCS/${q}_qat.json"; done
fi

if [[ " $steps " == *" evaluate "* ]]; then
  # The paper's layout in float32 (the default) and float64 (exact), T = 32, every readout.
  timed convert_2_3 "$QFFS" convert "$RUNS/q2_3/qann.pt" --out "$RUNS/q2_3/snn.pt"
  # shellcheck disable=SC2086
  timed evaluate_2_3_f32 "$QFFS" evaluate "$RUNS/q2_3/snn.pt" --timesteps 32 $limit --out-dir "$RUNS/q2_3/f32"
  keep "$RUNS/q2_3/f32" snn_2_3_float32
  # shellcheck disable=SC2086
  timed evaluate_2_3_f64 "$QFFS" evaluate "$RUNS/q2_3/snn.pt" --timesteps 32 --double $limit --out-dir "$RUNS/q2_3/f64"
  keep "$RUNS/q2_3/f64" snn_2_3_float64
  for q in 2_analog 3_3; do
    timed "convert_$q" "$QFFS" convert "$RUNS/q$q/qann.pt" --out "$RUNS/q$q/snn.pt"
    # shellcheck disable=SC2086
    timed "evaluate_$q" "$QFFS" evaluate "$RUNS/q$q/snn.pt" --timesteps 32 $limit --out-dir "$RUNS/q$q/f32"
    keep "$RUNS/q$q/f32" "snn_${q}_float32"
  done
fi

if [[ " $steps " == *" ablate "* ]]; then
  timed ablate_2_3 "$QFFS" ablate "$RUNS/q2_3/qann.pt" --also "$RUNS/q2_analog/qann.pt" --also "$RUNS/q3_3/qann.pt" \
    --timesteps 32 --double --limit "$ABLATE_LIMIT" --out-dir "$RUNS/ablation"
  for ext in csv json png; do cp "$RUNS/ablation/ablation.$ext" "$DOCS/ablation.$ext"; done
fi

if [[ " $steps " == *" compare "* ]]; then
  timed compare "$PY" benchmarks/compare_converters.py --checkpoint "$CKPT" --qann "$RUNS/q2_3/qann.pt" \
    --samples "$COMPARE_SAMPLES" --timesteps 128 --batch-size 250 --out-dir "$DOCS/converters" $COMPARE_ARGS
fi
echo "reports in $DOCS/"
