"""The chunk manifest of a mosaic store: which chunks ingest wrote, checked against the store.

Zarr reads a missing chunk as the fill value (NaN here), so a chunk lost after ingest — a
failed copy, a half-synced bucket — silently becomes "no data" (the plan then skips its
windows as no_data). At write time every array's present chunks are recorded as a bitmap over
its chunk grid in the root attribute :data:`MANIFEST_ATTR`; :func:`missing_chunks` compares the
store with it (``info --verify``, and every plan). Chunks absent at write time (all-NaN, which
zarr does not store) are absent in the manifest too.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from .errors import StoreError
from .storage import filesystem, is_url, join

#: The sub-group of a store that holds its later versions (each a store of its own).
VERSIONS_GROUP = "versions"
MANIFEST_ATTR = "insar_slide_chunks"


def _chunk_grid(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    return tuple(-(-int(n) // int(c)) for n, c in zip(shape, chunks, strict=True))


def _present(store: str | Path, array: str, grid: tuple[int, ...]) -> np.ndarray:
    """Which chunks of ``array`` (a path inside ``store``) exist, as a bool array over ``grid``
    (one element for a 0-d array, whose single chunk is the file ``c``)."""
    fs, root = filesystem(store if is_url(store) else Path(store).resolve().as_posix())
    prefix = f"{root.rstrip('/')}/{array}/c"
    have = np.zeros(grid or (1,), bool)
    found = fs.find(prefix) if fs.exists(prefix) else []
    for f in found:
        parts = f[len(prefix):].strip("/").split("/") if f != prefix else []
        if not grid:
            have[0] = not parts
        elif len(parts) == len(grid) and all(x.isdigit() for x in parts):
            idx = tuple(int(x) for x in parts)
            if all(i < g for i, g in zip(idx, grid, strict=True)):
                have[idx] = True
    return have


def _arrays(store: str | Path) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every array of the store (not of its later versions): path → (shape, chunk shape)."""
    root = zarr.open_group(str(store), mode="r")
    return {name: (tuple(a.shape), tuple(a.chunks)) for name, a in root.members(max_depth=None)
            if isinstance(a, zarr.Array) and not name.startswith(f"{VERSIONS_GROUP}/")}


def chunk_manifest(store: str | Path) -> dict[str, dict[str, Any]]:
    """Per array: its chunk grid and the present chunks (a base64 bitmap, C order)."""
    out = {}
    for name, (shape, chunks) in sorted(_arrays(store).items()):
        grid = _chunk_grid(shape, chunks)
        bits = np.packbits(_present(store, name, grid).ravel())
        out[name] = {"grid": list(grid), "present": base64.b64encode(bits.tobytes()).decode()}
    return out


def missing_chunks(store: str | Path, group: str | None = None) -> list[str] | None:
    """Keys (``<array>/c/i/j/k``) of chunks the manifest records that the store lacks now; None
    when the store has no manifest (written before it existed)."""
    where = join(store, group) if group else store
    raw = zarr.open_group(str(where), mode="r").attrs.get(MANIFEST_ATTR)
    if raw is None:
        return None
    manifest = cast(dict[str, Any], raw)  # {variable: {"grid": [...], "present": base64}}, as written
    lost = []
    for name, rec in manifest.items():
        grid = tuple(rec["grid"])
        n = int(np.prod(grid)) if grid else 1
        want = np.unpackbits(np.frombuffer(base64.b64decode(rec["present"]), np.uint8))[:n].astype(bool)
        have = _present(where, name, grid).ravel()
        for k in np.flatnonzero(want & ~have):
            idx = np.unravel_index(int(k), grid) if grid else ()
            lost.append(f"{name}/c" + "".join(f"/{int(i)}" for i in idx))
    return lost


def check_chunks(store: str | Path, group: str | None = None) -> None:
    """A one-line :class:`StoreError` when chunks recorded at ingest are missing."""
    lost = missing_chunks(store, group)
    if lost:
        where = join(store, group) if group else store
        raise StoreError(f"{where}: {len(lost)} chunk(s) written at ingest are missing (first: {lost[0]}); zarr would "
                         "read them as no data — restore them or re-ingest (`insar-slide info --verify` lists them)")


