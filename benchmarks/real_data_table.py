"""The false-alarm table on the real products (run by workflows/real_data.sh after its runs).

Reads, per product, the mosaic (``insar_slide.open_basin``) and the two inventories the
workflow wrote (``<name>.op.parquet`` at the model's own threshold, ``<name>.p50.parquet`` at
0.5), and writes:

- ``benchmarks/results/real_data.md`` and ``real_data.json``: sensor/track, pixel size, area
  with data, detections at the operating threshold and per 1,000 km², each detection's
  centre, box size, rates and explanation, and the detections at score >= 0.5 that the
  operating threshold drops;
- a crop PNG per detection (``<dir>/crops/``) and one overview PNG per product with the
  detections numbered (``benchmarks/results/real_data/<name>.png``, palette PNG, small).

Explanations come from ``benchmarks/results/real_data_explained.yaml``, matched by product
and place (the nearest entry within ``match_m`` of a detection's centre), so a re-run with
another model keeps them where a detection is at the same place and marks new ones
"not yet explained".

    .venv/bin/python benchmarks/real_data_table.py --dir out/real
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import subprocess
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as mpatches
import matplotlib.pyplot as plt
import numpy as np
import pyarrow.parquet as pq
import yaml
from PIL import Image
from pyproj import CRS, Geod

import insar_slide
from insar_slide.mosaic import grid_of

ROOT = Path(__file__).resolve().parents[1]
GEOD = Geod(ellps="WGS84")

# name -> what the mosaic does not record (from each folder's SOURCE.txt)
PRODUCTS = {
    "kirishima": {"label": "Kirishima (Japan)", "sensor": "ALOS-2 PALSAR-2, MintPy",
                  "source": "kirishima_alos2_mintpy/velocity.h5"},
    "cadia": {"label": "Cadia (Australia)", "sensor": "Sentinel-1, MintPy",
              "source": "cadia_s1_mintpy/geo_velocity.h5"},
    "campi_flegrei": {"label": "Campi Flegrei (Italy)", "sensor": "Sentinel-1, LiCSBAS",
                      "source": "campi_flegrei_licsbas/raw/vel"},
}


def _geographic(crs: str) -> bool:
    return CRS.from_user_input(crs).is_geographic


def pixel_size_m(grid) -> tuple[float, float]:
    if not _geographic(grid.crs):
        return abs(grid.dx), abs(grid.dy)
    lon = grid.x0 + grid.dx * grid.width / 2
    lat = grid.y0 + grid.dy * grid.height / 2
    return (GEOD.inv(lon, lat, lon + grid.dx, lat)[2], GEOD.inv(lon, lat, lon, lat + grid.dy)[2])


def area_with_data_km2(grid, valid: np.ndarray) -> float:
    """Sum of the areas of the cells with a measurement on any track (per-row cell area)."""
    per_row = valid.sum(axis=1)
    if not _geographic(grid.crs):
        return float(per_row.sum() * abs(grid.dx * grid.dy) / 1e6)
    total = 0.0
    for i, n in enumerate(per_row):
        if n:
            top, bot = grid.y0 + grid.dy * i, grid.y0 + grid.dy * (i + 1)
            a, _ = GEOD.polygon_area_perimeter([grid.x0, grid.x0 + grid.dx, grid.x0 + grid.dx, grid.x0],
                                               [top, top, bot, bot])
            total += abs(a) * n
    return total / 1e6


def box_size_m(bounds: tuple[float, float, float, float], crs: str) -> tuple[float, float]:
    x0, y0, x1, y1 = bounds
    if not _geographic(crs):
        return x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return GEOD.inv(x0, cy, x1, cy)[2], GEOD.inv(cx, y0, cx, y1)[2]


def run_meta(path: Path) -> dict:
    meta = pq.read_metadata(path).metadata or {}
    return json.loads(meta.get(b"insar_slide", b"{}"))


def load_explanations(path: Path) -> tuple[dict, dict, float]:
    """(entries per product, a note per product, match distance in m)."""
    if not path.exists():
        return {}, {}, 300.0
    data = yaml.safe_load(path.read_text()) or {}
    entries = {k: v for k, v in data.items() if k not in ("match_m", "product_notes")}
    return entries, data.get("product_notes") or {}, float(data.get("match_m", 300.0))


def explain(entries: list[dict], lon: float, lat: float, match_m: float) -> dict:
    best, best_d = None, math.inf
    for e in entries or []:
        d = GEOD.inv(lon, lat, e["centre"][0], e["centre"][1])[2]
        if d < best_d:
            best, best_d = e, d
    if best is None or best_d > match_m:
        return {"verdict": "not yet explained", "kind": "", "why": "", "matched_m": None}
    return {"verdict": best["verdict"], "kind": best["kind"], "why": " ".join(str(best["why"]).split()),
            "matched_m": round(best_d)}


def detections(inv: gpd.GeoDataFrame, crs: str, entries: list[dict], match_m: float) -> list[dict]:
    rows = []
    b = inv.geometry.bounds  # the centre of the box (of the dissolved boxes' bounds)
    cen = gpd.GeoSeries(gpd.points_from_xy((b.minx + b.maxx) / 2, (b.miny + b.maxy) / 2), crs=inv.crs)
    cen_ll = cen.to_crs("EPSG:4326") if not _geographic(crs) else cen
    for i, r in enumerate(inv.itertuples()):
        lon, lat = float(cen_ll.iloc[i].x), float(cen_ll.iloc[i].y)
        w, h = box_size_m(r.geometry.bounds, crs)
        rows.append({"slide_id": r.slide_id, "score": round(float(r.score), 3), "lon": round(lon, 4),
                     "lat": round(lat, 4), "box_w_m": round(w), "box_h_m": round(h),
                     "area_km2": round(float(r.area_m2) / 1e6, 3), "n_boxes": int(getattr(r, "n_boxes", 1)),
                     "rate_mean": round(float(r.rate_mean), 1), "rate_p95_abs": round(float(r.rate_p95_abs), 1),
                     "track": r.rate_track, **explain(entries, lon, lat, match_m), "_geom": r.geometry})
    return rows


def _png_small(fig, target: Path, colors: int = 96) -> None:
    """Save as a palette PNG (a rate map with noise compresses badly as RGB)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=fig.dpi, format="png")
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def _rate_axes(ax, rate2d: np.ndarray, extent, vmax: float):
    cmap = plt.get_cmap("RdBu").copy().with_extremes(bad="#bdbdbd")
    return ax.imshow(np.ma.masked_invalid(rate2d), cmap=cmap, vmin=-vmax, vmax=vmax, extent=extent,
                     origin="upper", interpolation="nearest")


