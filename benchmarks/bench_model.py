"""Benchmark: bare forward of the detector on one 512 x 512 window vs the machine's ceiling.

    python benchmarks/bench_model.py [--variant r34_fpn_cbam] [--repeats 7]

Measures, in one run: the model's FLOPs (torch FlopCounterMode, multiply-add = 2), the
median seconds of an eager fp32 forward (batch 1, random weights, eval mode), and the fp32
matrix-multiply rate of this machine (2048^3 GEMM) as the ceiling, then writes
``benchmarks/results/model_<variant>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from insar_slide.model import ModelConfig, build_model


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="r34_fpn_cbam")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(variant=args.variant, tile_size=args.size)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(0)
    rate = rng.normal(0, 3, (args.size, args.size)).astype("float32")
    rate[200:260, 300:350] += 40.0  # something for the RPN to propose
    x = [cfg.encoding.encode(rate)]
    with torch.no_grad():
        model(x)  # warm-up
        with FlopCounterMode(display=False) as fc:
            model(x)
        gflop = fc.get_total_flops() / 1e9
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    ceiling = gemm_gflops()
    med = statistics.median(times)
    result = {
        "benchmark": "model_forward",
        "variant": args.variant,
        "window": args.size,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "gflop_per_window": round(gflop, 1),
        "seconds_median": round(med, 3),
        "seconds_all": [round(t, 3) for t in times],
        "achieved_gflops": round(gflop / med, 1),
        "gemm_fp32_gflops": round(ceiling, 1),
        "floor_seconds_at_gemm_rate": round(gflop / ceiling, 3),
        "ratio_to_floor": round(med / (gflop / ceiling), 2),
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(__file__).parent / "results" / f"model_{args.variant}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
