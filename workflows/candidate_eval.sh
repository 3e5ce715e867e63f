#!/usr/bin/env bash
# Every model-dependent figure of the README for one checkpoint, in one folder, so that a
# candidate can be set beside the shipped model before it replaces it (issue 16: "re-measure
# every README figure"). Nothing here chooses anything: thresholds, scales and inference
# settings stay the run's defaults (chosen on tuning and validation data).
#   MODEL=out/train_cpu_round8/best.safetensors OUT=out/candidate_r8 bash workflows/candidate_eval.sh
#   bash workflows/candidate_eval.sh          # the shipped model, into out/candidate_shipped
# Steps (about 20 min on 2 idle cores; each skipped when its result is there, so a rerun
# continues; STEPS="heldout_chips heldout tuning demo real wide" runs a subset):
#   heldout_chips  insar-slide evaluate on the held-out chips at the model's own threshold (the card's
#                  metrics_heldout; a checkpoint straight from training: its training config's)
#   heldout        run + compare on the held-out basin (README "Comparison", Table 4)
#   tuning         run + compare on the tuning basin
#   demo           insar-slide demo (scores itself against its truth)
#   real           workflows/real_data.sh (the real-data false-alarm table)
#   wide           workflows/wide_eval.sh on the wide tuning, 20 m / 40 m validation and unseen test basins
# Then benchmarks/candidate_table.py writes <OUT>/summary.md and .json.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MODEL=$(realpath -m "${MODEL:-models/insar_slide_r34_fpn_cbam.safetensors}")
[ -f "$MODEL" ] || { echo "MODEL=$MODEL: no such file" >&2; exit 1; }
OUT=$(realpath -m "${OUT:-out/candidate_shipped}")
STEPS=${STEPS:-"heldout_chips heldout tuning demo real wide"}
mkdir -p "$OUT"
echo "$MODEL" > "$OUT/model.txt"
has() { [[ " $STEPS " == *" $1 "* ]]; }

basin_run() {  # name, simulate config: run the model on a reference basin and score it against its truth
  local name=$1 sim=$2
  [ -d "out/reference/$name.zarr" ] || "$BIN/insar-slide" simulate "$sim" --out "out/reference/$name.zarr"
  [ -f "$OUT/$name/compare/table.csv" ] && return
  mkdir -p "$OUT/$name"
  printf 'mosaic: %s\nout: %s\nmodel: %s\nwindow: 1024\nhalo: 64\ncluster: {threads_per_worker: 1}\n' \
    "$PWD/out/reference/$name.zarr" "$OUT/$name/inventory.parquet" "$MODEL" > "$OUT/$name/basin.yaml"
  echo "outputs: {quicklook: true, slide_id_raster: false, geopackage: false, kml: false}" >> "$OUT/$name/basin.yaml"
  "$BIN/insar-slide" run "$OUT/$name/basin.yaml" --no-progress --overwrite > "$OUT/$name/run.log"
  "$BIN/insar-slide" compare "$OUT/$name/inventory.parquet" --reference "out/reference/$name.truth.parquet" \
    --visible-only --mosaic "out/reference/$name.zarr" --out "$OUT/$name/compare" > "$OUT/$name/compare.txt"
}

if has heldout_chips && [ ! -f "$OUT/eval_heldout/metrics.json" ]; then
  [ -d out/reference/heldout.zarr ] || "$BIN/insar-slide" simulate configs/reference/heldout.yaml --out out/reference/heldout.zarr
  [ -f out/chips_heldout/manifest.json ] || "$BIN/insar-slide" chips configs/reference/chips_heldout.yaml
  "$BIN/insar-slide" evaluate "$MODEL" --chips out/chips_heldout --out "$OUT/eval_heldout" > "$OUT/eval_heldout.txt"
fi
has heldout && basin_run heldout configs/reference/heldout.yaml
has tuning && basin_run tuning configs/reference/tuning.yaml
if has demo && [ ! -f "$OUT/demo/demo.txt" ]; then
  mkdir -p "$OUT/demo"
  "$BIN/insar-slide" demo --model "$MODEL" --out "$OUT/demo" --no-progress > "$OUT/demo/demo.log"
  grep "against the simulated truth" "$OUT/demo/demo.log" > "$OUT/demo/demo.txt"
fi
if has real && [ ! -f "$OUT/real/results/real_data.json" ]; then
  real="$OUT/real"
  MODEL=$MODEL OUT=$real RESULTS=$real/results bash workflows/real_data.sh > "$OUT/real.log" 2>&1
fi
if has wide && [ ! -f "$OUT/wide/wide_eval.json" ]; then
  MODEL=$MODEL OUT=$OUT/wide BASINS="tuning tuning_20m tuning_40m test_20m test_40m test_30m" \
    bash workflows/wide_eval.sh > "$OUT/wide.log" 2>&1
fi
"$BIN/python" benchmarks/candidate_table.py "$OUT"
