"""The landslide inventory (DESIGN.md contract 2): schema, statistics from the mosaic, I/O.

One row per landslide, GeoParquet in the mosaic's CRS. ``tracks`` is a comma-separated list
of track names. Rate statistics are measured on the mosaic inside each polygon, on the track
with the largest 95th-percentile |rate| there (named in ``rate_track``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr

from .atomic import atomic_path
from .errors import InputError
from .grid import Grid, PixelWindow
from .mosaic import RATE, grid_of

COLUMNS = ["slide_id", "method", "score", "tracks", "area_m2", "rate_mean", "rate_p95_abs",
           "valid_fraction", "rate_track", "run_id", "model_id", "geometry"]
METHODS = ("faster_rcnn", "hotspot", "kmeans", "truth")
META_KEY = b"insar_slide"


def empty_inventory(crs: str) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({c: pd.Series(dtype="float64" if c in ("score", "area_m2", "rate_mean", "rate_p95_abs", "valid_fraction") else "object")
                             for c in COLUMNS if c != "geometry"}, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def finish_schema(gdf: gpd.GeoDataFrame, grid: Grid, order: list[str] | None = None) -> gpd.GeoDataFrame:
    """Area (m², in a local UTM zone for geographic grids), the statistics columns even when
    there are no rows, and the contract's columns first (``order``), extra columns after."""
    if grid.is_geographic() and len(gdf):
        gdf["area_m2"] = gdf.geometry.to_crs(gdf.estimate_utm_crs()).area
    else:
        gdf["area_m2"] = gdf.geometry.area
    for c in ("rate_mean", "rate_p95_abs", "valid_fraction"):
        if c not in gdf:
            gdf[c] = pd.Series(dtype=float)
    if "rate_track" not in gdf:
        gdf["rate_track"] = pd.Series(dtype=object)
    first = [c for c in (order or COLUMNS) if c != "geometry"]
    extra = [c for c in gdf.columns if c not in first and c != "geometry"]
    return gpd.GeoDataFrame(gdf[[*first, *extra, "geometry"]], geometry="geometry", crs=grid.crs)


