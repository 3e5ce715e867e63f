#!/usr/bin/env bash
# The detector on the three real rate maps in ../shared/data/real/ (no landslide labels there):
# what it finds, and whether it is a moving slope or a false alarm. For each product: ingest,
# a minimal run config written here (one window covering the product, the model's own score
# threshold, plus a second run at 0.5 for context), the run, a quick look with the detections;
# then benchmarks/real_data_table.py writes benchmarks/results/real_data.{md,json}, a crop per
# detection under out/real/crops/ and one overview PNG per product under
# benchmarks/results/real_data/. Explanations come from benchmarks/results/real_data_explained.yaml
# (matched by place; a detection nobody has looked at yet is flagged "not yet explained").
#   bash workflows/real_data.sh                          # shipped model, 3.5-7 min on 2 cores
#   MODEL=out/train_x/best.safetensors bash workflows/real_data.sh   # the same with another model
#   MIN_COHERENCE=null OUT=out/real_nomask RESULTS=out/real_nomask/results bash workflows/real_data.sh
#                                  # without the quality mask (default: run's min_coherence, 0.1)
#   MATCH_PIXEL=false OUT=out/real_native RESULTS=out/real_native/results bash workflows/real_data.sh
#                                  # at each product's own pixel (default: resampled to the model's)
#   EXTRA="nested_share: 0.02" ...   more lines of run config (YAML); a rerun into the same OUT
#                                  # reuses the windows where only merge settings changed
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin/insar-slide}
PY=${PY:-.venv/bin/python}
REAL=${REAL:-../shared/data/real}
OUT=${OUT:-out/real}
RESULTS=$(realpath -m "${RESULTS:-benchmarks/results}")
MIN_COHERENCE=${MIN_COHERENCE:-}
MATCH_PIXEL=${MATCH_PIXEL:-}
INFERENCE=${MATCH_PIXEL:+"inference: {match_pixel: $MATCH_PIXEL}"}
MODEL=${MODEL:-}
if [ -n "$MODEL" ]; then
  MODEL=$(realpath "$MODEL")        # run configs resolve relative paths against their own folder
  [ -f "$MODEL" ] || { echo "MODEL=$MODEL: no such file" >&2; exit 1; }
fi
mkdir -p "$OUT"

# name | ingest arguments
PRODUCTS=(
  "kirishima|$REAL/kirishima_alos2_mintpy/velocity.h5"
  "cadia|$REAL/cadia_s1_mintpy/geo_velocity.h5"
  "campi_flegrei|$REAL/campi_flegrei_licsbas/raw/vel --track desc_124"
)

for entry in "${PRODUCTS[@]}"; do
  name=${entry%%|*}
  args=${entry#*|}
  echo "== $name"
  # shellcheck disable=SC2086  # args holds the source and its options
  $BIN ingest $args --out "$OUT/$name.zarr" --overwrite
  $BIN info "$OUT/$name.zarr"
  # one core covering the whole product (rounded up to 64 px); the halo is clipped at the edge
  window=$($BIN info "$OUT/$name.zarr" --json | $PY -c '
import json, sys
d = json.load(sys.stdin)
g = d.get("grid", d)
h, w = (g["height"], g["width"]) if "height" in g else tuple(g["shape"])
print(max(64, -(-max(h, w) // 64) * 64))')
  for tag in op p50; do
    if [ "$tag" = op ]; then thr=null; else thr=0.5; fi
    cat > "$OUT/$name.$tag.yaml" <<EOF
# written by workflows/real_data.sh; paths relative to this file
mosaic: $name.zarr
out: $name.$tag.parquet
model: ${MODEL:-null}
window: $window
halo: 64
skip: {min_abs_rate: 10, min_hot_pixels: 4, min_valid_fraction: 0.05}
score_threshold: $thr          # null: the model's own (0.68 for the shipped one)
${MIN_COHERENCE:+min_coherence: $MIN_COHERENCE}
$INFERENCE
${EXTRA:-}
cluster: {workers: 1, threads_per_worker: 2}
outputs: {quicklook: false, slide_id_raster: false, geopackage: false, outline: true}
EOF
    $BIN run "$OUT/$name.$tag.yaml" --no-progress --overwrite  # this script's own outputs
  done
  $BIN quicklook "$OUT/$name.zarr" --inventory "$OUT/$name.op.parquet" --out "$OUT/$name.op.png"
  $BIN quicklook "$OUT/$name.zarr" --inventory "$OUT/$name.p50.parquet" --out "$OUT/$name.p50.png"
done

mkdir -p "$RESULTS"
$PY benchmarks/real_data_table.py --dir "$OUT" --results "$RESULTS"
