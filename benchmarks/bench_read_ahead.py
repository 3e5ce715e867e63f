"""Benchmark: 1 and 2 embedded workers with and without the read-ahead thread, repeated.

    python benchmarks/bench_read_ahead.py [--size 3072] [--repeats 3]

``bench_run.py`` measures each setting once; on a shared 2-core VM one run swings by 5–10 %,
which is as large as the 2-worker target's margin (1.8×) and as the read-ahead thread's
expected effect. This script simulates ``bench_run.py``'s basin once, makes one warm-up run,
then repeats, interleaved, the four runs (1 or 2 workers of one model thread each, with
``READ_AHEAD_THREADS`` 1 or 0), and reports each setting's median wall time and the 2-worker
speed-up per read-ahead setting. Writes ``benchmarks/results/read_ahead_<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import bench_run
import torch

from insar_slide.run.config import RunConfig, default_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=3072)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_read_ahead_"))
    basin = bench_run.simulate_basin(args.size, work / "basin.zarr")

    def cfg(name: str, workers: int) -> RunConfig:
        return RunConfig(mosaic=str(basin), out=str(work / f"{name}.parquet"), model=str(default_model()), window=1024,
                         halo=64, cluster={"workers": workers, "threads_per_worker": 1, "dashboard": False},
                         outputs={"quicklook": False, "slide_id_raster": False, "report": False, "kml": False,
                                  "geopackage": False})

    bench_run.timed_run(cfg("warm_up", 1))  # imports, page cache
    walls: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        for workers in (1, 2):
            for ra in (1, 0):
                bench_run.READ_AHEAD_THREADS = ra  # what timed_run gives each worker beyond its model thread
                r = bench_run.timed_run(cfg(f"ra{ra}_w{workers}_{rep}", workers))
                walls.setdefault(f"read_ahead_{ra}_workers_{workers}", []).append(round(float(r["wall_s"]), 2))  # type: ignore[arg-type]
                print(rep, f"read-ahead {ra}", f"{workers} worker(s)", walls[f"read_ahead_{ra}_workers_{workers}"][-1], flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    result = {
        "benchmark": "read_ahead", "size": args.size, "scales": list(cfg("x", 1).scales), "repeats": args.repeats,
        "wall_s": walls, "median_wall_s": med,
        "speedup_2_workers": {f"read_ahead_{ra}": round(med[f"read_ahead_{ra}_workers_1"] / med[f"read_ahead_{ra}_workers_2"], 3)
                              for ra in (1, 0)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(__file__).parent / "results" / f"read_ahead_{args.size}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
