"""Measurement: what the quality layers say about the real products' rates, and what the quality
mask does to detections — the measurement ``run``'s default ``min_coherence`` is chosen from.

    python benchmarks/quality_layers.py [--real ../shared/data/real] [--model M.safetensors]

For Kirishima (MintPy temporal coherence), Cadia (MintPy temporal coherence) and Campi Flegrei
(LiCSBAS ``coh_avg`` and ``mask``), each ingested with its layers:

- the robust spread (1.4826 × MAD) of the rates and the share at ``|rate − median| ≥ 10 mm/yr``
  per coherence bin: where the rates turn into noise;
- the share of valid pixels the quality mask drops at thresholds 0.05 … 0.7;
- the detections at the model's operating threshold (one window per product, as
  ``workflows/real_data.sh``) without the mask and at each threshold in ``--detect-at``.

Writes ``benchmarks/results/quality_layers.json`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = [sys.executable, "-m", "insar_slide.cli"]
BINS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9, 1.01]
THRESHOLDS = [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7]
PRODUCTS = {  # name: (path under --real, extra ingest arguments)
    "kirishima": ("kirishima_alos2_mintpy/velocity.h5", []),
    "cadia": ("cadia_s1_mintpy/geo_velocity.h5", []),
    "campi_flegrei": ("campi_flegrei_licsbas/raw/vel", ["--track", "desc_124"]),
}


def _cli(*args: str) -> str:
    res = subprocess.run([*BIN, *args], capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        raise SystemExit(f"insar-slide {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return res.stdout


def noise_by_coherence(rate: np.ndarray, coh: np.ndarray) -> list[dict[str, float]]:
    ok = np.isfinite(rate) & np.isfinite(coh)
    med = float(np.median(rate[ok]))
    rows = []
    for lo, hi in itertools.pairwise(BINS):
        v = rate[ok & (coh >= lo) & (coh < hi)]
        if v.size < 20:
            continue
        rows.append({"bin": [lo, min(hi, 1.0)], "pixels": int(v.size), "share": round(v.size / ok.sum(), 4),
                     "robust_std_mm_yr": round(float(1.4826 * np.median(np.abs(v - np.median(v)))), 2),
                     "share_ge_10_mm_yr": round(float((np.abs(v - med) >= 10).mean()), 4)})
    return rows


def detections(store: Path, name: str, work: Path, min_coherence: float | None, model: str | None) -> list[dict]:
    import geopandas as gpd

    info = json.loads(_cli("info", str(store), "--json"))
    h, w = info["grid"]["shape"]
    tag = "none" if min_coherence is None else f"{min_coherence:g}"
    cfg = work / f"{name}.{tag}.yaml"
    cfg.write_text(f"mosaic: {store}\nout: {work / f'{name}.{tag}.parquet'}\nmodel: {model or 'null'}\n"
                   f"window: {max(64, -(-max(h, w) // 64) * 64)}\nhalo: 64\n"
                   "skip: {min_abs_rate: 10, min_hot_pixels: 4, min_valid_fraction: 0.05}\n"
                   f"min_coherence: {'null' if min_coherence is None else min_coherence}\n"
                   "cluster: {workers: 1, threads_per_worker: 2}\n"
                   "outputs: {quicklook: false, slide_id_raster: false, geopackage: false, kml: false, report: false}\n")
    _cli("run", str(cfg), "--no-progress", "--overwrite")
    gdf = gpd.read_parquet(work / f"{name}.{tag}.parquet")
    out = []
    for _, r in gdf.iterrows():
        c = r.geometry.centroid
        out.append({"score": round(float(r.score), 3), "centre": [round(c.x, 4), round(c.y, 4)],
                    "rate_mean_mm_yr": round(float(r.rate_mean), 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "real"))
    ap.add_argument("--model", help="checkpoint (default: the shipped reference model)")
    ap.add_argument("--detect-at", type=float, nargs="*", default=[0.1, 0.2])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality_layers.json"))
    args = ap.parse_args()
    from insar_slide.mosaic import describe, open_basin

    doc: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.node(),
                 "model": args.model or "shipped reference model", "products": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (rel, extra) in PRODUCTS.items():
            store = work / f"{name}.zarr"
            _cli("ingest", str(Path(args.real) / rel), "--out", str(store), "--no-progress", *extra)
            ds = open_basin(store)
            rate, coh = ds["los_rate"].values[0], ds["coherence"].values[0]
            masked = {f"{t:g}": describe(ds, min_coherence=t)["tracks"][0]["masked_fraction"] for t in THRESHOLDS}
            found = {"none": detections(store, name, work, None, args.model)}
            for t in args.detect_at:
                found[f"{t:g}"] = detections(store, name, work, t, args.model)
            doc["products"][name] = {"coherence_kind": json.loads(ds.attrs["coherence_kind"]),
                                     "layers": sorted(set(ds.data_vars) - {"los_rate"}),
                                     "noise_by_coherence": noise_by_coherence(rate, coh),
                                     "masked_fraction": masked, "detections_at_operating_threshold": found}
            print(name, "masked:", masked, "detections:", {k: len(v) for k, v in found.items()})
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
