"""Per-slide displacement time series (issue 20 item 4; DESIGN.md contract 2).

:func:`slide_timeseries` takes an inventory and time-series products (opened with
:func:`insar_slide.timeseries_readers.open_series`) and returns one row per
(``slide_id``, ``date``, ``track``):

| column | meaning |
| --- | --- |
| ``displacement_mm`` | mean LOS displacement of the pixels (centres) / points inside the slide polygon, mm, + toward the satellite (EGMS L3: + up or + east, :func:`direction_of`) |
| ``fastest_mm`` | mean of the fastest tenth (:data:`FASTEST_SHARE`) of those pixels / points, chosen by their |linear velocity| over the **first half** of the dates and reported over all of them: the moving part of an outline drawn larger than it (below) |
| ``reference_mm`` | mean over the stable ground around it: a ring from :data:`RING_GAP_M` to ``RING_GAP_M + RING_WIDTH_M`` beyond the outline, minus every slide of the inventory (grown by the gap) |
| ``relative_mm`` | ``displacement_mm − reference_mm``: the slide's own motion; NaN where the ring holds fewer than ``min_reference`` measurements that date |
| ``n_inside``, ``n_reference`` | pixels / points with a value that date, inside and in the ring |
| ``product``, ``source`` | the product kind (mintpy, licsbas, egms_l2a, stamps, …) and its file |

The ring: the gap (60 m, two 30 m pixels) keeps the slide's own margin — an outline drawn from
a rate map is uncertain by a pixel or two — out of its reference; 500 m of width holds over a
thousand 30 m pixels around even a 150 m slide (tens of PS points at typical densities) while
staying where the atmospheric residual is still close to the slide's (the √semivariance of real
rate maps grows from 0.8–1.9 mm/yr at 0.5 km to 2.1–2.8 mm/yr at 2 km, DESIGN.md).

The fastest tenth is chosen on the first half of the dates only. Chosen on the series it then
reports, it was biased: the pixels whose noise happened to make them look fast were picked, so
it read faster than the ground moved (a uniform −20 mm/yr with 5 mm of noise per pixel and
date read −21 mm/yr over its last third; tests/test_timeseries.py). Noise on the second half is
independent of the choice, so the recent fits of ``fastest_*`` (:func:`summarize`: the last
third by default) are free of the selection bias as long as the recent span lies in the second
half; their whole-series velocity and total still carry the part of it the first half brings.
|velocity| picks either sense: where parts of an outline move in opposite senses, the tenth may
be the part moving toward the satellite.

When several products of one track cover a slide, the one with the most measurements inside it
is kept, so that (slide, date, track) is a key. :func:`summarize` fits each series: the mean
velocity over the whole series (linear) and, over its recent part (:func:`fit_recent`), the
velocity and the acceleration (:mod:`insar_slide.timeseries_fit`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from .errors import InputError
from .storage import is_url, staged, with_suffix
from .timeseries_fit import RECENT_FRACTION, summarize

log = logging.getLogger(__name__)

RING_GAP_M = 60.0
RING_WIDTH_M = 500.0
MIN_REFERENCE = 5
MAX_BLOCK = 2**25  # float32 values per raster read (128 MB): longer series are read in date blocks

FASTEST_SHARE = 0.1

TABLE_COLUMNS = ["slide_id", "track", "date", "displacement_mm", "fastest_mm", "reference_mm", "relative_mm", "n_inside",
                 "n_reference", "product", "source"]


def slide_timeseries(inventory: gpd.GeoDataFrame, sources: Sequence[Any], *, gap_m: float = RING_GAP_M,
                     width_m: float = RING_WIDTH_M, min_reference: int = MIN_REFERENCE,
                     progress: Callable[[str, int, int], None] | None = None) -> pd.DataFrame:
    """One row per (slide_id, date, track) (module docstring), sorted by slide, track, date.

    ``inventory``: polygons in any projected or geographic CRS (the mosaic's); ``sources``:
    :class:`~insar_slide.timeseries_readers.SeriesRaster` or
    :class:`~insar_slide.points.PointTable` objects with a time series, in any CRS (each is
    met in its own). ``gap_m``, ``width_m``: the reference ring, in metres."""
    if inventory.crs is None:
        raise InputError("the inventory has no CRS; set it (gdf.set_crs(...)) or write it with one")
    ids = slide_ids(inventory)
    metric = inventory.crs if inventory.crs.is_projected else inventory.estimate_utm_crs()
    polys = inventory.geometry.to_crs(metric).reset_index(drop=True)
    outer, rings = _rings(polys, gap_m=gap_m, width_m=width_m)
    frames: list[pd.DataFrame] = []
    for k, src in enumerate(sources):
        crs = str(src.crs)
        p_src, o_src, r_src = (gpd.GeoSeries(g, crs=metric).to_crs(crs).to_numpy() for g in (polys, outer, rings))
        if hasattr(src, "grid"):
            frames += _raster_frames(src, ids, p_src, o_src, r_src, min_reference=min_reference)
        else:
            frames += _point_frames(src, ids, p_src, o_src, r_src, min_reference=min_reference)
        if progress is not None:
            progress("timeseries", k + 1, len(sources))
    if not frames:
        return _empty_table()
    table = pd.concat(frames, ignore_index=True)
    # several products of one track over one slide: keep the one with most measurements inside
    used = table.groupby(["slide_id", "track", "source"], sort=False)["n_inside"].sum().reset_index()
    best = used.sort_values("n_inside", ascending=False, kind="stable").drop_duplicates(["slide_id", "track"])
    table = table.merge(best[["slide_id", "track", "source"]], on=["slide_id", "track", "source"])
    return table.sort_values(["slide_id", "track", "date"], kind="stable").reset_index(drop=True)[TABLE_COLUMNS]


def slide_ids(inventory: gpd.GeoDataFrame) -> np.ndarray:
    """The inventory's ``slide_id`` (as strings), else its ``id`` column, else 1, 2, 3 …"""
    for col in ("slide_id", "id"):
        if col in inventory.columns:
            return inventory[col].astype(str).to_numpy()
    return np.array([str(i + 1) for i in range(len(inventory))], dtype=object)


def _rings(polys: gpd.GeoSeries, *, gap_m: float, width_m: float) -> tuple[gpd.GeoSeries, gpd.GeoSeries]:
    """(outer limit, ring) per polygon, in metres: the ring is the polygon grown by
    ``gap_m + width_m`` minus every polygon grown by ``gap_m``."""
    geoms = polys.to_numpy()
    grown = shapely.buffer(geoms, gap_m)
    outer = shapely.buffer(geoms, gap_m + width_m)
    tree = shapely.STRtree(grown)
    rings = []
    for o in outer:
        near = tree.query(o, predicate="intersects")
        rings.append(shapely.difference(o, shapely.union_all(grown[near])) if len(near) else o)
    return gpd.GeoSeries(outer, crs=polys.crs), gpd.GeoSeries(rings, crs=polys.crs)


def _frame(sid: str, src: Any, inside: np.ndarray, ring: tuple[np.ndarray, np.ndarray], *, min_reference: int) -> pd.DataFrame:
    """The rows of one slide from one product: ``inside`` (m, k) values of its k pixels/points,
    ``ring`` the (mean, count) per date of its reference ring."""
    mean_in, n_in = _mean_count(inside)
    mean_ref, n_ref = ring
    rel = np.where(n_ref >= min_reference, mean_in - mean_ref, np.nan)
    return pd.DataFrame({
        "slide_id": sid, "track": src.track.name, "date": pd.to_datetime(src.dates.astype("datetime64[D]")),
        "displacement_mm": mean_in, "fastest_mm": _fastest(inside, src.dates),
        "reference_mm": np.where(n_ref > 0, mean_ref, np.nan), "relative_mm": rel,
        "n_inside": n_in.astype(np.int32), "n_reference": n_ref.astype(np.int32),
        "product": src.product, "source": str(src.path)})


def _mean_count(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, count) over axis 1 of (m, k) values, ignoring NaN (mean NaN where count is 0)."""
    ok = np.isfinite(vals)
    n = ok.sum(axis=1)
    total = np.where(ok, vals, 0.0).sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan), n


def _fastest(vals: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """Per date, the mean of the :data:`FASTEST_SHARE` of the (m, k) columns (pixels/points)
    with the largest |linear velocity| over the first half of the dates (at least one; columns
    with fewer than 3 values there are left out; a series of fewer than 6 dates is chosen on
    all of them). Chosen on the first half, so that the noise that made them look fast there
    does not bias what the second half says (module docstring)."""
    m = vals.shape[0]
    half = m if m < 2 * 3 else (m + 1) // 2
    first = vals[:half]
    ok = np.isfinite(first)
    n = ok.sum(axis=0)
    usable = n >= 3
    if not usable.any():
        return np.full(m, np.nan)
    t = (np.asarray(dates, "datetime64[D]")[:half] - np.asarray(dates, "datetime64[D]")[0]).astype(float)[:, None]
    y = np.where(ok, first, 0.0)
    nn = np.maximum(n, 1)
    tm = np.where(ok, t, 0.0).sum(axis=0) / nn
    ym = y.sum(axis=0) / nn
    dt_ = np.where(ok, t - tm, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (dt_ * (y - ym)).sum(axis=0) / (dt_ * dt_).sum(axis=0)
    speed = np.where(usable & np.isfinite(slope), np.abs(slope), -1.0)
    take = max(1, int(np.ceil(FASTEST_SHARE * int(usable.sum()))))
    idx = np.argsort(-speed, kind="stable")[:take]
    return _mean_count(vals[:, idx])[0]


def _raster_frames(src: Any, ids: np.ndarray, polys: np.ndarray, outer: np.ndarray, rings: np.ndarray,
                   *, min_reference: int) -> list[pd.DataFrame]:
    grid = src.grid
    box = shapely.box(*grid.bounds)
    m = len(src.dates)
    out = []
    for sid, poly, lim, ring in zip(ids, polys, outer, rings, strict=True):
        if poly is None or poly.is_empty or not shapely.intersects(box, poly):
            continue
        win = grid.window_of_bounds(*lim.bounds)
        if win.rows == 0 or win.cols == 0:
            continue
        inside = grid.centres_inside(poly, win, at_least_one=True)  # a polygon under a pixel: the one under its centroid
        in_ring = grid.centres_inside(ring, win) & ~inside
        step = max(1, MAX_BLOCK // max(1, win.rows * win.cols))
        # read in blocks of dates: MintPy's all-zero (masked) pixels are found in a first pass
        empty = src.empty_pixels(win, block=step) if step < m else None
        parts_in, parts_ref = [], []
        for d0 in range(0, m, step):
            block = src.read(win, slice(d0, min(m, d0 + step)), empty=empty) if step < m else src.read(win)
            parts_in.append(block[:, inside])
            parts_ref.append(_mean_count(block[:, in_ring]))
        vals = np.concatenate(parts_in, axis=0)
        if not np.isfinite(vals).any():
            continue
        ref = (np.concatenate([p[0] for p in parts_ref]), np.concatenate([p[1] for p in parts_ref]))
        out.append(_frame(sid, src, vals, ref, min_reference=min_reference))
    return out


def _point_frames(tab: Any, ids: np.ndarray, polys: np.ndarray, outer: np.ndarray, rings: np.ndarray,
                  *, min_reference: int) -> list[pd.DataFrame]:
    disp = np.asarray(tab.displacement, dtype=np.float32)
    if disp.ndim != 2 or disp.shape[1] == 0:
        log.warning("%s: no time series (no date columns); skipped", tab.path)
        return []
    x, y = np.asarray(tab.x, float), np.asarray(tab.y, float)
    tree = shapely.STRtree(shapely.points(x, y))
    out = []
    for sid, poly, lim, ring in zip(ids, polys, outer, rings, strict=True):
        if poly is None or poly.is_empty:
            continue
        near = tree.query(lim)
        inside = near[shapely.contains_xy(poly, x[near], y[near])]
        if not len(inside):
            continue
        in_ring = np.setdiff1d(near[shapely.contains_xy(ring, x[near], y[near])], inside)
        out.append(_frame(sid, tab, disp[inside].T, _mean_count(disp[in_ring].T), min_reference=min_reference))
    return out


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({"slide_id": pd.Series(dtype=object), "track": pd.Series(dtype=object),
                         "date": pd.Series(dtype="datetime64[ns]"), **{c: pd.Series(dtype=float) for c in TABLE_COLUMNS[3:7]},
                         "n_inside": pd.Series(dtype=np.int32), "n_reference": pd.Series(dtype=np.int32),
                         "product": pd.Series(dtype=object), "source": pd.Series(dtype=object)})


# ---------------------------------------------------------------------------- files

def timeseries_path(inventory_path: str | Path) -> str | Path:
    """``<stem>.timeseries.parquet`` beside an inventory ``<stem>.parquet``."""
    return with_suffix(inventory_path, ".timeseries.parquet")


def summary_path(table_path: str | Path) -> str | Path:
    """``<stem>.timeseries_summary.parquet`` beside the table ``<stem>.timeseries.parquet``."""
    stem = str(with_suffix(table_path, "")).removesuffix(".timeseries")
    return f"{stem}.timeseries_summary.parquet" if is_url(table_path) else Path(f"{stem}.timeseries_summary.parquet")


def write_timeseries(table: pd.DataFrame, path: str | Path, *, summary: pd.DataFrame | None = None,
                     metadata: dict[str, Any] | None = None, overwrite: bool = True) -> list[str]:
    """Write the table at ``path`` and, if given, ``summary`` beside it
    (``…timeseries_summary.parquet``); file-level metadata (key ``insar_slide``) records
    ``metadata``. Both are written to temporaries first and moved into place together at the end,
    the summary first (``path`` may be a URL): a failure leaves neither, or the old pair. Returns
    the paths written."""
    import contextlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    targets: list[tuple[pd.DataFrame, str | Path]] = [(table, path)]
    if summary is not None:
        targets.append((summary, summary_path(path)))
    with contextlib.ExitStack() as stack:  # exits in reverse: the summary lands, then the table
        for df, target in targets:
            t = target if is_url(target) else Path(target)
            arrow = pa.Table.from_pandas(df, preserve_index=False)
            meta = dict(arrow.schema.metadata or {})
            meta[b"insar_slide"] = json.dumps(dict(metadata or {}), default=str).encode()
            pq.write_table(arrow.replace_schema_metadata(meta), stack.enter_context(staged(t, overwrite=overwrite)))
    return [str(t) for _, t in targets]


def direction_of(track: str) -> str:
    """The sign convention of a track's series: EGMS L3 components are up or east, the rest LOS."""
    return {"vertical": "positive up", "east_west": "positive east"}.get(track, "positive toward the satellite")


def outer_limits(inventory: gpd.GeoDataFrame, *, gap_m: float = RING_GAP_M, width_m: float = RING_WIDTH_M) -> gpd.GeoSeries:
    """Each slide grown by its ring (``gap_m + width_m``): all a per-slide series reads."""
    metric = inventory.crs if inventory.crs.is_projected else inventory.estimate_utm_crs()
    polys = inventory.geometry.to_crs(metric).reset_index(drop=True)
    return gpd.GeoSeries(shapely.buffer(polys.to_numpy(), gap_m + width_m), crs=metric)


def series_for_inventory(inventory: gpd.GeoDataFrame, series: Sequence[str | Path], *,
                         tracks: Sequence[str | None] | None = None,
                         **options: Any) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Open ``series`` (``tracks``: a name per file, or None) and build the table and its
    summary for ``inventory``. ``options``: ``gap_m``, ``width_m``, ``min_reference`` for
    :func:`slide_timeseries`, ``recent_fraction``, ``recent_days`` for
    :func:`~insar_slide.timeseries_fit.summarize` (None = default). Point products are read
    only around the slides (their rings' bounding boxes). Returns (table, summary, the file
    metadata to write with them)."""
    from .timeseries_readers import open_series

    if inventory.crs is None:
        raise InputError("the inventory has no CRS; set it (gdf.set_crs(...)) or write it with one")
    names = list(tracks) if tracks is not None else [None] * len(series)
    ring = {k: options[k] for k in ("gap_m", "width_m", "min_reference") if options.get(k) is not None}
    fit = {k: options[k] for k in ("recent_fraction", "recent_days") if options.get(k) is not None}
    gap, width = ring.get("gap_m", RING_GAP_M), ring.get("width_m", RING_WIDTH_M)
    within = outer_limits(inventory, gap_m=gap, width_m=width)
    sources = [open_series(p, track=t, within=within) for p, t in zip(series, names, strict=True)]
    table = slide_timeseries(inventory, sources, **ring)
    units = {s.track.name: f"mm, {direction_of(s.track.name)}" for s in sources}
    meta = {"series": [str(p) for p in series], "tracks": [s.track.name for s in sources],
            "ring_m": [gap, gap + width], "min_reference": ring.get("min_reference", MIN_REFERENCE),
            "recent": fit or {"recent_fraction": RECENT_FRACTION},
            "units": next(iter(set(units.values()))) if len(set(units.values())) == 1 else units}
    return table, summarize(table, **fit), meta
