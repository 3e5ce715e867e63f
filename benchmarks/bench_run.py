"""Benchmark: `insar-slide run` end to end against the bare model, on simulated basins.

    python benchmarks/bench_run.py [--size 3072] [--model models/insar_slide_r34_fpn_cbam.safetensors]

In one run, on this machine:

1. simulates a basin of ``size``² px (two tracks, 30 m) and one of (2·size)² px (4× the area);
2. **bare model**: seconds of one forward pass, 1 thread (what a single-threaded worker has),
   on every window the run computes, read from the basin beforehand;
3. **1 worker** (1 thread) and **2 workers** (1 thread each) runs of the basin; pipeline
   efficiency = bare seconds per window / (end-to-end wall seconds per computed window with
   1 worker); scaling = wall(1 worker) / wall(2 workers);
   **the machine's ceiling for two**: the same bare forward passes split between two
   single-threaded processes started together; ceiling = the one process's seconds / the
   slower of the two (what two workers could reach at most on this machine's two cores, with
   their shared cache, memory bandwidth and clocks), so the 2-worker scaling is also given as a
   share of it;
4. **skipped window**: the plan's seconds per planned window (each is read once for the skip
   rules) against the bare model's seconds per window;
5. **peak memory per worker** (max RSS of the worker processes) on the 1× and 4× basins.

Writes ``benchmarks/results/run_<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from insar_slide.model.checkpoint import load_checkpoint
from insar_slide.run import pipeline
from insar_slide.run.cluster import READ_AHEAD_THREADS
from insar_slide.run.config import RunConfig, default_model
from insar_slide.run.detect import apply_inference_settings
from insar_slide.run.io import read_level
from insar_slide.run.plan import make_plan
from insar_slide.sim.basin import simulate
from insar_slide.sim.config import demo_config


def simulate_basin(size: int, out: Path) -> Path:
    base = demo_config()
    cfg = base.model_copy(update={"seed": 11, "grid": base.grid.model_copy(update={"shape": (size, size), "chunk": 1024})})
    simulate(cfg, out, overwrite=True)
    return out


def model_and_windows(cfg: RunConfig):  # type: ignore[no-untyped-def]
    """The run's model at its inference settings (so that both sides do the same work), one
    thread, and the windows the run computes."""
    torch.set_num_threads(1)
    model, mcfg, _ = load_checkpoint(cfg.model_path)
    inf = cfg.inference
    apply_inference_settings(model, proposals=inf.proposals, detections=inf.detections, precision=inf.precision)
    return model, mcfg, make_plan(cfg).to_run()


def _read(cfg: RunConfig, w):  # type: ignore[no-untyped-def]
    """A window as the run reads it: at its scale's level (the block mean for a coarse window)."""
    return read_level(cfg.mosaic, w.track, w.read, factor=w.scale, min_coherence=cfg.min_coherence)


def bare_model(cfg: RunConfig) -> dict[str, float]:
    """One single-threaded forward pass over every window the run computes (the same windows)."""
    model, mcfg, wins = model_and_windows(cfg)
    times = []
    with torch.inference_mode():
        model([mcfg.encoding.encode(_read(cfg, wins[0]))])  # warm-up
        for w in wins:
            x = [mcfg.encoding.encode(_read(cfg, w))]
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return {"mean_s": statistics.fmean(times), "median_s": statistics.median(times), "total_s": sum(times), "windows": len(wins)}


def _bare_share(cfg: RunConfig, part: int, parts: int, start_at: float) -> float:
    """Seconds one single-threaded process takes for every ``parts``-th window from ``part``,
    starting at wall time ``start_at`` (after loading and a warm-up), so that processes overlap."""
    model, mcfg, wins = model_and_windows(cfg)
    xs = [[mcfg.encoding.encode(_read(cfg, w))] for w in wins[part::parts]]
    with torch.inference_mode():
        model(xs[0])  # warm-up
        time.sleep(max(0.0, start_at - time.time()))
        t = time.perf_counter()
        for x in xs:
            model(x)
    return time.perf_counter() - t


