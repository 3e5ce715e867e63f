"""The window plan, the reading part: the pure plan of :mod:`..core.tiling`, annotated from
cheap statistics read once per core before any model call.

Reasons, checked in this order: ``outside_aoi`` (the core misses the area of interest; nothing
is read), ``no_data`` (valid share of the core below ``skip.min_valid_fraction``), ``stable``
(fewer than ``skip.min_hot_pixels`` core pixels reach ``skip.min_abs_rate``).

**Input hashes.** The same single read of each core also hashes (SHA-256) the pieces of it that
windows read: the whole core for its own window, and the halo-wide strips and corners along
its edges for its neighbours'. A window's ``input_hash`` combines the hashes of the pieces its
read area is made of, so it changes exactly when a byte the model would read changes — known
before any window is read. ``run`` compares it with the stored one and neither reads nor
schedules an unchanged window: an update reads each core once, not every window with its
halo (which decodes up to nine chunks).

**Scales.** Every coarse level (the block mean by ``f``, :mod:`..core.scales`) is read the
same way in its own pixel frame, its cores read once (each read touching only the native
pixels under it) and hashed as block means.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from ..core.scales import level_shape, pixel_resample
from ..core.tiling import Window, WindowPlan, classify, combine_hashes, plan_windows, read_sources
from ..errors import ConfigError, InputError
from ..grid import Grid, PixelWindow
from ..manifest import check_chunks
from ..mosaic import grid_of, open_basin, resolve_version_group
from ..progress import Progress, steps_of
from .config import AreaOfInterest, RunConfig
from .io import read_level, read_problem

__all__ = ["Window", "WindowPlan", "aoi_geometry", "fit_scales", "make_plan", "thread_map", "window_stats"]

log = logging.getLogger(__name__)

def aoi_geometry(aoi: AreaOfInterest, crs: str) -> shapely.Geometry:
    """The area of interest as one geometry in ``crs`` (a buffered river line, or polygons)."""
    path = Path(aoi.river or aoi.polygons or "")
    if not path.exists():
        raise InputError(f"aoi: {path} does not exist; point aoi.river / aoi.polygons at an existing file")
    try:
        if path.suffix.lower() == ".wkt":
            gs = gpd.GeoSeries([shapely.from_wkt(path.read_text())], crs="EPSG:4326")
        else:
            gs = gpd.read_file(path).geometry
    except Exception as exc:
        raise InputError(f"aoi: cannot read {path} ({exc})") from exc
    if gs.crs is None:
        raise InputError(f"aoi: {path} has no CRS; set one (e.g. save it with EPSG:4326)")
    if aoi.river:
        local = gs.estimate_utm_crs()
        return gs.to_crs(local).buffer(aoi.buffer_km * 1000).to_crs(crs).union_all()
    return gs.to_crs(crs).union_all()


def piece_hash(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def window_stats(mosaic: str, track: str, cores: list[PixelWindow], min_abs_rate: float,
                 group: str | None = None, pieces: list[list[PixelWindow]] | None = None, factor: int = 1,
                 min_coherence: float | None = None) -> list[tuple[int, int, list[str], str]]:
    """Per core of the level at ``factor``, read straight from Zarr: (valid pixels, pixels with
    |rate| ≥ min_abs_rate, the hash of each of its ``pieces`` — rectangles in the core's own
    pixel coordinates, "" ) — or, for a core that does not read, (-1, -1, [], the problem)."""
    out: list[tuple[int, int, list[str], str]] = []
    for k, w in enumerate(cores):
        try:
            a = read_level(mosaic, track, w, group, factor, min_coherence=min_coherence)
        except Exception as exc:  # a corrupt chunk: the plan marks the windows that need it
            out.append((-1, -1, [], "; ".join(read_problem(mosaic, track, w, group, factor, exc))))
            continue
        hashes = [piece_hash(a[p.slices()]) for p in (pieces[k] if pieces else [])]
        out.append((int(np.isfinite(a).sum()), int((np.abs(a) >= min_abs_rate).sum()), hashes, ""))
    return out


Mapper = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], Sequence[Any]]


MIN_LEVEL_PX = 64  # a coarser level has too few pixels to show a slide


#: Above this side (px) of the resampled read area, run warns that the model's memory grows.
MAX_MODEL_SIDE = 4096


def window_resample(cfg: RunConfig, grid: Grid, meta: dict[str, Any] | None = None) -> tuple[float, float]:
    """The (rows, cols) factors by which ``run`` resamples every window to the model's training
    pixel (``inference.match_pixel``; :func:`~insar_slide.core.scales.pixel_resample`), from
    the checkpoint's metadata ``meta`` (read from ``cfg.model`` when None); ``(1.0, 1.0)`` when
    off, within tolerance or without a model file. Warns when the model would see windows
    larger than :data:`MAX_MODEL_SIDE` px (a 100 m product read at 30 m), naming a window
    that keeps them at the size it sees at its own pixel."""
    from ..model.checkpoint import read_metadata, training_pixel_m

    if not cfg.inference.match_pixel or (meta is None and not cfg.model_path.is_file()):
        return (1.0, 1.0)
    f = pixel_resample(grid.pixel_size_m(), training_pixel_m(meta if meta is not None else read_metadata(cfg.model_path)))
    side = (cfg.window + 2 * cfg.halo) * max(f)
    if side > MAX_MODEL_SIDE:
        log.warning("windows of %d px (window %d + halo) are resampled by %.3g: the model sees %d px a side and needs "
                    "about %.0fx its memory; set `window: %d` to keep the model's windows at their usual size",
                    cfg.window + 2 * cfg.halo, cfg.window, max(f), side, max(f) ** 2, max(64, round(cfg.window / max(f) / 64) * 64))
    return f


def fit_scales(cfg: RunConfig, grid: Grid) -> RunConfig:
    """``cfg`` with the scales this mosaic can take. Every coarse level must be at least
    ``MIN_LEVEL_PX`` a side (one smaller than a window is one ragged window: it sees the whole
    basin at once). A factor the config sets that gives a smaller level is a config error; the
    *default* scales instead drop it, with a warning, so that a small product (a single valley
    or volcano) runs at its finer levels on the defaults."""
    too_coarse = [f for f in cfg.scales if f > 1 and min(level_shape(grid.shape, f)) < MIN_LEVEL_PX]
    if not too_coarse:
        return cfg
    rows, cols = level_shape(grid.shape, too_coarse[0])
    if "scales" in cfg.model_fields_set:
        raise ConfigError(f"scales: factor {too_coarse[0]} gives a {rows} x {cols} px level of the {grid.height} x {grid.width} "
                          f"px mosaic, under {MIN_LEVEL_PX} px a side, too coarse to show a slide; drop the factor")
    kept = [f for f in cfg.scales if f not in too_coarse]
    log.warning("scales: the default's x%d level of this %d x %d px mosaic would be %d x %d px, under %d px a side; "
                "detecting at %s", too_coarse[0], grid.height, grid.width, rows, cols, MIN_LEVEL_PX, kept)
    return cfg.model_copy(update={"scales": kept})


def make_plan(cfg: RunConfig, *, stats_map: Mapper | None = None, stats_batch: int = 16,
              progress: Progress | None = None) -> WindowPlan:
    """The pure plan of every scale (:func:`..core.tiling.plan_windows`, with the AOI), then
    each core that a window inside the AOI reads, read once for the skip rules and hashes.

    ``stats_map(fn, args)`` runs ``fn(*a)`` for each ``a`` in ``args`` — on the Dask cluster
    in ``run`` (each worker reads its own cores from Zarr); in a local thread pool by default.
    ``progress`` hears the batches of cores read, as ``plan`` (``plan xF`` per scale when several).
    """
    ds = open_basin(cfg.mosaic, cfg.version)
    group = resolve_version_group(cfg.mosaic, cfg.version)
    check_chunks(cfg.mosaic, group)  # a chunk lost since ingest would read as no data
    grid = grid_of(ds)
    names = [str(t) for t in ds["track"].values]
    tracks = cfg.tracks or names
    unknown = [t for t in tracks if t not in names]
    if unknown:
        raise ConfigError(f"tracks: {unknown} not in {cfg.mosaic} (it has {names})")
    cfg = fit_scales(cfg, grid)
    geom = aoi_geometry(cfg.aoi, grid.crs) if cfg.aoi is not None else None
    plan = plan_windows(grid, tracks, window=cfg.window, halo=cfg.halo, scales=cfg.scales, aoi=geom)
    windows: list[Window] = []
    for f in plan.scales:
        stage = "plan" if len(plan.scales) == 1 else f"plan x{f}"
        windows += _annotate_level(plan, cfg, group, f, stats_map or thread_map, stats_batch, steps_of(progress, stage))
    return plan.with_windows(windows)


#: Batches of cores read between two progress reports (each a barrier of the mapper).
PROGRESS_EVERY = 32


def _annotate_level(plan: WindowPlan, cfg: RunConfig, group: str | None, factor: int, mapper: Mapper,
                    stats_batch: int, step: Callable[[int, int], None]) -> list[Window]:
    """The windows of one level with their statistics, status and input hash."""
    cores, reads = plan.level(factor)
    level = [w for w in plan.windows if w.scale == factor]
    inside = [w.status == "pending" for w in level[:len(cores)]]  # the AOI test is the same on every track
    sources = read_sources(cores, reads, cfg.window)
    pieces: dict[int, list[PixelWindow]] = {}  # per core: the pieces windows inside the AOI read
    for i in (k for k, ok in enumerate(inside) if ok):
        for j, piece in sources[i]:
            if piece not in pieces.setdefault(j, []):
                pieces[j].append(piece)
    jobs: list[tuple[str, list[int]]] = []
    for tr in plan.tracks:
        idx = sorted(pieces)  # the cores inside the AOI and their neighbours (for the halos)
        jobs += [(tr, idx[k:k + stats_batch]) for k in range(0, len(idx), stats_batch)]
    args = [(cfg.mosaic, tr, [cores[i] for i in ii], cfg.skip.min_abs_rate, group, [pieces[i] for i in ii], factor,
             cfg.min_coherence) for tr, ii in jobs]
    results: list[Any] = []
    for k in range(0, len(args), PROGRESS_EVERY):
        results += mapper(window_stats, args[k:k + PROGRESS_EVERY])
        step(len(results), len(args))
    stats: dict[tuple[str, int], tuple[int, int]] = {}
    hashes: dict[str, dict[tuple[int, PixelWindow], str]] = {tr: {} for tr in plan.tracks}
    broken: dict[tuple[str, int], str] = {}  # cores that do not read: every window reading them is unreadable
    for (tr, ii), res in zip(jobs, results, strict=True):
        for i, (n_valid, n_hot, hh, problem) in zip(ii, res, strict=True):
            stats[(tr, i)] = (n_valid, n_hot)
            if problem:
                broken[(tr, i)] = problem
                continue
            hashes[tr].update({(i, piece): h for piece, h in zip(pieces[i], hh, strict=True)})
    rules = cfg.skip
    out: list[Window] = []
    for k, w in enumerate(level):  # per track, in tiling order
        i = k % len(cores)
        if w.status == "outside_aoi":
            out.append(w)
            continue
        n_valid, n_hot = stats[(w.track, i)]
        problem = next((broken[(w.track, j)] for j, _ in sources[i] if (w.track, j) in broken), "")
        if problem:
            what, fix = problem.split("; ", 1)
            out.append(replace(w, status="unreadable", error=f"{what}, needed by window {w.key}; {fix}"))
            continue
        status = classify(n_valid, n_hot, w.core.rows * w.core.cols, min_valid_fraction=rules.min_valid_fraction,
                          min_hot_pixels=rules.min_hot_pixels)
        out.append(replace(w, status=status, n_valid=n_valid, n_hot=n_hot,
                           input_hash=combine_hashes(cores, sources[i], hashes[w.track]) if status == "run" else ""))
    return out


def thread_map(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], threads: int = 2) -> list[Any]:
    """``[fn(*a) for a in args]`` in a local thread pool (``plan`` without a cluster)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda a: fn(*a), args))
