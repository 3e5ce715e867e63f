"""The window plan: cores that tile the mosaic exactly, halos around them, and per (track,
window) whether the model runs or why not — decided from cheap statistics before any model call.

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

**Scales.** With ``scales: [1, f, …]`` every coarse level (the block mean by ``f``, see
:mod:`.scales`) is planned the same way in its own pixel frame — same window, halo and skip
rules, its cores read once (each read touching only the native pixels under it) and hashed as
block means — and its windows carry ``scale = f`` and keys ``<track>/x<f>_r…_c…``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from ..errors import ConfigError, InputError
from ..grid import Grid, PixelWindow, chunk_windows
from ..mosaic import check_chunks, grid_of, open_basin, resolve_version_group
from .config import AreaOfInterest, RunConfig
from .io import read_level, read_problem
from .scales import level_shape

REASONS = ("outside_aoi", "no_data", "stable")


@dataclass(frozen=True)
class Window:
    """One unit of model work: a core of the tiling and the halo-padded window read around it."""

    track: str
    index: tuple[int, int]  # (row, col) of the core in the tiling
    core: PixelWindow
    read: PixelWindow
    status: str  # "run", one of REASONS, or "unreadable" (a chunk under it does not decode: ``error``)
    n_valid: int = -1
    n_hot: int = -1
    input_hash: str = ""  # of the bytes ``read`` covers (module docstring); "" when not read
    scale: int = 1  # block-mean factor of its level; core, read and index are in that level's pixels
    error: str = ""  # why an "unreadable" window cannot be read (one line, with the fix)

    @property
    def key(self) -> str:
        level = f"x{self.scale}_" if self.scale != 1 else ""
        return f"{self.track}/{level}r{self.index[0]:05d}_c{self.index[1]:05d}"

    @property
    def native_index(self) -> tuple[int, int]:
        """(row, col) in the native tiling of the first native core under this window's core."""
        return (self.index[0] * self.scale, self.index[1] * self.scale)

    def native_core(self) -> PixelWindow:
        """The core in native pixels (at the grid's ragged edge it may reach past the grid)."""
        f = self.scale
        return PixelWindow(self.core.row0 * f, self.core.col0 * f, self.core.rows * f, self.core.cols * f)


@dataclass
class WindowPlan:
    grid: Grid
    tracks: list[str]
    window: int
    halo: int
    n_rows: int
    n_cols: int
    windows: list[Window] = field(default_factory=list)
    scales: tuple[int, ...] = (1,)
    tilings: dict[int, tuple[int, int]] = field(default_factory=dict)  # per scale: (rows, cols) of cores

    def to_run(self) -> list[Window]:
        return [w for w in self.windows if w.status == "run"]

    def unreadable(self) -> list[Window]:
        """Windows whose input does not read (a corrupt chunk): the run does the others, then fails."""
        return [w for w in self.windows if w.status == "unreadable"]

    def counts(self, scale: int | None = None) -> dict[str, int]:
        """Windows by status, over every scale (or of one)."""
        ws = [w for w in self.windows if scale is None or w.scale == scale]
        c = Counter(w.status for w in ws)
        out = {"planned": len(ws), "run": c.get("run", 0), **{f"skipped_{r}": c.get(r, 0) for r in REASONS}}
        if c.get("unreadable"):
            out["unreadable"] = c["unreadable"]
        return out

    def scale_counts(self) -> dict[str, dict[str, int]]:
        """Per scale (``"x2"``…; ``"x1"`` is native): :meth:`counts`; empty for a single-scale plan."""
        return {f"x{f}": self.counts(f) for f in self.scales} if len(self.scales) > 1 else {}

    def pixel_km2(self) -> float:
        return abs(self.grid.dx * self.grid.dy) / 1e6 if not self.grid.is_geographic() else float("nan")

    def summary(self) -> dict[str, Any]:
        out = {"grid": f"{self.grid.height} x {self.grid.width} px", "tracks": self.tracks,
               "window": self.window, "halo": self.halo, "tiling": f"{self.n_rows} x {self.n_cols}",
               "model_pixels_per_core_pixel": self.read_overhead(), **self.counts(), "by_status": self._by_status()}
        if len(self.scales) > 1:
            out["scales"] = {f"x{f}": {"tiling": "{} x {}".format(*self.tilings[f]), **self.counts(f),
                                       "by_status": self._by_status(f)} for f in self.scales}
        return out

    def _by_status(self, scale: int | None = None) -> dict[str, dict[str, Any]]:
        """Windows and core area (km², native) by status, over every scale or of one."""
        px = self.pixel_km2()
        by: dict[str, dict[str, Any]] = {}
        for w in self.windows:
            if scale is not None and w.scale != scale:
                continue
            d = by.setdefault(w.status, {"windows": 0, "km2": 0.0})
            d["windows"] += 1
            d["km2"] += w.core.rows * w.core.cols * px * w.scale ** 2
        return by

    def read_overhead(self) -> float:
        run = self.to_run()
        core = sum(w.core.rows * w.core.cols for w in run)
        read = sum(w.read.rows * w.read.cols for w in run)
        return read / core if core else float("nan")

    def format(self) -> str:
        s = self.summary()
        px = self.pixel_km2()
        lines = [f"grid {s['grid']}, tracks {', '.join(self.tracks)}; cores {self.window} px + halo {self.halo} px, "
                 f"{s['tiling']} cores per track"]
        levels = [(None, s)] if len(self.scales) == 1 else [(f, s["scales"][f"x{f}"]) for f in self.scales]
        for f, d_level in levels:
            if f is not None:
                lines.append(f" scale x{f} ({'native pixel' if f == 1 else f'block mean of {f} x {f} px'}): "
                             f"{d_level['tiling']} cores per track")
            for status in ("run", *REASONS, *(["unreadable"] if "unreadable" in d_level["by_status"] else [])):
                d = d_level["by_status"].get(status, {"windows": 0, "km2": 0.0})
                label = status if status in ("run", "unreadable") else f"skip: {status}"
                area = f"{d['km2']:10.1f} km²" if np.isfinite(px) else ""
                lines.append(f"  {label:<18} {d['windows']:6d} windows {area}")
        lines.append(f"  planned            {s['planned']:6d} windows; the model reads "
                     f"{s['model_pixels_per_core_pixel']:.2f} px per core px (halo)")
        return "\n".join(lines)


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
                 ) -> list[tuple[int, int, list[str], str]]:
    """Per core of the level at ``factor``, read straight from Zarr: (valid pixels, pixels with
    |rate| ≥ min_abs_rate, the hash of each of its ``pieces`` — rectangles in the core's own
    pixel coordinates, "" ) — or, for a core that does not read, (-1, -1, [], the problem)."""
    out = []
    for k, w in enumerate(cores):
        try:
            a = read_level(mosaic, track, w, group, factor)
        except Exception as exc:  # a corrupt chunk: the plan marks the windows that need it
            out.append((-1, -1, [], "; ".join(read_problem(mosaic, track, w, group, factor, exc))))
            continue
        hashes = [piece_hash(a[p.slices()]) for p in (pieces[k] if pieces else [])]
        out.append((int(np.isfinite(a).sum()), int((np.abs(a) >= min_abs_rate).sum()), hashes, ""))
    return out


