"""Quality layers of rate products and the quality mask (DESIGN.md contract 1, optional variables).

A product's **layers** are rasters on the product's own grid that say how far to trust its
rates, found beside the product or named by the user:

- ``coherence`` (0–1): MintPy's temporal coherence, ``temporalCoherence.h5`` (or ``geo_…``)
  beside ``velocity.h5``; LiCSBAS's ``coh_avg`` (mean coherence of the interferograms) beside
  ``vel``; EGMS's ``temporal_coherence`` (cell median, :mod:`.pointgrid`);
- ``velocity_std`` (mm/yr): dataset ``velocityStd`` of MintPy's ``velocity.h5`` (×1000 for
  m/year); LiCSBAS ``vstd``; EGMS ``mean_velocity_std``;
- ``dem`` (m): the ``height`` of MintPy's ``geometryGeo.h5`` beside it; LiCSBAS ``hgt``;
- ``mask`` (1 = kept by the producer's own checks, 0 = masked): LiCSBAS ``mask``;
- ``point_count``: points of a point product in each cell (:mod:`.pointgrid`).

The first three may instead be GeoTIFFs named at ingest (``--coherence``, ``--velocity-std``,
``--dem``); each is read onto the product's grid (warped, bilinear, when its grid differs).

The **quality mask** of a run: a rate pixel is dropped (read as NaN) where its track's
``coherence`` is below ``min_coherence``, or where the producer's ``mask`` is 0. A pixel with
no coherence value (NaN, or a mosaic without the layer) is kept: no layer, no mask. The default
threshold is ``run.config.DEFAULT_MIN_COHERENCE`` (0.1, measured on the real products).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import InputError
from .grid import Grid, PixelWindow

#: The layers a mosaic may carry, with their units: those of :data:`PER_TRACK` are per track
#: ``(track, y, x)``; ``dem`` is one ``(y, x)`` layer.
LAYER_UNITS: dict[str, str] = {"coherence": "1", "velocity_std": "mm/yr", "dem": "m", "mask": "1", "point_count": "1"}
PER_TRACK = ("coherence", "velocity_std", "mask", "point_count")
LONG_NAMES = {
    "coherence": "coherence of the rate estimate (MintPy: temporal coherence; LiCSBAS: mean interferometric coherence)",
    "velocity_std": "standard deviation of the LOS rate",
    "dem": "elevation",
    "mask": "producer's quality mask (1 = kept, 0 = masked)",
    "point_count": "points of the point product in the cell (EGMS, StaMPS; 0 = none)",
}

@dataclass(frozen=True)
class Layer:
    """Where one quality layer of a product is stored.

    ``fmt``: ``hdf5`` (``dataset`` of ``path``), ``binary`` (a float32 little-endian raster of
    ``shape``, LiCSBAS) or ``geotiff``. ``scale`` turns stored values into the layer's units;
    ``zero_is_nodata``: an exact 0.0 is no value (MintPy fills masked pixels with 0)."""

    name: str
    path: str
    fmt: Literal["hdf5", "binary", "geotiff"]
    dataset: str = ""
    shape: tuple[int, int] = (0, 0)
    scale: float = 1.0
    zero_is_nodata: bool = False

    def read(self, win: PixelWindow, grid: Grid) -> np.ndarray:
        """The layer over ``win`` of the product's ``grid`` (float32, NaN = no value)."""
        if self.fmt == "hdf5":
            import h5py
            with h5py.File(self.path, "r") as f:
                out = np.asarray(f[self.dataset][win.row0:win.row1, win.col0:win.col1], dtype="float32")
        elif self.fmt == "binary":
            mm = np.memmap(self.path, dtype="<f4", mode="r", shape=self.shape)
            out = np.array(mm[win.row0:win.row1, win.col0:win.col1], dtype="float32")
        else:
            out = _read_geotiff(self.path, win, grid)
        if self.zero_is_nodata:
            out[out == 0] = np.nan
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out


