#!/usr/bin/env bash
# Rebuild the reference model from scratch on this machine (about 3 hours on 2 CPU cores):
# simulate four training basins and a held-out region, cut chips, train with
# configs/train_cpu.yaml and continue with configs/train_cpu_round2.yaml, evaluate on the
# held-out region, export fp16 to models/.
# RESUME=1 continues an interrupted training run.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out/reference
for b in basin_a basin_b basin_c basin_d heldout; do
  [ -d "out/reference/$b.zarr" ] || insar-slide simulate "configs/reference/$b.yaml" --out "out/reference/$b.zarr"
done
insar-slide chips configs/reference/chips_train.yaml
insar-slide chips configs/reference/chips_heldout.yaml
insar-slide train configs/train_cpu.yaml ${RESUME:+--resume}
insar-slide train configs/train_cpu_round2.yaml ${RESUME:+--resume}
insar-slide evaluate out/train_cpu_round2/best.safetensors --chips out/chips_heldout --out out/eval_heldout --score-threshold "${SCORE_THRESHOLD:-0.7}"
insar-slide export-model out/train_cpu_round2/best.safetensors --eval out/eval_heldout/metrics.json \
  --command "workflows/reference_model.sh" --score-threshold "${SCORE_THRESHOLD:-0.7}" --out models/insar_slide_r34_fpn_cbam.safetensors
