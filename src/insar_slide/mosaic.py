"""The basin mosaic store (DESIGN.md contract 1): build, write, open, describe.

A Zarr v3 group with ``los_rate`` (float32, dims ``(track, y, x)``, mm/yr, positive toward
the satellite, NaN = no measurement), per-track ``heading`` / ``incidence`` coordinates,
CRS and transform written the rioxarray way, chunks aligned to the window grid, consolidated
metadata, and block-mean overviews in sub-groups ``overviews/<factor>`` for quick looks.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr

from . import zarr_compat  # noqa: F401  (zarr under python -O)
from .errors import StoreError
from .grid import Grid
from .manifest import MANIFEST_ATTR, VERSIONS_GROUP, chunk_manifest
from .progress import Progress, dask_tasks
from .storage import exists, filesystem, is_url, join, staged
from .version import __version__

log = logging.getLogger(__name__)



RATE = "los_rate"
OVERVIEW_GROUP = "overviews"
OVERVIEW_FACTOR = 4
OVERVIEW_MIN_SIZE = 256


@dataclass(frozen=True)
class TrackInfo:
    """One viewing geometry: ``asc_099``, ``desc_062``…; angles in degrees (NaN if unknown)."""

    name: str
    heading: float = float("nan")
    incidence: float = float("nan")
    start_date: str = ""
    end_date: str = ""
    sources: tuple[str, ...] = field(default_factory=tuple)


def build_dataset(
    rate: da.Array,
    grid: Grid,
    tracks: Sequence[TrackInfo],
    *,
    extra: Mapping[str, da.Array] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Wrap a lazy ``(track, y, x)`` rate array and optional layers (``extra``: 2-D ``(y, x)``
    or per track ``(track, y, x)``) as a mosaic Dataset."""
    if rate.ndim != 3 or rate.shape[1:] != grid.shape or rate.shape[0] != len(tracks):
        raise ValueError(f"rate shape {rate.shape} does not match {len(tracks)} tracks on a {grid.shape} grid")
    coords = {
        "track": ("track", np.array([t.name for t in tracks], dtype=object)),
        "heading": ("track", np.array([t.heading for t in tracks], dtype="float64"), {"units": "degree", "long_name": "satellite heading, clockwise from north"}),
        "incidence": ("track", np.array([t.incidence for t in tracks], dtype="float64"), {"units": "degree", "long_name": "incidence angle at the scene centre"}),
        "start_date": ("track", np.array([t.start_date for t in tracks], dtype=object)),
        "end_date": ("track", np.array([t.end_date for t in tracks], dtype=object)),
        "y": ("y", grid.y_coords()),
        "x": ("x", grid.x_coords()),
    }
    data_vars: dict[str, Any] = {
        RATE: (("track", "y", "x"), rate.astype("float32"), {
            "units": "mm/yr",
            "long_name": "line-of-sight deformation rate",
            "positive": "toward the satellite",
        }),
    }
    for name, arr in (extra or {}).items():  # (y, x) layers, or (track, y, x) per-track layers
        data_vars[name] = (("track", "y", "x") if arr.ndim == 3 else ("y", "x"), arr.astype("float32"))
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update({
        "insar_slide_version": __version__,
        "sources": json.dumps({t.name: list(t.sources) for t in tracks}),
        **(attrs or {}),
    })
    ds = ds.rio.write_crs(grid.crs).rio.write_transform(grid.transform).set_coords("spatial_ref")
    ds["x"].attrs.update({"units": "metre" if not grid.is_geographic() else "degrees_east"})
    ds["y"].attrs.update({"units": "metre" if not grid.is_geographic() else "degrees_north"})
    return ds


