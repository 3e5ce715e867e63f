"""Quick-look PNG of a mosaic, optionally with inventory polygons, read from an overview."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from pyproj import CRS

from .inventory import read_inventory
from .mosaic import RATE, grid_of, open_basin, open_overview, overview_factors
from .storage import is_url, staged

log = logging.getLogger(__name__)


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


def _load(path: str | Path, ds: xr.Dataset, max_side: int) -> tuple[xr.DataArray, int]:
    factor, stored = pick_overview(path, (ds.sizes["y"], ds.sizes["x"]), max_side)
    if factor == 1:
        return ds[RATE].load(), 1
    if stored:
        ov = open_overview(path, factor)
        step = max(1, math.ceil(max(ov.sizes["y"], ov.sizes["x"]) / max_side))
        return ov[:, ::step, ::step].load(), factor * step
    log.warning("%s has no overview of factor ≥ %d; reading every %d-th pixel instead (slower)", path, factor, factor)
    return ds[RATE][:, ::factor, ::factor].load(), factor


def _nice_length(span: float) -> float:
    target = span / 5
    p = 10 ** math.floor(math.log10(target))
    return max(m * p for m in (1, 2, 5) if m * p <= target)


def quicklook(path: str | Path, out: str | Path, *, inventory: str | Path | None = None, clip: float | None = None,
              max_side: int = 1600, overwrite: bool = True) -> str | Path:
    """Render each track's rate (diverging colormap, symmetric clip) with polygons over it.

    The clip defaults to the 99th percentile of |rate| over the shown pixels (at least 5 mm/yr).
    Axes are in map units (km for projected CRSs) and a scale bar is drawn for projected CRSs.
    """
    ds = open_basin(path)
    grid = grid_of(ds)
    rate, factor = _load(path, ds, max_side)
    finite = np.abs(rate.values[np.isfinite(rate.values)])
    vmax = clip or (max(5.0, float(np.percentile(finite, 99))) if finite.size else 10.0)
    projected = CRS.from_user_input(grid.crs).is_projected
    k = 1000.0 if projected else 1.0
    xmin, ymin, xmax, ymax = grid.bounds
    extent = (xmin / k, xmax / k, ymin / k, ymax / k)
    inv = None
    if inventory is not None:
        inv = read_inventory(inventory)
        if inv.crs is not None and CRS.from_user_input(inv.crs) != CRS.from_user_input(grid.crs):
            inv = inv.to_crs(grid.crs)
    n = rate.sizes["track"]
    aspect = (ymax - ymin) / (xmax - xmin)
    # A bare Figure (its own Agg canvas): no pyplot state, no process-wide backend switch.
    fig = Figure(figsize=(6.0 * n + 1.2, 6.0 * aspect + 1.0), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)
    cmap = matplotlib.colormaps["RdBu"].copy()
    cmap = cmap.with_extremes(bad="#bdbdbd")
    im = None
    for t, ax in enumerate(axes[0]):
        im = ax.imshow(np.ma.masked_invalid(rate.isel(track=t).values), cmap=cmap, vmin=-vmax, vmax=vmax,
                       extent=extent, origin="upper", interpolation="nearest")
        name = str(ds["track"].values[t])
        ax.set_title(f"{name}  (1:{factor} overview)" if factor > 1 else name)
        ax.set_xlabel("easting (km)" if projected else "longitude (°)")
        ax.set_ylabel("northing (km)" if projected else "latitude (°)")
        if inv is not None and len(inv):
            scaled = inv.geometry.scale(1 / k, 1 / k, origin=(0, 0)) if projected else inv.geometry
            scaled.boundary.plot(ax=ax, color="black", linewidth=0.8)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        if projected:
            L = _nice_length((xmax - xmin) / k)
            x0, y0 = extent[0] + 0.05 * (extent[1] - extent[0]), extent[2] + 0.05 * (extent[3] - extent[2])
            ax.plot([x0, x0 + L], [y0, y0], color="black", linewidth=3, solid_capstyle="butt")
            ax.text(x0 + L / 2, y0 + 0.015 * (extent[3] - extent[2]), f"{L:g} km", ha="center", va="bottom", fontsize=9)
    assert im is not None
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="LOS rate (mm/yr, + toward satellite)")
    target = out if is_url(out) else Path(out)
    with staged(target, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return target
