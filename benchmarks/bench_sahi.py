"""Benchmark: `insar-slide run` side by side with SAHI sliced inference, same weights (issue 19).

    pip install -e '.[bench]'          # sahi==0.12.8 (benchmark only; it pulls opencv-python)
    python benchmarks/bench_sahi.py [--size 4096]

Two simulated two-track scenes of ``size``² px at 30 m: (a) **dense** — the demo world with
twice its slide density; (b) **sparse** — a basin of mostly stable ground (a few slides, no
look-alikes, weak atmosphere), where ``run`` skips the stable windows. On each, in one run on
this machine:

- ours: ``run`` on the embedded cluster (window 1024 + halo 64, the default inference settings,
  outputs beside the inventory off), wall seconds with and without the cluster's start/stop;
  at the native scale only (``scales: [1]``), as SAHI slices at one scale: run's default
  ``[1, 2]`` adds the 2× block-mean level for large slides, about 1/4 more model work;
- SAHI: ``get_sliced_prediction`` per track with SAHI's torchvision wrapper around the same
  model object, the model's score threshold, torch on every core of this process, twice:
  *matched* (slices of 1152², our window with its halo, overlapping by 128 px, no full-image
  pass, NMS IoU 0.5) and *defaults_512* (the model's 512-px tiles with SAHI's defaults: overlap
  0.2, the standard full-image prediction merged in, GREEDYNMM on IOS); the one override is
  ``perform_inference``, which feeds SAHI's float slices of the encoded rates to the model as
  they are (SAHI's own conversion divides by 255 whenever a value exceeds 1, which would corrupt
  the encoding); the two tracks' boxes are then merged by NMS at IoU 0.5;
- both scored strictly against the truth (box IoU ≥ 0.5, the visible slides; detections of
  slower simulated slides neither right nor wrong), and the FLOP floor of the scene (windows ×
  GFLOP per window / the GEMM rate measured in the same run).

Writes ``benchmarks/results/sahi.json`` with ``dense`` and ``sparse``, each holding
``speedup`` (our km²/s over SAHI's matched, wall with the cluster), ``recall_ours``, ``recall_sahi``,
and both SAHI settings in full.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
import torch

REPO = Path(__file__).resolve().parents[1]


def scenes(size: int) -> dict[str, object]:
    from insar_slide.sim.config import AtmosphereConfig, NuisanceConfig, demo_config

    base = demo_config()
    grid = base.grid.model_copy(update={"shape": (size, size), "chunk": 1024})
    dense = base.model_copy(update={"seed": 21, "grid": grid,
                                    "landslides": base.landslides.model_copy(update={"density_per_100km2": 20})})
    sparse = base.model_copy(update={
        "seed": 22, "grid": grid,
        "landslides": base.landslides.model_copy(update={"density_per_100km2": 0.05}),
        "nuisance": NuisanceConfig(subsidence_per_1000km2=0, glaciers_per_1000km2=0, unwrapping_per_1000km2=0,
                                   frost_heave=False),
        "atmosphere": AtmosphereConfig(turbulence_mm_yr=0.5, turbulence_storm_fraction=0.0, stratified_mm_yr_per_km=0.2,
                                       ramp_mm_yr_per_100km=0.0, pixel_noise_mm_yr=1.0)})
    return {"dense": dense, "sparse": sparse}


def sahi_model(model: torch.nn.Module, threshold: float):  # type: ignore[no-untyped-def]
    from sahi.models.torchvision import TorchVisionDetectionModel

    class EncodedSlices(TorchVisionDetectionModel):
        def perform_inference(self, image: np.ndarray, image_size: int | None = None) -> None:
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
            with torch.inference_mode():
                self._original_predictions = self.model([x])

    m = EncodedSlices(model=model, confidence_threshold=threshold, category_mapping={"1": "landslide"},
                      device="cpu", load_at_init=True)
    return m


#: SAHI as matched to our windows (slices of our window with its halo, overlapping by the halo,
#: no full-image pass, NMS) and at its defaults for this model's 512-px training tiles (overlap
#: 0.2, the standard full-image prediction merged in, GREEDYNMM on IOS), as a user would start.
SAHI_SETTINGS = {
    "matched": {"slice_height": 1152, "slice_width": 1152, "overlap_height_ratio": 128 / 1152,
                "overlap_width_ratio": 128 / 1152, "perform_standard_pred": False, "postprocess_type": "NMS",
                "postprocess_match_metric": "IOU", "postprocess_match_threshold": 0.5},
    "defaults_512": {"slice_height": 512, "slice_width": 512, "overlap_height_ratio": 0.2, "overlap_width_ratio": 0.2},
}


def run_sahi(mosaic: Path, model: torch.nn.Module, encoding, threshold: float,  # type: ignore[no-untyped-def]
             settings: dict[str, object]) -> tuple[gpd.GeoDataFrame, float]:
    from sahi.predict import get_sliced_prediction
    from torchvision.ops import nms

    from insar_slide.mosaic import RATE, grid_of, open_basin

    ds = open_basin(mosaic)
    grid = grid_of(ds)
    det = sahi_model(model, threshold)
    boxes, scores = [], []
    t0 = time.perf_counter()
    for t in ds["track"].values:
        rate = np.asarray(ds[RATE].sel(track=t).values, dtype=np.float32)
        image = encoding.encode(rate).numpy().transpose(1, 2, 0)  # H x W x 3, float
        res = get_sliced_prediction(image, det, verbose=0, **settings)  # type: ignore[arg-type]
        for p in res.object_prediction_list:
            boxes.append(p.bbox.to_xyxy())
            scores.append(p.score.value)
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    s = torch.tensor(scores, dtype=torch.float64)
    keep = nms(b, s, 0.5).numpy() if len(b) else np.zeros(0, int)  # the two tracks' boxes of one slide
    seconds = time.perf_counter() - t0
    t = grid.transform
    geoms = [shapely.box(*(t * (x0, y1)), *(t * (x1, y0))) for x0, y0, x1, y1 in b.numpy()[keep]]
    return gpd.GeoDataFrame({"score": s.numpy()[keep]}, geometry=geoms, crs=grid.crs), seconds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sahi.json"))
    args = ap.parse_args()
    try:
        import sahi
    except ImportError:
        print("SAHI is not installed: pip install -e '.[bench]' (sahi==0.12.8)")
        return 1
    from bench_model import gemm_gflops  # type: ignore[import-not-found]
    from torch.utils.flop_counter import FlopCounterMode

    from insar_slide.compare import hidden_truth, match, visible_truth, within_extent
    from insar_slide.model.checkpoint import load_checkpoint, read_metadata, resolve_score_threshold
    from insar_slide.mosaic import grid_of, open_basin
    from insar_slide.run.config import RunConfig, default_model
    from insar_slide.run.detect import apply_inference_settings
    from insar_slide.run.pipeline import run
    from insar_slide.sim.basin import simulate

    torch.set_num_threads(os.cpu_count() or 1)
    model, mcfg, _ = load_checkpoint(default_model())
    threshold = resolve_score_threshold(None, read_metadata(default_model()))
    cfg0 = RunConfig(mosaic="m", out="o")
    apply_inference_settings(model, proposals=cfg0.inference.proposals, detections=cfg0.inference.detections)
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model([torch.zeros(3, 1152, 1152)])
    gflop_window = fc.get_total_flops() / 1e9
    gemm = gemm_gflops()
    doc: dict[str, object] = {"benchmark": "sahi_side_by_side", "size_px": args.size, "sahi": sahi.__version__,
                              "score_threshold": threshold, "gemm_fp32_gflops": round(gemm, 1),
                              "gflop_per_1152_window": round(gflop_window, 1)}
    with tempfile.TemporaryDirectory(prefix="bench-sahi-") as tmp:
        for name, sim in scenes(args.size).items():
            mosaic, truth_path = simulate(sim, Path(tmp) / f"{name}.zarr")
            truth = gpd.read_parquet(truth_path)
            truth = within_extent(truth, grid_of(open_basin(mosaic)).bounds)  # the truth as the mosaic shows it
            ref, hidden = visible_truth(truth), hidden_truth(truth)
            cfg = RunConfig(mosaic=str(mosaic), out=f"{tmp}/{name}.parquet", window=1024, halo=64, scales=[1],
                            cluster={"dashboard": False},
                            outputs={"quicklook": False, "report": False, "kml": False, "geopackage": False,
                                     "slide_id_raster": False})
            t0 = time.perf_counter()
            ours = run(cfg, echo=lambda s: None)
            wall = time.perf_counter() - t0
            km2 = len(sim.tracks) * (args.size * sim.grid.pixel_size / 1000) ** 2
            co = match(ours.inventory, ref, ignore=hidden).counts()
            n_windows = ours.summary.windows["planned"]
            row: dict[str, object] = {
                "truth_visible": len(ref), "windows_planned": n_windows, "windows_run": ours.summary.windows["run"],
                "ours_seconds": round(wall, 1), "ours_seconds_without_cluster": round(wall - ours.summary.seconds_cluster, 1),
                "ours_km2_per_s": round(km2 / wall, 2), "recall_ours": round(co["recall"], 4),
                "precision_ours": round(co["precision"], 4), "f1_ours": round(co["f1"], 4),
                "floor_seconds_all_windows": round(n_windows * gflop_window / gemm, 1),
            }
            for label, settings in SAHI_SETTINGS.items():
                sahi_inv, sahi_s = run_sahi(mosaic, model, mcfg.encoding, threshold, settings)
                cs = match(sahi_inv, ref, ignore=hidden).counts()
                row[label] = {"sahi_seconds": round(sahi_s, 1), "sahi_km2_per_s": round(km2 / sahi_s, 2),
                              "speedup": round(sahi_s / wall, 2),
                              "speedup_without_cluster": round(sahi_s / (wall - ours.summary.seconds_cluster), 2),
                              "recall_sahi": round(cs["recall"], 4), "precision_sahi": round(cs["precision"], 4),
                              "f1_sahi": round(cs["f1"], 4), "settings": settings}
            # the figures the issue names, against SAHI matched to our windows (the stricter rival)
            row.update(speedup=row["matched"]["speedup"], recall_sahi=row["matched"]["recall_sahi"])  # type: ignore[index]
            doc[name] = row
            print(name, json.dumps(doc[name]), flush=True)
    doc["date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # bench_model's GEMM ceiling
    sys.exit(main())