def write_mosaic(ds: xr.Dataset, path: str | Path, *, chunk: int, overwrite: bool = False,
                 progress: Progress | None = None, stage: str = "write") -> str | Path:
    """Write ``ds`` as a consolidated Zarr v3 store, all or nothing, with overviews (``path``
    may be a URL: written locally, then uploaded root metadata last, :func:`.storage.staged`).

    ``ds`` may be lazy (Dask): it is computed chunk by chunk while writing, so memory is
    bounded by a few chunks per thread whatever the mosaic's size. ``progress`` hears the
    tasks done as ``stage`` (computing and writing the chunks).
    """
    target = path if is_url(path) else Path(path)
    ds = ds.copy()
    for var in list(ds.data_vars):
        chunks = {d: (1 if d == "track" else chunk) for d in ds[var].dims}
        ds[var] = ds[var].chunk(chunks)
        ds[var].encoding.pop("chunks", None)
        # List spatial_ref among the coordinates so that a plain ``xarray.open_zarr``
        # gives ``ds.los_rate.rio.crs`` (CF encoding would otherwise drop it).
        coords = [str(c) for c in ds[var].coords if c not in ds[var].dims]
        ds[var].encoding["coordinates"] = " ".join(sorted(coords))
    with staged(target, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        with dask_tasks(progress, stage):
            ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=True)
        _write_overviews(tmp)  # block means of the written chunks: a fraction of the above
        zarr.open_group(str(tmp), mode="a").attrs[MANIFEST_ATTR] = chunk_manifest(tmp)
        zarr.consolidate_metadata(str(tmp))
        # Check it opens as a user would before moving it into place.
        xr.open_zarr(tmp, consolidated=True).close()
    return target


def _write_overviews(store: Path) -> None:
    """Block-mean pyramids of ``los_rate`` (factors 4, 16, 64, …) for quick looks.

    Each level is computed from the previous one, so the full-resolution array is read once.
    Coordinates are the exact centres of the (padded) blocks on the full-resolution lattice.
    """
    full = xr.open_zarr(store, consolidated=False)
    x0 = float(full["x"][0]) - float(full["x"][1] - full["x"][0]) / 2 if full.sizes["x"] > 1 else float(full["x"][0])
    y0 = float(full["y"][0]) - float(full["y"][1] - full["y"][0]) / 2 if full.sizes["y"] > 1 else float(full["y"][0])
    dx = float(full["x"][1] - full["x"][0]) if full.sizes["x"] > 1 else 1.0
    dy = float(full["y"][1] - full["y"][0]) if full.sizes["y"] > 1 else -1.0
    src = full[RATE].drop_vars([c for c in full[RATE].coords if c not in ("track", "x", "y")])
    factor = 1
    while min(src.sizes["y"], src.sizes["x"]) >= 2 * OVERVIEW_FACTOR:
        level = src.coarsen(y=OVERVIEW_FACTOR, x=OVERVIEW_FACTOR, boundary="pad").mean()
        factor *= OVERVIEW_FACTOR
        level = level.assign_coords(
            x=x0 + (np.arange(level.sizes["x"]) + 0.5) * dx * factor,
            y=y0 + (np.arange(level.sizes["y"]) + 0.5) * dy * factor,
        ).chunk({"track": 1, "y": 1024, "x": 1024})
        level.attrs = {"units": "mm/yr", "overview_factor": factor}
        level.encoding = {}
        group = f"{OVERVIEW_GROUP}/{factor}"
        level.to_dataset(name=RATE).to_zarr(store, group=group, mode="w", zarr_format=3, consolidated=False)
        src = xr.open_zarr(store, group=group, consolidated=False)[RATE]
        if min(src.sizes["y"], src.sizes["x"]) < OVERVIEW_MIN_SIZE:
            break


