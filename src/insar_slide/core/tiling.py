"""The window plan, the pure part: cores that tile each level exactly, halos around them, the
windows per track, the area of interest, and the blocks of the reduction tree — from
``(grid, tracks, window, halo, scales, aoi)`` alone. No pixel is read here (numpy and shapely
only), so a plan is built and tested in microseconds.

A plan made by :func:`plan_windows` has every window inside the area of interest ``pending``
and the others ``outside_aoi``. Reading the cores' statistics and hashes is a second pass
(:func:`insar_slide.run.plan.make_plan`) that annotates it with :func:`classify` and
:func:`combine_hashes`: ``no_data`` (valid share of the core below ``min_valid_fraction``),
``stable`` (fewer than ``min_hot_pixels`` core pixels reach ``min_abs_rate``), ``run``, or
``unreadable`` (a chunk under it does not decode).

**Scales.** With ``scales: [1, f, …]`` every coarse level (the block mean by ``f``, see
:mod:`.scales`) is tiled the same way in its own pixel frame — same window and halo — and its
windows carry ``scale = f`` and keys ``<track>/x<f>_r…_c…``.

**Reduction tree** (:meth:`WindowPlan.blocks`): level 1 holds ``first`` × ``first`` native
cores per block, each further level 2 × 2 blocks of the level below, the last a single block
over the whole tiling; ``first`` is a multiple of every scale factor
(:func:`.scales.first_block`), so a coarse core lies in one block at every level.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import shapely

from ..grid import Grid, PixelWindow, chunk_windows
from .scales import level_shape

REASONS = ("outside_aoi", "no_data", "stable")


@dataclass(frozen=True)
class Window:
    """One unit of model work: a core of the tiling and the halo-padded window read around it."""

    track: str
    index: tuple[int, int]  # (row, col) of the core in the tiling
    core: PixelWindow
    read: PixelWindow
    status: str  # "pending" (not read yet), "run", one of REASONS, or "unreadable" (``error`` says why)
    n_valid: int = -1
    n_hot: int = -1
    input_hash: str = ""  # of the bytes ``read`` covers (:func:`combine_hashes`); "" when not read
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


@dataclass(frozen=True)
class Block:
    """A rectangle of cores in the native tiling: rows ``r0..r1-1``, cols ``c0..c1-1`` of windows."""

    level: int
    r0: int
    c0: int
    r1: int
    c1: int

    @property
    def name(self) -> str:
        return f"L{self.level}_r{self.r0:05d}_c{self.c0:05d}"


def tile(shape: tuple[int, int], window: int, halo: int) -> tuple[list[PixelWindow], list[PixelWindow]]:
    """(cores, read areas) of a level of ``shape``: cores of ``window`` px (ragged at the far
    edges) that cover every pixel once, each read area its core grown by ``halo`` and cut to
    the level."""
    cores = chunk_windows(shape, window)
    full = PixelWindow(0, 0, *shape)
    reads = []
    for c in cores:
        r = full.intersection(PixelWindow(c.row0 - halo, c.col0 - halo, c.rows + 2 * halo, c.cols + 2 * halo))
        if r is None:  # cannot happen: every core lies inside the level
            raise ValueError(f"core {c} lies outside the level {shape}")
        reads.append(r)
    return cores, reads


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


def reduction_tree(n_rows: int, n_cols: int, first: int) -> list[list[Block]]:
    """Levels of the reduction tree over an ``n_rows`` × ``n_cols`` tiling (module docstring)."""
    levels = []
    size, level = first, 1
    while True:
        blocks = [Block(level, r, c, min(r + size, n_rows), min(c + size, n_cols))
                  for r in range(0, n_rows, size) for c in range(0, n_cols, size)]
        levels.append(blocks)
        if len(blocks) == 1:
            return levels
        size *= 2
        level += 1


def core_boxes(grid: Grid, cores: Sequence[PixelWindow], factor: int) -> list[shapely.Geometry]:
    """Each core of the level at ``factor`` as a map-frame rectangle (cut to the native grid)."""
    t, f = grid.transform, factor
    return [shapely.box(*(t * (c.col0 * f, min(c.row1 * f, grid.height))), *(t * (min(c.col1 * f, grid.width), c.row0 * f)))
            for c in cores]


@dataclass(frozen=True)
class WindowPlan:
    grid: Grid
    tracks: tuple[str, ...]
    window: int
    halo: int
    windows: tuple[Window, ...] = ()
    scales: tuple[int, ...] = (1,)
    tilings: Mapping[int, tuple[int, int]] = field(default_factory=dict)  # per scale: (rows, cols) of cores

    @property
    def n_rows(self) -> int:
        return self.tilings[1][0]

    @property
    def n_cols(self) -> int:
        return self.tilings[1][1]

    def level(self, factor: int) -> tuple[list[PixelWindow], list[PixelWindow]]:
        """(cores, read areas) of one level, in tiling order."""
        ws = [w for w in self.windows if w.scale == factor and w.track == self.tracks[0]]
        return [w.core for w in ws], [w.read for w in ws]

    def with_windows(self, windows: Sequence[Window]) -> WindowPlan:
        return replace(self, windows=tuple(windows))

    def blocks(self, first: int) -> list[list[Block]]:
        """The reduction tree's levels of blocks over the native tiling."""
        return reduction_tree(self.n_rows, self.n_cols, first)

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
        for extra in ("unreadable", "pending"):
            if c.get(extra):
                out[extra] = c[extra]
        return out

    def scale_counts(self) -> dict[str, dict[str, int]]:
        """Per scale (``"x2"``…; ``"x1"`` is native): :meth:`counts`; empty for a single-scale plan."""
        return {f"x{f}": self.counts(f) for f in self.scales} if len(self.scales) > 1 else {}

    def pixel_km2(self) -> float:
        """Ground area of one native pixel: exact for a projected CRS, at the grid's centre
        latitude for a geographic one (within a few % over a basin)."""
        px, py = self.grid.pixel_size_m()
        return px * py / 1e6

    def summary(self) -> dict[str, Any]:
        out = {"grid": f"{self.grid.height} x {self.grid.width} px", "tracks": list(self.tracks),
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
            extra = [k for k in ("unreadable", "pending") if k in d_level["by_status"]]
            for status in ("run", *REASONS, *extra):
                d = d_level["by_status"].get(status, {"windows": 0, "km2": 0.0})
                label = status if status in ("run", *extra) else f"skip: {status}"
                area = f"{d['km2']:10.1f} km²" if np.isfinite(px) else ""
                lines.append(f"  {label:<18} {d['windows']:6d} windows {area}")
        lines.append(f"  planned            {s['planned']:6d} windows; the model reads "
                     f"{s['model_pixels_per_core_pixel']:.2f} px per core px (halo)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def plan_windows(grid: Grid, tracks: Sequence[str], *, window: int, halo: int, scales: Sequence[int] = (1,),
                 aoi: shapely.Geometry | None = None) -> WindowPlan:
    """Every level tiled, every window ``pending`` or ``outside_aoi`` (its core misses ``aoi``,
    a geometry in the grid's CRS). Reads nothing."""
    windows: list[Window] = []
    tilings: dict[int, tuple[int, int]] = {}
    for f in scales:
        shape = level_shape(grid.shape, f)
        cores, reads = tile(shape, window, halo)
        tilings[f] = (-(-shape[0] // window), -(-shape[1] // window))
        inside = (shapely.intersects(aoi, np.asarray(core_boxes(grid, cores, f), dtype=object)) if aoi is not None
                  else np.ones(len(cores), bool))
        for tr in tracks:
            windows += [Window(tr, (c.row0 // window, c.col0 // window), c, r, "pending" if ok else "outside_aoi", scale=f)
                        for c, r, ok in zip(cores, reads, inside, strict=True)]
    return WindowPlan(grid, tuple(tracks), window, halo, tuple(windows), tuple(scales), tilings)


def classify(n_valid: int, n_hot: int, core_pixels: int, *, min_valid_fraction: float, min_hot_pixels: int) -> str:
    """The skip rules on a core's statistics: ``no_data``, ``stable`` or ``run``."""
    if n_valid < min_valid_fraction * core_pixels or n_valid == 0:
        return "no_data"
    if n_hot < min_hot_pixels:
        return "stable"
    return "run"


def combine_hashes(cores: Sequence[PixelWindow], sources: Sequence[tuple[int, PixelWindow]], hashes: Mapping[tuple[int, PixelWindow], str]) -> str:
    """A window's input hash from the hashes of the core pieces its read area is made of
    (``sources``: :func:`read_sources` of the window; ``hashes``: (core index, piece) → hash)."""
    h = hashlib.sha256()
    for j, piece in sources:
        h.update(f"{cores[j].row0},{cores[j].col0}+{piece.row0},{piece.col0},{piece.rows},{piece.cols}:"
                 f"{hashes[(j, piece)]};".encode())
    return h.hexdigest()
