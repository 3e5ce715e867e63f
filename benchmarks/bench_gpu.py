"""Benchmark: detection on GPU workers — windows/s, km²/s and GPU utilisation.

    python benchmarks/bench_gpu.py [--size 4096] [--window 1024] [--precision auto]

With no CUDA device it says so and exits 0 (this project's CI machines have none). With one or
more, it simulates a ``size``² two-track basin, runs ``insar-slide run`` on the embedded GPU
cluster (one worker per GPU, model tasks on the ``GPU`` resource, autocast per
``inference.precision``), samples every GPU's utilisation with ``nvidia-smi`` while the model
runs, and writes ``benchmarks/results/gpu.json``: windows/s, km²/s, the per-stage times, the
median and peak utilisation per GPU, the device names and the settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def sample_utilisation(stop: threading.Event, out: list[list[float]], every: float = 0.5) -> None:
    while not stop.is_set():
        try:
            res = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5)
            out.append([float(v) for v in res.stdout.split()])
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return
        stop.wait(every)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: torch sees no CUDA device here; nothing to measure (run this on a machine with one)")
        return 0
    from insar_slide.run.config import InferenceConfig, RunConfig
    from insar_slide.run.pipeline import run
    from insar_slide.sim.basin import simulate
    from insar_slide.sim.config import demo_config

    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        sim = demo_config()
        sim = sim.model_copy(update={"grid": sim.grid.model_copy(update={"shape": (args.size, args.size), "chunk": 1024})})
        mosaic, _ = simulate(sim, work / "basin.zarr")
        cfg = RunConfig(mosaic=str(mosaic), out=str(work / "inv.parquet"), window=args.window, device="cuda",
                        inference=InferenceConfig(precision=args.precision),
                        outputs={"quicklook": False, "report": False, "kml": False, "geopackage": False,
                                 "slide_id_raster": False})
        stop, util = threading.Event(), []
        sampler = threading.Thread(target=sample_utilisation, args=(stop, util), daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        result = run(cfg, echo=lambda s: None)
        seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
        s = result.summary
        km2 = 2 * (args.size * 30 / 1000) ** 2
        per_gpu = list(zip(*util, strict=False)) if util else []
        doc = {
            "benchmark": "gpu_run", "size_px": args.size, "window": args.window, "precision": args.precision,
            "gpus": [torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count())],
            "windows_computed": s.windows["computed"], "seconds": round(seconds, 2),
            "seconds_detect": round(s.seconds_detect, 2), "windows_per_second": s.windows_per_second,
            "km2_per_second": round(km2 / s.seconds_detect, 2) if s.seconds_detect else None,
            "utilisation_median": [statistics.median(g) for g in per_gpu],
            "utilisation_peak": [max(g) for g in per_gpu],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