def open_basin(path: str | Path, version: str | None = None) -> xr.Dataset:
    """Open a basin mosaic lazily (Dask-backed), checking it follows contract 1.

    ``version``: ``None`` opens the store's root (its first version, what plain
    ``xarray.open_zarr`` opens); ``"latest"`` the newest version; else a version label
    (see :func:`list_versions`).
    """
    p = str(path)
    if not is_url(p) and not Path(p).exists():
        raise StoreError(f"no basin mosaic at {p}; create one with `insar-slide ingest` or `insar-slide simulate`")
    if is_url(p):
        try:
            found = exists(join(p, "zarr.json"))
        except Exception as exc:  # botocore, aiohttp and OS errors: the endpoint does not answer as a store
            raise StoreError(f"cannot reach {p} ({type(exc).__name__}: {exc}); check the endpoint and credentials "
                             "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, … or storage_options)") from exc
        if not found:
            raise StoreError(f"no basin mosaic at {p} (no zarr.json there: missing, or an upload cut short); "
                             "write it again with `insar-slide ingest --out`")
    group = version_group(p, version) if version is not None else None
    try:
        # a version group is opened on its own (its consolidated metadata), not through the root's
        ds = xr.open_zarr(f"{p.rstrip('/')}/{group}" if group else p, consolidated=None)
    except Exception as exc:  # zarr raises several types for a non-store
        raise StoreError(f"{p} is not a readable Zarr store ({exc}); was it written by insar-slide?") from exc
    if RATE not in ds or ds[RATE].dims != ("track", "y", "x"):
        raise StoreError(f"{p} has no '{RATE}(track, y, x)' variable; it is not a basin mosaic")
    return ds


# ---------------------------------------------------------------------------- versions
#
# A basin re-processed over a new time span is a new *version* of the mosaic. The store's root
# is the first version (so contract 1 holds unchanged for every reader); each later version is
# a complete mosaic group (same grid, CRS and tracks, its own overviews and time span) under
# ``versions/<label>``, written atomically beside the others. Earlier versions stay readable:
# ``xarray.open_zarr(store, group="versions/<label>")``.



def list_versions(path: str | Path) -> list[dict[str, Any]]:
    """The store's versions, oldest first: ``label``, ``group`` (None = root), ``time_span``."""
    root = zarr.open_group(str(path), mode="r")
    first = {"label": str(root.attrs.get("version_label", "base")), "group": None,
             "time_span": root.attrs.get("time_span", ""), "added": root.attrs.get("version_added", "")}
    out = [first]
    later = []
    for name in _version_names(path):  # what is stored, not only what the root's metadata lists
        attrs = zarr.open_group(str(join(path, VERSIONS_GROUP, name)), mode="r").attrs
        later.append({"label": name, "group": f"{VERSIONS_GROUP}/{name}",
                      "time_span": attrs.get("time_span", ""), "added": attrs.get("version_added", "")})
    out += sorted(later, key=lambda v: (str(v["added"]), v["label"]))
    return out


def _version_names(path: str | Path) -> list[str]:
    """Labels of the complete version groups stored under ``versions/`` (a folder or prefix)."""
    if not is_url(path):
        vdir = Path(path) / VERSIONS_GROUP
        return [c.name for c in vdir.iterdir() if not c.name.startswith(".") and (c / "zarr.json").exists()] \
            if vdir.is_dir() else []
    fs, inner = filesystem(join(path, VERSIONS_GROUP))
    if not fs.exists(inner):
        return []
    names = [str(e).rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(inner, detail=False)]
    return [n for n in names if not n.startswith(".") and n != "zarr.json" and fs.exists(f"{inner}/{n}/zarr.json")]


def version_group(path: str | Path, version: str) -> str | None:
    versions = list_versions(path)
    if version == "latest":
        return versions[-1]["group"]
    for v in versions:
        if v["label"] == version:
            return v["group"]
    raise StoreError(f"{path} has no version {version!r}; it has {[v['label'] for v in versions]}")


def resolve_version_group(path: str | Path, version: str | None) -> str | None:
    """The group of a config's ``version`` (``RunConfig.version``): None or empty → the root
    (None); ``"latest"`` or a label → :func:`version_group`."""
    return version_group(path, version) if version else None


