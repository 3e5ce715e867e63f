"""Readers of displacement time series: MintPy ``timeseries.h5`` / ``geo_timeseries*.h5``,
LiCSBAS ``cum.h5`` / ``cum_filt.h5``, and point products (EGMS L2a/L2b/L3 date columns,
StaMPS exports) through :func:`insar_slide.points.read_points`, or streamed keeping only the
points around the slides (:func:`read_points_within`).

Every series is in **mm, positive toward the satellite** (MintPy's and LiCSBAS's convention),
with its dates as ``datetime64[D]``. A raster series is opened lazily as a
:class:`SeriesRaster`: its grid, track and dates are read from the metadata, and
:meth:`SeriesRaster.read` reads one pixel window (all dates, or a slice of them), so that
per-slide series read only the windows around the slides.

Formats, as the tools write them:

- MintPy (``timeseries.h5``, ``geo_timeseries_*.h5``): dataset ``timeseries`` (date, row, col)
  float32 in the ``UNIT`` attribute's units (m), dataset ``date`` of ``b"YYYYMMDD"``; the grid
  from ``X_FIRST/Y_FIRST`` (upper-left corner) and ``X_STEP/Y_STEP``, the CRS from ``EPSG``,
  ``UTM_ZONE`` or degree units, as :mod:`insar_slide.readers` reads ``velocity.h5``. A radar-
  coordinate file (no ``X_FIRST``) is refused: geocode it first. A pixel whose series is 0 or
  NaN at every date is no data (MintPy fills masked and out-of-swath pixels so), except the
  reference pixel ``REF_Y/REF_X``.
- LiCSBAS (``cum.h5``, ``cum_filt.h5``, written by ``LiCSBAS13_sb_inv.py`` /
  ``LiCSBAS16_filt_ts.py``): dataset ``cum`` (date, row, col) float32 mm, ``imdates`` int
  ``YYYYMMDD``, scalars ``corner_lat``, ``corner_lon`` (the centre of pixel (0, 0)),
  ``post_lat`` (< 0), ``post_lon`` in degrees, EPSG:4326; NaN = no data. The track is named
  from a LiCSAR frame id in the path (``124D_…`` → ``desc_124``) or ``track=``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import InputError
from .grid import Grid, PixelWindow
from .mosaic import TrackInfo
from .readers import frame_track, mintpy_geometry

_UNIT_TO_MM = {"m": 1000.0, "cm": 10.0, "mm": 1.0}


@dataclass(frozen=True)
class SeriesRaster:
    """A gridded displacement time series opened lazily.

    ``dates``: (m,) datetime64[D]. :meth:`read` returns (m, rows, cols) float32 mm, positive
    toward the satellite, NaN = no data, for a window in this grid's pixel (row, col) frame."""

    path: str
    product: str  # "mintpy" | "licsbas"
    grid: Grid
    track: TrackInfo
    dates: np.ndarray
    dataset: str
    scale: float  # stored value → mm
    ref_pixel: tuple[int, int] | None = None
    zeros_are_nodata: bool = False  # MintPy: a pixel 0 at every date is a masked one

    @property
    def crs(self) -> str:
        return self.grid.crs

    def read(self, win: PixelWindow, dates: slice = slice(None), *, empty: np.ndarray | None = None) -> np.ndarray:
        """Displacement (m_sel, win.rows, win.cols) float32 mm of the dates ``dates`` selects.

        ``empty``: the window's no-data pixels (:meth:`empty_pixels`) when only some dates are
        read; without it a MintPy read of some dates reads the others too, one block of
        ``block`` dates at a time, to find them."""
        raw = self._raw(win, dates)
        out = raw * np.float32(self.scale) if self.scale != 1.0 else raw.copy()
        if not self.zeros_are_nodata:
            return out
        if empty is None:
            empty = _all_zero(raw) if dates == slice(None) else self.empty_pixels(win, block=max(1, out.shape[0]))
        out[:, self._keep_ref(empty, win)] = np.nan
        return out

    def empty_pixels(self, win: PixelWindow, *, block: int) -> np.ndarray:
        """(rows, cols) bool: the window's pixels that are 0 or NaN at every date (MintPy's
        masked pixels; never the reference pixel), read ``block`` dates at a time."""
        if not self.zeros_are_nodata:
            return np.zeros((win.rows, win.cols), bool)
        m = len(self.dates)
        empty = np.ones((win.rows, win.cols), bool)
        for d0 in range(0, m, max(1, block)):
            empty &= _all_zero(self._raw(win, slice(d0, min(m, d0 + max(1, block)))))
        return self._keep_ref(empty, win)

    def _raw(self, win: PixelWindow, dates: slice) -> np.ndarray:
        try:
            with h5py.File(self.path, "r") as f:
                return np.asarray(f[self.dataset][dates, win.row0:win.row1, win.col0:win.col1], dtype="float32")
        except (OSError, RuntimeError, KeyError) as exc:
            raise InputError(f"{self.path}: cannot read '{self.dataset}' ({exc}); the file is truncated or corrupt — copy it again") from exc

    def _keep_ref(self, empty: np.ndarray, win: PixelWindow) -> np.ndarray:
        if self.ref_pixel is not None:
            rr, rc = self.ref_pixel[0] - win.row0, self.ref_pixel[1] - win.col0
            if 0 <= rr < win.rows and 0 <= rc < win.cols:
                empty = empty.copy()
                empty[rr, rc] = False
        return empty