def _draw_box(ax, geom, color: str, style: str = "-", label: str | None = None) -> None:
    x0, y0, x1, y1 = geom.bounds
    ax.add_patch(mpatches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linestyle=style,
                                    linewidth=1.2))
    if label:
        ax.text(x1, y1, label, color=color, fontsize=9, fontweight="bold", ha="left", va="bottom",
                bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.5, "edgecolor": "none"})


def crop_png(rate, grid, d: dict, target: Path, title: str) -> None:
    x0, y0, x1, y1 = d["_geom"].bounds
    c0, c1 = (x0 - grid.x0) / grid.dx, (x1 - grid.x0) / grid.dx
    r0, r1 = (y1 - grid.y0) / grid.dy, (y0 - grid.y0) / grid.dy
    pad = max(25.0, 1.0 * max(c1 - c0, r1 - r0))
    ca, cb = max(0, int(c0 - pad)), min(grid.width, math.ceil(c1 + pad))
    ra, rb = max(0, int(r0 - pad)), min(grid.height, math.ceil(r1 + pad))
    sub = rate[ra:rb, ca:cb]
    fin = np.abs(sub[np.isfinite(sub)])
    vmax = max(10.0, float(np.percentile(fin, 99))) if fin.size else 10.0
    extent = (grid.x0 + ca * grid.dx, grid.x0 + cb * grid.dx, grid.y0 + rb * grid.dy, grid.y0 + ra * grid.dy)
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=90, constrained_layout=True)
    im = _rate_axes(ax, sub, extent, vmax)
    _draw_box(ax, d["_geom"], "black")
    ax.contour(np.linspace(extent[0], extent[1], sub.shape[1]), np.linspace(extent[3], extent[2], sub.shape[0]),
               np.nan_to_num(np.abs(sub)), levels=[10.0], colors="k", linewidths=0.4, alpha=0.5)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(useOffset=False)
    fig.colorbar(im, ax=ax, shrink=0.85, label="LOS rate (mm/yr, + toward satellite)")
    _png_small(fig, target, colors=160)