def version_path(path: str | Path, label: str) -> str | Path:
    """Where a new version labelled ``label`` is written (checked against the root's grid)."""
    if not label or "/" in label or label.startswith(".") or label in ("latest", "base"):
        raise StoreError(f"version label {label!r} is not usable; use e.g. the time span, '2018-2021'")
    return join(path, VERSIONS_GROUP, label)


def write_version(ds: xr.Dataset, path: str | Path, label: str, *, chunk: int, overwrite: bool = False,
                  progress: Progress | None = None, stage: str = "write") -> str | Path:
    """Add ``ds`` as version ``label`` of the basin at ``path`` (same grid, CRS and tracks)."""
    from datetime import UTC, datetime

    if not exists(path):
        raise StoreError(f"no basin at {path} to add version {label!r} to; write the first version without a label")
    target = version_path(path, label)
    check_same_grid(ds, path)
    ds = ds.copy()
    ds.attrs.update(version_label=label, version_added=datetime.now(UTC).isoformat())
    write_mosaic(ds, target, chunk=chunk, overwrite=overwrite, progress=progress, stage=stage)
    register_version(path)
    return target


def register_version(path: str | Path) -> None:
    """Re-consolidate the root's metadata after a version group was moved into place, so that
    plain ``xarray.open_zarr(store, group="versions/<label>")`` finds it. The root's own
    arrays are untouched; if this step fails, the version is still readable by insar-slide
    (it lists ``versions/`` on disk)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        zarr.open_group(str(join(path, VERSIONS_GROUP)), mode="a", zarr_format=3)  # a group, not a bare folder
        zarr.consolidate_metadata(str(path))


def check_same_grid(ds: xr.Dataset, path: str | Path) -> None:
    """A new version must share the root's grid, CRS and tracks."""
    base = open_basin(path)
    a, b = grid_of(base), grid_of(ds)
    if a != b:
        raise StoreError(f"the new version's grid ({b.crs}, {b.height} x {b.width} px at {b.dx:g}, origin {b.x0:g}, {b.y0:g}) "
                         f"differs from {path}'s ({a.crs}, {a.height} x {a.width} px at {a.dx:g}, origin {a.x0:g}, {a.y0:g}); "
                         "reproject it onto the basin grid first, or start a new basin")
    ta, tb = [str(t) for t in base["track"].values], [str(t) for t in ds["track"].values]
    if ta != tb:
        raise StoreError(f"the new version has tracks {tb}, {path} has {ta}; a version must cover the same tracks")


def grid_of(ds: xr.Dataset) -> Grid:
    """The :class:`Grid` of a mosaic Dataset."""
    t = ds.rio.transform(recalc=False)
    crs = ds.rio.crs
    if crs is None:
        raise StoreError("the mosaic has no CRS (no 'spatial_ref' variable); re-ingest it")
    return Grid.from_transform(crs.to_string(), t, ds.sizes["y"], ds.sizes["x"], source="mosaic")


def overview_factors(path: str | Path) -> list[int]:
    """Overview factors stored beside the mosaic (ascending), [] if none."""
    try:
        root = zarr.open_group(str(path), mode="r")
        grp = root[OVERVIEW_GROUP]
    except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError):
        return []
    if not isinstance(grp, zarr.Group):
        return []
    return sorted(int(k) for k in grp.group_keys())


def open_overview(path: str | Path, factor: int) -> xr.DataArray:
    return xr.open_zarr(str(path), group=f"{OVERVIEW_GROUP}/{factor}", consolidated=False)[RATE]


# ---------------------------------------------------------------------------- describe

_HIST_RANGE = (-2000.0, 2000.0)
_HIST_BIN = 0.05