def _all_zero(raw: np.ndarray) -> np.ndarray:
    return np.all((raw == 0) | ~np.isfinite(raw), axis=0)


def open_series(path: str | Path, *, track: str | None = None, crs: str | None = None, within: Any = None) -> Any:
    """Open a time-series product: a :class:`SeriesRaster` (MintPy, LiCSBAS ``.h5``) or a
    :class:`insar_slide.points.PointTable` (``.csv`` point products). ``track`` names its
    track (overriding the metadata); ``crs`` gives the CRS of a product that lacks one.

    ``within``: a :class:`geopandas.GeoSeries` of areas (any CRS); a point product then keeps
    only the points inside their bounding boxes, streamed chunk by chunk
    (:func:`read_points_within`), instead of every point and date of the file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix in (".h5", ".he5", ".hdf5"):
        try:
            f = h5py.File(str(p), "r")
        except OSError as exc:
            raise InputError(f"{p}: cannot open as HDF5 ({exc}); the file is truncated or corrupt — copy it again") from exc
        with f:
            if "timeseries" in f:
                return _open_mintpy_series(p, f, track=track, crs=crs)
            if "cum" in f:
                return _open_licsbas_cum(p, f, track=track, crs=crs)
            raise InputError(f"{p}: no 'timeseries' (MintPy) or 'cum' (LiCSBAS) dataset (found {sorted(f.keys())}); "
                             "pass MintPy's timeseries.h5 / geo_timeseries*.h5 or LiCSBAS's cum.h5")
    if suffix in (".csv", ".txt"):
        from .points import read_points
        table = read_points(p, track=track, crs=crs) if within is None else read_points_within(p, within, track=track, crs=crs)
        if table.displacement.shape[1] == 0:
            raise InputError(f"{p}: a point product without date columns has no time series; pass one with "
                             "the displacement per date (EGMS L2a/L2b/L3 or a StaMPS export)")
        return table
    raise InputError(f"{p}: unrecognised time-series format; insar-slide reads MintPy timeseries.h5, "
                     "LiCSBAS cum.h5 and point CSVs (EGMS, StaMPS)")


def read_points_within(path: str | Path, areas: Any, *, track: str | None = None, crs: str | None = None) -> Any:
    """:func:`insar_slide.points.read_points`, keeping only the points inside the bounding
    boxes of ``areas`` (a GeoSeries, reprojected to the file's CRS): the file is streamed
    with :func:`~insar_slide.points.iter_point_chunks`, so that only those points' series are
    held. The track comes from every point's heading and incidence, as in ``read_points``."""
    import geopandas as gpd
    import shapely

    from .points import PointTable, iter_point_chunks, reproject_xy, sniff, track_of

    fmt = sniff(path)
    env = areas[~(areas.isna() | areas.is_empty)].envelope
    # densified before reprojection, so that a box's curved image stays inside its envelope
    seg = float(np.sqrt(env.area.max())) / 16 if len(env) else 1.0
    dense = gpd.GeoSeries(shapely.segmentize(env.to_numpy(), max(seg, 1e-9)), crs=areas.crs)
    tree = shapely.STRtree(dense.to_crs(fmt.crs).envelope.to_numpy())
    kept: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "y", "velocity", "velocity_std", "coherence", "displacement")}
    angles: dict[str, list[np.ndarray]] = {"heading": [], "incidence": []}
    seen = 0
    for chunk in iter_point_chunks(fmt, series=True):
        seen += chunk.x.size
        hit = np.zeros(chunk.x.size, bool)
        hit[tree.query(shapely.points(chunk.x, chunk.y), predicate="intersects")[0]] = True
        for k, parts in (*kept.items(), *angles.items()):
            if (a := getattr(chunk, k)) is not None:
                parts.append(a[hit] if k in kept else a)
    if not seen:
        raise InputError(f"{fmt.path}: no points after the header; nothing to read")

    def cat(parts: list[np.ndarray], empty: tuple[int, ...] = (0,), dtype: str = "float32") -> np.ndarray:
        return np.concatenate(parts) if parts else np.empty(empty, dtype)

    x, y = cat(kept["x"], dtype="float64"), cat(kept["y"], dtype="float64")
    if crs is not None:
        x, y = reproject_xy(x, y, src=fmt.crs, dst=crs)
    info = track_of(fmt, headings=cat(angles["heading"]), incidences=cat(angles["incidence"]), name=track)
    return PointTable(path=fmt.path, product=fmt.product, crs=crs or fmt.crs, x=x, y=y,
                      velocity=cat(kept["velocity"]).astype("float32"),
                      velocity_std=cat(kept["velocity_std"]) if kept["velocity_std"] else None,
                      coherence=cat(kept["coherence"]) if kept["coherence"] else None, dates=fmt.dates,
                      displacement=cat(kept["displacement"], (0, fmt.dates.size)), track=info)


