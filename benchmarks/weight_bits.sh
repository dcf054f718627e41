#!/usr/bin/env bash
# The low-bit-weight table of docs/results.md (issue 28): one checkpoint, QAT with float weights
# and with 4/8/2/1-bit weights from each weight quantizer (LSQ, sigmoid-sum), every QANN converted
# and simulated on the full test set to T = 16 (float32), the same recipe and epochs throughout.
# Run on demand:  bash benchmarks/weight_bits.sh models/fmnist_vgg_small.pt docs/results/fmnist/weights
# (about 3 minutes a run on 2 CPU cores for Fashion-MNIST at EPOCHS=2, 6 for CIFAR-10 at EPOCHS=1).
# Work files go to RUNS (ignored by git); the QAT metrics and curves to DOCS; the table:
#   .venv/bin/python benchmarks/weight_bits_table.py DOCS
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=$1
DOCS=$2
QFFS=${QFFS:-.venv/bin/qffs}
PYTHON=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs/weights/$(basename "$CKPT" .pt)}
EPOCHS=${EPOCHS:-2}
BITS=${BITS:-4 8 2 1}   # the weight widths to run (a subset: BITS=4)
export QFFS_PROGRESS=0
mkdir -p "$RUNS" "$DOCS"

# shellcheck source=benchmarks/results_lib.sh
source benchmarks/results_lib.sh

run() {  # run NAME QUANTIZE-OPTIONS...: QAT, convert, evaluate; keep metrics and curve as DOCS/NAME*
  local name=$1; shift
  if [ -f "$DOCS/${name}_snn.json" ]; then echo "skip $name (done)"; return; fi
  timed "quantize_$name" "$QFFS" quantize "$CKPT" --out "$RUNS/$name/qann.pt" --epochs "$EPOCHS" "$@"
  cp "$RUNS/$name/qann.pt.metrics.json" "$DOCS/${name}_qat.json"
  timed "convert_$name" "$QFFS" convert "$RUNS/$name/qann.pt" --out "$RUNS/$name/snn.pt"
  timed "evaluate_$name" "$QFFS" evaluate "$RUNS/$name/snn.pt" --timesteps 16 --out-dir "$RUNS/$name/f32"
  cp "$RUNS/$name/f32/curve.json" "$DOCS/${name}_snn.json"
  [ "$name" = float ] || "$PYTHON" benchmarks/weight_size.py "$RUNS/$name/qann.pt" > "$DOCS/${name}_size.json"
}

run float
for bits in $BITS; do
  for quantizer in lsq sigmoid; do
    run "w${bits}_${quantizer}" --weight-bits "$bits" --weight-quantizer "$quantizer"
  done
done
