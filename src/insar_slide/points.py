"""Point products: EGMS L2a/L2b/L3 CSVs and StaMPS-Visualizer exports, read as point tables.

The format is recognised from the CSV's header, never from its name:

- **EGMS L2a (basic) / L2b (calibrated)**: one row per measurement point, columns ``pid,
  mp_type, latitude, longitude, easting, northing, height, height_wgs84, line, pixel, rmse,
  temporal_coherence, amplitude_dispersion, incidence_angle, track_angle, los_east, los_north,
  los_up, mean_velocity, mean_velocity_std, acceleration, acceleration_std, seasonality,
  seasonality_std`` then one column per acquisition ``YYYYMMDD`` (displacement, mm).
  ``mean_velocity`` is LOS mm/yr, positive toward the satellite; ``easting/northing`` are
  ETRS89-LAEA (EPSG:3035); ``track_angle`` is the satellite heading and ``incidence_angle`` the
  local incidence (degrees). Files are named ``EGMS_L2a_088_0297_IW2_VV_2018_2022_1.csv``
  (relative orbit 088, burst 0297, swath IW2): the track becomes ``asc_088``/``desc_088``, the
  direction from ``track_angle`` (a heading within 90° of north is ascending).
- **EGMS L3 (ortho)**: the vertical (``…_U_…``) or east-west (``…_E_…``) component resampled
  on a 100 m grid, ``pid, easting, northing, height, rmse, mean_velocity, mean_velocity_std,
  acceleration, acceleration_std, seasonality, seasonality_std`` then the dates; positive up or
  east; named ``EGMS_L3_E32N34_100km_U_2018_2022_1.csv``. Its "track" is the component:
  ``vertical`` or ``east_west`` (heading and incidence NaN).
- **StaMPS-Visualizer "stusi" export** (StaMPS ``ps_output``): a header of dummy names, a row
  ``[lon, lat, NaN, MATLAB datenums…]``, then one row per point ``[lon, lat, mean LOS velocity
  mm/yr, LOS displacement mm per date]`` in WGS84; StaMPS velocities are positive toward the
  satellite. No geometry in the file: the track is ``--track`` or ``los`` (with a warning).

Sources: the EGMS Product Description and Format Specification (Copernicus Land Monitoring
Service, https://eea.github.io/CLMS_documents/develop/DOCS/products/EGMS_product_description_2023.html),
cross-checked against the header public EGMS readers use; StaMPS' sign convention from
``ps_output.m`` (github.com/dbekaert/StaMPS issue 36); the stusi layout from
github.com/thho/StaMPS_Visualizer (``shared/data/real/maoxian_stamps_points/SOURCE.txt``).

Large files are read in chunks of :data:`CHUNK_ROWS` rows, and only the columns asked for:
:func:`iter_point_chunks` without ``series`` never parses the date columns, which are most
of a multi-GB EGMS tile.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .errors import InputError
from .mosaic import TrackInfo

log = logging.getLogger(__name__)

Product = Literal["egms_l2a", "egms_l2b", "egms_l3", "stamps"]
CHUNK_ROWS = 200_000  # rows parsed at a time: ~10 MB of velocities, ~250 MB with 300 dates of series
EGMS_CRS = "EPSG:3035"  # ETRS89-LAEA, EGMS easting/northing
WGS84 = "EPSG:4326"
L3_COMPONENTS = {"U": "vertical", "E": "east_west"}  # file-name letter → track name
EGMS_L2_COLUMNS = ("pid", "mean_velocity", "track_angle", "incidence_angle")
EGMS_L3_COLUMNS = ("pid", "easting", "northing", "mean_velocity")
_DATE = re.compile(r"^\d{8}$")
_MATLAB_EPOCH_DAYS = 366  # MATLAB datenum d is date.fromordinal(d) - 366 days


@dataclass(frozen=True)
class PointTable:
    """A point product (PS/DS points, or the cells of an EGMS L3 grid): one row per point."""

    path: str
    product: str            # "egms_l2a" | "egms_l2b" | "egms_l3" | "stamps"
    crs: str                # CRS of x and y, e.g. "EPSG:3035" or "EPSG:4326"
    x: np.ndarray           # (n,) float64, easting or longitude
    y: np.ndarray           # (n,) float64, northing or latitude
    velocity: np.ndarray    # (n,) float32, mm/yr, positive toward the satellite (LOS) or up/east (L3)
    velocity_std: np.ndarray | None   # (n,) float32 mm/yr, or None
    coherence: np.ndarray | None      # (n,) float32 0-1 (EGMS temporal_coherence), or None
    dates: np.ndarray       # (m,) datetime64[D]; may be empty (no time series)
    displacement: np.ndarray  # (n, m) float32 mm, same sign convention; (n, 0) without series
    track: TrackInfo        # from insar_slide.mosaic: name, heading, incidence, start/end date

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class PointFormat:
    """What a CSV's header says: the product, its columns, its dates and its native CRS."""

    path: str
    product: Product
    columns: tuple[str, ...]
    dates: np.ndarray             # (m,) datetime64[D]
    crs: str                      # CRS of the coordinates read (EPSG:3035 or EPSG:4326)
    component: str = "los"        # "los", or the L3 component "vertical" / "east_west"

    @property
    def xy_columns(self) -> tuple[str, str]:
        return ("easting", "northing") if self.crs == EGMS_CRS else ("longitude", "latitude")


