"""Quick-look PNG of a mosaic, optionally with inventory polygons, read from an overview."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from .maps import (
    NODATA_HEX,
    OUTCOME_COLOURS,
    colormap,
    colour_ticks,
    format_length,
    inventory_in,
    is_projected,
    load_shown_rate,
    map_info,
    metres_per_unit,
    on_track,
    outlines,
    rate_norm,
    scale_bar_length_m,
    truth_outcomes,
)
from .mosaic import grid_of, open_basin
from .storage import is_url, staged


def quicklook(path: str | Path, out: str | Path, *, inventory: str | Path | gpd.GeoDataFrame | None = None,
              truth: str | Path | gpd.GeoDataFrame | None = None, clip: float | None = None,
              max_side: int = 1600, overwrite: bool = True) -> str | Path:
    """Render each track's rate with that track's detections over it, as a self-explaining map.

    Title: basin, tracks, time span and number of slides. Colours: :func:`insar_slide.maps.rate_norm`
    (robust symmetric limit up to the fastest slide, logarithmic beyond ±10 mm/yr), or linear to
    ±``clip`` when given.
    Each panel shows the refined outlines (else the polygons) of the slides detected on its own
    track; with a ``truth``, hits, false alarms, detections of slower simulated slides and the
    missed slides are drawn in their own colours. A legend names every mark and the grey no-data;
    axes are in km (projected CRSs) or degrees, with a scale bar in both.
    """
    ds = open_basin(path)
    grid = grid_of(ds)
    rate, factor = load_shown_rate(path, ds, max_side)
    inv = inventory_in(inventory, grid.crs)
    p95 = inv["rate_p95_abs"].to_numpy(float) if inv is not None and "rate_p95_abs" in inv else None
    norm = Normalize(-clip, clip) if clip else rate_norm(rate.values, p95)
    projected = is_projected(grid.crs)
    k = 1000.0 if projected else 1.0
    xmin, ymin, xmax, ymax = grid.bounds
    extent = (xmin / k, xmax / k, ymin / k, ymax / k)
    ref = inventory_in(truth, grid.crs)
    outcome, missed = truth_outcomes(inv, ref, grid.bounds) if inv is not None and ref is not None else (None, None)
    info = map_info(ds, path)
    n = rate.sizes["track"]
    mx, my = metres_per_unit(grid.crs, grid.bounds)
    aspect = ((ymax - ymin) * my) / ((xmax - xmin) * mx)
    # A bare Figure (its own Agg canvas): no pyplot state, no process-wide backend switch.
    fig = Figure(figsize=(6.0 * n + 1.4, 6.0 * aspect + 1.6), layout="constrained")
    fig.suptitle(info.title(len(inv) if inv is not None else None), fontsize=12)
    axes = fig.subplots(1, n, squeeze=False)
    im = None
    handles: dict[str, Any] = {}
    for t, ax in enumerate(axes[0]):
        name = str(ds["track"].values[t])
        im = ax.imshow(np.ma.masked_invalid(rate.isel(track=t).values), cmap=colormap(), norm=norm,
                       extent=extent, origin="upper", interpolation="nearest")
        shown = 0
        if inv is not None and len(inv):
            mine = on_track(inv, name)
            shown = int(mine.sum())
            geoms = _scaled(outlines(inv), k, projected)
            if outcome is None:
                geoms[mine].boundary.plot(ax=ax, color="black", linewidth=0.9)
                handles["outline"] = Line2D([], [], color="black", linewidth=1.2, label="landslide (this track)")
            else:
                for what, colour in OUTCOME_COLOURS.items():
                    sel = mine & (outcome.to_numpy() == what)
                    if sel.any():
                        geoms[sel].boundary.plot(ax=ax, color=colour, linewidth=1.1)
                        handles[what] = Line2D([], [], color=colour, linewidth=1.6, label=what)
        if missed is not None and len(missed):
            _scaled(missed.geometry, k, projected).boundary.plot(ax=ax, color=OUTCOME_COLOURS["missed"],
                                                                 linewidth=1.1, linestyle="--")
            handles["missed"] = Line2D([], [], color=OUTCOME_COLOURS["missed"], linewidth=1.6, linestyle="--",
                                       label="missed (truth)")
        label = f"{name}: {shown} detected" if inv is not None else name
        ax.set_title(f"{label}  (1:{factor} overview)" if factor > 1 else label, fontsize=10)
        ax.set_xlabel("easting (km)" if projected else "longitude (°)")
        ax.set_ylabel("northing (km)" if projected else "latitude (°)")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        if not projected:
            ax.set_aspect(my / mx)
        _scale_bar(ax, extent, (xmax - xmin) * mx, 1.0 / (mx * k))
    assert im is not None
    handles["no data"] = Patch(facecolor=NODATA_HEX, edgecolor="none", label="no data")
    fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    cb = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="LOS rate (mm/yr, + toward satellite)")
    cb.set_ticks(colour_ticks(norm))
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target = out if is_url(out) else Path(out)
    with staged(target, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return target


def _scaled(geoms: gpd.GeoSeries, k: float, projected: bool) -> gpd.GeoSeries:
    return geoms.scale(1 / k, 1 / k, origin=(0, 0)) if projected else geoms


def _scale_bar(ax: Any, extent: tuple[float, float, float, float], width_m: float, units_per_m: float) -> None:
    """A round-length bar in the lower left; ``units_per_m`` converts metres to axis units."""
    L = scale_bar_length_m(width_m)
    x0, y0 = extent[0] + 0.05 * (extent[1] - extent[0]), extent[2] + 0.05 * (extent[3] - extent[2])
    ax.plot([x0, x0 + L * units_per_m], [y0, y0], color="black", linewidth=3, solid_capstyle="butt")
    ax.text(x0 + L * units_per_m / 2, y0 + 0.015 * (extent[3] - extent[2]), format_length(L),
            ha="center", va="bottom", fontsize=9)
