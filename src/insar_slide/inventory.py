"""The landslide inventory (DESIGN.md contract 2): schema, statistics from the mosaic, I/O.

One row per landslide, GeoParquet in the mosaic's CRS. ``tracks`` is a comma-separated list
of track names. Rate statistics are measured on the mosaic inside each polygon (pixel centres
inside), on the track with the largest 95th-percentile |rate| there (named in ``rate_track``).

Per track ``<t>``: ``valid_fraction_<t>`` (share of the polygon's pixels with a value) and
``rate_mean_<t>`` (mean LOS rate of those pixels, mm/yr, NaN if none). From these, the LOS
decomposition of :mod:`insar_slide.decompose` (tracks with ≥ 30 % of the polygon valid and a
known heading and incidence; NaN where it cannot be computed):

- ``v_up_mm_yr``, ``v_east_mm_yr``: vertical (up +) and east-west (east +) rates, least squares
  over two or more tracks; north-south motion is neglected (unseen by near-polar orbits).
- ``v_slope_mm_yr``: speed along the fall line (downslope +), assuming slope-parallel motion
  down the polygon's mean DEM gradient (needs the mosaic's ``dem``); one track is enough.
- ``v_slope_sensitivity``: ``sqrt(Σ_k (d·l_k)²)``, the share of slope-parallel motion the
  tracks see (``|d·l|`` for one); ``v_slope_mm_yr`` is NaN below 0.2.
- ``dem_slope_deg``, ``dem_aspect_deg``: slope and downslope azimuth (clockwise from north)
  of the polygon's mean DEM gradient.

An EGMS L3 mosaic's ``vertical`` / ``east_west`` tracks give ``v_up_mm_yr`` / ``v_east_mm_yr``
directly (and ``v_slope_mm_yr`` from both). With ``min_coherence`` (run, baselines, update pass
the run's) every statistic is measured through the run's quality mask, as detection reads the
rates. An empty inventory has the same columns, with no rows.
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

from .decompose import COLUMNS as DECOMPOSITION
from .decompose import DEM, mosaic_geometry, slide_components, terrain_gradient
from .errors import InputError
from .grid import Grid, PixelWindow
from .mosaic import RATE, grid_of
from .quality import apply_mask
from .storage import filesystem, is_url, staged

COLUMNS = ["slide_id", "method", "score", "tracks", "area_m2", "rate_mean", "rate_p95_abs",
           "valid_fraction", "rate_track", "run_id", "model_id", "geometry"]
METHODS = ("faster_rcnn", "hotspot", "kmeans", "truth")
META_KEY = b"insar_slide"


def empty_inventory(crs: str) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({c: pd.Series(dtype="float64" if c in ("score", "area_m2", "rate_mean", "rate_p95_abs", "valid_fraction") else "object")
                             for c in COLUMNS if c != "geometry"}, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def finish_schema(gdf: gpd.GeoDataFrame, grid: Grid, order: list[str] | None = None, *,
                  tracks: list[str] | None = None) -> gpd.GeoDataFrame:
    """Area (m², in a local UTM zone for geographic grids), the statistics columns even when
    there are no rows (the decomposition's always, the per-track ones for ``tracks``, the
    mosaic's), and the contract's columns first (``order``), extra columns after."""
    if grid.is_geographic() and len(gdf):
        gdf["area_m2"] = gdf.geometry.to_crs(gdf.estimate_utm_crs()).area
    else:
        gdf["area_m2"] = gdf.geometry.area
    for c in ("rate_mean", "rate_p95_abs", "valid_fraction"):
        if c not in gdf:
            gdf[c] = pd.Series(dtype=float)
    if "rate_track" not in gdf:
        gdf["rate_track"] = pd.Series(dtype=object)
    for c in stats_columns(tracks or [])[4:]:
        if c not in gdf:
            gdf[c] = pd.Series(np.nan, index=gdf.index, dtype=float)
    first = [c for c in (order or COLUMNS) if c != "geometry"]
    extra = [c for c in gdf.columns if c not in first and c != "geometry"]
    return gpd.GeoDataFrame(gdf[[*first, *extra, "geometry"]], geometry="geometry", crs=grid.crs)


def stats_columns(tracks: list[str]) -> list[str]:
    """The columns of :func:`polygon_rate_stats`, in order, for a mosaic of ``tracks``."""
    return ["rate_mean", "rate_p95_abs", "valid_fraction", "rate_track", *[f"valid_fraction_{t}" for t in tracks],
            *[f"rate_mean_{t}" for t in tracks], *DECOMPOSITION]


def polygon_rate_stats(ds: xr.Dataset, geoms: gpd.GeoSeries, *, min_coherence: float | None = None,
                       max_block_px: int = 4096 * 4096) -> pd.DataFrame:
    """Per polygon: rate_mean, rate_p95_abs, valid_fraction, rate_track, per track
    ``valid_fraction_<t>`` and ``rate_mean_<t>``, and the decomposition columns (module
    docstring); with no polygons, those columns and no rows.

    ``min_coherence``: the run's quality mask, applied to every rate block read, per track
    (:func:`insar_slide.quality.quality_mask` with the mosaic's ``coherence``/``mask`` when
    present: a dropped pixel is no value, as detection reads it); None: the rates as stored.

    ``geoms`` must be in the mosaic CRS. Pixels whose centre is inside the polygon count. The
    mosaic is read once for the union window of all ``geoms`` when that window is at most
    ``max_block_px`` pixels; otherwise the polygons are binned by centroid into tiles of a
    quarter of that area and each tile's union window is read once. A polygon whose own window
    is larger than that (a basin-sized Gi* region) is streamed tile by tile with exact
    statistics (:func:`_stats_streamed`), so memory stays bounded at any mosaic size.
    """
    grid = grid_of(ds)
    tracks = [str(t) for t in ds["track"].values]
    if len(geoms) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "rate_track" else float) for c in stats_columns(tracks)})
    geoms = gpd.GeoSeries(list(geoms), crs=getattr(geoms, "crs", None))
    if _union_px(grid, geoms) <= max_block_px:
        return _with_components(ds, tracks, pd.DataFrame(_stats_group(ds, grid, tracks, list(geoms), min_coherence)))
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
            stats = _stats_group(ds, grid, tracks, group, min_coherence)
        else:
            stats = [(_stats_group(ds, grid, tracks, [g], min_coherence)[0] if _window_px(grid, g) <= max_block_px
                      else _stats_streamed(ds, grid, tracks, g, max(_MIN_TILE, side), min_coherence)) for g in group]
        for i, r in zip(idx, stats, strict=True):
            rows[i] = r
    return _with_components(ds, tracks, pd.DataFrame(rows))


def _with_components(ds: xr.Dataset, tracks: list[str], df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the decomposition columns; the mean DEM gradient columns dropped."""
    los, kinds = mosaic_geometry(ds)
    comp = slide_components(df, tracks, los, kinds=kinds)
    return pd.concat([df.drop(columns=["dem_ge", "dem_gn"]), comp], axis=1)


def _dem_gradient(ds: xr.Dataset, grid: Grid, win: PixelWindow) -> tuple[np.ndarray, np.ndarray] | None:
    """The DEM gradient (east, north; m/m) over ``win``, read with a one-pixel halo so that it
    equals the whole grid's (:func:`insar_slide.decompose.terrain_gradient`); None without a DEM."""
    if DEM not in ds or win.rows == 0 or win.cols == 0:
        return None
    r0, c0 = max(0, win.row0 - 1), max(0, win.col0 - 1)
    r1, c1 = min(grid.height, win.row1 + 1), min(grid.width, win.col1 + 1)
    z = np.asarray(ds[DEM].isel(y=slice(r0, r1), x=slice(c0, c1)).values, dtype=np.float32)  # float32: a block's memory
    if min(z.shape) < 2:
        return None
    ge, gn = terrain_gradient(z, grid, row0=r0)
    crop = (slice(win.row0 - r0, win.row0 - r0 + win.rows), slice(win.col0 - c0, win.col0 - c0 + win.cols))
    return np.asarray(ge)[crop], np.asarray(gn)[crop]


def _union_px(grid: Grid, geoms: gpd.GeoSeries) -> int:
    win = grid.window_of_bounds(*geoms.total_bounds)
    return win.rows * win.cols


def _window_px(grid: Grid, geom: Any) -> int:
    win = grid.window_of_bounds(*geom.bounds)
    return win.rows * win.cols


def _empty_stats(tracks: list[str]) -> dict[str, Any]:
    return {"rate_mean": np.nan, "rate_p95_abs": np.nan, "valid_fraction": 0.0, "rate_track": "",
            **{f"valid_fraction_{t}": 0.0 for t in tracks}, **{f"rate_mean_{t}": np.nan for t in tracks},
            "dem_ge": np.nan, "dem_gn": np.nan}


def _read_rates(ds: xr.Dataset, win: PixelWindow, min_coherence: float | None, dtype: Any = None) -> np.ndarray:
    """``los_rate`` (track, rows, cols) over ``win`` (a copy, as ``dtype``), through the quality
    mask: the ``coherence`` and ``mask`` layers over the same window read once each, when present."""
    rs, cs = win.slices()
    block = np.array(ds[RATE].isel(y=rs, x=cs).values, dtype=dtype)
    if min_coherence is not None:
        layers = {n: np.asarray(ds[n].isel(y=rs, x=cs).values) for n in ("coherence", "mask")
                  if n in ds and ds[n].dims == ("track", "y", "x")}
        block = apply_mask(block, layers.get("coherence"), layers.get("mask"), min_coherence)
    return block


def _stats_group(ds: xr.Dataset, grid: Grid, tracks: list[str], geoms: list[Any],
                 min_coherence: float | None = None) -> list[dict[str, Any]]:
    """Statistics of polygons read from one window: the union of their bounds."""
    xmin, ymin, xmax, ymax = shapely.total_bounds(geoms)
    union = grid.window_of_bounds(xmin, ymin, xmax, ymax)
    if union.rows and union.cols:
        block = _read_rates(ds, union, min_coherence)
    else:
        block = np.zeros((len(tracks), 0, 0))
    grad = _dem_gradient(ds, grid, union)
    return [_stats_one(block, union, grid, tracks, g, grad) for g in geoms]


def _stats_one(block: np.ndarray, block_win: PixelWindow, grid: Grid, tracks: list[str], geom: Any,
               grad: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Statistics of one polygon from ``block`` (track, rows, cols), the mosaic over
    ``block_win``, and ``grad`` (the DEM gradient (east, north) over ``block_win``, or None)."""
    win = grid.window_of_bounds(*geom.bounds)
    nan_row = _empty_stats(tracks)
    if win.rows == 0 or win.cols == 0:
        return nan_row
    local = win.shift(-block_win.row0, -block_win.col0)
    sub = block[:, local.row0:local.row1, local.col0:local.col1]
    inside = grid.centres_inside(geom, win, at_least_one=True)  # a polygon under a pixel: the pixel under its centroid
    n = int(inside.sum())
    best, best_p95 = -1, -1.0
    out = dict(nan_row)
    for k, t in enumerate(tracks):
        vals = sub[k][inside]
        ok = np.isfinite(vals)
        out[f"valid_fraction_{t}"] = float(ok.sum() / n) if n else 0.0
        if ok.any():
            out[f"rate_mean_{t}"] = float(vals[ok].mean(dtype=np.float64))
            p95 = float(np.percentile(np.abs(vals[ok]), 95))
            if p95 > best_p95:
                best, best_p95 = k, p95
    if best >= 0:
        vals = sub[best][inside]
        ok = np.isfinite(vals)
        out.update(rate_mean=float(vals[ok].mean()), rate_p95_abs=best_p95, valid_fraction=float(ok.sum() / n),
                   rate_track=tracks[best])
    if grad is not None:
        ge, gn = (g[local.row0:local.row1, local.col0:local.col1][inside] for g in grad)
        good = np.isfinite(ge) & np.isfinite(gn)
        if good.any():
            out.update(dem_ge=float(ge[good].mean(dtype=np.float64)), dem_gn=float(gn[good].mean(dtype=np.float64)))
    return out


_MIN_TILE = 64


def _tiles(grid: Grid, geom: Any, win: PixelWindow, side: int) -> list[tuple[PixelWindow, Any]]:
    """``geom`` cut into windows of at most ``side``² px (halving the longer axis; each half
    clipped from its parent, so the cost is the polygon's size times the depth, not the tile count)."""
    if geom.is_empty or win.rows == 0 or win.cols == 0:
        return []
    if win.rows <= side and win.cols <= side:
        return [(win, geom)]
    if win.rows >= win.cols:
        cut = win.rows // 2
        halves = [PixelWindow(win.row0, win.col0, cut, win.cols), PixelWindow(win.row0 + cut, win.col0, win.rows - cut, win.cols)]
    else:
        cut = win.cols // 2
        halves = [PixelWindow(win.row0, win.col0, win.rows, cut), PixelWindow(win.row0, win.col0 + cut, win.rows, win.cols - cut)]
    out = []
    for h in halves:
        b = grid.window_grid(h).bounds
        out += _tiles(grid, shapely.clip_by_rect(geom, *b), h, side)
    return out


def _stats_streamed(ds: xr.Dataset, grid: Grid, tracks: list[str], geom: Any, side: int,
                    min_coherence: float | None = None) -> dict[str, Any]:
    """:func:`_stats_one` for a polygon too large to read at once, tile by tile, same numbers.

    Pass 1 keeps per track the count, sum and a histogram of |rate| over the top 16 bits of
    its float32 pattern (monotonic in the value); pass 2 rereads the tiles and keeps only the
    values in the one or two histogram bins that hold the 95th-percentile ranks, so the
    percentile is exact (numpy's linear interpolation) in memory bounded by a tile.
    """
    win = grid.window_of_bounds(*geom.bounds)
    parts = _tiles(grid, geom, win, side)
    nt = len(tracks)
    count = np.zeros(nt, np.int64)
    total = np.zeros(nt, np.float64)
    hist = np.zeros((nt, 1 << 16), np.int64)
    n_inside = 0
    grad_sum = np.zeros(3)  # Σ dz/deast, Σ dz/dnorth, count

    def inside_values(tile: PixelWindow, part: Any, with_grad: bool = False) -> tuple[np.ndarray, int]:
        block = _read_rates(ds, tile, min_coherence, np.float32)
        inside = grid.centres_inside(part, tile)
        grad = _dem_gradient(ds, grid, tile) if with_grad else None
        if grad is not None:
            ge, gn = grad[0][inside], grad[1][inside]
            good = np.isfinite(ge) & np.isfinite(gn)
            grad_sum[:] += (ge[good].sum(dtype=np.float64), gn[good].sum(dtype=np.float64), good.sum())
        return block[:, inside], int(inside.sum())

    for tile, part in parts:
        vals, n = inside_values(tile, part, with_grad=True)
        n_inside += n
        for k in range(nt):
            v = vals[k][np.isfinite(vals[k])]
            count[k] += len(v)
            total[k] += float(v.sum(dtype=np.float64))
            hist[k] += np.bincount((np.abs(v).view(np.uint32) >> 16).astype(np.int64), minlength=1 << 16)
    out = _empty_stats(tracks)
    for k, t in enumerate(tracks):
        out[f"valid_fraction_{t}"] = float(count[k] / n_inside) if n_inside else 0.0
        if count[k]:
            out[f"rate_mean_{t}"] = float(total[k] / count[k])
    if grad_sum[2]:
        out.update(dem_ge=float(grad_sum[0] / grad_sum[2]), dem_gn=float(grad_sum[1] / grad_sum[2]))
    # the ranks np.percentile interpolates between, and the histogram bins that hold them
    h = 0.95 * (count - 1)
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    cum = np.cumsum(hist, axis=1)
    bins = [{int(np.searchsorted(cum[k], r, side="right")) for r in (lo[k], hi[k])} if count[k] else set() for k in range(nt)]
    kept: list[list[np.ndarray]] = [[] for _ in tracks]
    for tile, part in parts:
        vals, _ = inside_values(tile, part)
        for k in range(nt):
            if bins[k]:
                a = np.abs(vals[k][np.isfinite(vals[k])])
                kept[k].append(a[np.isin((a.view(np.uint32) >> 16).astype(np.int64), list(bins[k]))])
    best, best_p95 = -1, -1.0
    for k in range(nt):
        if not count[k]:
            continue
        first = min(bins[k])
        below = int(cum[k][first - 1]) if first else 0
        v = np.sort(np.concatenate(kept[k]))
        a, b = float(v[lo[k] - below]), float(v[hi[k] - below])
        p95 = a + (b - a) * float(h[k] - lo[k])
        if p95 > best_p95:
            best, best_p95 = k, p95
    if best >= 0:
        out.update(rate_mean=float(total[best] / count[best]), rate_p95_abs=best_p95,
                   valid_fraction=float(count[best] / n_inside), rate_track=tracks[best])
    return out


def write_inventory(gdf: gpd.GeoDataFrame, path: str | Path, *, metadata: Mapping[str, Any] | None = None,
                    overwrite: bool = False) -> str | Path:
    """Write an inventory as GeoParquet, atomically, with file-level JSON metadata (``path``
    may be a URL: :func:`insar_slide.storage.staged`)."""
    missing = [c for c in COLUMNS if c not in gdf.columns]
    if missing:
        raise ValueError(f"inventory lacks columns {missing}")
    bad = set(gdf["method"].dropna()) - set(METHODS)
    if bad:
        raise ValueError(f"unknown method(s) {sorted(bad)}; allowed: {METHODS}")
    target = path if is_url(path) else Path(path)
    with staged(target, overwrite=overwrite) as tmp:
        import pyarrow.parquet as pq
        gdf.to_parquet(tmp, index=False)
        table = pq.read_table(tmp)
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps(dict(metadata or {}), default=str).encode()
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    return target


def read_inventory(path: str | Path) -> gpd.GeoDataFrame:
    """Read any inventory: GeoParquet, or any vector file geopandas reads."""
    if is_url(path):
        try:
            return gpd.read_parquet(str(path))
        except Exception as exc:
            raise InputError(f"{path}: cannot read as a GeoParquet inventory ({exc})") from exc
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
    if is_url(path):
        fs, inner = filesystem(path)
        with fs.open(inner, "rb") as f:
            meta = pq.read_schema(f).metadata or {}
    else:
        meta = pq.read_schema(path).metadata or {}
    raw = meta.get(META_KEY)
    return json.loads(raw) if raw else {}