def polygon_rate_stats(ds: xr.Dataset, geoms: gpd.GeoSeries, *, max_block_px: int = 4096 * 4096) -> pd.DataFrame:
    """Per polygon: rate_mean, rate_p95_abs, valid_fraction, rate_track, per-track valid fraction.

    ``geoms`` must be in the mosaic CRS. Pixels whose centre is inside the polygon count. The
    mosaic is read once for the union window of all ``geoms`` when that window is at most
    ``max_block_px`` pixels; otherwise the polygons are binned by centroid into tiles of a
    quarter of that area and each tile's union window is read once (a polygon too large for
    that is read on its own), so memory stays bounded and reads stay few at any mosaic size.
    """
    grid = grid_of(ds)
    tracks = [str(t) for t in ds["track"].values]
    if len(geoms) == 0:
        return pd.DataFrame([])
    geoms = gpd.GeoSeries(list(geoms), crs=getattr(geoms, "crs", None))
    if _union_px(grid, geoms) <= max_block_px:
        return pd.DataFrame(_stats_group(ds, grid, tracks, list(geoms)))
    side = max(1, int(np.sqrt(max_block_px)) // 2)
    cx, cy = shapely.get_coordinates(geoms.centroid).T
    col = np.floor((cx - grid.x0) / grid.dx).astype(np.int64) // side
    row = np.floor((cy - grid.y0) / grid.dy).astype(np.int64) // side
    key = row * (grid.width // side + 2) + col
    rows: list[dict[str, Any] | None] = [None] * len(geoms)
    for k in np.unique(key):
        idx = np.flatnonzero(key == k)
        group = list(geoms.iloc[idx])
        if _union_px(grid, geoms.iloc[idx]) <= max_block_px:
            stats = _stats_group(ds, grid, tracks, group)
        else:
            stats = [r for g in group for r in _stats_group(ds, grid, tracks, [g])]
        for i, r in zip(idx, stats, strict=True):
            rows[i] = r
    return pd.DataFrame(rows)


def _union_px(grid: Grid, geoms: gpd.GeoSeries) -> int:
    win = grid.window_of_bounds(*geoms.total_bounds)
    return win.rows * win.cols


def _stats_group(ds: xr.Dataset, grid: Grid, tracks: list[str], geoms: list[Any]) -> list[dict[str, Any]]:
    """Statistics of polygons read from one window: the union of their bounds."""
    xmin, ymin, xmax, ymax = shapely.total_bounds(geoms)
    union = grid.window_of_bounds(xmin, ymin, xmax, ymax)
    if union.rows and union.cols:
        rs, cs = union.slices()
        block = np.asarray(ds[RATE].isel(y=rs, x=cs).values)
    else:
        block = np.zeros((len(tracks), 0, 0))
    return [_stats_one(block, union, grid, tracks, g) for g in geoms]


def _stats_one(block: np.ndarray, block_win: PixelWindow, grid: Grid, tracks: list[str], geom: Any) -> dict[str, Any]:
    """Statistics of one polygon from ``block`` (track, rows, cols), the mosaic over ``block_win``."""
    win = grid.window_of_bounds(*geom.bounds)
    nan_row: dict[str, Any] = {"rate_mean": np.nan, "rate_p95_abs": np.nan, "valid_fraction": 0.0, "rate_track": ""}
    for t in tracks:
        nan_row[f"valid_fraction_{t}"] = 0.0
    if win.rows == 0 or win.cols == 0:
        return nan_row
    local = win.shift(-block_win.row0, -block_win.col0)
    sub = block[:, local.row0:local.row1, local.col0:local.col1]
    xs = grid.x0 + (np.arange(win.col0, win.col1) + 0.5) * grid.dx
    ys = grid.y0 + (np.arange(win.row0, win.row1) + 0.5) * grid.dy
    shapely.prepare(geom)
    inside = shapely.contains_xy(geom, xs[None, :], ys[:, None])  # pixel centres inside
    if not inside.any():  # a polygon smaller than a pixel: take the pixel under its centroid
        c = geom.centroid
        inside = np.zeros((win.rows, win.cols), bool)
        inside[min(win.rows - 1, max(0, int((c.y - grid.y0) / grid.dy) - win.row0)),
               min(win.cols - 1, max(0, int((c.x - grid.x0) / grid.dx) - win.col0))] = True
    n = int(inside.sum())
    best, best_p95 = -1, -1.0
    out = dict(nan_row)
    for k, t in enumerate(tracks):
        vals = sub[k][inside]
        ok = np.isfinite(vals)
        out[f"valid_fraction_{t}"] = float(ok.sum() / n) if n else 0.0
        if ok.any():
            p95 = float(np.percentile(np.abs(vals[ok]), 95))
            if p95 > best_p95:
                best, best_p95 = k, p95
    if best >= 0:
        vals = sub[best][inside]
        ok = np.isfinite(vals)
        out.update(rate_mean=float(vals[ok].mean()), rate_p95_abs=best_p95, valid_fraction=float(ok.sum() / n),
                   rate_track=tracks[best])
    return out


def write_inventory(gdf: gpd.GeoDataFrame, path: str | Path, *, metadata: Mapping[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Write an inventory as GeoParquet, atomically, with file-level JSON metadata."""
    missing = [c for c in COLUMNS if c not in gdf.columns]
    if missing:
        raise ValueError(f"inventory lacks columns {missing}")
    bad = set(gdf["method"].dropna()) - set(METHODS)
    if bad:
        raise ValueError(f"unknown method(s) {sorted(bad)}; allowed: {METHODS}")
    target = Path(path)
    with atomic_path(target, overwrite=overwrite) as tmp:
        import pyarrow.parquet as pq
        gdf.to_parquet(tmp, index=False)
        table = pq.read_table(tmp)
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps(dict(metadata or {}), default=str).encode()
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    return target


def read_inventory(path: str | Path) -> gpd.GeoDataFrame:
    """Read any inventory: GeoParquet, or any vector file geopandas reads."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such inventory file")
    try:
        if p.suffix.lower() in (".parquet", ".geoparquet"):
            return gpd.read_parquet(p)
        return gpd.read_file(p)
    except Exception as exc:
        raise InputError(f"{p}: cannot read as a vector inventory ({exc})") from exc


def inventory_metadata(path: str | Path) -> dict[str, Any]:
    import pyarrow.parquet as pq
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(META_KEY)
    return json.loads(raw) if raw else {}
