#!/usr/bin/env bash
# The paper's Table 4 on a simulated basin never used in training: the detector (shipped
# reference model), Gi* hot spots and K-means, each matched one-to-one against the simulated
# truth's visible slides (|peak LOS| >= 10 mm/yr on >= 50 % measured pixels), box IoU >= 0.5.
#   bash workflows/compare_methods.sh            # ~5 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin/insar-slide}
if [ ! -d out/reference/heldout.zarr ]; then
  $BIN simulate configs/reference/heldout.yaml --out out/reference/heldout.zarr
fi
$BIN run configs/basin_heldout.yaml --no-progress --overwrite
$BIN baseline hotspot configs/basin_heldout.yaml
$BIN baseline kmeans configs/basin_heldout.yaml
$BIN compare out/heldout/inventory.parquet out/heldout/inventory.hotspot.parquet out/heldout/inventory.kmeans.parquet \
  --reference out/reference/heldout.truth.parquet --visible-only --mosaic out/reference/heldout.zarr --out out/heldout/compare
