"""All-or-nothing writers: build beside the target, move into place at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import InsarSlideError


def check_target(path: Path, *, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InsarSlideError(f"{path} already exists; pass --overwrite to replace it, or choose another --out")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write into; on success it replaces ``path``.

    On any exception the temporary is removed and ``path`` is left as it was.
    Works for files and directories (Zarr stores).
    """
    target = Path(path)
    check_target(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary keeps the target's extension: some writers (GDAL's GPKG) go by it.
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}{target.suffix}")
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` beside ``path``, then one rename: a killed writer leaves the old file or
    none, never half of one. For files many tasks write concurrently (each its own temporary,
    named ``.<name>.<pid>.<thread>.tmp`` so a restart can sweep leftovers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    write(tmp)
    os.replace(tmp, path)
