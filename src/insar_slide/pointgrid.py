"""Point products on a grid: the median velocity of the points in each cell, as a rate source.

:func:`grid_points` streams a point CSV (:mod:`insar_slide.points`) chunk by chunk, reading
only coordinates, velocity, velocity std, coherence and the geometry columns, and bins the
points into square cells: per cell the median velocity (mm/yr), the point count, the median
coherence and the median velocity std. The lattice is anchored on whole multiples of the cell
size in the grid CRS (EGMS L3: on its own 100 m grid), so that every file of a track (the
EGMS bursts of ``asc_088``, the tiles of an L3 component) lands on one lattice and ``ingest``
mosaics them without reprojection.

:class:`PointSource` serves the gridded arrays through the :class:`~insar_slide.sources.RateSource`
interface: ``read(win)`` the velocities, ``read_layer(name, win)`` the quality layers
``coherence`` and ``velocity_std``, and ``point_count``.
:func:`open_point_source` is what :func:`insar_slide.readers.open_source` calls for a ``.csv``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pyproj import CRS
from pyproj.exceptions import CRSError

from .errors import InputError
from .grid import Grid, PixelWindow
from .mosaic import TrackInfo
from .points import EGMS_CRS, PointFormat, iter_point_chunks, reproject_xy, sniff, track_of
from .sources import UNIT_SCALE, RateSource, ReadOptions

log = logging.getLogger(__name__)

#: Default cell side (m) for PS/DS points: the reference model's training pixel
#: (``model.checkpoint.training_pixel_m``), so that slides keep the size in pixels the detector
#: learnt and ingest does not advise resampling. Coarser cells fill more cells (fewer holes)
#: but shrink a slide below the detector's smallest boxes; see the README for the fill measured.
DEFAULT_CELL_M = 30.0
#: EGMS L3 is delivered on a 100 m grid: its default cell, one L3 point per cell.
L3_CELL_M = 100.0
#: Refuse grids larger than this (cells): four float32 layers of 100 M cells are 1.6 GB.
MAX_CELLS = 100_000_000


@dataclass(frozen=True, eq=False)
class PointGrid:
    """Points binned on ``grid``: arrays ``(height, width)``, NaN / 0 where a cell has no point."""

    grid: Grid
    velocity: np.ndarray            # float32 mm/yr, median of the cell's points
    count: np.ndarray               # int32, points per cell
    coherence: np.ndarray | None    # float32 0-1, median temporal coherence
    velocity_std: np.ndarray | None  # float32 mm/yr, median of the points' velocity std
    n_points: int                   # points read with a finite velocity and position

    def layer(self, name: str) -> np.ndarray | None:
        """``coherence``, ``velocity_std`` or ``point_count`` (as float32), or None if absent."""
        if name == "point_count":
            return self.count.astype("float32")
        return {"coherence": self.coherence, "velocity_std": self.velocity_std}.get(name)

    def describe(self) -> str:
        """One line: points, cells filled, points per cell, grid size and CRS."""
        filled = self.count[self.count > 0]
        if not filled.size:
            return f"{self.n_points} points, no cell filled"
        side = f"{self.grid.dx:g} m" if not self.grid.is_geographic() else f"{self.grid.dx:g}°"
        return (f"{self.n_points:,} points → {filled.size:,} cells of {side} ({filled.size / self.count.size:.0%} of "
                f"{self.grid.height} × {self.grid.width} in {self.grid.crs}); points per cell: median "
                f"{np.median(filled):g}, max {filled.max()}")


def default_grid_crs(fmt: PointFormat, lon: float, lat: float) -> str:
    """EGMS's own EPSG:3035; for lon/lat points (StaMPS), the UTM zone of ``lon, lat``."""
    if fmt.crs != "EPSG:4326":
        return fmt.crs
    zone = int((lon + 180) // 6) % 60 + 1
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def grid_points(fmt: PointFormat | str | Path, *, cell_size: float | None = None, crs: str | None = None,
                track: str | None = None) -> tuple[PointGrid, TrackInfo]:
    """Bin a point file on a grid of ``cell_size`` (grid CRS units; default :data:`DEFAULT_CELL_M`,
    EGMS L3 :data:`L3_CELL_M`) in ``crs`` (default :func:`default_grid_crs`); ``track`` names
    the track (default: from the product). Reads the file once, chunk by chunk, without its
    time series; holds about 36 bytes per point (cell indices, velocity, std, coherence,
    heading, incidence) and four arrays per cell."""
    fmt = fmt if isinstance(fmt, PointFormat) else sniff(fmt)
    ix_parts: list[np.ndarray] = []
    iy_parts: list[np.ndarray] = []
    vals: dict[str, list[np.ndarray]] = {"velocity": [], "velocity_std": [], "coherence": [], "heading": [], "incidence": []}
    lattice: tuple[str, float, float, float] | None = None  # crs, cell, anchor x, anchor y
    n_points = 0
    for chunk in iter_point_chunks(fmt):
        if lattice is None:
            lattice = _lattice(fmt, chunk.x, chunk.y, cell_size=cell_size, crs=crs)
        dst, cell, ax, ay = lattice
        x, y = reproject_xy(chunk.x, chunk.y, src=fmt.crs, dst=dst)
        ok = np.isfinite(chunk.velocity) & np.isfinite(x) & np.isfinite(y)
        n_points += int(ok.sum())
        ix_parts.append(np.floor((x[ok] - ax) / cell).astype("int64"))
        iy_parts.append(np.floor((y[ok] - ay) / cell).astype("int64"))
        for name in vals:
            v = getattr(chunk, name)
            if v is not None:
                vals[name].append(v if name in ("heading", "incidence") else v[ok])
    if lattice is None or n_points == 0:
        raise InputError(f"{fmt.path}: no point with a finite velocity and position; nothing to grid")
    dst, cell, ax, ay = lattice
    ix, iy = np.concatenate(ix_parts), np.concatenate(iy_parts)
    x_lo, x_hi, y_lo, y_hi = int(ix.min()), int(ix.max()), int(iy.min()), int(iy.max())
    height, width = y_hi - y_lo + 1, x_hi - x_lo + 1
    if height * width > MAX_CELLS:
        raise InputError(f"{fmt.path}: the points span {height} × {width} cells of {cell:g}, more than {MAX_CELLS:,}; "
                         "pass a larger --cell-size, or split the file")
    grid = Grid(dst, ax + x_lo * cell, ay + (y_hi + 1) * cell, cell, -cell, height, width)
    flat = (y_hi - iy) * width + (ix - x_lo)
    del ix, iy, ix_parts, iy_parts

    def median(name: str) -> np.ndarray | None:
        return cell_median(flat, np.concatenate(vals[name]), (height, width)) if vals[name] else None

    velocity = median("velocity")
    assert velocity is not None
    count = np.bincount(flat, minlength=height * width).astype("int32").reshape(height, width)
    out = PointGrid(grid, velocity, count, median("coherence"), median("velocity_std"), n_points)
    empty = np.empty(0, dtype="float32")
    info = track_of(fmt, headings=np.concatenate(vals["heading"]) if vals["heading"] else empty,
                    incidences=np.concatenate(vals["incidence"]) if vals["incidence"] else empty, name=track)
    log.info("%s: %s (%s, track %s)", fmt.path, out.describe(), fmt.product, info.name)
    return out, info


def _lattice(fmt: PointFormat, x: np.ndarray, y: np.ndarray, *, cell_size: float | None,
             crs: str | None) -> tuple[str, float, float, float]:
    """(grid CRS, cell side, anchor x, anchor y): cell edges at ``anchor + k * cell``."""
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        raise InputError(f"{fmt.path}: the first {x.size} points have no finite coordinates; check the file")
    dst = crs or default_grid_crs(fmt, float(np.median(x[finite])), float(np.median(y[finite])))
    try:
        geographic = CRS.from_user_input(dst).is_geographic
    except CRSError as exc:
        raise InputError(f"--grid-crs {dst!r}: not a CRS pyproj knows ({exc}); give e.g. EPSG:3035 or EPSG:32633") from exc
    if geographic and cell_size is None:
        raise InputError(f"--grid-crs {dst} is in degrees: give --cell-size in degrees too (e.g. 0.0003 for ~30 m), "
                         "or grid in a projected CRS")
    l3 = fmt.product == "egms_l3"
    cell = float(cell_size if cell_size is not None else (L3_CELL_M if l3 else DEFAULT_CELL_M))
    if not (cell > 0 and math.isfinite(cell)):
        raise InputError(f"--cell-size {cell_size}: must be a positive number (grid CRS units, metres for a projected CRS)")
    if l3 and cell < L3_CELL_M:
        log.warning("%s: EGMS L3 is a 100 m grid; cells of %g leave most cells empty", fmt.path, cell)
    ax = ay = 0.0
    if l3 and dst == fmt.crs:  # keep L3's own cells whole: points at cell centres, edges half a spacing off
        ax = _l3_anchor(x[finite], cell)
        ay = _l3_anchor(y[finite], cell)
    return dst, cell, ax, ay


def _l3_anchor(v: np.ndarray, cell: float) -> float:
    off = float(np.median(np.round(v - L3_CELL_M / 2) % L3_CELL_M))  # edge offset of the 100 m lattice
    return off % cell


def cell_median(flat: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Median of ``values`` (n,) per cell index ``flat`` (n,) on a ``shape`` grid; non-finite
    values are ignored; NaN where a cell has none. float32 ``shape``."""
    ok = np.isfinite(values)
    f, v = flat[ok], values[ok].astype("float64")
    out = np.full(shape[0] * shape[1], np.nan, dtype="float32")
    if not f.size:
        return out.reshape(shape)
    order = np.lexsort((v, f))
    f, v = f[order], v[order]
    starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])
    counts = np.diff(np.r_[starts, f.size])
    lo, hi = starts + (counts - 1) // 2, starts + counts // 2
    out[f[starts]] = ((v[lo] + v[hi]) / 2).astype("float32")
    return out.reshape(shape)


@dataclass(frozen=True, kw_only=True)
class PointSource(RateSource):
    """A point product gridded in memory (:class:`PointGrid`); ``component`` is ``los`` or, for
    EGMS L3, ``vertical`` / ``east_west`` (positive up / east instead of toward the satellite).
    Its layers (:data:`POINT_LAYERS`) come from the cells; a GeoTIFF layer given at ingest
    (``layers``) takes precedence."""

    cells: PointGrid = field(repr=False, compare=False)
    component: str = "los"

    @property
    def layer_names(self) -> tuple[str, ...]:
        given = super().layer_names
        return (*given, *(n for n in POINT_LAYERS if n not in given and self.cells.layer(n) is not None))

    def read_layer(self, name: str, win: PixelWindow) -> np.ndarray:
        arr = None if name in super().layer_names else self.cells.layer(name)
        if arr is None:
            return super().read_layer(name, win)
        return np.array(arr[win.row0:win.row1, win.col0:win.col1], dtype="float32")

    def _read_raw(self, win: PixelWindow) -> np.ndarray:
        return self.cells.velocity[win.row0:win.row1, win.col0:win.col1]


#: The layers a gridded point product serves: the cells' median ``coherence`` and
#: ``velocity_std`` where the product has them, and always ``point_count`` (points per cell,
#: 0 = none; ingest writes the layers :data:`insar_slide.quality.LAYER_UNITS` names).
POINT_LAYERS = ("coherence", "velocity_std", "point_count")


def open_point_source(path: str | Path, opts: ReadOptions | None = None) -> PointSource:
    """The ``.csv`` branch of :func:`insar_slide.readers.open_source` (which then applies the
    track overrides, the content check, ``sign`` and ``reference``): recognise the product
    from its header and grid it with ``opts.cell_size`` in ``opts.grid_crs``; ``opts.track``
    names the track; ``opts.units`` overrides mm/yr. ``opts.crs`` and ``dem_par`` do not apply
    (the formats fix their CRS)."""
    opts = opts or ReadOptions()
    fmt = sniff(path)
    cells, track = grid_points(fmt, cell_size=opts.cell_size, crs=opts.grid_crs, track=opts.track)
    units = opts.units or "mm/yr"
    track_from: Literal["user", "metadata", "default"] = "user" if opts.track else ("default" if track.name == "los" else "metadata")
    component = (fmt.component or track.name) if fmt.product == "egms_l3" else "los"
    return PointSource(path=fmt.path, product=fmt.product, grid=cells.grid, track=track, units=units,
                       scale=UNIT_SCALE[units], keep_zeros=True, track_from=track_from, cells=cells, component=component)


__all__ = ["DEFAULT_CELL_M", "EGMS_CRS", "L3_CELL_M", "POINT_LAYERS", "PointGrid", "PointSource", "cell_median",
           "grid_points", "open_point_source"]
