#!/usr/bin/env bash
# The CIFAR-10 (JPEG) measurements behind docs/results.md §4, from the shipped ResNet-20:
#   stage 1  QAT at 2/3 bits (the paper's layout), 2-bit/analog output and 3/3 bits;
#   stage 2+3 each QANN converted and simulated on the test set to T = 32 (float32), the 2/3
#            network also in float64 (exactness: every prediction equal to the QANN's);
#   ablate   qffs ablate on the 2/3 QANN with the other layouts as --also rows (float64);
#   compare  SpikingJelly and sinabs on the same FP checkpoint (needs pip install -e '.[bench]').
# Run on demand (about 75 minutes on 2 CPU cores):  bash benchmarks/cifar_results.sh [STEP ...]
# STEP: main (2/3 network), t4 (why not lossless at t = 4), layouts (2/analog, 3/3), ablate
# (needs main and layouts), compare (needs main); default: all five. They always run in this order.
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
COMPARE_SAMPLES=${COMPARE_SAMPLES:-250}
CKPT=${CKPT:-models/resnet20_cifar10.pt}
QUANT_ARGS=${QUANT_ARGS:-}          # more quantize options (a quick check: --limit 256 --test-limit 256)
COMPARE_ARGS=${COMPARE_ARGS:-}      # more compare_converters.py options
export QFFS_PROGRESS=0
mkdir -p "$RUNS" "$DOCS"
steps=${*:-main t4 layouts ablate compare}
limit=${LIMIT:+--limit $LIMIT}

# shellcheck source=benchmarks/results_lib.sh
source benchmarks/results_lib.sh

if [[ " $steps " == *" main "* ]]; then
  # The paper's layout: QAT, then float32 (the default) and float64 (exact), T = 32, every readout.
  # shellcheck disable=SC2086
  timed quantize_2_3 "$QFFS" quantize "$CKPT" --out "$RUNS/q2_3/qann.pt" --epochs "$EPOCHS" $QUANT_ARGS
  cp "$RUNS/q2_3/qann.pt.metrics.json" "$DOCS/q2_3_qat.json"
  timed convert_2_3 "$QFFS" convert "$RUNS/q2_3/qann.pt" --out "$RUNS/q2_3/snn.pt"
  # shellcheck disable=SC2086
  timed evaluate_2_3_f32 "$QFFS" evaluate "$RUNS/q2_3/snn.pt" --timesteps 32 $limit --out-dir "$RUNS/q2_3/f32"
  keep "$RUNS/q2_3/f32" snn_2_3_float32
  # shellcheck disable=SC2086
  timed evaluate_2_3_f64 "$QFFS" evaluate "$RUNS/q2_3/snn.pt" --timesteps 32 --double $limit --out-dir "$RUNS/q2_3/f64"
  keep "$RUNS/q2_3/f64" snn_2_3_float64
fi

if [[ " $steps " == *" t4 "* ]]; then
  # Why the curve is not lossless at t = 4: the QANN's winning output levels (the count readout
  # needs L steps to show a level L), and every IF layer's distance from its QANN level after 4 steps.
  "$PY" benchmarks/output_levels.py "$RUNS/q2_3/qann.pt" > "$DOCS/output_levels_2_3.json"
  timed evaluate_2_3_t4 "$QFFS" evaluate "$RUNS/q2_3/snn.pt" --timesteps 4 --double --limit 1000 --out-dir "$RUNS/q2_3/t4"
  keep "$RUNS/q2_3/t4" snn_2_3_after_4_steps
fi

if [[ " $steps " == *" layouts "* ]]; then
  # 2-bit hidden / analog output and 3/3 bits (T_in = 7), float32.
  # shellcheck disable=SC2086
  timed quantize_2_analog "$QFFS" quantize "$CKPT" --out "$RUNS/q2_analog/qann.pt" --epochs "$OTHER_EPOCHS" --output-bits 0 $QUANT_ARGS
  # shellcheck disable=SC2086
  timed quantize_3_3 "$QFFS" quantize "$CKPT" --out "$RUNS/q3_3/qann.pt" --epochs "$OTHER_EPOCHS" --bits 3 --output-bits 3 $QUANT_ARGS
  for q in 2_analog 3_3; do
    cp "$RUNS/q$q/qann.pt.metrics.json" "$DOCS/q${q}_qat.json"
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
