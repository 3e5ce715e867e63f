#!/usr/bin/env bash
# Train the wide-world candidate models of issue 16 from scratch on this machine: simulate the
# reference basins A-D and the wide basins W1-W6, cut the wide chips (native 30 m and the 2x
# coarse level), train round 7 (the round-6 reference model fine-tuned on them, configs/train_cpu_round7.yaml)
# and round 8 (round 7 with hard-negative mining, configs/train_cpu_round8.yaml).
# About 3 hours on 2 CPU cores (17-26 min an epoch, 8 epochs). Every step is skipped when its
# result is there, and training continues where it stopped (--resume), so the script can be run
# again after any interruption. Then: MODEL=out/train_cpu_round8/best.safetensors
# SCALES="[1, 2]" OUT=out/eval_r8 bash workflows/wide_eval.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
mkdir -p out/reference out/wide
for b in basin_a basin_b basin_c basin_d; do
  [ -d "out/reference/$b.zarr" ] || "$BIN/insar-slide" simulate "configs/reference/$b.yaml" --out "out/reference/$b.zarr"
done
# the wide basins are only read by the chips; once the chips are cut they are not needed again
if [ ! -f out/chips_wide/manifest.json ]; then
  for b in w1 w2 w3 w4 w5 w6; do
    [ -d "out/wide/$b.zarr" ] || "$BIN/insar-slide" simulate "configs/wide/$b.yaml" --out "out/wide/$b.zarr"
  done
  "$BIN/insar-slide" chips configs/wide/chips_train.yaml
fi
# round 7 starts from the round-6 reference model: workflows/reference_model.sh's export, else the
# file committed in 896b8be (sha256 e82c0d88253e...), taken from git history
R6=out/reference_round6.safetensors
if [ ! -f "$R6" ] && [ ! -f out/train_cpu_round7/best.safetensors ]; then
  git cat-file -e 896b8be 2>/dev/null || { echo "round 6 reference model not found: run workflows/reference_model.sh, or use a full (not shallow) git clone so that commit 896b8be is there" >&2; exit 1; }
  git show 896b8be:models/insar_slide_r34_fpn_cbam.safetensors > "$R6.part" && mv "$R6.part" "$R6"
  git show 896b8be:models/insar_slide_r34_fpn_cbam.json > out/reference_round6.json
fi
"$BIN/insar-slide" train configs/train_cpu_round7.yaml --resume
"$BIN/insar-slide" train configs/train_cpu_round8.yaml --resume
