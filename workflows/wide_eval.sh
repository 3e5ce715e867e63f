#!/usr/bin/env bash
# Strict evaluation of a model on the wide simulated world (issue 16): the tuning basin, where
# thresholds and scales are chosen, and the unseen test family (20 m, 40 m and 30 m basins with
# relief, track geometry and seeds no training basin has), which is only reported.
#   MODEL=path   checkpoint (default: the shipped reference model)
#   SCALES="[1, 2]"   run's scales (default: the run config's own default)
#   THRESHOLD=0.7     score threshold (default: the model's own)
#   MATCH_PIXEL=false windows at the mosaic's own pixel (default: the run's, resampled to the model's)
#   EXTRA="nested_share: 0.05"   more lines of run config (YAML), e.g. a merge rule to try
#   OUT=dir      results (default: out/eval_wide); BASINS="tuning test_20m ..." to run a subset. A rerun
#                into a folder that holds an earlier run's <basin>/inventory.parquet.run reuses its
#                windows where only merge settings changed
# Writes per basin <OUT>/<basin>/ (inventory, quick look, compare tables, scores.json) and the
# summary <OUT>/wide_eval.md and .json (benchmarks/wide_eval_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MODEL=$(realpath "${MODEL:-models/insar_slide_r34_fpn_cbam.safetensors}")
OUT=$(realpath -m "${OUT:-out/eval_wide}")
BASINS=${BASINS:-"tuning test_20m test_40m test_30m"}
mkdir -p "$OUT"
for b in $BASINS; do
  [ -d "out/wide/$b.zarr" ] || "$BIN/insar-slide" simulate "configs/wide/$b.yaml" --out "out/wide/$b.zarr"
  mkdir -p "$OUT/$b"
  {
    echo "mosaic: $PWD/out/wide/$b.zarr"
    echo "out: $OUT/$b/inventory.parquet"
    echo "model: $MODEL"
    echo "window: 1024"
    echo "halo: 64"
    [ -n "${SCALES:-}" ] && echo "scales: $SCALES"
    [ -n "${THRESHOLD:-}" ] && echo "score_threshold: $THRESHOLD"
    [ -n "${MATCH_PIXEL:-}" ] && echo "inference: {match_pixel: $MATCH_PIXEL}"
    [ -n "${EXTRA:-}" ] && echo "$EXTRA"
    echo "outputs: {quicklook: true, slide_id_raster: false, outline: true}"
  } > "$OUT/$b/basin.yaml"
  "$BIN/insar-slide" run "$OUT/$b/basin.yaml" --no-progress --overwrite > "$OUT/$b/run.log" 2>&1 || { tail -5 "$OUT/$b/run.log"; exit 1; }
  "$BIN/insar-slide" compare "$OUT/$b/inventory.parquet" --reference "out/wide/$b.truth.parquet" --visible-only \
    --mosaic "out/wide/$b.zarr" --out "$OUT/$b" > "$OUT/$b/compare.txt"
done
"$BIN/python" benchmarks/wide_eval_table.py "$OUT" --basins $BASINS
