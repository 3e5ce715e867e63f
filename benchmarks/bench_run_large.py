"""Benchmark: ``run`` on a 32k × 32k two-track mosaic (1 G px per track) against a 3072² one —
is a worker's memory flat with the basin's size? (issue 19 item 5)

    python benchmarks/bench_run_large.py [--size 32768] [--hot-every 10]

1. simulates the 3072² two-track demo-style basin of ``bench_run.py`` and runs it with 2
   workers (1 model thread each, the embedded cluster's read-ahead thread): the reference
   per-worker peak RSS;
2. writes a ``size``² two-track mosaic through ``write_mosaic`` (the synthetic ground of
   ``bench_plan.py``: stable noise, and a moving patch in one chunk in ``--hot-every``, so that
   that share of the windows runs the model and the rest is skipped by the plan — simulating a
   32k² basin with the full simulator takes ~35 min, its run ~1 h on this machine) and runs it
   the same way: plan, detection, the reduction tree (its depth grows with the basin) and the
   streamed inventory;
3. reports both runs' wall times, window counts and per-worker peak RSS, and their ratio.

Writes ``benchmarks/results/run_<size>.json`` (``rss_ratio_to_3072``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from bench_plan import write_store
from bench_run import simulate_basin, timed_run

from insar_slide.run.config import RunConfig, default_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=32768)
    ap.add_argument("--hot-every", type=int, default=10)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_run_large_", dir="out"))
    work.mkdir(parents=True, exist_ok=True)

    def cfg(mosaic: Path, name: str) -> RunConfig:
        return RunConfig(mosaic=str(mosaic), out=str(work / f"{name}.parquet"), model=str(default_model()),
                         cluster={"workers": 2, "threads_per_worker": 1, "dashboard": False},
                         outputs={"quicklook": False, "slide_id_raster": False, "report": False, "kml": False,
                                  "geopackage": False})

    small = simulate_basin(3072, work / "basin_3072.zarr")
    ref = timed_run(cfg(small, "run_3072"))
    print("3072:", ref["wall_s"], ref["windows"], ref["worker_peak_rss_mib"])
    big = work / f"basin_{args.size}.zarr"
    write_s = write_store(big, args.size, 2, hot_every=args.hot_every)
    print(f"wrote {big} in {write_s:.0f} s")
    large = timed_run(cfg(big, f"run_{args.size}"))
    print(f"{args.size}:", large["wall_s"], large["windows"], large["worker_peak_rss_mib"])
    rss_ref, rss_large = max(ref["worker_peak_rss_mib"]), max(large["worker_peak_rss_mib"])  # type: ignore[type-var]
    doc = {
        "benchmark": "run_large", "size": args.size, "tracks": 2, "gigapixels_per_track": round(args.size**2 / 1e9, 2),
        "mosaic": f"synthetic (bench_plan.py ground), a moving patch in one chunk in {args.hot_every}",
        "write_store_s": round(write_s, 1), "run_3072": ref, f"run_{args.size}": large,
        "worker_peak_rss_mib_3072": rss_ref, f"worker_peak_rss_mib_{args.size}": rss_large,
        "rss_ratio_to_3072": round(rss_large / rss_ref, 3),  # type: ignore[operator]
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(__file__).parent / "results" / f"run_{args.size}.json"
    out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if not isinstance(v, dict)}, indent=1, default=float))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