def _yyyymmdd(values: np.ndarray, p: Path) -> np.ndarray:
    out = []
    for v in np.ravel(values):
        s = v.decode() if isinstance(v, bytes) else str(int(v)) if np.issubdtype(type(v), np.number) else str(v)
        m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", s.strip())
        if not m:
            raise InputError(f"{p}: date {s!r} is not YYYYMMDD; the date list is corrupt")
        out.append(np.datetime64(f"{m.group(1)}-{m.group(2)}-{m.group(3)}", "D"))
    dates = np.array(out, dtype="datetime64[D]")
    if dates.size and np.any(np.diff(dates) <= np.timedelta64(0, "D")):
        raise InputError(f"{p}: dates are not strictly increasing; the date list is corrupt")
    return dates


def _open_mintpy_series(p: Path, f: h5py.File, *, track: str | None, crs: str | None) -> SeriesRaster:
    ds = f["timeseries"]
    if ds.ndim != 3:
        raise InputError(f"{p}: 'timeseries' has shape {ds.shape}, expected (date, row, col)")
    grid, info, ref = mintpy_geometry(f.attrs, p, (ds.shape[1], ds.shape[2]), crs=crs)
    if "date" not in f:
        raise InputError(f"{p}: no 'date' dataset; not a MintPy time series")
    dates = _yyyymmdd(f["date"][()], p)
    if dates.size != ds.shape[0]:
        raise InputError(f"{p}: {dates.size} dates but {ds.shape[0]} epochs in 'timeseries'; the file is corrupt")
    unit_attr = f.attrs.get("UNIT", "m")
    unit = (unit_attr.decode() if isinstance(unit_attr, bytes) else str(unit_attr)).strip().lower()
    if unit not in _UNIT_TO_MM:
        raise InputError(f"{p}: unknown UNIT attribute {unit!r} for a displacement time series (expected m, cm or mm)")
    info = replace(info, name=track or info.name, start_date=str(dates[0]) if dates.size else "",
                   end_date=str(dates[-1]) if dates.size else "")
    return SeriesRaster(str(p), "mintpy", grid, info, dates, "timeseries", _UNIT_TO_MM[unit], ref, zeros_are_nodata=True)


def _scalar(f: h5py.File, key: str, p: Path) -> float:
    if key not in f:
        raise InputError(f"{p}: no '{key}' dataset, so the grid is unknown; pass a geocoded LiCSBAS cum.h5 (GEOC)")
    return float(np.asarray(f[key][()]).ravel()[0])


def _open_licsbas_cum(p: Path, f: h5py.File, *, track: str | None, crs: str | None) -> SeriesRaster:
    ds = f["cum"]
    if ds.ndim != 3:
        raise InputError(f"{p}: 'cum' has shape {ds.shape}, expected (date, row, col)")
    if "imdates" not in f:
        raise InputError(f"{p}: no 'imdates' dataset; not a LiCSBAS cum.h5")
    dates = _yyyymmdd(f["imdates"][()], p)
    if dates.size != ds.shape[0]:
        raise InputError(f"{p}: {dates.size} imdates but {ds.shape[0]} epochs in 'cum'; the file is corrupt")
    clat, clon = _scalar(f, "corner_lat", p), _scalar(f, "corner_lon", p)
    plat, plon = _scalar(f, "post_lat", p), _scalar(f, "post_lon", p)
    from affine import Affine
    # corner_lat/lon are the centre of pixel (0, 0): shift half a pixel to the grid corner
    grid = Grid.from_transform(crs or "EPSG:4326", Affine(plon, 0, clon - plon / 2, 0, plat, clat - plat / 2),
                               ds.shape[1], ds.shape[2], source=str(p))
    name = track or frame_track(p) or "los"
    info = TrackInfo(name=name, start_date=str(dates[0]) if dates.size else "",
                     end_date=str(dates[-1]) if dates.size else "", sources=(str(p),))
    return SeriesRaster(str(p), "licsbas", grid, info, dates, "cum", 1.0, None)
