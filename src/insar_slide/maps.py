"""What every picture of a mosaic shares (the quick look and the run report): the colour scale,
the title, the scale bar's length in any CRS, the detections of one track and the truth marks,
and how a picture reads its rates (an overview that fits) and its inventory (in the mosaic's CRS).

The colour scale is symmetric and robust: its limit is the 99.9th percentile of |rate| over the
shown pixels (at least 10 mm/yr, and at least the fastest detected slide's 95th percentile), so
one outlier does not wash the map out and no slide saturates, and beyond
±``LINEAR_MM_YR`` it is logarithmic, so a slide at 1 m/yr is not the same colour as one at
60 mm/yr while stable ground (a few mm/yr) keeps its linear contrast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import matplotlib
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.colors import Normalize, SymLogNorm
from pyproj import CRS

from .inventory import read_inventory
from .mosaic import RATE, open_overview, overview_factors

LINEAR_MM_YR = 10.0
NODATA_RGBA = (189, 189, 189, 255)
NODATA_HEX = "#bdbdbd"
CMAP = "RdBu"
# outcome of a detection against a truth, and the colour it is drawn in everywhere
log = logging.getLogger(__name__)

OUTCOME_COLOURS = {"hit": "#1a9850", "false alarm": "#d73027", "below threshold": "#fdae61", "missed": "#7b3294"}


def rate_norm(values: np.ndarray, slides_p95: np.ndarray | None = None) -> Normalize:
    """The symmetric, robust colour scale for these rates (mm/yr); NaNs ignored. The limit is
    the 99.9th percentile of |rate|, raised to the fastest slide's 95th-percentile |rate| when
    ``slides_p95`` (an inventory's ``rate_p95_abs``) is given: slides are a small share of the
    pixels, and the picture is for them."""
    finite = np.abs(values[np.isfinite(values)])
    vmax = max(LINEAR_MM_YR, float(np.percentile(finite, 99.9))) if finite.size else LINEAR_MM_YR
    if slides_p95 is not None:
        fast = np.asarray(slides_p95, float)
        fast = fast[np.isfinite(fast)]
        if fast.size:
            vmax = max(vmax, float(fast.max()))
    if vmax <= 3 * LINEAR_MM_YR:
        return Normalize(-vmax, vmax)
    return SymLogNorm(linthresh=LINEAR_MM_YR, linscale=1.0, vmin=-vmax, vmax=vmax, base=10)


def colormap() -> Any:
    return matplotlib.colormaps[CMAP].with_extremes(bad=NODATA_HEX)


def to_rgba(values: np.ndarray, norm: Normalize) -> np.ndarray:
    """(rows, cols) rates → (rows, cols, 4) uint8 RGBA in the shared colour scale, no data grey."""
    return colormap()(norm(np.ma.masked_invalid(values)), bytes=True)


def colour_ticks(norm: Normalize) -> list[float]:
    """Readable colour-bar ticks for ``norm`` (0, ±10, ±100 … up to the limit)."""
    vmax = float(norm.vmax or LINEAR_MM_YR)
    if not isinstance(norm, SymLogNorm):
        step = _nice_length(vmax * 5 / 2)
        pos = list(np.arange(step, vmax + 1e-9, step))
    else:
        pos = [10.0 ** k for k in range(1, math.floor(math.log10(vmax)) + 1)]
    return sorted([-p for p in pos] + [0.0] + pos)


def is_projected(crs: Any) -> bool:
    return bool(CRS.from_user_input(crs).is_projected)


def metres_per_unit(crs: Any, bounds: Sequence[float]) -> tuple[float, float]:
    """Metres per CRS unit along x and y at the middle of ``bounds`` (degrees → metres on
    geographic CRSs; the linear unit's factor on projected ones)."""
    c = CRS.from_user_input(crs)
    if c.is_projected:
        f = float(c.axis_info[0].unit_conversion_factor or 1.0)
        return f, f
    lat = math.radians((bounds[1] + bounds[3]) / 2)
    return 111_320.0 * math.cos(lat), 110_574.0


def _nice_length(span: float) -> float:
    """The largest 1, 2 or 5 × 10^k at most ``span`` / 5."""
    target = span / 5
    p = 10 ** math.floor(math.log10(target))
    return max(m * p for m in (1, 2, 5) if m * p <= target)


def scale_bar_length_m(width_m: float) -> float:
    """A round scale-bar length (metres) for a map ``width_m`` wide: about a fifth of it."""
    return _nice_length(width_m)


def format_length(m: float) -> str:
    return f"{m / 1000:g} km" if m >= 1000 else f"{m:g} m"


@dataclass(frozen=True)
class MapInfo:
    """What a map's title says: the basin, its tracks and their time span."""

    basin: str
    tracks: list[str]
    time_span: str

    def title(self, n_slides: int | None = None) -> str:
        parts = [self.basin, ", ".join(self.tracks)]
        if self.time_span:
            parts.append(self.time_span)
        if n_slides is not None:
            parts.append(f"{n_slides} landslide{'s' if n_slides != 1 else ''}")
        return " · ".join(parts)


def map_info(ds: xr.Dataset, path: str | Path) -> MapInfo:
    """The basin's name (the store's, with its ``product`` attribute: ``basin (simulated)``),
    tracks and time span."""
    parts = [p for p in Path(str(path).rstrip("/")).parts if p not in ("versions",)]
    store = next((p for p in reversed(parts) if p.endswith(".zarr")), parts[-1] if parts else "mosaic")
    name = store.removesuffix(".zarr")
    if product := str(ds.attrs.get("product") or ""):
        name = f"{name} ({product})"
    tracks = [str(t) for t in ds["track"].values]
    spans = []
    if "start_date" in ds.coords and "end_date" in ds.coords:
        starts = [str(v) for v in ds["start_date"].values if str(v)]
        ends = [str(v) for v in ds["end_date"].values if str(v)]
        if starts and ends:
            spans.append(f"{min(starts)} – {max(ends)}")
    if not spans and ds.attrs.get("time_span"):
        spans.append(str(ds.attrs["time_span"]))
    return MapInfo(name, tracks, spans[0] if spans else "")


def on_track(inv: gpd.GeoDataFrame, track: str) -> np.ndarray:
    """Which rows of an inventory were detected on ``track`` (its ``tracks`` column; rows without
    one — a truth, a hand-drawn inventory — are on every track)."""
    if "tracks" not in inv or not len(inv):
        return np.ones(len(inv), bool)
    return np.array([(not isinstance(t, str)) or not t or track in t.split(",") for t in inv["tracks"]], bool)


def outlines(inv: gpd.GeoDataFrame) -> gpd.GeoSeries:
    """Each row's refined outline where it has one, else its polygon."""
    if "outline" not in inv:
        return inv.geometry
    o = gpd.GeoSeries(inv["outline"], crs=inv.crs)
    return gpd.GeoSeries(np.where(o.isna() | o.is_empty, inv.geometry, o), index=inv.index, crs=inv.crs)


def truth_outcomes(inv: gpd.GeoDataFrame, truth: gpd.GeoDataFrame | None,
                   bounds: tuple[float, float, float, float] | None = None) -> tuple[pd.Series | None, gpd.GeoDataFrame | None]:
    """Against a truth (a simulated one, with its slower slides not asked for; or any reference),
    clipped to the mosaic's ``bounds`` when given: each detection's outcome (hit / false alarm /
    below threshold) and the missed truth rows."""
    if truth is None:
        return None, None
    from .compare import hidden_truth, match, visible_truth, within_extent

    truth = truth.to_crs(inv.crs) if inv.crs is not None and truth.crs is not None and truth.crs != inv.crs else truth
    truth = within_extent(truth, bounds) if bounds is not None else truth
    ref, hidden = visible_truth(truth), hidden_truth(truth)
    m = match(inv, ref, ignore=hidden if len(hidden) else None)
    out = np.where(m.a_matched >= 0, "hit", "false alarm").astype(object)
    if m.a_ignored is not None:
        out[(m.a_matched < 0) & m.a_ignored] = "below threshold"
    missed = ref.iloc[np.flatnonzero(m.b_matched < 0)]
    return pd.Series(out, index=inv.index, name="outcome"), missed


# ---------------------------------------------------------------- what a picture reads


def pick_overview(path: str | Path, shape: tuple[int, int], max_side: int) -> tuple[int, bool]:
    """(factor, stored) — the finest stored overview that fits ``max_side``; else a stride."""
    need = max(1, math.ceil(max(shape) / max_side))
    if need == 1:
        return 1, False
    stored = overview_factors(path)
    fitting = [f for f in stored if f >= need]
    if fitting:
        return fitting[0], True
    if stored:  # the coarsest overview, strided further when read
        return stored[-1], True
    return need, False


def load_shown_rate(path: str | Path, ds: xr.Dataset, max_side: int) -> tuple[xr.DataArray, int]:
    factor, stored = pick_overview(path, (ds.sizes["y"], ds.sizes["x"]), max_side)
    if factor == 1:
        return ds[RATE].load(), 1
    if stored:
        ov = open_overview(path, factor)
        step = max(1, math.ceil(max(ov.sizes["y"], ov.sizes["x"]) / max_side))
        return ov[:, ::step, ::step].load(), factor * step
    log.warning("%s has no overview of factor ≥ %d; reading every %d-th pixel instead (slower)", path, factor, factor)
    return ds[RATE][:, ::factor, ::factor].load(), factor


def inventory_in(src: str | Path | gpd.GeoDataFrame | None, crs: str) -> gpd.GeoDataFrame | None:
    """An inventory (path or frame) in the mosaic's CRS, its refined outlines reprojected too."""
    if src is None:
        return None
    gdf = src if isinstance(src, gpd.GeoDataFrame) else read_inventory(src)
    if gdf.crs is not None and CRS.from_user_input(gdf.crs) != CRS.from_user_input(crs):
        was = gdf.crs
        gdf = gdf.to_crs(crs)
        if "outline" in gdf:  # to_crs moves the active geometry only
            gdf["outline"] = gpd.GeoSeries(gdf["outline"], crs=was).to_crs(crs)
    return gdf
