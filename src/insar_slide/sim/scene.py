"""A synthetic basin as pure functions of global pixel position.

:func:`build_scene` makes the cheap, global part once — grid, river line, viewing geometry
and the catalogue of landslides and other deforming objects (a few thousand rows even for a
32k × 32k basin). :func:`.render.render` then produces any window of the rate mosaic and DEM from the
scene alone, so windows can be rendered independently, in any order, on any worker, and
agree exactly where they meet.

Layers of a track's LOS rate (mm/yr, positive toward the satellite):
landslides (downslope motion projected on the LOS) + subsidence bowls + frost heave + glacier
flow + unwrapping-error patches + turbulent and stratified atmosphere + ramp + pixel noise;
then decorrelation, layover and shadow holes (NaN).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import shapely
from scipy.spatial import cKDTree

from ..grid import Grid, PixelWindow
from .config import SimConfig, track_geometry
from .geometry import downslope_motion, look_direction, los_unit_vector
from .noise import (
    SPLINE_STD,
    hash_uniform,
    spline_grid,
)
from .terrain import make_grid_and_river, terrain_at_points

# Noise streams (one per independent field).
S_CAND, S_SLIDE, S_TEX, S_BOWL, S_GLACIER, S_FROST = 3, 4, 5, 6, 7, 8  # 1, 2, 16: .terrain
S_UNW, S_TURB, S_STORM, S_PIX, S_DEC, S_DEC_T, S_TRACK = 9, 10, 11, 12, 13, 14, 15
S_EVOLVE, S_APPEAR = 17, 1000  # S_APPEAR + evolution seed * 10: the candidate stream of new slides
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

    @classmethod
    def empty(cls) -> Objects:
        z = np.zeros(0)
        return cls(z, z, z, z, z, z, z, np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64), z)

    def __len__(self) -> int:
        return len(self.row)

    def take(self, idx: np.ndarray) -> Objects:
        return Objects(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def radius(self) -> np.ndarray:
        """Bounding radius in px (shape harmonics add at most 36 %)."""
        return np.maximum(self.a, self.b) * 1.4 + 2

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

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def px(self) -> float:
        return self.cfg.grid.pixel_size


# ---------------------------------------------------------------------------- catalogues

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


def _candidates(scene: Scene, stream: int, per_km2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate sites (row, col, id) with the given density, hashed per catalogue cell."""
    h, w = scene.grid.shape
    gi2, gj2 = np.meshgrid(np.arange(-(-h // CELL)), np.arange(-(-w // CELL)), indexing="ij")
    gi, gj = gi2.ravel(), gj2.ravel()
    lam = per_km2 * (CELL * scene.px / 1000) ** 2
    counts = _poisson_counts((hash_uniform(scene.seed, stream, gi, gj) + 1) / 2, lam)
    ci, cj = np.repeat(gi, counts), np.repeat(gj, counts)
    k = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)
    sub = k * 1_000_003 + ci * 7919
    r = ci * CELL + (hash_uniform(scene.seed, stream + 100, sub, cj) + 1) / 2 * CELL
    c = cj * CELL + (hash_uniform(scene.seed, stream + 200, sub, cj) + 1) / 2 * CELL
    r, c = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
    keep = (r < h) & (c < w)
    ids = (ci * 100_003 + cj) * 1000 + k
    return r[keep], c[keep], ids[keep]


def _u01(scene: Scene, stream: int, ids: np.ndarray, j: int) -> np.ndarray:
    return (hash_uniform(scene.seed, stream, ids, np.full(ids.shape, j)) + 1) / 2


def _motion_frame(ge: np.ndarray, gn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    me, mn, mu = downslope_motion(ge, gn)
    hnorm = np.hypot(me, mn)
    hnorm = np.where(hnorm > 0, hnorm, 1.0)
    # Downslope direction in (col, row) pixel axes: east = +col, north = -row.
    return np.column_stack([me, mn, mu]), me / hnorm, -mn / hnorm


def _slides(scene: Scene, stream: int = S_CAND, density_per_100km2: float | None = None, id_offset: int = 0) -> Objects:
    L = scene.cfg.landslides
    density = L.density_per_100km2 if density_per_100km2 is None else density_per_100km2
    r, c, ids = _candidates(scene, stream, density / 100)
    ids = ids + id_offset
    if len(r) == 0:
        return Objects.empty()
    _, ge, gn = terrain_at_points(scene, r, c)
    slope = np.degrees(np.arctan(np.hypot(ge, gn)))
    ok = (slope >= L.slope_deg[0]) & (slope <= L.slope_deg[1])
    r, c, ids, ge, gn, slope = r[ok], c[ok], ids[ok], ge[ok], gn[ok], slope[ok]
    lo, hi = L.size_px
    length = np.exp(np.log(lo) + _u01(scene, S_SLIDE, ids, 0) ** 1.6 * (np.log(hi) - np.log(lo)))
    width = length * (0.45 + 0.55 * _u01(scene, S_SLIDE, ids, 1))
    vlo, vhi = L.speed_mm_yr
    faint = _u01(scene, S_SLIDE, ids, 2) < L.faint_fraction
    fast = np.exp(np.log(max(vlo, 20.0)) + _u01(scene, S_SLIDE, ids, 3) * (np.log(vhi) - np.log(max(vlo, 20.0))))
    speed = np.where(faint, vlo + _u01(scene, S_SLIDE, ids, 4) * (min(20.0, vhi) - vlo), fast)
    motion, ue, ur = _motion_frame(ge, gn)
    objs = Objects(r.astype(float), c.astype(float), length / 2, width / 2, ue, ur, speed, motion, ids,
                   np.full(len(r), -1), slope)
    return _thin_overlaps(objs)


def _thin_overlaps(objs: Objects) -> Objects:
    """Drop objects whose centre lies inside an earlier one (in id order), deterministically."""
    if len(objs) < 2:
        return objs
    order = np.argsort(objs.kid, kind="stable")
    objs = objs.take(order)
    tree = cKDTree(np.column_stack([objs.row, objs.col]))
    keep = np.ones(len(objs), bool)
    rad = objs.radius()
    for i in range(len(objs)):
        if not keep[i]:
            continue
        for j in tree.query_ball_point([objs.row[i], objs.col[i]], r=2 * rad[i]):
            if j > i and keep[j] and math.hypot(objs.row[j] - objs.row[i], objs.col[j] - objs.col[i]) < 0.8 * (rad[i] + rad[j]):
                keep[j] = False
    return objs.take(np.nonzero(keep)[0])


def _bowls(scene: Scene) -> Objects:
    n = scene.cfg.nuisance
    r, c, ids = _candidates(scene, S_BOWL, n.subsidence_per_1000km2 / 1000)
    if len(r) == 0:
        return Objects.empty()
    _, ge, gn = terrain_at_points(scene, r, c)
    slope = np.degrees(np.arctan(np.hypot(ge, gn)))
    ok = slope < 5.0
    r, c, ids, slope = r[ok], c[ok], ids[ok], slope[ok]
    rad = 8 + _u01(scene, S_BOWL, ids, 0) * 50
    lo, hi = n.subsidence_mm_yr
    speed = lo + _u01(scene, S_BOWL, ids, 1) * (hi - lo)
    motion = np.tile([0.0, 0.0, -1.0], (len(r), 1))
    one = np.ones(len(r))
    return Objects(r.astype(float), c.astype(float), rad, rad * (0.7 + 0.3 * _u01(scene, S_BOWL, ids, 2)), one, 0 * one,
                   speed, motion, ids, np.full(len(r), -1), slope)


def _glaciers(scene: Scene) -> Objects:
    n = scene.cfg.nuisance
    r, c, ids = _candidates(scene, S_GLACIER, n.glaciers_per_1000km2 / 1000)
    if len(r) == 0:
        return Objects.empty()
    z, ge, gn = terrain_at_points(scene, r, c)
    ok = z >= n.glacier_min_elevation_m
    r, c, ids, ge, gn = r[ok], c[ok], ids[ok], ge[ok], gn[ok]
    slope = np.degrees(np.arctan(np.hypot(ge, gn)))
    length = 60 + _u01(scene, S_GLACIER, ids, 0) * 200
    width = 10 + _u01(scene, S_GLACIER, ids, 1) * 25
    speed = 60 + _u01(scene, S_GLACIER, ids, 2) * 340
    motion, ue, ur = _motion_frame(ge, gn)
    return Objects(r.astype(float), c.astype(float), length / 2, width / 2, ue, ur, speed, motion, ids,
                   np.full(len(r), -1), slope)


def _unwrap_patches(scene: Scene) -> Objects:
    """Unwrapping errors: whole-cycle offsets with straight, sharp edges, per track."""
    n = scene.cfg.nuisance
    years = _years(scene)
    out = []
    for t in range(len(scene.tracks)):
        r, c, ids = _candidates(scene, S_UNW + 1000 * (t + 1), n.unwrapping_per_1000km2 / 1000)
        if len(r) == 0:
            continue
        half = 20 + _u01(scene, S_UNW, ids, 0) * 110
        ang = _u01(scene, S_UNW, ids, 1) * np.pi
        cycles = np.where(_u01(scene, S_UNW, ids, 2) < 0.5, -1.0, 1.0) * np.where(_u01(scene, S_UNW, ids, 3) < 0.8, 1.0, 2.0)
        speed = cycles * SENTINEL_WAVELENGTH_MM / 2 / years
        one = np.ones(len(r))
        out.append(Objects(r.astype(float), c.astype(float), half, half * (0.4 + 0.6 * _u01(scene, S_UNW, ids, 4)),
                           np.cos(ang), np.sin(ang), speed, np.tile([0.0, 0.0, 0.0], (len(r), 1)), ids,
                           np.full(len(r), t), 0 * one))
    if not out:
        return Objects.empty()
    return Objects(*(np.concatenate([getattr(o, f) for o in out]) for f in Objects.__dataclass_fields__))


def _years(scene: Scene) -> float:
    from datetime import date
    a, b = (date.fromisoformat(s) for s in scene.cfg.time_span)
    return max(0.25, (b - a).days / 365.25)


def build_scene(cfg: SimConfig) -> Scene:
    """The global, cheap part of a synthetic basin: grid, river, tracks, object catalogues."""
    grid, river_rc = make_grid_and_river(cfg)
    tracks = []
    for i, tc in enumerate(cfg.tracks):
        heading, incidence = track_geometry(tc)
        u = [float(hash_uniform(cfg.seed, S_TRACK, np.array(i), np.array(k))) for k in range(3)]
        tracks.append(SceneTrack(
            tc.name, heading, incidence, los_unit_vector(heading, incidence), look_direction(heading),
            strat_k=cfg.atmosphere.stratified_mm_yr_per_km * u[0],
            ramp=(cfg.atmosphere.ramp_mm_yr_per_100km * u[1], cfg.atmosphere.ramp_mm_yr_per_100km * u[2]),
        ))
    scene = Scene(cfg, grid, river_rc, tuple(tracks), Objects.empty(), Objects.empty(), Objects.empty(), Objects.empty())
    slides = _slides(scene)
    if cfg.evolution is not None:
        slides = evolve(scene, slides)
    return Scene(cfg, grid, river_rc, tuple(tracks), slides, _bowls(scene), _glaciers(scene), _unwrap_patches(scene))


def evolve(scene: Scene, slides: Objects) -> Objects:
    """A later version of the same basin: some slides stop, some accelerate, new ones appear.

    Everything else (terrain, atmosphere, noise, holes) is the base version's, so only the
    windows around changed slides differ — the case an inventory update is built for.
    """
    ev = scene.cfg.evolution
    assert ev is not None
    u_stop = (hash_uniform(ev.seed, S_EVOLVE, slides.kid, np.zeros(len(slides), np.int64)) + 1) / 2
    u_acc = (hash_uniform(ev.seed, S_EVOLVE, slides.kid, np.ones(len(slides), np.int64)) + 1) / 2
    keep = u_stop >= ev.stop_fraction
    speed = np.where(u_acc < ev.accelerate_fraction, slides.speed * ev.accelerate_factor, slides.speed)
    kept = dataclasses.replace(slides, speed=speed).take(np.nonzero(keep)[0])
    new = _slides(scene, S_APPEAR + 10 * ev.seed, ev.appear_density_per_100km2, APPEAR_ID_OFFSET * (1 + ev.seed))
    if len(new):
        # a new slide may not start inside a surviving one
        both = Objects(*(np.concatenate([getattr(kept, f), getattr(new, f)]) for f in Objects.__dataclass_fields__))
        thin = _thin_overlaps(both)
        return thin
    return kept


def changes(base: Objects, later: Objects) -> dict[int, str]:
    """kid → ``persisting`` | ``accelerated`` | ``appeared`` | ``stopped`` between two catalogues."""
    b = {int(k): float(v) for k, v in zip(base.kid, base.speed, strict=True)}
    out = {}
    for k, v in zip(later.kid, later.speed, strict=True):
        k = int(k)
        out[k] = "appeared" if k not in b else "accelerated" if v > b[k] * 1.01 else "persisting"
    for k in b:
        out.setdefault(k, "stopped")
    return out


# ---------------------------------------------------------------------------- shapes

def shape_field(scene: Scene, objs: Objects, i: int, rows: np.ndarray, cols: np.ndarray, *, lobes: bool = True,
                sharp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mask, profile) of object ``i`` on the grid ``rows × cols``; profile is 1 at the centre, 0 at the edge."""
    dr = rows[:, None] - objs.row[i]
    dc = cols[None, :] - objs.col[i]
    u = dc * objs.ue[i] + dr * objs.ur[i]
    v = -dc * objs.ur[i] + dr * objs.ue[i]
    ua, vb = u / objs.a[i], v / objs.b[i]
    if sharp:  # a rotated rectangle cut by one more straight edge
        cut = _u01(scene, S_UNW, objs.kid[i:i + 1], 5)[0] * 2 - 1
        mask = (np.abs(ua) <= 1) & (np.abs(vb) <= 1) & (ua + vb <= 1 + cut)
        return mask, mask.astype(float)
    q = np.hypot(ua, vb)
    rad = np.ones_like(q)
    if lobes:
        phi = np.arctan2(vb, ua)
        kid = objs.kid[i:i + 1]
        for k in (2, 3, 4):
            amp = 0.12 * _u01(scene, S_SLIDE, kid, 10 + k)[0]
            ph = 2 * np.pi * _u01(scene, S_SLIDE, kid, 20 + k)[0]
            rad = rad + amp * np.cos(k * phi + ph)
        # Widen the toe (downslope half) a little: lobate, not elliptical.
        rad = rad * (1 + 0.15 * np.clip(ua, 0, 1))
    qn = q / rad
    mask = qn < 1
    profile = np.where(mask, np.sqrt(np.clip(1 - qn * qn, 0, 1)), 0.0)
    return mask, profile


def slide_velocity(scene: Scene, i: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, slope-parallel speed mm/yr) of landslide ``i``: peak ``speed``, internal variation."""
    s = scene.slides
    mask, profile = shape_field(scene, s, i, rows, cols)
    tex = spline_grid(scene.seed, S_TEX * 1_000_003 + int(s.kid[i]) % 1_000_003, rows, cols, max(2.0, s.a[i] / 3))
    tex = np.clip(tex / SPLINE_STD, -2, 2)
    speed = s.speed[i] * profile ** 0.6 * (0.85 + 0.075 * tex)
    return mask, np.where(mask, np.minimum(speed, s.speed[i]), 0.0)


def slide_polygon(scene: Scene, i: int, n: int = 96) -> shapely.Polygon:
    """The outline of landslide ``i`` in map coordinates (the edge of its shape function)."""
    s = scene.slides
    phi = np.linspace(-np.pi, np.pi, n, endpoint=False)
    kid = s.kid[i:i + 1]
    rad = np.ones_like(phi)
    for k in (2, 3, 4):
        amp = 0.12 * _u01(scene, S_SLIDE, kid, 10 + k)[0]
        ph = 2 * np.pi * _u01(scene, S_SLIDE, kid, 20 + k)[0]
        rad = rad + amp * np.cos(k * phi + ph)
    ua, vb = rad * np.cos(phi), rad * np.sin(phi)
    rad = rad * (1 + 0.15 * np.clip(ua, 0, 1))
    ua, vb = rad * np.cos(phi), rad * np.sin(phi)
    u, v = ua * s.a[i], vb * s.b[i]
    dc = u * s.ue[i] - v * s.ur[i]
    dr = u * s.ur[i] + v * s.ue[i]
    g = scene.grid
    x = g.x0 + (s.col[i] + dc + 0.5) * g.dx
    y = g.y0 + (s.row[i] + dr + 0.5) * g.dy
    return shapely.make_valid(shapely.Polygon(np.column_stack([x, y])))
