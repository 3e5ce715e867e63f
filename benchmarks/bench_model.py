"""Benchmark: bare forward of the detector on one 512 x 512 window vs the machine's ceiling.

    python benchmarks/bench_model.py [--variant r34_fpn_cbam] [--repeats 7] [--precision fp32|bf16|auto]
                                     [--proposals N]

Measures, in one run: the model's FLOPs (torch FlopCounterMode, multiply-add = 2) at the given
RPN proposals (default: the run's default, ``InferenceConfig``), the median seconds of an eager
forward (batch 1, random weights, eval mode, batch norms folded into the convolutions and
channels-last weights as ``run`` does; the plain model is timed in the same loop for comparison)
at the given precision (bf16: autocast and
channels-last weights, as ``run`` does; ``auto``: what ``run`` would pick on this CPU), and the
matrix-multiply rate of this machine (2048^3 GEMM) in fp32 and, for bf16, in bf16, as the
ceiling, then writes ``benchmarks/results/model_<variant>.json`` (``ratio_to_floor`` against
the GEMM rate of the precision used, ``ratio_to_fp32_floor`` against the fp32 one).
"""

from __future__ import annotations

import argparse
import copy
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
from insar_slide.model.device import autocast_dtype, cpu_has_native_bf16, pick_precision
from insar_slide.run.config import InferenceConfig
from insar_slide.run.detect import apply_inference_settings


def gemm_gflops(n: int = 2048, repeats: int = 9, dtype: torch.dtype = torch.float32) -> float:
    """The machine's matrix-multiply rate: the best of ``repeats`` timed GEMMs, since a ceiling is
    what the cores reach when nothing else holds them (a shared VM's neighbours slow single
    GEMMs by up to 1.7x from one minute to the next; a median would lower the floor's rate and
    flatter the model's ratio)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def cpu_model() -> str:
    """The CPU's model name (Linux), for telling apart this project's machines of one day and the next."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="r34_fpn_cbam")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--precision", default=InferenceConfig().precision)
    ap.add_argument("--proposals", type=int, default=InferenceConfig().proposals)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(variant=args.variant, tile_size=args.size)
    precision = pick_precision(args.precision, torch.device("cpu"))
    base = build_model(cfg).eval()
    model = apply_inference_settings(copy.deepcopy(base), proposals=args.proposals, precision=precision)
    plain = apply_inference_settings(base, proposals=args.proposals, precision=precision, optimize=False)
    dtype = autocast_dtype(precision)
    rng = np.random.default_rng(0)
    rate = rng.normal(0, 3, (args.size, args.size)).astype("float32")
    rate[200:260, 300:350] += 40.0  # something for the RPN to propose
    x = [cfg.encoding.encode(rate)]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        model(x), plain(x)  # warm-up
        with FlopCounterMode(display=False) as fc:
            out = model(x)[0]
        gflop = fc.get_total_flops() / 1e9
        ref = plain(x)[0]
        times, times_plain = [], []
        for _ in range(args.repeats):  # interleaved, so that both see the same machine
            for m, ts in ((model, times), (plain, times_plain)):
                t = time.perf_counter()
                m(x)
                ts.append(time.perf_counter() - t)
    same = len(out["boxes"]) == len(ref["boxes"]) and bool(torch.allclose(out["boxes"].float(), ref["boxes"].float(), atol=0.05))
    fp32_ceiling = gemm_gflops()
    ceiling = gemm_gflops(dtype=dtype) if dtype is not None else fp32_ceiling
    med = statistics.median(times)
    result = {
        "benchmark": "model_forward",
        "variant": args.variant,
        "window": args.size,
        "precision": precision,
        "proposals": model.rpn.post_nms_top_n(),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "gflop_per_window": round(gflop, 1),
        "seconds_median": round(med, 3),
        "seconds_all": [round(t, 3) for t in times],
        "optimized": "batch norms folded, channels-last weights",
        "seconds_median_plain": round(statistics.median(times_plain), 3),
        "speedup_over_plain": round(statistics.median(times_plain) / med, 3),
        "boxes_same_as_plain": same,
        "achieved_gflops": round(gflop / med, 1),
        "gemm_fp32_gflops": round(fp32_ceiling, 1),
        **({f"gemm_{precision}_gflops": round(ceiling, 1)} if dtype is not None else {}),
        "floor_seconds_at_gemm_rate": round(gflop / ceiling, 3),
        "ratio_to_floor": round(med / (gflop / ceiling), 2),
        "ratio_to_fp32_floor": round(med / (gflop / fp32_ceiling), 2),
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "native_bf16": cpu_has_native_bf16(), "python": platform.python_version(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(__file__).parent / "results" / f"model_{args.variant}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
