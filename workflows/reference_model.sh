#!/usr/bin/env bash
# Rebuild the reference model from scratch on this machine (about 4.5 hours on 2 CPU cores):
# simulate eight training basins and a held-out region, cut chips, train with
# configs/train_cpu.yaml (basins A-D), continue with configs/train_cpu_round2.yaml (same
# chips), configs/train_cpu_round3.yaml (basins A-H) and configs/train_cpu_round6.yaml (A-H,
# ignore regions), evaluate on the held-out region, export fp16 to models/ (and to
# out/reference_round6.safetensors, where workflows/wide_model.sh's round 7 starts).
# RESUME=1 continues an interrupted training run.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out/reference
for b in basin_a basin_b basin_c basin_d basin_e basin_f basin_g basin_h heldout; do
  [ -d "out/reference/$b.zarr" ] || insar-slide simulate "configs/reference/$b.yaml" --out "out/reference/$b.zarr"
done
insar-slide chips configs/reference/chips_train.yaml
insar-slide chips configs/reference/chips_train_round3.yaml
insar-slide chips configs/reference/chips_heldout.yaml
insar-slide train configs/train_cpu.yaml ${RESUME:+--resume}
insar-slide train configs/train_cpu_round2.yaml ${RESUME:+--resume}
insar-slide train configs/train_cpu_round3.yaml ${RESUME:+--resume}
insar-slide train configs/train_cpu_round6.yaml ${RESUME:+--resume}
insar-slide evaluate out/train_cpu_round6/best.safetensors --chips out/chips_heldout --out out/eval_heldout --score-threshold "${SCORE_THRESHOLD:-0.7}"
insar-slide export-model out/train_cpu_round6/best.safetensors --eval out/eval_heldout/metrics.json \
  --command "workflows/reference_model.sh" --score-threshold "${SCORE_THRESHOLD:-0.7}" --out models/insar_slide_r34_fpn_cbam.safetensors
# the wide-world rounds (workflows/wide_model.sh) start from this round-6 export
cp models/insar_slide_r34_fpn_cbam.safetensors out/reference_round6.safetensors
