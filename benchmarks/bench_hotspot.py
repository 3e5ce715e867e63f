"""Benchmark: the Gi* hot-spot baseline over a large single-track simulated mosaic.

    python benchmarks/bench_hotspot.py --size 16384 [--mosaic existing.zarr] [--keep]

Simulates a ``size``² px single-track basin (unless ``--mosaic`` is given), then runs
``baseline_inventory(method="hotspot")`` (Gi* z-scores with a 7-px halo, hot pixels, regions
across chunks, polygons, rate statistics) in a fresh child process, so that the peak RSS
reported (``ru_maxrss`` of that child) is the baseline's alone. Writes
``benchmarks/results/hotspot_<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
warnings.filterwarnings("ignore", message="Dataset has no geotransform")  # as the CLI: transforms are passed explicitly


def _hotspot(mosaic: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    import dask

    from insar_slide.baselines import baseline_inventory
    from insar_slide.mosaic import open_basin
    from insar_slide.run.config import BaselineConfig

    dask.config.set(scheduler="threads", num_workers=os.cpu_count())
    t = time.perf_counter()
    gdf, notes = baseline_inventory(open_basin(mosaic), "hotspot", cfg=BaselineConfig())
    queue.put({"seconds": time.perf_counter() - t, "regions": len(gdf), "notes": notes,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--mosaic", help="an existing mosaic (skips the simulation)")
    ap.add_argument("--out", default="/tmp/insar-slide-bench")
    ap.add_argument("--keep", action="store_true", help="keep the simulated mosaic (reuse it with --mosaic)")
    args = ap.parse_args()
    result: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "size": args.size}
    if args.mosaic:
        mosaic = args.mosaic
    else:
        from insar_slide.sim.basin import simulate
        from insar_slide.sim.config import SimConfig, TrackConfig
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        base = SimConfig()
        cfg = base.model_copy(update={"seed": 5, "tracks": (TrackConfig(name="asc", heading=-12.5, incidence=40.0),),
                                      "grid": base.grid.model_copy(update={"shape": (args.size, args.size), "chunk": 1024})})
        t = time.perf_counter()
        mosaic = str(simulate(cfg, out / f"hotspot_{args.size}.zarr", overwrite=True)[0])
        result["simulate_s"] = time.perf_counter() - t
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    p = ctx.Process(target=_hotspot, args=(mosaic, q))
    p.start()
    res = q.get()
    p.join()
    result.update(res)
    result["mpx_per_s"] = args.size**2 / 1e6 / res["seconds"]
    path = Path(__file__).parent / "results" / f"hotspot_{args.size}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))
    if not args.mosaic and not args.keep:
        shutil.rmtree(Path(args.out) / f"hotspot_{args.size}.zarr", ignore_errors=True)


if __name__ == "__main__":
    main()
