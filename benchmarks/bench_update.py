"""Benchmark: the cost of an inventory update after a change confined to ~5 % of the windows.

    python benchmarks/bench_update.py [--size 3072] [--window 512] [--warm-cluster]

Simulates a ``size``² px two-track basin, runs ``update`` on it (a full run: no previous
update), adds a second version in which a few fast patches appear in ~5 % of the windows
(everything else byte-identical), and runs ``update`` again. Reports both wall times, the
windows recomputed and reused, and the ratio. Writes ``benchmarks/results/update_<size>.json``.

By default each ``update`` starts and closes its embedded cluster, as ``insar-slide update``
does. ``--warm-cluster`` runs both on one cluster started beforehand (2 workers × 1 thread,
as embedded), the deployment of a scheduled service that keeps a scheduler and workers up
(``cluster.address``): no start, stop or model load per update. Writes
``update_<size>_warm.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np

from insar_slide.mosaic import TrackInfo, build_dataset, grid_of, open_basin, write_version
from insar_slide.run.config import RunConfig, default_model
from insar_slide.run.update import update
from insar_slide.sim.basin import simulate
from insar_slide.sim.config import demo_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=3072)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--share", type=float, default=0.05, help="share of the windows that change")
    ap.add_argument("--model", default=str(default_model()))
    ap.add_argument("--warm-cluster", action="store_true", help="one cluster, started before, for both runs")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        client = None
        if args.warm_cluster:
            from distributed import Client, LocalCluster
            cluster = stack.enter_context(LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                                       silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
        measure(args, client)


def measure(args: argparse.Namespace, client: object) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_update_"))
    base = demo_config()
    sim = base.model_copy(update={"seed": 13, "grid": base.grid.model_copy(update={"shape": (args.size, args.size), "chunk": 1024})})
    store = work / "basin.zarr"
    simulate(sim, store)
    cfg = RunConfig(mosaic=str(store), out=str(work / "inventory.parquet"), model=args.model, window=args.window, halo=args.halo,
                    cluster={"threads_per_worker": 1, "dashboard": False}, outputs={"quicklook": False, "slide_id_raster": False})
    t = time.perf_counter()
    first = update(cfg, echo=lambda s: None, client=client)
    t_full = time.perf_counter() - t
    # version 2: fast patches in the centre of a few cores (one per changed window, both tracks)
    ds = open_basin(store)
    rate = ds.los_rate.values.copy()
    n = -(-args.size // args.window)
    k = max(1, round(args.share * n * n))
    rng = np.random.default_rng(0)
    cores = rng.choice(n * n, k, replace=False)
    for c in cores:
        r0, c0 = (c // n) * args.window + args.window // 2, (c % n) * args.window + args.window // 2
        rate[:, r0 - 10:r0 + 10, c0 - 15:c0 + 15] = -60.0
    tracks = [TrackInfo(str(t), float(h), float(i), "2018-01-01", "2021-12-31") for t, h, i in
              zip(ds.track.values, ds.heading.values, ds.incidence.values, strict=True)]
    write_version(build_dataset(da.from_array(rate, chunks=(1, 1024, 1024)), grid_of(ds), tracks), store, "v2", chunk=1024)
    t = time.perf_counter()
    second = update(cfg, echo=lambda s: None, client=client)
    t_update = time.perf_counter() - t
    result = {
        "cpus": os.cpu_count(), "size": args.size, "warm_cluster": args.warm_cluster, "window": args.window, "halo": args.halo, "model": args.model,
        "cores_per_track": n * n, "cores_changed": int(k), "full_run_s": t_full, "update_s": t_update,
        "update_over_full": t_update / t_full, "full_windows": first.windows, "update_windows": second.windows,
        "status_counts": second.status_counts, "update_blocks": second.blocks,
        "phases_s": {name: {k.removeprefix("seconds_"): r.run_summary.to_dict()[k] for k in r.run_summary.to_dict() if k.startswith("seconds")}
                     for name, r in (("full", first), ("update", second))},
    }
    out = Path(__file__).parent / "results" / f"update_{args.size}{'_warm' if args.warm_cluster else ''}.json"
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps(result, indent=1, default=float))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
