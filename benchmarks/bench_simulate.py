"""Benchmark: write a large single-track simulated mosaic; report time and peak memory.

    python benchmarks/bench_simulate.py --size 32768 --out /tmp/bench   # the issue's 32k x 32k case

Writes ``benchmarks/results/simulate_<size>.json``. Peak memory is the process's peak RSS
(``ru_maxrss``): the whole run — rendering, Zarr writing, overviews and truth statistics —
happens in this process on Dask's threaded scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
import warnings
from pathlib import Path

import dask

from insar_slide.quicklook import quicklook
from insar_slide.sim.basin import simulate
from insar_slide.sim.config import SimConfig

warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32768)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--out", default="/tmp/insar-slide-bench")
    ap.add_argument("--keep", action="store_true", help="keep the written mosaic")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / f"sim_{args.size}.zarr"
    cfg = SimConfig.model_validate({
        "seed": 1,
        "grid": {"shape": [args.size, args.size], "chunk": args.chunk},
        "tracks": [{"name": "asc_099", "heading": -12.5, "incidence": 40.1}],
    })
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=os.cpu_count()):
        mosaic, truth = simulate(cfg, store, overwrite=True)
    seconds = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    # A quick look of the whole basin must read an overview, not the full array.
    t1 = time.perf_counter()
    quicklook(mosaic, out_dir / f"sim_{args.size}.png", inventory=truth)
    quicklook_s = time.perf_counter() - t1
    peak_after_quicklook = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    size_bytes = sum(f.stat().st_size for f in mosaic.rglob("*") if f.is_file())
    import geopandas as gpd
    result = {
        "benchmark": "simulate",
        "shape": [args.size, args.size],
        "tracks": 1,
        "chunk": args.chunk,
        "seconds": round(seconds, 1),
        "megapixels_per_second": round(args.size**2 / 1e6 / seconds, 2),
        "peak_rss_gib": round(peak_gib, 3),
        "quicklook_seconds": round(quicklook_s, 1),
        "peak_rss_gib_after_quicklook": round(peak_after_quicklook, 3),
        "store_gib": round(size_bytes / 2**30, 3),
        "landslides": len(gpd.read_parquet(truth)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    res_dir = Path(__file__).parent / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / f"simulate_{args.size}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(mosaic, ignore_errors=True)
        truth.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
