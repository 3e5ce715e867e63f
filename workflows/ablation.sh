#!/usr/bin/env bash
# The paper's Table 2 (ablation) with this project's CPU recipe: ResNet-34, ResNet-34+FPN and
# ResNet-34+FPN+CBAM, each trained from random weights with configs/ablation/train_<variant>.yaml
# (configs/train_cpu.yaml with only the variant and run folder changed: same chips of basins
# A-D, seed and schedule), then evaluated together on the held-out region's chips, which no
# variant saw. About 1.5 h per variant on 2 cores; an interrupted run continues where it stopped
# (each variant resumes after its last finished epoch; finished variants are not retrained).
#   bash workflows/ablation.sh                     # all three
#   VARIANTS="r34 r34_fpn" bash workflows/ablation.sh   # train only these; the table has all trained
#   SCHEDULE=paper bash workflows/ablation.sh      # the paper's 30 epochs (configs/ablation_paper/,
#                                                  # out/ablation_paper/; ~4.5 h per variant on 2 cores)
# Writes out/ablation/<variant>/ (checkpoints, metrics.csv, loss.png) and
# out/ablation/eval/table2.{md,csv} (P/R/F1 at a common score threshold 0.5, mAP50, mAP50-95;
# held-out region) and out/ablation/eval_tuning/ (the same on the tuning region).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-insar-slide}
VARIANTS=${VARIANTS:-r34 r34_fpn r34_fpn_cbam}
case "${SCHEDULE:-cpu}" in
  cpu) CONFIGS=configs/ablation; RUNS=out/ablation ;;
  paper) CONFIGS=configs/ablation_paper; RUNS=out/ablation_paper ;;
  *) echo "ablation: SCHEDULE must be cpu (10 epochs) or paper (30 epochs), not '$SCHEDULE'" >&2; exit 2 ;;
esac
mkdir -p out/reference
for b in basin_a basin_b basin_c basin_d heldout tuning; do
  [ -d "out/reference/$b.zarr" ] || $BIN simulate "configs/reference/$b.yaml" --out "out/reference/$b.zarr"
done
for c in train heldout tuning; do
  [ -f "out/chips_$c/manifest.json" ] || $BIN chips "configs/reference/chips_$c.yaml"
done
for v in $VARIANTS; do
  run=$RUNS/$v
  # --resume continues after the last finished epoch, and does nothing on a finished run
  resume=()
  [ -f "$run/last.safetensors" ] && resume=(--resume)
  $BIN train "$CONFIGS/train_$v.yaml" "${resume[@]}"
done
# The table holds every variant that finished its epochs (also those of an earlier call with other
# VARIANTS), in the paper's order (the improved model first, whose COCO table becomes table3.md);
# an unfinished one is left out and named.
checkpoints=()
for v in r34_fpn_cbam r34_fpn r34; do
  run=$RUNS/$v
  want=$(sed -n 's/^epochs: *//p' "$CONFIGS/train_$v.yaml")
  done_=0
  [ -f "$run/metrics.csv" ] && done_=$(($(wc -l < "$run/metrics.csv") - 1))
  if [ "$done_" -ge "$want" ] && [ -f "$run/best.safetensors" ]; then
    checkpoints+=("$run/best.safetensors")
  else
    echo "ablation: $v has $done_ of $want epochs; not in the table (bash workflows/ablation.sh resumes it)" >&2
  fi
done
if [ ${#checkpoints[@]} -eq 0 ]; then
  echo "ablation: no variant has finished training yet" >&2
  exit 1
fi
# The held-out region is the table; the tuning region (166 more boxes, also never trained on)
# shows how much of a difference between rows survives a change of region.
$BIN evaluate "${checkpoints[@]}" --chips out/chips_heldout --out $RUNS/eval --score-threshold 0.5
$BIN evaluate "${checkpoints[@]}" --chips out/chips_tuning --out $RUNS/eval_tuning --score-threshold 0.5
echo "held-out region:"; cat $RUNS/eval/table2.md
echo "tuning region:"; cat $RUNS/eval_tuning/table2.md
