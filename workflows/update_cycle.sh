#!/usr/bin/env bash
# One inventory-update cycle: ingest new products as a version of the basin, update the
# inventory (only changed windows are recomputed; quick look and slide_id layer per the
# config's outputs), and summarise what changed.
#
#   workflows/update_cycle.sh basin.yaml [--ingest MOSAIC LABEL PRODUCT...]
#
# Without --ingest the newest version already in the mosaic is used (for example one written
# by `insar-slide simulate --add-version`). Stops at the first failing step; every step is
# atomic, so the next scheduled run resumes. BIN overrides the insar-slide command;
# DASK_ADDRESS runs the update on a running scheduler (a cluster kept up between updates,
# workflows/systemd/insar-slide-dask-*.service) instead of an embedded one.
set -euo pipefail
BIN=${BIN:-insar-slide}
CONFIG=${1:?usage: update_cycle.sh basin.yaml [--ingest MOSAIC LABEL PRODUCT...]}
shift
if [ "${1:-}" = "--ingest" ]; then
  MOSAIC=${2:?--ingest needs MOSAIC LABEL PRODUCT...}
  LABEL=${3:?--ingest needs MOSAIC LABEL PRODUCT...}
  shift 3
  $BIN ingest "$@" --out "$MOSAIC" --add-version "$LABEL"
fi
$BIN update "$CONFIG" --no-progress ${DASK_ADDRESS:+--address "$DASK_ADDRESS"}
$BIN history "$CONFIG"
