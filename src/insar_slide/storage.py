"""Object storage: ``s3://…`` (or any fsspec URL) for the mosaic and the outputs.

Reading goes through fsspec everywhere (xarray/zarr, geopandas/pyarrow): a URL is opened where
a path would be. Credentials and endpoint come from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``), which
botocore reads with no config at all, or from a config's ``storage_options`` (``endpoint_url``,
``anon``, ``profile``, ``key``/``secret``…), which :func:`use_options` installs as fsspec's
per-protocol defaults (``fsspec.config.conf``) in every process that reads or writes — the
client, and each Dask worker through a worker plugin (``run.cluster.StorageOptions``).
:func:`redact` keeps secrets out of logs, hashes and file metadata.

**Writing is staged**: an output is written to a local temporary first, exactly as for a local
target, and only then sent to the store (:func:`staged`) — a file in one PUT (an object appears
whole or not at all), a Zarr store object by object with its root ``zarr.json`` last, so a store
whose upload was cut short has no root metadata and is refused as incomplete, never read as
whole. A run's working folder (``run_dir``) stays on a file system shared by the workers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .atomic import check_target as atomic_check_target
from .errors import InsarSlideError

#: storage_options keys whose values are never logged or stored.
SECRET_WORDS = ("secret", "key", "token", "password", "credential")


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str | Path:
    """``base / part / …`` for a path, ``base/part/…`` for a URL."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts if p)])
    return Path(base).joinpath(*parts)


def with_suffix(target: str | Path, suffix: str) -> str | Path:
    """``target`` with its extension replaced (a URL keeps its scheme and bucket)."""
    if is_url(target):
        s = str(target)
        head, _, name = s.rpartition("/")
        stem = name.rsplit(".", 1)[0] if "." in name else name
        return f"{head}/{stem}{suffix}"
    return Path(target).with_suffix(suffix)


def redact(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` with every secret value (keys containing secret/key/token/password) masked."""
    out: dict[str, Any] = {}
    for k, v in (options or {}).items():
        if isinstance(v, Mapping):
            out[k] = redact(v)
        elif any(w in k.lower() for w in SECRET_WORDS) and k.lower() not in ("endpoint_url",):
            out[k] = "***"
        else:
            out[k] = v
    return out


def use_options(options: Mapping[str, Any] | None, *urls: str | Path) -> None:
    """Make ``options`` fsspec's defaults for the protocols of ``urls`` (in this process)."""
    if not options:
        return
    import fsspec.config

    for url in urls:
        if is_url(url):
            protocol = str(url).split("://", 1)[0]
            fsspec.config.conf[protocol] = {**fsspec.config.conf.get(protocol, {}), **dict(options)}


def filesystem(url: str | Path) -> tuple[Any, str]:
    """(fsspec file system, path inside it) of ``url``."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


def exists(target: str | Path) -> bool:
    if not is_url(target):
        return Path(target).exists()
    fs, path = filesystem(target)
    return bool(fs.exists(path))


def read_text(target: str | Path) -> str:
    if not is_url(target):
        return Path(target).read_text()
    fs, path = filesystem(target)
    return str(fs.cat_file(path).decode())


def stamp(target: str | Path) -> str:
    """Changes when the object (or local file) at ``target`` is replaced; "" if unknown."""
    try:
        if not is_url(target):
            return str(Path(target).stat().st_mtime_ns)
        fs, path = filesystem(target)
        info = fs.info(path)
        return str(info.get("ETag") or info.get("LastModified") or info.get("mtime") or "")
    except (OSError, ValueError):
        return ""


def check_target(target: str | Path, *, overwrite: bool) -> None:
    """:func:`insar_slide.atomic.check_target`, for a path or a URL."""
    if not is_url(target):
        atomic_check_target(Path(target), overwrite=overwrite)
    elif not overwrite and exists(target):
        raise InsarSlideError(f"{target} already exists; pass --overwrite to replace it, or choose another --out")


def _upload(local: Path, target: str) -> None:
    fs, path = filesystem(target)
    if local.is_dir():
        if fs.exists(path):
            fs.rm(path, recursive=True)
        root_meta = local / "zarr.json"
        files = sorted(p for p in local.rglob("*") if p.is_file() and p != root_meta)
        if files:  # concurrently (fsspec's async batch), then the root metadata alone, last
            fs.put([str(p) for p in files], [f"{path}/{p.relative_to(local).as_posix()}" for p in files])
        if root_meta.exists():
            fs.put_file(str(root_meta), f"{path}/zarr.json")
    else:
        fs.put_file(str(local), path)


@contextlib.contextmanager
def staged(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a local temporary path to write into; on success it becomes ``target``.

    A local ``target`` is :func:`insar_slide.atomic.atomic_path`. A URL is written locally
    first, then uploaded (module docstring); on any exception nothing is uploaded."""
    if not is_url(target):
        with atomic_path(target, overwrite=overwrite) as tmp:
            yield tmp
        return
    check_target(target, overwrite=overwrite)
    name = str(target).rstrip("/").rsplit("/", 1)[-1]
    folder = Path(tempfile.mkdtemp(prefix="insar-slide-stage-"))
    try:
        tmp = folder / name
        yield tmp
        try:
            _upload(tmp, str(target))
        except OSError as exc:
            raise InsarSlideError(f"cannot write {target} ({exc}); check the endpoint and credentials "
                                  "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, … or storage_options) and rerun") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def local_copy_dir() -> Path:
    """A folder for local working copies (``INSAR_SLIDE_CACHE``, else ~/.cache/insar-slide)."""
    return Path(os.environ.get("INSAR_SLIDE_CACHE") or Path.home() / ".cache" / "insar-slide")