def read_sources(cores: list[PixelWindow], reads: list[PixelWindow], window: int) -> list[list[tuple[int, PixelWindow]]]:
    """For each read area, the cores it takes pixels from and the piece of each (core-local
    coordinates). A halo is at most a window (``RunConfig`` checks it), so only the eight
    neighbours can contribute; a read area they do not tile is a ``ValueError`` (a window's
    input hash would miss pixels and stale results could be reused)."""
    at = {(c.row0 // window, c.col0 // window): i for i, c in enumerate(cores)}
    out = []
    for core, read in zip(cores, reads, strict=True):
        r, c = core.row0 // window, core.col0 // window
        src = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                j = at.get((r + dr, c + dc))
                if j is None:
                    continue
                part = read.intersection(cores[j])
                if part is not None:
                    src.append((j, part.shift(-cores[j].row0, -cores[j].col0)))
        if sum(p.rows * p.cols for _, p in src) != read.rows * read.cols:
            raise ValueError(f"the cores around {core} do not tile its read area {read} (is the halo larger than the "
                             f"window {window}?)")
        out.append(src)
    return out


Mapper = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], Sequence[Any]]


MIN_LEVEL_PX = 64  # a coarser level has too few pixels to show a slide


def check_levels(cfg: RunConfig, grid: Grid) -> None:
    """Every coarse level must be at least ``MIN_LEVEL_PX`` a side; one smaller than a window is
    one ragged window (it sees the whole basin at once)."""
    for f in cfg.scales:
        rows, cols = level_shape(grid.shape, f)
        if f > 1 and min(rows, cols) < MIN_LEVEL_PX:
            raise ConfigError(f"scales: factor {f} gives a {rows} x {cols} px level of the {grid.height} x {grid.width} px "
                              f"mosaic, under {MIN_LEVEL_PX} px a side, too coarse to show a slide; drop the factor")


