#!/usr/bin/env bash
# Simulate the demo basin, describe it and draw its quick look into ${1:-out/demo}.
set -euo pipefail
out=${1:-out/demo}
insar-slide demo --out "$out"
