"""Readers for InSAR rate products: GeoTIFF, MintPy ``velocity.h5``, LiCSBAS ``vel``.

Each reader opens a product lazily as a :class:`RateSource`: its grid, its track, and a
``read(window)`` that returns float32 mm/yr with NaN where there is no measurement. Nothing
reads the whole raster except :meth:`RateSource.sample`, a decimated look used to check
units and emptiness before any store is created.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from .errors import InputError, UnitsError
from .grid import Grid, PixelWindow
from .mosaic import TrackInfo
from .quality import check_geotiff_layer, licsbas_layers, mintpy_layers
from .sources import UNIT_SCALE, RateSource, ReadOptions, Sign, Units

__all__ = ["UNIT_SCALE", "RateSource", "ReadOptions", "Sign", "Units", "frame_track", "mintpy_geometry", "open_source"]

log = logging.getLogger(__name__)
_MINTPY_UNITS = {"m/year": "m/yr", "m/yr": "m/yr", "cm/year": "cm/yr", "cm/yr": "cm/yr", "mm/year": "mm/yr", "mm/yr": "mm/yr"}

class GeoTiffSource(RateSource):
    band: int = 1

    def _read_raw(self, win: PixelWindow) -> np.ndarray:
        with _rio_open(self.path) as src:
            arr = src.read(1, window=Window(win.col0, win.row0, win.cols, win.rows), masked=True)
        return _masked_to_nan(arr)

    def _sample(self, step: int) -> np.ndarray:
        h, w = self.grid.shape
        with _rio_open(self.path) as src:
            try:
                arr = src.read(1, out_shape=(max(1, h // step), max(1, w // step)), masked=True,
                               resampling=Resampling.nearest)
            except RasterioError as exc:
                raise InputError(f"{self.path}: cannot read the raster ({exc}); the file is truncated or corrupt — re-export it") from exc
        return _masked_to_nan(arr)


class MintPySource(RateSource):
    dataset: str = "velocity"

    def _read_raw(self, win: PixelWindow) -> np.ndarray:
        with _h5_open(self.path) as f:
            return np.asarray(f[self.dataset][win.row0:win.row1, win.col0:win.col1], dtype="float32")

    def _sample(self, step: int) -> np.ndarray:
        with _h5_open(self.path) as f:
            try:
                raw = np.asarray(f[self.dataset][::step, ::step], dtype="float32")
            except (OSError, RuntimeError) as exc:
                raise InputError(f"{self.path}: cannot read '{self.dataset}' ({exc}); the file is truncated or corrupt") from exc
        if not self.keep_zeros:
            raw = raw.copy()
            raw[raw == 0] = np.nan
        return raw


class LiCSBASSource(RateSource):
    def _memmap(self) -> np.memmap:
        h, w = self.grid.shape
        return np.memmap(self.path, dtype="<f4", mode="r", shape=(h, w))

    def _read_raw(self, win: PixelWindow) -> np.ndarray:
        return np.array(self._memmap()[win.row0:win.row1, win.col0:win.col1])

    def _sample(self, step: int) -> np.ndarray:
        return np.array(self._memmap()[::step, ::step])


# ---------------------------------------------------------------------------- opening

def open_source(path: str | Path, opts: ReadOptions | None = None) -> RateSource:
    """Open ``path`` with the reader its format calls for, then check units and content."""
    opts = opts or ReadOptions()
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix in (".h5", ".he5", ".hdf5"):
        src: RateSource = _open_mintpy(p, opts)
    elif suffix in (".tif", ".tiff", ".vrt", ".gtiff"):
        src = _open_geotiff(p, opts)
    elif suffix == ".csv":  # EGMS / StaMPS point products, recognised from the header, gridded
        from .pointgrid import open_point_source
        src = open_point_source(p, opts)
    elif _find_dem_par(p, opts) is not None:
        src = _open_licsbas(p, opts)
    else:
        raise InputError(
            f"{p}: unrecognised format; insar-slide reads GeoTIFF (.tif), MintPy velocity (.h5), LiCSBAS 'vel' "
            "binaries (with EQA.dem_par beside them, or pass --dem-par) and EGMS / StaMPS point exports (.csv)"
        )
    src = _apply_track_overrides(src, opts)
    given = [check_geotiff_layer(k, v, src.grid, product=str(p)) for k in ("coherence", "velocity_std", "dem")
             if (v := getattr(opts, k))]
    if given:  # a layer named by the user replaces the one found beside the product
        src = replace(src, layers=(*[x for x in src.layers if x.name not in {g.name for g in given}], *given))
    check_content(src, declared=opts.units)
    if opts.sign == "away":
        src = replace(src, scale=-src.scale)
    if opts.reference:
        src = replace(src, offset=reference_offset(src, opts.reference))
        log.info("%s: re-referenced (%s): %+.2f mm/yr subtracted", p, opts.reference, src.offset)
    return src


def _apply_track_overrides(src: RateSource, opts: ReadOptions) -> RateSource:
    t = src.track
    t = replace(
        t,
        name=opts.track or t.name,
        heading=opts.heading if opts.heading is not None else t.heading,
        incidence=opts.incidence if opts.incidence is not None else t.incidence,
    )
    track_from = "user" if opts.track else ("default" if t.name == "los" else src.track_from)
    return replace(src, track=t, track_from=track_from)


REFERENCE_RADIUS_PX = 2  # the reference point's neighbourhood: pixels within this many of it


def reference_offset(src: RateSource, how: str) -> float:
    """The rate (mm/yr toward the satellite) to subtract so that the reference reads 0:
    ``median`` — the median of the product's valid pixels (most ground is stable); ``LAT,LON``
    — the median within :data:`REFERENCE_RADIUS_PX` pixels of that point (a MintPy/LiCSBAS
    style reference on stable, coherent ground)."""
    unref = replace(src, offset=0.0)
    if how.strip().lower() == "median":
        if not (vals := (v := unref.sample())[np.isfinite(v)]).size:
            raise InputError(f"{src.path}: no valid pixel to take a median reference from")
        return float(np.median(vals))
    try:
        lat, lon = (float(v) for v in how.split(","))
    except ValueError:
        raise InputError(f"--reference {how!r}: give 'median' or LAT,LON in degrees (e.g. 37.75,14.99)") from None
    from pyproj import Transformer
    x, y = Transformer.from_crs("EPSG:4326", src.grid.crs, always_xy=True).transform(lon, lat)
    finite = math.isfinite(x) and math.isfinite(y)
    col = math.floor((x - src.grid.x0) / src.grid.dx) if finite else -1
    row = math.floor((y - src.grid.y0) / src.grid.dy) if finite else -1
    if not (0 <= row < src.grid.height and 0 <= col < src.grid.width):
        xmin, ymin, xmax, ymax = src.grid.bounds
        raise InputError(f"--reference {lat},{lon} is outside {src.path} (bounds {xmin:.4f}, {ymin:.4f}, {xmax:.4f}, "
                         f"{ymax:.4f} in {src.grid.crs}); choose a point inside the product")
    r0, c0 = max(0, row - REFERENCE_RADIUS_PX), max(0, col - REFERENCE_RADIUS_PX)
    r1, c1 = min(src.grid.height, row + REFERENCE_RADIUS_PX + 1), min(src.grid.width, col + REFERENCE_RADIUS_PX + 1)
    if not (vals := (v := unref.read(PixelWindow(r0, c0, r1 - r0, c1 - c0)))[np.isfinite(v)]).size:
        raise InputError(f"--reference {lat},{lon}: no valid pixel within {REFERENCE_RADIUS_PX} px of it in {src.path}; "
                         "choose a reference on coherent, stable ground")
    return float(np.median(vals))


def check_content(src: RateSource, *, declared: str | None) -> None:
    """Refuse all-NaN rasters and rates whose magnitude does not fit their units.

    Plausible LOS rates are mostly within tens of mm/yr. If the 99th percentile of |rate|
    (after conversion to mm/yr) is below 0.5 mm/yr the values are almost surely in m/yr;
    above 5000 mm/yr they are almost surely already mm/yr but declared as m/yr. An explicit
    ``--units`` is trusted and skips the check.
    """
    sample = src.sample()
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        raise InputError(f"{src.path}: every pixel is NaN or no-data; nothing to ingest (check the mask or nodata value)")
    if declared is not None:
        return
    p99 = float(np.percentile(np.abs(finite), 99))
    if 0 < p99 < 0.5:
        raise UnitsError(
            f"{src.path}: rates look like m/yr, not {src.units} (99th percentile |rate| = {p99:.4g} {src.units}, "
            "implausibly small); pass --units m/yr to convert them, or --units mm/yr if they are right"
        )
    if p99 > 5000:
        raise UnitsError(
            f"{src.path}: rates of {p99:.4g} mm/yr (99th percentile) are implausible for {src.units}; "
            "pass --units mm/yr if the file is already in mm/yr"
        )


def _masked_to_nan(arr: np.ma.MaskedArray) -> np.ndarray:
    out = np.ma.filled(arr.astype("float32"), np.nan)
    return out


def _rio_open(path: str) -> rasterio.DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioError as exc:
        raise InputError(f"{path}: cannot open as a raster ({exc}); the file is truncated, corrupt or not a GeoTIFF") from exc


def _h5_open(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot open as HDF5 ({exc}); the file is truncated or corrupt — copy it again") from exc


def _open_geotiff(p: Path, opts: ReadOptions) -> RateSource:
    with _rio_open(str(p)) as ds:
        crs = opts.crs or (ds.crs.to_string() if ds.crs else None)
        if crs is None:
            raise InputError(f"{p}: the raster has no CRS; pass --crs EPSG:XXXX (e.g. --crs EPSG:4326), or set it with `gdal_edit.py -a_srs`")
        if ds.transform.is_identity:
            raise InputError(f"{p}: the raster has no georeferencing (identity transform); geocode it first")
        grid = Grid.from_transform(crs, ds.transform, ds.height, ds.width, source=str(p))
        tags = ds.tags()
    units = opts.units or _units_from_tag(tags.get("units") or tags.get("UNIT") or "") or "mm/yr"
    track = TrackInfo(name=opts.track or frame_track(p) or "los", sources=(str(p),))
    return GeoTiffSource(str(p), "geotiff", grid, track, units, UNIT_SCALE[units], keep_zeros=True)


def _units_from_tag(tag: str) -> str | None:
    return _MINTPY_UNITS.get(tag.strip().lower())


def _attr(attrs: h5py.AttributeManager, key: str) -> str | None:
    v = attrs.get(key)
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def _open_mintpy(p: Path, opts: ReadOptions) -> RateSource:
    with _h5_open(str(p)) as f:
        if "velocity" not in f:
            raise InputError(f"{p}: no 'velocity' dataset (found {sorted(f.keys())}); pass MintPy's velocity.h5 or geo_velocity.h5")
        a = f.attrs
        shape = f["velocity"].shape
        grid, track, ref = mintpy_geometry(a, p, (shape[0], shape[1]), crs=opts.crs)
        unit_attr = (_attr(a, "UNIT") or "m/year").strip().lower()
        units = opts.units or _MINTPY_UNITS.get(unit_attr)
        if units is None:
            raise InputError(f"{p}: unknown UNIT attribute {unit_attr!r}; pass --units mm/yr|cm/yr|m/yr")
        layers = mintpy_layers(p, shape=(shape[0], shape[1]), datasets=list(f.keys()), unit_scale=UNIT_SCALE[units])
    return MintPySource(str(p), "mintpy", grid, track, units, UNIT_SCALE[units], keep_zeros=opts.keep_zeros, ref_pixel=ref,
                        layers=tuple(layers))


def mintpy_geometry(a: h5py.AttributeManager, p: Path, shape: tuple[int, int], *,
                    crs: str | None = None) -> tuple[Grid, TrackInfo, tuple[int, int] | None]:
    """(grid, track, reference pixel (row, col) or None) of a geocoded MintPy file of ``shape``
    (rows, cols) from its attributes ``a``: the grid from ``X_FIRST/Y_FIRST/X_STEP/Y_STEP``, the
    CRS from ``crs`` or ``EPSG``/``UTM_ZONE``/degree units, the track ``asc_NNN``/``desc_NNN``
    from ``ORBIT_DIRECTION`` and ``trackNumber``, ``HEADING``/``CENTER_INCIDENCE_ANGLE``,
    ``START_DATE``/``END_DATE``, ``REF_Y``/``REF_X``. A radar-coordinate file is refused."""
    missing = [k for k in ("X_FIRST", "Y_FIRST", "X_STEP", "Y_STEP") if _attr(a, k) is None]
    if missing:
        raise InputError(f"{p}: not geocoded (no {', '.join(missing)} attributes); geocode it with MintPy's geocode.py first")
    x0, y0 = float(_attr(a, "X_FIRST") or 0), float(_attr(a, "Y_FIRST") or 0)
    dx, dy = float(_attr(a, "X_STEP") or 0), float(_attr(a, "Y_STEP") or 0)
    from affine import Affine
    grid = Grid.from_transform(crs or _mintpy_crs(a, p), Affine(dx, 0, x0, 0, dy, y0), shape[0], shape[1], source=str(p))
    direction = (_attr(a, "ORBIT_DIRECTION") or "").upper()
    number = _attr(a, "trackNumber") or _attr(a, "relative_orbit")
    prefix = "asc" if direction.startswith("ASC") else "desc" if direction.startswith("DES") else "los"
    name = f"{prefix}_{int(number):03d}" if number and number.isdigit() else prefix
    ref = None
    if _attr(a, "REF_Y") is not None and _attr(a, "REF_X") is not None:
        ref = (int(float(_attr(a, "REF_Y") or 0)), int(float(_attr(a, "REF_X") or 0)))
    track = TrackInfo(name=name, heading=float(_attr(a, "HEADING") or "nan"),
                      incidence=float(_attr(a, "CENTER_INCIDENCE_ANGLE") or "nan"),
                      start_date=_attr(a, "START_DATE") or "", end_date=_attr(a, "END_DATE") or "", sources=(str(p),))
    return grid, track, ref


def _mintpy_crs(a: h5py.AttributeManager, p: Path) -> str:
    epsg = _attr(a, "EPSG")
    if epsg and epsg.strip().isdigit():
        return f"EPSG:{int(epsg)}"
    zone = _attr(a, "UTM_ZONE")
    if zone:
        m = re.fullmatch(r"(\d{1,2})\s*([NS])", zone.strip().upper())
        if m:
            return f"EPSG:{(32600 if m.group(2) == 'N' else 32700) + int(m.group(1))}"
    if (_attr(a, "X_UNIT") or "").lower().startswith("deg") or (_attr(a, "Y_UNIT") or "").lower().startswith("deg"):
        return "EPSG:4326"
    raise InputError(f"{p}: no EPSG, UTM_ZONE or degree X_UNIT attribute, so the CRS is unknown; pass --crs EPSG:XXXX")


def _find_dem_par(p: Path, opts: ReadOptions) -> Path | None:
    if opts.dem_par:
        d = Path(opts.dem_par)
        if not d.is_file():
            raise InputError(f"--dem-par {d}: no such file")
        return d
    for cand in (p.parent / "EQA.dem_par", p.parent.parent / "info" / "EQA.dem_par",
                 p.parent / "info" / "EQA.dem_par", p.parent.parent / "EQA.dem_par"):
        if cand.is_file():
            return cand
    for geoc in sorted(p.parent.parent.parent.glob("GEOC*/EQA.dem_par")):
        return geoc
    return None


def frame_track(p: Path) -> str | None:
    """``desc_124`` from a LiCSAR frame id such as ``124D_04854_171313`` in the path."""
    m = re.search(r"(\d{3})([AD])_\d{5}_\d{6}", str(p.resolve()))
    return f"{'asc' if m.group(2) == 'A' else 'desc'}_{int(m.group(1)):03d}" if m else None


def _parse_dem_par(d: Path) -> dict[str, str]:
    out = {}
    for line in d.read_text(errors="replace").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip().split()[0] if v.strip() else ""
    return out


def _open_licsbas(p: Path, opts: ReadOptions) -> RateSource:
    dem_par = _find_dem_par(p, opts)
    assert dem_par is not None
    par = _parse_dem_par(dem_par)
    try:
        width, nlines = int(par["width"]), int(par["nlines"])
        clat, clon = float(par["corner_lat"]), float(par["corner_lon"])
        plat, plon = float(par["post_lat"]), float(par["post_lon"])
    except (KeyError, ValueError) as exc:
        raise InputError(f"{dem_par}: incomplete EQA.dem_par (missing or bad {exc}); pass the right one with --dem-par") from exc
    expected = width * nlines * 4
    size = p.stat().st_size
    if size != expected:
        raise InputError(
            f"{p}: {size} bytes, but {dem_par} says {nlines} x {width} float32 = {expected} bytes; "
            "the file is truncated or belongs to another grid"
        )
    from affine import Affine
    # EQA corner_lat/lon are pixel *centres*: shift half a pixel to the corner.
    transform = Affine(plon, 0, clon - plon / 2, 0, plat, clat - plat / 2)
    grid = Grid.from_transform(opts.crs or "EPSG:4326", transform, nlines, width, source=str(p))
    frame = frame_track(p)
    name = frame or "los"
    if not frame and not opts.track:
        log.warning("%s: no LiCSAR frame id in the path, track named %r; pass --track to name it", p, name)
    units = opts.units or "mm/yr"
    track = TrackInfo(name=name, sources=(str(p),))
    return LiCSBASSource(str(p), "licsbas", grid, track, units, UNIT_SCALE[units], keep_zeros=True,
                         layers=tuple(licsbas_layers(p, (nlines, width))))
