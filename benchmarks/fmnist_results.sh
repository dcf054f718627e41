#!/usr/bin/env bash
# The measurements behind docs/results.md, from the shipped Fashion-MNIST checkpoint:
#   stage 1  QAT at 2/3 bits (the paper's layout), 2-bit/analog output and 3/3 bits, 3 epochs each;
#   stage 2+3 each QANN converted and simulated on the full test set (float32), the 2/3 network
#            also in float64 (exactness) and with each ablation switch (occasional noise).
# Run on demand (about an hour on 2 CPU cores):  bash benchmarks/fmnist_results.sh
# Work files go to runs/results/ (ignored by git); the reports to docs/results/fmnist/.
set -euo pipefail
cd "$(dirname "$0")/.."
QFFS=${QFFS:-.venv/bin/qffs}
RUNS=${RUNS:-runs/results}
DOCS=${DOCS:-docs/results/fmnist}
EPOCHS=${EPOCHS:-3}
CKPT=models/fmnist_vgg_small.pt
export QFFS_PROGRESS=0
mkdir -p "$RUNS" "$DOCS"

# shellcheck source=benchmarks/results_lib.sh
source benchmarks/results_lib.sh

# Stage 1: three precision layouts.
timed quantize_2_3 "$QFFS" quantize "$CKPT" --out "$RUNS/q2_3/qann.pt" --epochs "$EPOCHS"
timed quantize_2_analog "$QFFS" quantize "$CKPT" --out "$RUNS/q2_analog/qann.pt" --epochs "$EPOCHS" --output-bits 0
timed quantize_3_3 "$QFFS" quantize "$CKPT" --out "$RUNS/q3_3/qann.pt" --epochs "$EPOCHS" --bits 3 --output-bits 3
for q in q2_3 q2_analog q3_3; do cp "$RUNS/$q/qann.pt.metrics.json" "$DOCS/${q}_qat.json"; done

# Stages 2 and 3: the paper's layout, float32 and float64.
timed convert_2_3 "$QFFS" convert "$RUNS/q2_3/qann.pt" --out "$RUNS/q2_3/snn.pt"
timed evaluate_2_3_f32 "$QFFS" evaluate "$RUNS/q2_3/snn.pt" --timesteps 16 --out-dir "$RUNS/q2_3/f32"
keep "$RUNS/q2_3/f32" snn_2_3_float32
timed evaluate_2_3_f64 "$QFFS" evaluate "$RUNS/q2_3/snn.pt" --timesteps 16 --double --out-dir "$RUNS/q2_3/f64"
keep "$RUNS/q2_3/f64" snn_2_3_float64

# The three readouts of one simulation (SPEC §5), on a 2/3 QANN after one QAT epoch.
timed quantize_2_3_1epoch "$QFFS" quantize "$CKPT" --out "$RUNS/q2_3_1epoch/qann.pt" --epochs 1
cp "$RUNS/q2_3_1epoch/qann.pt.metrics.json" "$DOCS/readouts_2_3_1epoch_qat.json"
timed convert_2_3_1epoch "$QFFS" convert "$RUNS/q2_3_1epoch/qann.pt" --out "$RUNS/q2_3_1epoch/snn.pt"
timed evaluate_2_3_1epoch "$QFFS" evaluate "$RUNS/q2_3_1epoch/snn.pt" --timesteps 16 --out-dir "$RUNS/q2_3_1epoch/f32"
keep "$RUNS/q2_3_1epoch/f32" readouts_2_3_1epoch

# The other layouts (3-bit hidden layers have T_in = 7, so they need more steps).
timed convert_2_analog "$QFFS" convert "$RUNS/q2_analog/qann.pt" --out "$RUNS/q2_analog/snn.pt"
timed evaluate_2_analog "$QFFS" evaluate "$RUNS/q2_analog/snn.pt" --timesteps 16 --out-dir "$RUNS/q2_analog/f32"
keep "$RUNS/q2_analog/f32" snn_2_analog_float32
timed convert_3_3 "$QFFS" convert "$RUNS/q3_3/qann.pt" --out "$RUNS/q3_3/snn.pt"
timed evaluate_3_3 "$QFFS" evaluate "$RUNS/q3_3/snn.pt" --timesteps 32 --out-dir "$RUNS/q3_3/f32"
keep "$RUNS/q3_3/f32" snn_3_3_float32

# Ablations on the 2/3 network: what each QFFS ingredient buys.
for ablation in --no-negative-spikes --no-precharge "--max-pool naive"; do
  name=$(echo "$ablation" | tr -d '-' | tr ' ' '_')
  # shellcheck disable=SC2086
  timed "convert_2_3_$name" "$QFFS" convert "$RUNS/q2_3/qann.pt" --out "$RUNS/q2_3/snn_$name.pt" $ablation
  timed "evaluate_2_3_$name" "$QFFS" evaluate "$RUNS/q2_3/snn_$name.pt" --timesteps 16 --out-dir "$RUNS/q2_3/$name"
  keep "$RUNS/q2_3/$name" "ablation_$name"
done
# The same ablation as one command (float64, so the full setting is exact), with the 2/analog QANN.
timed ablate_2_3 "$QFFS" ablate "$RUNS/q2_3/qann.pt" --also "$RUNS/q2_analog/qann.pt" --timesteps 16 --double \
  --out-dir "$RUNS/ablation"
for ext in csv json png; do cp "$RUNS/ablation/ablation.$ext" "$DOCS/ablation.$ext"; done
echo "reports in $DOCS/"
