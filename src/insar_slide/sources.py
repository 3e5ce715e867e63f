"""What a rate product is once opened: :class:`RateSource` (its grid, track, units and a
windowed ``read``) and :class:`ReadOptions` (what the user says of it). The formats' readers
(:mod:`.readers`, :mod:`.points`) subclass :class:`RateSource`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .grid import Grid, PixelWindow
from .mosaic import TrackInfo
from .quality import Layer

Units = Literal["mm/yr", "cm/yr", "m/yr"]
Sign = Literal["toward", "away"]
UNIT_SCALE: dict[str, float] = {"mm/yr": 1.0, "cm/yr": 10.0, "m/yr": 1000.0}


@dataclass(frozen=True)
class ReadOptions:
    """What the user may say about a product that its metadata lacks or gets wrong."""

    units: Units | None = None
    crs: str | None = None
    track: str | None = None
    heading: float | None = None
    incidence: float | None = None
    keep_zeros: bool = False
    dem_par: str | None = None
    sign: Sign = "toward"  # what a positive stored value means: motion toward or away from the satellite
    reference: str | None = None  # re-reference: "median" (stable-ground median) or "LAT,LON"
    coherence: str | None = None  # quality layers as GeoTIFFs (:mod:`.quality`), over those found beside it
    velocity_std: str | None = None
    dem: str | None = None
    cell_size: float | None = None  # point products (:mod:`.pointgrid`): cell side in grid-CRS units
    grid_crs: str | None = None  # point products: the CRS to grid the points in


@dataclass(frozen=True)
class RateSource:
    """A rate product opened lazily. ``scale`` turns the stored values into mm/yr toward the
    satellite (negative for a product whose positive sign is away from it); ``offset`` (mm/yr)
    is subtracted after, to re-reference it. ``track_from`` says where its track name came from:
    the user (``--track``), the product's metadata, or a default (``los``: unknown)."""

    path: str
    product: str
    grid: Grid
    track: TrackInfo
    units: str
    scale: float
    keep_zeros: bool = True
    ref_pixel: tuple[int, int] | None = None
    offset: float = 0.0
    track_from: Literal["user", "metadata", "default"] = "metadata"
    layers: tuple[Layer, ...] = ()  # quality layers on this source's grid (:mod:`.quality`)

    def read(self, win: PixelWindow) -> np.ndarray:
        """Rates in mm/yr (float32, NaN = no data) of ``win`` in this source's own grid."""
        raw = self._read_raw(win).astype("float32", copy=False)
        out = raw * np.float32(self.scale) if self.scale != 1.0 else raw.copy()
        if self.offset:
            out -= np.float32(self.offset)
        if not self.keep_zeros:
            zero = raw == 0
            if self.ref_pixel is not None:
                rr, rc = self.ref_pixel[0] - win.row0, self.ref_pixel[1] - win.col0
                if 0 <= rr < win.rows and 0 <= rc < win.cols:
                    zero[rr, rc] = False
            out[zero] = np.nan
        return out

    def sample(self, max_side: int = 1024) -> np.ndarray:
        """A decimated copy of the whole raster (mm/yr), at most ``max_side`` pixels a side."""
        step = max(1, math.ceil(max(self.grid.shape) / max_side))
        return self._sample(step) * np.float32(self.scale) - np.float32(self.offset)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def read_layer(self, name: str, win: PixelWindow) -> np.ndarray:
        """Quality layer ``name`` over ``win`` of this source's grid (float32, NaN = no value);
        all NaN when the source has no such layer."""
        for layer in self.layers:
            if layer.name == name:
                return layer.read(win, self.grid)
        return np.full((win.rows, win.cols), np.nan, dtype="float32")

    # -- per-format hooks
    def _read_raw(self, win: PixelWindow) -> np.ndarray:
        raise NotImplementedError

    def _sample(self, step: int) -> np.ndarray:
        """Stored values (not scaled), every ``step``-th pixel."""
        return self._read_raw(PixelWindow(0, 0, *self.grid.shape))[::step, ::step].astype("float32")
