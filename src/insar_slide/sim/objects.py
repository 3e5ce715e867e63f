"""The types of a synthetic basin: its tracks, object catalogues and the scene, plus the
counter-based draws every catalogue uses (pure functions of the seed and an object id)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..grid import Grid, PixelWindow
from .config import SimConfig
from .geometry import downslope_motion
from .noise import hash_uniform

# Noise streams (one per independent field).
S_CAND, S_SLIDE, S_TEX, S_BOWL, S_GLACIER, S_FROST = 3, 4, 5, 6, 7, 8  # 1, 2, 16: .terrain
S_UNW, S_TURB, S_STORM, S_PIX, S_DEC, S_DEC_T, S_TRACK = 9, 10, 11, 12, 13, 14, 15
S_EVOLVE, S_APPEAR = 17, 1000  # S_APPEAR + evolution seed * 10: the candidate stream of new slides
S_KIND, S_FLOW, S_PART, S_VOLC, S_FAULT, S_ALIAS, S_FAST, S_ESTEP, S_UNW_IRR = 18, 19, 20, 21, 22, 23, 24, 25, 26
APPEAR_ID_OFFSET = 10**15  # kids of slides that appear in a later version

CELL = 256  # catalogue cell side, px
SENTINEL_WAVELENGTH_MM = 55.46


@dataclass(frozen=True)
class SceneTrack:
    name: str
    heading: float
    incidence: float
    los: np.ndarray  # (east, north, up), ground to satellite
    look: np.ndarray  # (east, north), satellite to ground
    strat_k: float  # mm/yr per km of elevation
    ramp: tuple[float, float]  # mm/yr per 100 km, (east, north)


@dataclass(frozen=True)
class Objects:
    """A catalogue of deforming objects, one row per object (arrays of equal length).

    ``row``, ``col``: centre (global pixel index space); ``a``, ``b``: half-length along
    ``(ue, ur)`` (unit vector in (col, row) pixel axes) and half-width, px; ``speed``: mm/yr;
    ``motion``: (n, 3) unit motion vector (east, north, up); ``kid``: an integer id that seeds
    the object's shape and texture; ``track``: -1 for all tracks, else the track index.
    ``kind``: the shape family (see :mod:`.shapes`: 0 lobate/ellipse, 1 a centreline strip,
    2 compound); ``geom``: per object ``None`` or the array that kind needs (a centreline
    ``(m, 4)`` of row, col, half-width, position 0–1 along it; or compound elements); ``extent``:
    bounding radius in px where the ellipse rule does not apply (NaN elsewhere).
    """

    row: np.ndarray
    col: np.ndarray
    a: np.ndarray
    b: np.ndarray
    ue: np.ndarray
    ur: np.ndarray
    speed: np.ndarray
    motion: np.ndarray
    kid: np.ndarray
    track: np.ndarray
    slope_deg: np.ndarray
    kind: np.ndarray = None  # type: ignore[assignment]
    extent: np.ndarray = None  # type: ignore[assignment]
    geom: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.row)
        if self.kind is None:
            object.__setattr__(self, "kind", np.zeros(n, np.int64))
        if self.extent is None:
            object.__setattr__(self, "extent", np.full(n, np.nan))
        if self.geom is None:
            object.__setattr__(self, "geom", np.full(n, None, dtype=object))

    @classmethod
    def empty(cls) -> Objects:
        z = np.zeros(0)
        return cls(z, z, z, z, z, z, z, np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64), z)

    @classmethod
    def concat(cls, parts: list[Objects]) -> Objects:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(o, f) for o in parts]) for f in cls.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.row)

    def take(self, idx: np.ndarray) -> Objects:
        return Objects(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def radius(self) -> np.ndarray:
        """Bounding radius in px (shape harmonics add at most 36 %; ``extent`` where set)."""
        r = np.maximum(self.a, self.b) * 1.4 + 2
        return np.where(np.isnan(self.extent), r, self.extent)

    def in_window(self, win: PixelWindow, pad: float = 0.0) -> np.ndarray:
        r = self.radius() + pad
        return np.nonzero((self.row + r >= win.row0) & (self.row - r < win.row1)
                          & (self.col + r >= win.col0) & (self.col - r < win.col1))[0]


@dataclass(frozen=True)
class Scene:
    cfg: SimConfig
    grid: Grid
    river_rc: np.ndarray  # (n, 2) river vertices as (row, col) in pixel index space
    tracks: tuple[SceneTrack, ...]
    slides: Objects
    bowls: Objects
    glaciers: Objects
    unwrap: Objects
    volcanoes: Objects = field(default_factory=Objects.empty)
    faults: Objects = field(default_factory=Objects.empty)

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def px(self) -> float:
        return self.cfg.grid.pixel_size


# ---------------------------------------------------------------------------- draws

def _poisson_counts(u: np.ndarray, lam: float) -> np.ndarray:
    """Poisson counts by inverse CDF from uniforms in [0, 1)."""
    counts = np.zeros(u.shape, dtype=np.int64)
    if lam <= 0:
        return counts
    p = math.exp(-lam)
    cdf = p
    k = 0
    while k < 200:
        counts += (u >= cdf).astype(np.int64)
        k += 1
        p *= lam / k
        cdf += p
        if cdf > 1 - 1e-12:
            break
    return counts


def candidates(scene: Scene, stream: int, per_km2: float, margin: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate sites (row, col, id) with the given density, hashed per catalogue cell.

    ``margin``: also sites up to this many px outside the grid (objects straddling its edges).
    """
    h, w = scene.grid.shape
    m = -(-margin // CELL)
    gi2, gj2 = np.meshgrid(np.arange(-m, -(-h // CELL) + m), np.arange(-m, -(-w // CELL) + m), indexing="ij")
    gi, gj = gi2.ravel(), gj2.ravel()
    lam = per_km2 * (CELL * scene.px / 1000) ** 2
    counts = _poisson_counts((hash_uniform(scene.seed, stream, gi, gj) + 1) / 2, lam)
    ci, cj = np.repeat(gi, counts), np.repeat(gj, counts)
    k = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)
    sub = k * 1_000_003 + ci * 7919
    r = ci * CELL + (hash_uniform(scene.seed, stream + 100, sub, cj) + 1) / 2 * CELL
    c = cj * CELL + (hash_uniform(scene.seed, stream + 200, sub, cj) + 1) / 2 * CELL
    r, c = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
    keep = (r < h + margin) & (c < w + margin) & (r >= -margin) & (c >= -margin)
    ids = (ci * 100_003 + cj) * 1000 + k
    return r[keep], c[keep], ids[keep]


def u01(scene: Scene, stream: int, ids: np.ndarray, j: int) -> np.ndarray:
    return (hash_uniform(scene.seed, stream, ids, np.full(ids.shape, j)) + 1) / 2


def motion_frame(ge: np.ndarray, gn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    me, mn, mu = downslope_motion(ge, gn)
    hnorm = np.hypot(me, mn)
    hnorm = np.where(hnorm > 0, hnorm, 1.0)
    # Downslope direction in (col, row) pixel axes: east = +col, north = -row.
    return np.column_stack([me, mn, mu]), me / hnorm, -mn / hnorm




def years(cfg: SimConfig) -> float:
    from datetime import date
    a, b = (date.fromisoformat(s) for s in cfg.time_span)
    return max(0.25, (b - a).days / 365.25)
