"""Benchmark: the window plan of a plateau-size mosaic (issue 19: ≈ 2.8 G px per track at 30 m).

    python benchmarks/bench_plan.py [--size 53000] [--tracks 2] [--mosaic existing.zarr] [--keep]

1. writes (unless ``--mosaic``) a ``size``² px mosaic of ``tracks`` tracks through the same
   ``mosaic.write_mosaic`` as ingest (chunks of 1024², overviews, chunk manifest), generated
   chunk by chunk: stable ground (Gaussian noise, σ 1.5 mm/yr, quantised to 0.1 mm/yr as real
   products are stored) and, in one chunk in 40, a moving patch (a 60-px disc at 25 mm/yr), so
   that most windows are stable and the rest must run;
2. builds the plan (``run.plan.make_plan``: the pure tiling, then one read of every core for
   the skip rules and input hashes, as ``insar-slide plan`` does) in a fresh child process,
   timed, with its peak RSS (``ru_maxrss``): nothing of the mosaic's size may be held there;
3. the same mosaic's size in memory, for scale.

Writes ``benchmarks/results/plan_plateau.json`` (``seconds``: the plan's wall time).
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

import numpy as np

warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
CHUNK = 1024
HOT_EVERY = 40  # one chunk in this many holds a moving patch


def _chunk(track: int, hot_every: int = HOT_EVERY, block_info: dict | None = None) -> np.ndarray:
    assert block_info is not None
    (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
    i, j = r0 // CHUNK, c0 // CHUNK
    rng = np.random.default_rng([7, track, i, j])
    a = np.round(rng.normal(0.0, 1.5, (r1 - r0, c1 - c0)) * 10) / 10
    if (i * 7919 + j * 104729 + track) % hot_every == 0:
        yy, xx = np.ogrid[: r1 - r0, : c1 - c0]
        cy, cx = (r1 - r0) // 2, (c1 - c0) // 2
        a[(yy - cy) ** 2 + (xx - cx) ** 2 < 30**2] += 25.0
    return a.astype("float32")[None]


def write_store(path: Path, size: int, tracks: int, *, hot_every: int = HOT_EVERY) -> float:
    """Write the synthetic mosaic (module docstring) at ``path``; its seconds."""
    import dask
    import dask.array as da

    from insar_slide.grid import Grid, chunk_sizes
    from insar_slide.mosaic import TrackInfo, build_dataset, write_mosaic

    grid = Grid("EPSG:32646", 300_000.0, 3_800_000.0, 30.0, -30.0, size, size)
    names = [TrackInfo("asc_099", heading=-12.0, incidence=39.0), TrackInfo("desc_062", heading=-168.0, incidence=39.0)]
    parts = [da.map_blocks(_chunk, t, hot_every, dtype="float32", chunks=((1,), chunk_sizes(size, CHUNK), chunk_sizes(size, CHUNK)))
             for t in range(tracks)]
    rate = da.concatenate(parts, axis=0)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=os.cpu_count()):
        write_mosaic(build_dataset(rate, grid, names[:tracks], attrs={"product": "bench_plan"}), path, chunk=CHUNK,
                     overwrite=True)
    return time.perf_counter() - t0


def _plan(mosaic: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    from collections import Counter

    from insar_slide.run.config import RunConfig
    from insar_slide.run.plan import make_plan

    cfg = RunConfig(mosaic=mosaic, out=str(Path(mosaic).with_suffix(".parquet")))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    plan = make_plan(cfg)
    seconds = time.perf_counter() - t0
    queue.put({"seconds": round(seconds, 1), "windows": dict(Counter(w.status for w in plan.windows)),
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "rss_before_plan_mib": round(rss0, 1)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=53_000)
    ap.add_argument("--tracks", type=int, default=2, choices=(1, 2))
    ap.add_argument("--mosaic", help="an existing mosaic to plan (skips writing one)")
    ap.add_argument("--store", default="out/bench_plan/plateau.zarr")
    ap.add_argument("--keep", action="store_true", help="keep the written store")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "plan_plateau.json"))
    args = ap.parse_args()
    store = Path(args.mosaic or args.store)
    write_s = None
    if not args.mosaic:
        store.parent.mkdir(parents=True, exist_ok=True)
        write_s = round(write_store(store, args.size, args.tracks), 1)
        print(f"wrote {store} in {write_s} s")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_plan, args=(str(store), queue))
    proc.start()
    res = queue.get()
    proc.join()
    from insar_slide.mosaic import open_basin

    ds = open_basin(store)
    n_px = int(ds["los_rate"].size)
    doc = {
        "benchmark": "plan", "mosaic": str(store), "shape": list(ds["los_rate"].shape), "gigapixels_per_track": round(
            n_px / ds.sizes["track"] / 1e9, 2), "mosaic_gib_in_memory": round(n_px * 4 / 2**30, 2),
        "write_store_s": write_s, **res,
        "megapixels_per_second": round(n_px / 1e6 / res["seconds"], 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    if not args.mosaic and not args.keep:
        shutil.rmtree(store)


if __name__ == "__main__":
    main()