def overview_png(rate, grid, label: str, track: str, thr: float, ops: list[dict], ctx: list[dict],
                 target: Path) -> None:
    fin = np.abs(rate[np.isfinite(rate)])
    vmax = max(10.0, float(np.percentile(fin, 99)))
    extent = (grid.x0, grid.x0 + grid.width * grid.dx, grid.y0 + grid.height * grid.dy, grid.y0)
    stretch = 1.0  # y per x on the page: metres, not degrees
    if _geographic(grid.crs):
        stretch = 1 / math.cos(math.radians(grid.y0 + grid.dy * grid.height / 2))
    h_over_w = grid.height * abs(grid.dy) * stretch / (grid.width * grid.dx)
    fig, ax = plt.subplots(figsize=(6.4, min(5.6 * h_over_w, 7.0) + 0.7), dpi=80, constrained_layout=True)
    im = _rate_axes(ax, rate, extent, vmax)
    ax.set_aspect(stretch)
    for i, d in enumerate(ops, 1):
        _draw_box(ax, d["_geom"], "black", "-", str(i))
    for j, d in enumerate(ctx):
        _draw_box(ax, d["_geom"], "#008a00", "--", chr(ord("a") + j))
    ax.set_title(f"{label}, {track}\n{len(ops)} at score >= {thr:g} (solid, numbered), "
                 f"{len(ctx)} more at >= 0.5 (dashed, lettered)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(useOffset=False)
    fig.colorbar(im, ax=ax, shrink=0.8, label="LOS rate (mm/yr, + toward satellite)")
    _png_small(fig, target, colors=160)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="out/real", help="the workflow's output folder")
    ap.add_argument("--explained", default=str(ROOT / "benchmarks/results/real_data_explained.yaml"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args()
    base, res = Path(args.dir), Path(args.results).resolve()  # a relative --results works too
    (base / "crops").mkdir(parents=True, exist_ok=True)
    (res / "real_data").mkdir(parents=True, exist_ok=True)
    expl, notes, match_m = load_explanations(Path(args.explained))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    out: dict = {"date": dt.date.today().isoformat(), "commit": commit, "products": []}
    for name, info in PRODUCTS.items():
        ds = insar_slide.open_basin(base / f"{name}.zarr")
        grid = grid_of(ds)
        rates = ds.los_rate.values  # small products: load whole
        valid = np.isfinite(rates).any(axis=0)
        tracks = [str(t) for t in ds["track"].values]
        op_path, p50_path = base / f"{name}.op.parquet", base / f"{name}.p50.parquet"
        meta = run_meta(op_path)
        op, p50 = gpd.read_parquet(op_path), gpd.read_parquet(p50_path)
        ops = detections(op, grid.crs, expl.get(name, []), match_m)
        ctx_inv = p50[~p50.slide_id.isin(set(op.slide_id))]
        ctx = detections(ctx_inv, grid.crs, expl.get(name, []), match_m)
        for d in ctx:  # a 0.5 slide that swallowed an operating one (dissolved boxes)
            inside = [o["slide_id"] for o in ops if d["_geom"].intersects(o["_geom"])]
            d["contains"] = inside
        area = area_with_data_km2(grid, valid)
        psx, psy = pixel_size_m(grid)
        row = {"name": name, **info, "tracks": tracks, "pixel_m": [round(psx, 1), round(psy, 1)],
               "grid": [grid.height, grid.width], "area_km2": round(area, 1),
               "model": Path(meta.get("model", "")).name, "model_hash": meta.get("model_hash", "")[:12],
               "score_threshold": meta.get("score_threshold"), "window": meta.get("config", {}).get("window"),
               "scales": sorted(int(k[1:]) for k in meta.get("windows_by_scale", {"x1": {}})),
               "resample": meta.get("resample", [1.0, 1.0]),
               "n_detections": len(ops), "per_1000_km2": round(1000 * len(ops) / area, 1) if area else None,
               "n_false_alarms": sum(d["verdict"] == "false alarm" for d in ops),
               "detections": ops, "below_threshold": ctx,
               "note": " ".join(str(notes.get(name, "")).split())}
        tr = tracks[0]
        r2d = rates[0]
        for k, d in enumerate(ops, 1):
            d["crop"] = str(base / "crops" / f"{name}_{k}_{d['slide_id']}.png")
            crop_png(r2d, grid, d, Path(d["crop"]),
                     f"{info['label']} #{k} {d['slide_id']} score {d['score']:.2f}\n"
                     f"mean {d['rate_mean']:+.1f}, p95 |rate| {d['rate_p95_abs']:.1f} mm/yr, "
                     f"{d['box_w_m']} x {d['box_h_m']} m")
        for j, d in enumerate(ctx):
            lab = chr(ord("a") + j)
            d["crop"] = str(base / "crops" / f"{name}_{lab}_{d['slide_id']}.png")
            crop_png(r2d, grid, d, Path(d["crop"]),
                     f"{info['label']} ({lab}) {d['slide_id']} score {d['score']:.2f} (below operating)\n"
                     f"mean {d['rate_mean']:+.1f}, p95 |rate| {d['rate_p95_abs']:.1f} mm/yr, "
                     f"{d['box_w_m']} x {d['box_h_m']} m")
        row["png"] = str((res / "real_data" / f"{name}.png").relative_to(ROOT)) if res.resolve().is_relative_to(ROOT) \
            else str(res / "real_data" / f"{name}.png")
        overview_png(r2d, grid, info["label"], tr, row["score_threshold"], ops, ctx, res / "real_data" / f"{name}.png")
        out["products"].append(row)
        print(f"{name}: {len(ops)} detections at {row['score_threshold']}, {len(ctx)} more at >= 0.5; "
              f"{area:.1f} km² with data")
    for p in out["products"]:
        for d in p["detections"] + p["below_threshold"]:
            d.pop("_geom")
    (res / "real_data.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    (res / "real_data.md").write_text(markdown(out))
    print(f"wrote {res / 'real_data.md'}, {res / 'real_data.json'}")


def _fmt_det(i, d: dict) -> str:
    expl = f"**{d['verdict']}**" + (f": {d['kind']}" if d["kind"] else "")
    return (f"| {i} | `{d['slide_id']}` | {d['score']:.3f} | {d['lon']:.4f}, {d['lat']:.4f} | "
            f"{d['box_w_m']} × {d['box_h_m']} | {d['rate_mean']:+.1f} / {d['rate_p95_abs']:.1f} | {expl} |")


def markdown(out: dict) -> str:
    p0 = out["products"][0]
    lines = [
        "# Real products: what the detector reports",
        "",
        f"`workflows/real_data.sh` ({out['date']}, code at {out['commit']}), model `{p0['model']}` (sha256 {p0['model_hash']}…), "
        f"operating threshold {p0['score_threshold']}; one window covering each product (halo 64 px, clipped) at "
        "each scale of the run that fits it (" + ", ".join(f"{p['name']} {p['scales']}" for p in out["products"]) + ")"
        + (", windows resampled to the model's training pixel (`inference.match_pixel`; rows × cols: "
           + ", ".join(f"{p['name']} {p['resample'][0]:.3g} × {p['resample'][1]:.3g}" for p in out["products"]) + ")"
           if any(p["resample"] != [1.0, 1.0] for p in out["products"]) else ", each at its own pixel")
        + ". "
        "None of these products has landslide labels: each detection was looked at (crop PNGs under "
        "`out/real/crops/`) and explained in `benchmarks/results/real_data_explained.yaml`. A moving slope "
        "(e.g. a mine wall or embankment) is a legitimate detection; volcanic uplift, a subsidence bowl on flat "
        "ground, atmosphere, noise or unwrapping errors are false alarms.",
        "",
        "| product | sensor / track | pixel (m) | area with data (km²) | detections | per 1,000 km² | false alarms | at ≥ 0.5 in addition |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in out["products"]:
        lines.append(f"| {p['label']} | {p['sensor']}, {', '.join(p['tracks'])} | {p['pixel_m'][0]:g} × {p['pixel_m'][1]:g} "
                     f"| {p['area_km2']:.1f} | {p['n_detections']} | {p['per_1000_km2']:.1f} | {p['n_false_alarms']} "
                     f"| {len(p['below_threshold'])} |")
    for p in out["products"]:
        lines += ["", f"## {p['label']}", "",
                  f"`{p['source']}`; grid {p['grid'][0]} × {p['grid'][1]} px, window {p['window']} px; "
                  f"overview: [{Path(p['png']).name}](real_data/{Path(p['png']).name}) (solid boxes numbered as below, "
                  "dashed lettered).", ""]
        head = ["| # | slide_id | score | centre (lon, lat) | box (m) | rate mean / p95 \\|rate\\| (mm/yr) | explanation |",
                "| --- | --- | ---: | --- | --- | --- | --- |"]
        if p["detections"]:
            lines += [f"At the operating threshold ({p['score_threshold']}):", "", *head]
            lines += [_fmt_det(i, d) for i, d in enumerate(p["detections"], 1)]
        else:
            lines += [f"No detection at the operating threshold ({p['score_threshold']})."]
        if p["below_threshold"]:
            lines += ["", "At score ≥ 0.5 only (for context; not counted above):", "", *head]
            for j, d in enumerate(p["below_threshold"]):
                s = _fmt_det(chr(ord("a") + j), d)
                if d.get("contains"):
                    s = s[:-2] + f" (dissolved with {', '.join(d['contains'])}; score = its best box) |"
                lines.append(s)
        notes = [(str(i), d) for i, d in enumerate(p["detections"], 1)] + \
                [(chr(ord("a") + j), d) for j, d in enumerate(p["below_threshold"])]
        if p["note"]:
            lines += ["", p["note"]]
        if notes:
            lines += [""] + [f"- **{k}** ({d['slide_id']}): {d['why'] or 'not yet explained: look at ' + d['crop']}"
                             for k, d in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