def _read_geotiff(path: str, win: PixelWindow, grid: Grid) -> np.ndarray:
    """Band 1 of ``path`` over ``win`` of ``grid``: a plain windowed read when the file is on
    ``grid``'s lattice, else warped onto it (bilinear, NaN-aware)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    with rasterio.open(path) as src:
        same = (src.crs is not None and Grid.from_transform(src.crs.to_string(), src.transform, src.height, src.width)
                .aligned_with(grid))
        if same:
            r, c = grid.offset_of(Grid.from_transform(src.crs.to_string(), src.transform, src.height, src.width))
            arr = src.read(1, window=Window(win.col0 - c, win.row0 - r, win.cols, win.rows), boundless=True,
                           masked=True, fill_value=src.nodata if src.nodata is not None else 0)
            return np.ma.filled(arr.astype("float32"), np.nan)
        with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                       resampling=Resampling.bilinear, src_nodata=src.nodata, nodata=np.nan) as vrt:
            arr = vrt.read(1, window=Window(win.col0, win.row0, win.cols, win.rows), masked=True)
            return np.ma.filled(arr.astype("float32"), np.nan)


def check_geotiff_layer(name: str, path: str | Path, grid: Grid, *, product: str) -> Layer:
    """A GeoTIFF given for ``name`` (``--coherence`` / ``--velocity-std`` / ``--dem``), checked
    to open, to have a CRS and to overlap the product's ``grid``."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.warp import transform_bounds

    p = Path(path)
    flag = "--" + name.replace("_", "-")
    if not p.is_file():
        raise InputError(f"{flag} {p}: no such file")
    try:
        with rasterio.open(p) as src:
            if src.crs is None:
                raise InputError(f"{flag} {p}: the raster has no CRS; set it with `gdal_edit.py -a_srs EPSG:XXXX`")
            b = transform_bounds(src.crs, grid.crs, *src.bounds, densify_pts=21)
    except RasterioError as exc:
        raise InputError(f"{flag} {p}: cannot open as a raster ({exc}); give a GeoTIFF") from exc
    xmin, ymin, xmax, ymax = grid.bounds
    if b[2] <= xmin or b[0] >= xmax or b[3] <= ymin or b[1] >= ymax:
        raise InputError(f"{flag} {p} does not overlap the product it belongs to ({product}); "
                         "give the layer of the same area")
    return Layer(name, str(p), "geotiff")


# ---------------------------------------------------------------------------- discovery


def mintpy_layers(velocity: Path, *, shape: tuple[int, int], datasets: list[str], unit_scale: float) -> list[Layer]:
    """The layers of a MintPy ``velocity.h5``: ``velocityStd`` inside it, temporal coherence and
    height from the files MintPy writes beside it (same grid: same ``shape``)."""
    import h5py

    out = []
    if "velocityStd" in datasets:
        out.append(Layer("velocity_std", str(velocity), "hdf5", "velocityStd", scale=unit_scale, zero_is_nodata=True))
    geo = "geo_" if velocity.name.startswith("geo_") else ""
    for name, files, dataset in (("coherence", (f"{geo}temporalCoherence.h5", "temporalCoherence.h5",
                                                "geo_temporalCoherence.h5"), "temporalCoherence"),
                                 ("dem", ("geometryGeo.h5", f"{geo}geometryRadar.h5"), "height")):
        for fname in dict.fromkeys(files):
            cand = velocity.parent / fname
            if not cand.is_file():
                continue
            try:
                with h5py.File(cand, "r") as f:
                    ok = dataset in f and f[dataset].shape == shape
            except OSError:
                ok = False
            if ok:
                out.append(Layer(name, str(cand), "hdf5", dataset, zero_is_nodata=name == "coherence"))
                break
    return out


def licsbas_layers(vel: Path, shape: tuple[int, int]) -> list[Layer]:
    """The layers beside a LiCSBAS ``vel`` (float32 binaries of the same ``shape``)."""
    expected = shape[0] * shape[1] * 4
    out = []
    for name, fname in (("coherence", "coh_avg"), ("velocity_std", "vstd"), ("mask", "mask"), ("dem", "hgt")):
        cand = vel.parent / fname
        if cand.is_file() and cand.stat().st_size == expected:
            out.append(Layer(name, str(cand), "binary", shape=shape))
    return out


# ---------------------------------------------------------------------------- the mask


def quality_mask(coherence: np.ndarray | None, mask: np.ndarray | None, min_coherence: float | None) -> np.ndarray | None:
    """Pixels to drop (bool, the layers' shape): coherence below ``min_coherence`` or the
    producer's mask 0; ``None`` when nothing is dropped (no layers, or ``min_coherence`` None)."""
    if min_coherence is None or (coherence is None and mask is None):
        return None
    drop = np.zeros((coherence if coherence is not None else mask).shape, bool)  # type: ignore[union-attr]
    if coherence is not None:
        drop |= coherence < min_coherence  # NaN compares False: kept
    if mask is not None:
        drop |= mask == 0
    return drop


def apply_mask(rate: np.ndarray, coherence: np.ndarray | None, mask: np.ndarray | None,
               min_coherence: float | None) -> np.ndarray:
    """``rate`` with NaN where :func:`quality_mask` drops the pixel (a new array; ``rate`` itself
    when nothing is dropped). Shapes broadcast as numpy does (a block of Dask ``map_blocks`` too)."""
    drop = quality_mask(coherence, mask, min_coherence)
    return rate if drop is None else np.where(drop, rate.dtype.type(np.nan), rate)