def describe(ds: xr.Dataset, *, percentiles: Sequence[float] = (1, 5, 25, 50, 75, 95, 99),
             min_coherence: float | None = None) -> dict[str, Any]:
    """Summary of a mosaic, computed lazily with Dask in one pass over the data.

    With ``min_coherence`` and quality layers (:mod:`.quality`), each track's
    ``masked_fraction``: the share of its valid pixels that the quality mask drops.

    Percentiles come from a histogram with 0.05 mm/yr bins over ±2000 mm/yr (values outside
    are counted in the edge bins), so they are exact to 0.05 mm/yr with bounded memory.
    """
    grid = grid_of(ds)
    rate = ds[RATE].data
    nbins = round((_HIST_RANGE[1] - _HIST_RANGE[0]) / _HIST_BIN)
    edges = np.linspace(*_HIST_RANGE, nbins + 1)
    hists, valids, dropped = [], [], []
    quality = {n: ds[n].data for n in ("coherence", "mask") if n in ds} if min_coherence is not None else {}
    for i in range(rate.shape[0]):
        band = rate[i]
        clipped = da.clip(band, _HIST_RANGE[0], _HIST_RANGE[1] - _HIST_BIN / 2)
        h, _ = da.histogram(clipped, bins=edges)
        hists.append(h)
        valids.append(da.isfinite(band).sum())
        drop = da.zeros(band.shape, bool, chunks=band.chunks)
        if "coherence" in quality:
            drop = da.logical_or(drop, quality["coherence"][i] < min_coherence)
        if "mask" in quality:
            drop = da.logical_or(drop, quality["mask"][i] == 0)
        dropped.append(da.logical_and(drop, da.isfinite(band)).sum())
    hists_np, valids_np, dropped_np = da.compute(hists, valids, dropped)
    centres = (edges[:-1] + edges[1:]) / 2
    tracks = []
    for i, name in enumerate(ds["track"].values.tolist()):
        h = np.asarray(hists_np[i])
        n = int(valids_np[i])
        cdf = np.cumsum(h)
        pct: dict[str, float | None] = {}
        for q in percentiles:
            if n == 0:
                pct[f"p{q:g}"] = None
            else:
                k = int(np.searchsorted(cdf, q / 100 * n, side="left"))
                pct[f"p{q:g}"] = round(float(centres[min(k, nbins - 1)]), 2)
        above10 = int(h[np.abs(centres) >= 10].sum())
        tracks.append({
            "name": str(name),
            "heading_deg": _num(ds["heading"].values[i]) if "heading" in ds.coords else None,
            "incidence_deg": _num(ds["incidence"].values[i]) if "incidence" in ds.coords else None,
            "time_span": "/".join(str(ds[k].values[i]) for k in ("start_date", "end_date"))
            if "start_date" in ds.coords and "end_date" in ds.coords and str(ds["start_date"].values[i]) else "",
            "valid_fraction": round(n / (grid.height * grid.width), 4),
            "fraction_abs_ge_10": round(above10 / n, 4) if n else None,
            "masked_fraction": (round(int(dropped_np[i]) / n, 4) if n else None) if quality else None,
            "percentiles_mm_yr": pct,
        })
    dask_chunks = ds[RATE].data.chunks
    chunks = ds[RATE].encoding.get("chunks") or tuple(c[0] for c in dask_chunks)
    return {
        "tracks": tracks,
        "grid": {
            "shape": list(grid.shape),
            "crs": grid.crs,
            "pixel_size": [grid.dx, -grid.dy],
            "pixel_size_m": [round(v, 2) for v in grid.pixel_size_m()],
            "bounds": list(grid.bounds),
        },
        "extent_km2": round(grid.area_km2(), 2),
        "min_coherence": min_coherence,
        "chunks": list(chunks),
        "n_chunks": math.prod([len(c) for c in dask_chunks]),
        "variables": sorted(str(v) for v in ds.data_vars),
        "attrs": {k: v for k, v in ds.attrs.items() if k in ("insar_slide_version", "product", "seed", "time_span")},
    }


def _num(v: Any) -> float | None:
    f = float(v)
    return None if np.isnan(f) else round(f, 3)