def parallel_ceiling(cfg: RunConfig, one_process_total_s: float) -> dict[str, float]:
    """The bare windows split between two concurrent single-threaded processes."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    start_at = time.time() + 60  # every process has loaded its model and windows by then
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        secs = list(ex.map(_bare_share, [cfg, cfg], [0, 1], [2, 2], [start_at, start_at]))
    return {"process_seconds": secs, "ceiling_speedup": one_process_total_s / max(secs)}


def worker_peak_rss(client) -> list[float]:  # type: ignore[no-untyped-def]  # ru_maxrss is KiB on Linux
    import resource
    return [v / 1024 for v in client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values()]


def timed_run(cfg: RunConfig) -> dict[str, object]:
    """Run with a LocalCluster we keep a handle on, to read the workers' peak memory after."""
    from distributed import Client, LocalCluster
    shutil.rmtree(cfg.run_path, ignore_errors=True)
    c = cfg.cluster
    with LocalCluster(n_workers=c.workers, threads_per_worker=c.threads_per_worker + READ_AHEAD_THREADS, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # as the embedded cluster
        t = time.perf_counter()
        res = pipeline.run(cfg, echo=lambda s: None, client=client, model_threads=c.threads_per_worker)
        wall = time.perf_counter() - t
        rss = worker_peak_rss(client)
    s = res.summary.to_dict()
    return {"wall_s": wall, "windows": s["windows"], "slides": s["slides"], "seconds": {k: s[k] for k in s if k.startswith("seconds")},
            "model_seconds_per_window_in_workers": s["model_seconds_per_window"], "worker_peak_rss_mib": rss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=3072)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--model", default=str(default_model()))
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_run_"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
                                 "size": args.size, "window": args.window, "halo": args.halo, "model": args.model}
    t = time.perf_counter()
    small = simulate_basin(args.size, work / "basin_1x.zarr")
    big = simulate_basin(2 * args.size, work / "basin_4x.zarr")
    result["simulate_s"] = time.perf_counter() - t

    def cfg(mosaic: Path, name: str, workers: int) -> RunConfig:
        return RunConfig(mosaic=str(mosaic), out=str(work / f"{name}.parquet"), model=args.model, window=args.window,
                         halo=args.halo, cluster={"workers": workers, "threads_per_worker": 1, "dashboard": False},
                         outputs={"quicklook": False, "slide_id_raster": False, "report": False, "kml": False,
                                  "geopackage": False})

    result["scales"] = list(cfg(small, "bare", 1).scales)
    bare = bare_model(cfg(small, "bare", 1))
    result["bare_model_1_thread"] = bare
    result["bare_model_2_processes"] = ceiling = parallel_ceiling(cfg(small, "bare", 1), bare["total_s"])
    one = timed_run(cfg(small, "w1", 1))
    two = timed_run(cfg(small, "w2", 2))
    four = timed_run(cfg(big, "w2_4x", 2))
    n1 = one["windows"]["computed"]  # type: ignore[index]
    per_window = one["wall_s"] / n1  # type: ignore[operator]
    plan_s = one["seconds"]["seconds_plan"] / one["windows"]["planned"]  # type: ignore[index]
    result.update({
        "one_worker": one, "two_workers": two, "two_workers_4x_area": four,
        "end_to_end_seconds_per_window_1_worker": per_window,
        "pipeline_efficiency": bare["mean_s"] / per_window,
        "end_to_end_over_bare": per_window / bare["mean_s"],
        "speedup_2_workers": one["wall_s"] / two["wall_s"],  # type: ignore[operator]
        "machine_ceiling_2_processes": ceiling["ceiling_speedup"],
        "speedup_2_workers_share_of_ceiling": one["wall_s"] / two["wall_s"] / ceiling["ceiling_speedup"],  # type: ignore[operator]
        "skipped_window_seconds": plan_s,
        "skipped_over_model_window": plan_s / bare["mean_s"],
        "peak_rss_per_worker_mib_1x": max(two["worker_peak_rss_mib"]),  # type: ignore[arg-type]
        "peak_rss_per_worker_mib_4x": max(four["worker_peak_rss_mib"]),  # type: ignore[arg-type]
    })
    result["peak_rss_ratio_4x_over_1x"] = result["peak_rss_per_worker_mib_4x"] / result["peak_rss_per_worker_mib_1x"]  # type: ignore[operator]
    out = Path(__file__).parent / "results" / f"run_{args.size}.json"
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1, default=float))
    print(f"wrote {out}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
