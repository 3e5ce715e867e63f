"""Reading windows straight from the Zarr mosaic, in whichever process needs them.

Each process (a Dask worker, or the client) opens a store once and keeps it; a window read
touches only the chunks under it. No Dask graph is involved: a worker task reads its own
window with plain lazy indexing, so window data never passes through the scheduler.
A window of a coarse level (``factor`` > 1) reads only the native pixels under it and takes
their block mean (:func:`.scales.block_mean`).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import xarray as xr

from ..grid import PixelWindow
from ..mosaic import RATE, open_basin
from .scales import block_mean, level_shape

_STORES: dict[tuple[str, str | None, int], xr.Dataset] = {}
_LOCK = threading.Lock()


def _stamp(mosaic: str, group: str | None) -> int:
    """Changes when a local store (or version group) is rewritten (its metadata is replaced)."""
    if "://" in mosaic:
        return 0
    try:
        return (Path(mosaic) / (group or "") / "zarr.json").stat().st_mtime_ns
    except OSError:
        return 0


def rate_dataset(mosaic: str, group: str | None = None) -> xr.Dataset:
    """The mosaic (or one version group) opened without Dask: lazy indexing reads only the
    chunks a slice touches."""
    key = (mosaic, group, _stamp(mosaic, group))
    with _LOCK:
        ds = _STORES.get(key)
        if ds is None:
            open_basin(mosaic)  # the contract check and its clear errors
            ds = xr.open_zarr(f"{mosaic.rstrip('/')}/{group}" if group else mosaic, consolidated=None, chunks=None)
            for old in [k for k in _STORES if k[:2] == (mosaic, group)]:
                del _STORES[old]
            _STORES[key] = ds
        return ds


def read_window(mosaic: str, track: str, win: PixelWindow, group: str | None = None) -> np.ndarray:
    """``los_rate[track]`` over ``win`` as float32 (rows, cols)."""
    arr = rate_dataset(mosaic, group)[RATE]
    rs, cs = win.slices()
    return np.asarray(arr.sel(track=track).isel(y=rs, x=cs).values, dtype=np.float32)


def read_level(mosaic: str, track: str, win: PixelWindow, group: str | None = None, factor: int = 1) -> np.ndarray:
    """``los_rate[track]`` over ``win`` of the level at block-mean ``factor`` (``win`` in that
    level's pixels), as float32 (rows, cols); ``factor`` 1 is :func:`read_window`."""
    if factor == 1:
        return read_window(mosaic, track, win, group)
    arr = rate_dataset(mosaic, group)[RATE]
    shape = (arr.sizes["y"], arr.sizes["x"])
    if win.row1 > level_shape(shape, factor)[0] or win.col1 > level_shape(shape, factor)[1]:
        raise ValueError(f"window {win} is outside the level of factor {factor} of a {shape} grid")
    native = PixelWindow(win.row0 * factor, win.col0 * factor, min(win.rows * factor, shape[0] - win.row0 * factor),
                         min(win.cols * factor, shape[1] - win.col0 * factor))
    return block_mean(read_window(mosaic, track, native, group), factor, (win.rows, win.cols))
