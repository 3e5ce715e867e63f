"""Reading windows straight from the Zarr mosaic, in whichever process needs them.

Each process (a Dask worker, or the client) opens a store once and keeps it; a window read
touches only the chunks under it. No Dask graph is involved: a worker task reads its own
window with plain lazy indexing, so window data never passes through the scheduler.
A window of a coarse level (``factor`` > 1) reads only the native pixels under it and takes
their block mean (:func:`.scales.block_mean`).

A read that fails (a chunk that does not decode) is explained by :func:`read_problem`: which
chunks of which variable under the window are bad, in one line with the fix.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..core.scales import block_mean, level_shape
from ..grid import PixelWindow
from ..mosaic import RATE, open_basin
from ..quality import apply_mask

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


_QUIET: list[bool] = []


def _quiet_failed_read_leftovers() -> None:
    """When one chunk request of a read fails, zarr's other requests of that read are left
    pending and, when collected, print "Task was destroyed but it is pending!" and an ignored
    coroutine exception each — dozens of lines per window on a failing store, after the read
    already raised (and was reported in one line). Silence exactly those (tasks and coroutines
    of zarr, fsspec, s3fs, aiobotocore), once per process."""
    if _QUIET:
        return
    import logging
    import sys

    _QUIET.append(True)

    libs = ("/zarr/", "/fsspec/", "/s3fs/", "/aiobotocore/")
    leftovers = ("Task was destroyed but it is pending", "Future exception was never retrieved",
                 "Task exception was never retrieved")
    marks = (*libs, "aiohttp", "ServerDisconnected", "ClientConnector", "ClientOSError", "EndpointConnectionError")

    class _DropPending(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            msg = record.getMessage()
            return not (msg.startswith(leftovers) and any(m in msg for m in marks))

    logging.getLogger("asyncio").addFilter(_DropPending())
    previous = sys.unraisablehook

    def hook(u: Any) -> None:
        code = getattr(getattr(u, "object", None), "cr_code", None)  # a storage library's abandoned coroutine
        if code is not None and any(p in code.co_filename for p in libs):
            return
        previous(u)

    sys.unraisablehook = hook


def rate_dataset(mosaic: str, group: str | None = None) -> xr.Dataset:
    """The mosaic (or one version group) opened without Dask: lazy indexing reads only the
    chunks a slice touches."""
    key = (mosaic, group, _stamp(mosaic, group))
    with _LOCK:
        ds = _STORES.get(key)
        if ds is None:
            _quiet_failed_read_leftovers()
            open_basin(mosaic)  # the contract check and its clear errors
            ds = xr.open_zarr(f"{mosaic.rstrip('/')}/{group}" if group else mosaic, consolidated=None, chunks=None)
            for old in [k for k in _STORES if k[:2] == (mosaic, group)]:
                del _STORES[old]
            _STORES[key] = ds
        return ds


def read_window(mosaic: str, track: str, win: PixelWindow, group: str | None = None, *,
                min_coherence: float | None = None) -> np.ndarray:
    """``los_rate[track]`` over ``win`` as float32 (rows, cols); with ``min_coherence``, NaN
    where the quality mask drops the pixel (:func:`..quality.quality_mask`: the track's
    ``coherence`` below it, or its producer's ``mask`` 0)."""
    ds = rate_dataset(mosaic, group)
    rs, cs = win.slices()
    out = np.asarray(ds[RATE].sel(track=track).isel(y=rs, x=cs).values, dtype=np.float32)
    if min_coherence is not None:
        layers = {n: np.asarray(ds[n].sel(track=track).isel(y=rs, x=cs).values) for n in ("coherence", "mask") if n in ds}
        out = apply_mask(out, layers.get("coherence"), layers.get("mask"), min_coherence)
    return out


def bad_chunks(mosaic: str, track: str, win: PixelWindow, group: str | None = None) -> list[str]:
    """Keys (``los_rate/c/<t>/<i>/<j>``) of the chunks under ``win`` (native pixels) that cannot
    be read, found by reading each on its own."""
    arr = rate_dataset(mosaic, group)[RATE]
    chunks = arr.encoding.get("chunks") or arr.encoding.get("preferred_chunks") or (1, arr.sizes["y"], arr.sizes["x"])
    cy, cx = (int(chunks["y"]), int(chunks["x"])) if isinstance(chunks, dict) else (int(chunks[1]), int(chunks[2]))
    t = [str(v) for v in arr["track"].values].index(track)
    bad = []
    for i in range(win.row0 // cy, -(-win.row1 // cy)):
        for j in range(win.col0 // cx, -(-win.col1 // cx)):
            try:
                np.asarray(arr.isel(track=t, y=slice(i * cy, (i + 1) * cy), x=slice(j * cx, (j + 1) * cx)).values)
            except Exception:  # the codec's own error type (RuntimeError, ValueError, ...)
                bad.append(f"{RATE}/c/{t}/{i}/{j}")
    return bad


#: What to do about a chunk that does not read, and about a store that does not answer.
READ_FIX = "re-ingest the mosaic or restore the chunk, then rerun the same command (finished windows are kept)"
REACH_FIX = "check the endpoint, network and credentials, then rerun the same command (finished windows are kept)"


def unreachable(exc: BaseException) -> bool:
    """Whether a failed read is the store not answering (network, endpoint, timeout), not bad data."""
    names = " ".join(f"{c.__module__}.{c.__name__}" for c in type(exc).__mro__)
    return isinstance(exc, (OSError, TimeoutError)) or any(
        w in names for w in ("Connection", "Timeout", "Endpoint", "botocore", "aiohttp"))


def read_problem(mosaic: str, track: str, win: PixelWindow, group: str | None, factor: int,
                 exc: BaseException) -> tuple[str, str]:
    """(what failed, what to do) for a failed read of ``win`` (in the level's pixels): the store
    and its bad chunk(s) and :data:`READ_FIX`, or, when the store does not answer, that and
    :data:`REACH_FIX` (without probing chunk by chunk, which would wait out every retry again)."""
    store = f"{mosaic.rstrip('/')}/{group}" if group else mosaic
    first = " ".join(str(exc).split())[:300]
    if unreachable(exc):
        return f"{store} does not answer ({type(exc).__name__}: {first})", REACH_FIX
    native = PixelWindow(win.row0 * factor, win.col0 * factor, win.rows * factor, win.cols * factor)
    try:
        bad = bad_chunks(mosaic, track, native, group)
    except Exception:  # the store itself does not open any more
        bad = []
    where = (f"chunk {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")) if bad else f"'{RATE}'"
    return f"{store}: {where} cannot be read ({type(exc).__name__}: {first})", READ_FIX


def read_level(mosaic: str, track: str, win: PixelWindow, group: str | None = None, factor: int = 1, *,
               min_coherence: float | None = None) -> np.ndarray:
    """``los_rate[track]`` over ``win`` of the level at block-mean ``factor`` (``win`` in that
    level's pixels), as float32 (rows, cols); ``factor`` 1 is :func:`read_window`."""
    if factor == 1:
        return read_window(mosaic, track, win, group, min_coherence=min_coherence)
    arr = rate_dataset(mosaic, group)[RATE]
    shape = (arr.sizes["y"], arr.sizes["x"])
    if win.row1 > level_shape(shape, factor)[0] or win.col1 > level_shape(shape, factor)[1]:
        raise ValueError(f"window {win} is outside the level of factor {factor} of a {shape} grid")
    native = PixelWindow(win.row0 * factor, win.col0 * factor, min(win.rows * factor, shape[0] - win.row0 * factor),
                         min(win.cols * factor, shape[1] - win.col0 * factor))
    return block_mean(read_window(mosaic, track, native, group, min_coherence=min_coherence), factor, (win.rows, win.cols))