def make_plan(cfg: RunConfig, *, stats_map: Mapper | None = None, stats_batch: int = 16) -> WindowPlan:
    """Tile the mosaic at every scale, apply the AOI, and read each remaining core once for the
    skip rules.

    ``stats_map(fn, args)`` runs ``fn(*a)`` for each ``a`` in ``args`` — on the Dask cluster
    in ``run`` (each worker reads its own cores from Zarr); in a local thread pool by default.
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
    check_levels(cfg, grid)
    geom = aoi_geometry(cfg.aoi, grid.crs) if cfg.aoi is not None else None
    n_rows, n_cols = -(-grid.height // cfg.window), -(-grid.width // cfg.window)
    plan = WindowPlan(grid, list(tracks), cfg.window, cfg.halo, n_rows, n_cols, scales=tuple(cfg.scales))
    for f in cfg.scales:
        windows, tiling = _plan_level(cfg, grid, list(tracks), group, f, geom, stats_map or thread_map, stats_batch)
        plan.windows += windows
        plan.tilings[f] = tiling
    return plan


def _plan_level(cfg: RunConfig, grid: Grid, tracks: list[str], group: str | None, factor: int,
                geom: shapely.Geometry | None, mapper: Mapper, stats_batch: int) -> tuple[list[Window], tuple[int, int]]:
    """The windows of one level (``factor`` 1: the native grid), in that level's pixel frame."""
    shape = level_shape(grid.shape, factor)
    cores = chunk_windows(shape, cfg.window)
    n_rows, n_cols = -(-shape[0] // cfg.window), -(-shape[1] // cfg.window)
    full = PixelWindow(0, 0, *shape)
    reads = [full.intersection(PixelWindow(c.row0 - cfg.halo, c.col0 - cfg.halo, c.rows + 2 * cfg.halo, c.cols + 2 * cfg.halo))
             for c in cores]
    inside = np.ones(len(cores), bool)
    if geom is not None:
        t = grid.transform
        f = factor
        boxes = [shapely.box(*(t * (c.col0 * f, min(c.row1 * f, grid.height))), *(t * (min(c.col1 * f, grid.width), c.row0 * f)))
                 for c in cores]
        inside = shapely.intersects(geom, np.asarray(boxes, dtype=object))
    sources = read_sources(cores, reads, cfg.window)  # type: ignore[arg-type]
    pieces: dict[int, list[PixelWindow]] = {}  # per core: the pieces windows inside the AOI read
    for i in (int(k) for k in np.flatnonzero(inside)):
        for j, piece in sources[i]:
            if piece not in pieces.setdefault(j, []):
                pieces[j].append(piece)
    jobs: list[tuple[str, list[int]]] = []
    for tr in tracks:
        idx = sorted(pieces)  # the cores inside the AOI and their neighbours (for the halos)
        jobs += [(tr, idx[k:k + stats_batch]) for k in range(0, len(idx), stats_batch)]
    args = [(cfg.mosaic, tr, [cores[i] for i in ii], cfg.skip.min_abs_rate, group, [pieces[i] for i in ii], factor)
            for tr, ii in jobs]
    results = mapper(window_stats, args) if args else []
    stats: dict[tuple[str, int], tuple[int, int]] = {}
    hashes: dict[tuple[str, int, PixelWindow], str] = {}
    broken: dict[tuple[str, int], str] = {}  # cores that do not read: every window reading them is unreadable
    for (tr, ii), res in zip(jobs, results, strict=True):
        for i, (n_valid, n_hot, hh, problem) in zip(ii, res, strict=True):
            stats[(tr, i)] = (n_valid, n_hot)
            if problem:
                broken[(tr, i)] = problem
                continue
            hashes.update({(tr, i, piece): h for piece, h in zip(pieces[i], hh, strict=True)})

    def input_hash(tr: str, i: int) -> str:
        h = hashlib.sha256()
        for j, piece in sources[i]:
            h.update(f"{cores[j].row0},{cores[j].col0}+{piece.row0},{piece.col0},{piece.rows},{piece.cols}:"
                     f"{hashes[(tr, j, piece)]};".encode())
        return h.hexdigest()
    rules = cfg.skip
    windows: list[Window] = []
    for tr in tracks:
        for i, (core, read) in enumerate(zip(cores, reads, strict=True)):
            if read is None:  # cannot happen: every core lies inside the level
                raise ValueError(f"core {core} lies outside the level {shape}")
            index = (core.row0 // cfg.window, core.col0 // cfg.window)
            if not inside[i]:
                windows.append(Window(tr, index, core, read, "outside_aoi", scale=factor))
                continue
            n_valid, n_hot = stats[(tr, i)]
            problem = next((broken[(tr, j)] for j, _ in sources[i] if (tr, j) in broken), "")
            if problem:
                w = Window(tr, index, core, read, "unreadable", scale=factor)
                what, fix = problem.split("; ", 1)
                windows.append(replace(w, error=f"{what}, needed by window {w.key}; {fix}"))
                continue
            if n_valid < rules.min_valid_fraction * core.rows * core.cols or n_valid == 0:
                status = "no_data"
            elif n_hot < rules.min_hot_pixels:
                status = "stable"
            else:
                status = "run"
            windows.append(Window(tr, index, core, read, status, n_valid, n_hot,
                                  input_hash(tr, i) if status == "run" else "", scale=factor))
    return windows, (n_rows, n_cols)


def thread_map(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], threads: int = 2) -> list[Any]:
    """``[fn(*a) for a in args]`` in a local thread pool (``plan`` without a cluster)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda a: fn(*a), args))