@dataclass(frozen=True)
class PointChunk:
    """Up to :data:`CHUNK_ROWS` points of a file, coordinates in the :class:`PointFormat`'s CRS."""

    x: np.ndarray                       # (k,) float64
    y: np.ndarray                       # (k,) float64
    velocity: np.ndarray                # (k,) float32 mm/yr
    velocity_std: np.ndarray | None     # (k,) float32 mm/yr
    coherence: np.ndarray | None        # (k,) float32 0-1
    heading: np.ndarray | None          # (k,) float32 degrees (EGMS track_angle)
    incidence: np.ndarray | None        # (k,) float32 degrees
    displacement: np.ndarray | None     # (k, m) float32 mm, only when series were asked for


def sniff(path: str | Path) -> PointFormat:
    """Recognise a point CSV from its first two lines; :class:`InputError` if it is none of them."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    with open(p, newline="", encoding="utf-8", errors="replace") as f:
        rows = [r for _, r in zip(range(2), csv.reader(f), strict=False)]
    header = tuple(c.strip() for c in rows[0]) if rows else ()
    names = set(header)
    dates = np.array([dt.datetime.strptime(c, "%Y%m%d").date() for c in header if _DATE.match(c)], dtype="datetime64[D]")
    if all(c in names for c in EGMS_L2_COLUMNS) and ({"easting", "northing"} <= names or {"latitude", "longitude"} <= names):
        product: Product = "egms_l2b" if re.search(r"L2b", p.name, re.IGNORECASE) else "egms_l2a"
        crs = EGMS_CRS if {"easting", "northing"} <= names else WGS84
        return PointFormat(str(p), product, header, dates, crs)
    if all(c in names for c in EGMS_L3_COLUMNS):
        return PointFormat(str(p), "egms_l3", header, dates, EGMS_CRS, component=_l3_component(p))
    if len(rows) == 2 and (stamps_dates := _stusi_dates(header, rows[1])) is not None:
        return PointFormat(str(p), "stamps", tuple(str(i) for i in range(len(header))), stamps_dates, WGS84)
    shown = ", ".join(header[:6]) + (", …" if len(header) > 6 else "")
    raise InputError(
        f"{p}: not a point product insar-slide reads (header: {shown or 'empty'}); expected an EGMS L2a/L2b CSV "
        "(pid, latitude, longitude, easting, northing, …, incidence_angle, track_angle, …, mean_velocity, "
        "mean_velocity_std, …, YYYYMMDD dates), an EGMS L3 CSV (pid, easting, northing, …, mean_velocity, …, dates) or a "
        "StaMPS-Visualizer export (a row lon, lat, NaN, MATLAB datenums, then lon, lat, velocity, displacements)"
    )


def _l3_component(p: Path) -> str:
    m = re.search(r"_100km_([UE])_", p.name, re.IGNORECASE)
    return L3_COMPONENTS[m.group(1).upper()] if m else ""


def _stusi_dates(header: tuple[str, ...], second: list[str]) -> np.ndarray | None:
    """The dates of a stusi export from its second row ``lon, lat, NaN, datenum…``, or None."""
    if len(second) != len(header) or len(second) < 4 or second[2].strip().lower() != "nan":
        return None
    try:
        lon, lat = float(second[0]), float(second[1])
        nums = [float(v) for v in second[3:]]
    except ValueError:
        return None
    if not (-180 <= lon <= 360 and -90 <= lat <= 90) or not all(600_000 < d < 800_000 for d in nums):
        return None  # MATLAB datenums of years 1643..2190
    return np.array([dt.date.fromordinal(int(d) - _MATLAB_EPOCH_DAYS) for d in nums], dtype="datetime64[D]")


def iter_point_chunks(fmt: PointFormat, *, series: bool = False, rows: int | None = None) -> Iterator[PointChunk]:
    """The file's points, ``rows`` (default :data:`CHUNK_ROWS`) at a time; the date columns are
    parsed only with ``series``."""
    rows = rows or CHUNK_ROWS
    if fmt.product == "stamps":
        frames = pd.read_csv(fmt.path, header=None, skiprows=2, chunksize=rows, dtype="float64",
                             na_values=["NaN", "nan"], usecols=None if series else [0, 1, 2])
        for df in frames:
            a = df.to_numpy()
            yield PointChunk(a[:, 0], a[:, 1], a[:, 2].astype("float32"), None, None, None, None,
                             a[:, 3:].astype("float32") if series else None)
        return
    xcol, ycol = fmt.xy_columns
    optional = [c for c in ("mean_velocity_std", "temporal_coherence", "track_angle", "incidence_angle") if c in fmt.columns]
    date_cols = [c for c in fmt.columns if _DATE.match(c)] if series else []
    usecols = [xcol, ycol, "mean_velocity", *optional, *date_cols]
    dtypes = {c: ("float64" if c in (xcol, ycol) else "float32") for c in usecols}
    try:
        for df in pd.read_csv(fmt.path, usecols=usecols, dtype=dtypes, chunksize=rows):
            def col(name: str, df: pd.DataFrame = df) -> np.ndarray | None:
                return df[name].to_numpy() if name in df.columns else None

            disp = df[date_cols].to_numpy(dtype="float32") if series else None
            yield PointChunk(df[xcol].to_numpy(), df[ycol].to_numpy(), df["mean_velocity"].to_numpy(),
                             col("mean_velocity_std"), col("temporal_coherence"), col("track_angle"),
                             col("incidence_angle"), disp)
    except ValueError as exc:  # a non-numeric cell, a short row
        raise InputError(f"{fmt.path}: cannot parse the CSV ({exc}); the file is truncated or not an EGMS export") from exc


def track_of(fmt: PointFormat, *, headings: np.ndarray, incidences: np.ndarray, name: str | None = None) -> TrackInfo:
    """The file's viewing geometry: heading from the median ``track_angle``, incidence from the
    median ``incidence_angle`` (degrees, NaN if absent); the name from ``name`` (the user's
    ``--track``), else from the product (``asc_088``, ``vertical``, or ``los``)."""
    heading = _median_angle(headings)
    incidence = float(np.median(incidences)) if incidences.size else float("nan")
    start = str(fmt.dates.min()).replace("-", "") if fmt.dates.size else ""
    end = str(fmt.dates.max()).replace("-", "") if fmt.dates.size else ""
    if name is None:
        if fmt.product == "egms_l3":
            if not fmt.component:
                raise InputError(f"{fmt.path}: an EGMS L3 file whose name does not say its component (…_100km_U_… or "
                                 "…_100km_E_…); pass --track vertical or --track east_west")
            name = fmt.component
        elif fmt.product == "stamps":
            name = "los"
            log.warning("%s: a StaMPS export names no track, track named 'los'; pass --track (e.g. --track asc_128)", fmt.path)
        else:
            name = _egms_track_name(Path(fmt.path), heading)
    if fmt.product == "egms_l3":
        heading = incidence = float("nan")
    return TrackInfo(name=name, heading=heading, incidence=incidence, start_date=start, end_date=end, sources=(fmt.path,))


def _median_angle(a: np.ndarray) -> float:
    """Median of angles (degrees) unwrapped around the first one, in [-180, 180)."""
    a = a[np.isfinite(a)]
    if not a.size:
        return float("nan")
    ref = float(a[0])
    m = ref + float(np.median((a - ref + 180) % 360 - 180))
    return (m + 180) % 360 - 180


def _egms_track_name(p: Path, heading: float) -> str:
    direction = "los" if math.isnan(heading) else ("asc" if math.cos(math.radians(heading)) > 0 else "desc")
    m = re.search(r"EGMS_L2[ab]_(\d{1,3})_", p.name, re.IGNORECASE)
    if direction == "los":
        log.warning("%s: no track_angle values, so the direction is unknown; pass --track", p)
    return f"{direction}_{int(m.group(1)):03d}" if m and direction != "los" else direction


def read_points(path: str | Path, *, track: str | None = None, crs: str | None = None) -> PointTable:
    """Read a whole point product with its time series (all rows in memory: for the velocities
    alone on a large tile, grid it with :func:`insar_slide.pointgrid.grid_points`).

    ``track``: the track name (default: from the product, see the module docstring); ``crs``:
    the CRS to return ``x``/``y`` in (default: the product's, EPSG:3035 for EGMS, EPSG:4326 for
    StaMPS), reprojected with pyproj.
    """
    fmt = sniff(path)
    chunks = list(iter_point_chunks(fmt, series=True))
    if not chunks:
        raise InputError(f"{fmt.path}: no points after the header; nothing to read")

    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(c, name) for c in chunks]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    x, y = cat("x"), cat("y")
    assert x is not None and y is not None
    out_crs = fmt.crs
    if crs is not None:
        x, y = reproject_xy(x, y, src=fmt.crs, dst=crs)
        out_crs = crs
    empty = np.empty(0, dtype="float32")
    info = track_of(fmt, headings=_or(cat("heading"), empty), incidences=_or(cat("incidence"), empty), name=track)
    velocity, disp = cat("velocity"), cat("displacement")
    assert velocity is not None
    return PointTable(
        path=fmt.path, product=fmt.product, crs=out_crs, x=x, y=y, velocity=velocity.astype("float32"),
        velocity_std=cat("velocity_std"), coherence=cat("coherence"), dates=fmt.dates,
        displacement=disp if disp is not None else np.empty((x.size, 0), dtype="float32"), track=info,
    )


def _or(a: np.ndarray | None, default: np.ndarray) -> np.ndarray:
    return default if a is None else a


def reproject_xy(x: np.ndarray, y: np.ndarray, *, src: str, dst: str) -> tuple[np.ndarray, np.ndarray]:
    """Points from CRS ``src`` to ``dst`` (x = easting/longitude, y = northing/latitude)."""
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError

    try:
        same = CRS.from_user_input(src) == CRS.from_user_input(dst)
    except CRSError as exc:
        raise InputError(f"{dst!r}: not a CRS pyproj knows ({exc}); give e.g. EPSG:3035 or EPSG:32633") from exc
    if same:
        return x, y
    tx, ty = Transformer.from_crs(src, dst, always_xy=True).transform(x, y)
    return np.asarray(tx, dtype="float64"), np.asarray(ty, dtype="float64")
