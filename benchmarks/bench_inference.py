"""Benchmark: inference precision and RPN proposals, chosen on the tuning basin (issue 19).

    python benchmarks/bench_inference.py [--basin tuning] [--proposals 1000 300] [--precisions fp32 bf16]
    python benchmarks/bench_inference.py --mosaic out/demo/basin.zarr --windows 512 \
        --out benchmarks/results/inference_settings_demo.json

For every (window, precision, proposals), runs ``insar-slide run`` on the wide world's tuning basin
(``configs/wide/<basin>.yaml``; simulated into ``out/wide`` when missing) with the shipped
model and scores the inventory strictly against the simulated truth (box IoU ≥ 0.5, the
visible slides; detections of slower simulated slides neither right nor wrong). A setting is
*admissible* when its F1 is within 0.005 of the first setting (fp32 and the model's own proposals) and it
finds exactly the same truth slides; the fastest admissible one (model seconds per core pixel,
so that windows of any size compare: the halo is paid at model price) is the recommendation. Writes ``benchmarks/results/inference_settings.json``. The test basins are
never used here (they are for reporting, not choosing).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd

REPO = Path(__file__).resolve().parents[1]
F1_TOLERANCE = 0.005


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--basin", default="tuning")
    ap.add_argument("--mosaic", help="another validation mosaic (its truth beside it as <stem>.truth.parquet), e.g. out/demo/basin.zarr")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--proposals", nargs="+", type=int,
                    help="RPN proposals to try, the reference first (default: the model's own, then 300 or 1000)")
    ap.add_argument("--windows", nargs="+", type=int, default=[1024], help="core sides to try (halo 64 each)")
    ap.add_argument("--out", help="JSON (default: benchmarks/results/inference_settings[_<basin>].json)")
    args = ap.parse_args()
    if not args.proposals:  # the reference is the model as trained: round 6 kept 1000 proposals, round 8 300
        from insar_slide.model.checkpoint import read_metadata
        from insar_slide.run.config import default_model
        own = int(read_metadata(default_model())["model"]["rpn_post_nms_top_n_test"])
        args.proposals = [own] + [p for p in (300, 1000) if p != own]
    from insar_slide.compare import hidden_truth, match, visible_truth, within_extent
    from insar_slide.model.device import cpu_has_native_bf16
    from insar_slide.mosaic import grid_of, open_basin
    from insar_slide.run.config import InferenceConfig, RunConfig
    from insar_slide.run.pipeline import run

    mosaic = Path(args.mosaic).resolve() if args.mosaic else REPO / "out" / "wide" / f"{args.basin}.zarr"
    if args.mosaic:
        args.basin = mosaic.name.removesuffix(".zarr")
    elif not mosaic.exists():
        subprocess.run([str(Path(sys.executable).with_name("insar-slide")), "simulate", str(REPO / "configs" / "wide" / f"{args.basin}.yaml"),
                        "--out", str(mosaic), "--no-progress"], check=True)
    truth = gpd.read_parquet(mosaic.with_name(f"{args.basin}.truth.parquet"))
    truth = within_extent(truth, grid_of(open_basin(mosaic)).bounds)  # the truth as the mosaic shows it
    ref, hidden = visible_truth(truth), hidden_truth(truth)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        for window, precision, proposals in itertools.product(args.windows, args.precisions, args.proposals):
            inf = InferenceConfig(precision=precision, proposals=proposals)  # explicit: the model's own varies
            cfg = RunConfig(mosaic=str(mosaic), out=f"{tmp}/{window}_{precision}_{proposals}.parquet", window=window,
                            inference=inf, cluster={"workers": 1, "threads_per_worker": 2, "dashboard": False},
                            outputs={"quicklook": False, "report": False, "kml": False, "geopackage": False,
                                     "slide_id_raster": False})
            t0 = time.perf_counter()
            result = run(cfg, echo=lambda s: None)
            m = match(result.inventory, ref, ignore=hidden)
            c = m.counts()
            found = sorted(str(ref["slide_id"].iloc[i]) for i in range(len(ref)) if m.b_matched[i] >= 0)
            core_mpx = sum(w.core.rows * w.core.cols for w in result.plan.to_run()) / 1e6
            model_s = (result.summary.model_seconds_per_window or 0) * result.summary.windows["computed"]
            rows.append({"window": window, "precision": precision, "proposals": proposals,
                         "seconds": round(time.perf_counter() - t0, 1),
                         "model_seconds_per_window": round(result.summary.model_seconds_per_window or 0, 3),
                         "model_seconds_per_core_mpx": round(model_s / core_mpx, 3) if core_mpx else None,
                         "windows": result.summary.windows["computed"], "detections": len(result.inventory),
                         "precision_strict": round(c["precision"], 4), "recall": round(c["recall"], 4),
                         "f1": round(c["f1"], 4), "found": found})
            print({k: v for k, v in rows[-1].items() if k != "found"}, flush=True)
    base = rows[0]
    for r in rows:
        r["same_slides"] = r["found"] == base["found"]
        r["f1_delta"] = round(r["f1"] - base["f1"], 4)
        r["admissible"] = r["same_slides"] and abs(r["f1_delta"]) <= F1_TOLERANCE
        r["speedup"] = round(base["model_seconds_per_core_mpx"] / r["model_seconds_per_core_mpx"], 3) \
            if r["model_seconds_per_core_mpx"] else None  # per core pixel: windows of any size compare
    best = min((r for r in rows if r["admissible"]), key=lambda r: r["model_seconds_per_core_mpx"])
    doc = {"benchmark": "inference_settings", "basin": args.basin, "f1_tolerance": F1_TOLERANCE,
           "native_bf16": cpu_has_native_bf16(), "rows": rows,
           "recommended": {"window": best["window"], "precision": best["precision"], "proposals": best["proposals"],
                           "speedup": best["speedup"]},
           "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    name = "inference_settings" + ("" if args.basin == "tuning" else f"_{args.basin}")
    Path(args.out or REPO / "benchmarks" / "results" / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["recommended"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
