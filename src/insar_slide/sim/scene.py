"""A synthetic basin as pure functions of global pixel position.

:func:`build_scene` makes the cheap, global part once — grid, river line, viewing geometry
and the catalogue of landslides and other deforming objects (a few thousand rows even for a
32k × 32k basin). :func:`.render.render` then produces any window of the rate mosaic and DEM from the
scene alone, so windows can be rendered independently, in any order, on any worker, and
agree exactly where they meet.

Layers of a track's LOS rate (mm/yr, positive toward the satellite):
landslides (downslope motion projected on the LOS: lobate slides, elongated earthflows along
the fall line, compound slides) + subsidence bowls + volcanic sources + creeping faults +
frost heave + glacier flow + unwrapping-error patches + turbulent and stratified atmosphere +
an elevation-band signal + ramp + pixel noise; then the sensor's unwrapping limit (fast ground
decorrelates or aliases), decorrelation, layover and shadow holes (NaN).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.spatial import cKDTree

from .config import SimConfig, track_geometry
from .geometry import look_direction, los_unit_vector
from .kinds import compound_parts, faults, glacier_tongues, path_discs, to_earthflows, volcanoes
from .noise import hash_uniform
from .objects import (
    APPEAR_ID_OFFSET,
    S_APPEAR,
    S_BOWL,
    S_CAND,
    S_EVOLVE,
    S_FAST,
    S_GLACIER,
    S_KIND,
    S_SLIDE,
    S_TRACK,
    S_UNW,
    S_UNW_IRR,
    SENTINEL_WAVELENGTH_MM,
    Objects,
    Scene,
    SceneTrack,
    candidates,
    motion_frame,
    u01,
    years,
)
from .terrain import make_grid_and_river, terrain_at_points

__all__ = ["Objects", "Scene", "SceneTrack", "build_scene", "changes", "evolve"]

KIND_LOBATE, KIND_PATH, KIND_COMPOUND = 0, 1, 2


def _loguniform(lo: float, hi: float, u: np.ndarray, power: float = 1.0) -> np.ndarray:
    return np.exp(np.log(lo) + u ** power * (np.log(hi) - np.log(lo)))


def _slides(scene: Scene, stream: int = S_CAND, density_per_100km2: float | None = None, id_offset: int = 0) -> Objects:
    L = scene.cfg.landslides
    density = L.density_per_100km2 if density_per_100km2 is None else density_per_100km2
    r, c, ids = candidates(scene, stream, density / 100, L.edge_margin_px)
    ids = ids + id_offset
    if len(r) == 0:
        return Objects.empty()
    _, ge, gn = terrain_at_points(scene, r, c)
    slope = np.degrees(np.arctan(np.hypot(ge, gn)))
    ok = (slope >= L.slope_deg[0]) & (slope <= L.slope_deg[1])
    r, c, ids, ge, gn, slope = r[ok], c[ok], ids[ok], ge[ok], gn[ok], slope[ok]
    lo, hi = L.size_px
    length = _loguniform(lo, hi, u01(scene, S_SLIDE, ids, 0), 1.6 if L.size_law == "skewed" else 1.0)
    width = length * (0.45 + 0.55 * u01(scene, S_SLIDE, ids, 1))
    vlo, vhi = L.speed_mm_yr
    faint = u01(scene, S_SLIDE, ids, 2) < L.faint_fraction
    fast = np.exp(np.log(max(vlo, 20.0)) + u01(scene, S_SLIDE, ids, 3) * (np.log(vhi) - np.log(max(vlo, 20.0))))
    speed = np.where(faint, vlo + u01(scene, S_SLIDE, ids, 4) * (min(20.0, vhi) - vlo), fast)
    motion, ue, ur = motion_frame(ge, gn)
    objs = Objects(r.astype(float), c.astype(float), length / 2, width / 2, ue, ur, speed, motion, ids,
                   np.full(len(r), -1), slope)
    # The wider world (every draw below is off at the defaults, leaving the catalogue as it was).
    u_kind = u01(scene, S_KIND, ids, 0)
    flow = u_kind < L.earthflow_fraction
    compound = ~flow & (u_kind < L.earthflow_fraction + L.compound_fraction)
    very_fast = u01(scene, S_FAST, ids, 0) < L.fast_fraction * np.where(flow, 2.0, 1.0)
    if very_fast.any():
        flo, fhi = L.fast_speed_mm_yr
        speed = np.where(very_fast, _loguniform(flo, fhi, u01(scene, S_FAST, ids, 1)), speed)
        objs = dataclasses.replace(objs, speed=speed)
    if compound.any():
        objs = compound_parts(scene, objs, compound)
    if flow.any():
        objs = to_earthflows(scene, objs, flow)
    return _thin_overlaps(objs)


def _discs(objs: Objects, i: int) -> np.ndarray:
    """(k, 3) discs (row, col, radius) that cover object ``i``: one for a lobate slide."""
    if objs.kind[i] == KIND_PATH:
        return path_discs(objs.geom[i])
    if objs.kind[i] == KIND_COMPOUND:
        parts = objs.geom[i]
        rad = np.maximum(parts[:, 2], parts[:, 3]) * 1.4 * 1.15 + 2
        return np.column_stack([objs.row[i] + parts[:, 0], objs.col[i] + parts[:, 1], rad])
    return np.array([[objs.row[i], objs.col[i], objs.radius()[i]]])


def _thin_overlaps(objs: Objects) -> Objects:
    """Drop objects that overlap an earlier one (in id order), deterministically.

    Each object is covered by discs (one for a lobate slide, several along an earthflow or over
    a compound slide's elements); two objects clash when a disc of one comes closer to a disc of
    the other than 0.8 × the sum of their radii. For lobate slides alone this is the centre
    rule it always was (the same slides are kept).
    """
    if len(objs) < 2:
        return objs
    order = np.argsort(objs.kid, kind="stable")
    objs = objs.take(order)
    discs = [_discs(objs, i) for i in range(len(objs))]
    owner = np.concatenate([np.full(len(d), i) for i, d in enumerate(discs)])
    allc = np.concatenate(discs)
    tree = cKDTree(allc[:, :2])
    max_r = float(allc[:, 2].max())
    keep = np.ones(len(objs), bool)
    for i in range(len(objs)):
        if not keep[i]:
            continue
        single = len(discs[i]) == 1
        for r, c, rad in discs[i]:
            for e in tree.query_ball_point([r, c], r=2 * rad if single else rad + max_r):
                j = owner[e]
                if j > i and keep[j] and math.hypot(allc[e, 0] - r, allc[e, 1] - c) < 0.8 * (rad + allc[e, 2]):
                    keep[j] = False
    return objs.take(np.nonzero(keep)[0])


def _bowls(scene: Scene) -> Objects:
    n = scene.cfg.nuisance
    r, c, ids = candidates(scene, S_BOWL, n.subsidence_per_1000km2 / 1000)
    if len(r) == 0:
        return Objects.empty()
    _, ge, gn = terrain_at_points(scene, r, c)
    slope = np.degrees(np.arctan(np.hypot(ge, gn)))
    ok = slope < 5.0
    r, c, ids, slope = r[ok], c[ok], ids[ok], slope[ok]
    lo_r, hi_r = n.subsidence_radius_px
    u = u01(scene, S_BOWL, ids, 0)
    rad = _loguniform(lo_r, hi_r, u) if n.subsidence_loguniform else lo_r + u * (hi_r - lo_r)
    lo, hi = n.subsidence_mm_yr
    speed = lo + u01(scene, S_BOWL, ids, 1) * (hi - lo)
    motion = np.tile([0.0, 0.0, -1.0], (len(r), 1))
    one = np.ones(len(r))
    return Objects(r.astype(float), c.astype(float), rad, rad * (0.7 + 0.3 * u01(scene, S_BOWL, ids, 2)), one, 0 * one,
                   speed, motion, ids, np.full(len(r), -1), slope)


def _glaciers(scene: Scene) -> Objects:
    n = scene.cfg.nuisance
    r, c, ids = candidates(scene, S_GLACIER, n.glaciers_per_1000km2 / 1000)
    if len(r) == 0:
        return Objects.empty()
    z, ge, gn = terrain_at_points(scene, r, c)
    ok = z >= n.glacier_min_elevation_m
    r, c, ids, ge, gn = r[ok], c[ok], ids[ok], ge[ok], gn[ok]
    slope = np.degrees(np.arctan(np.hypot(ge, gn)))
    lo, hi = n.glacier_size_px
    length = lo + u01(scene, S_GLACIER, ids, 0) * (hi - lo)
    width = 10 + u01(scene, S_GLACIER, ids, 1) * 25
    vlo, vhi = n.glacier_speed_mm_yr
    speed = vlo + u01(scene, S_GLACIER, ids, 2) * (vhi - vlo)
    motion, ue, ur = motion_frame(ge, gn)
    free = u01(scene, S_GLACIER, ids, 5) < n.glacier_free_orientation_fraction
    if free.any():  # a tongue seen across the slope (a hanging or piedmont glacier)
        ang = u01(scene, S_GLACIER, ids, 6) * 2 * np.pi
        ue, ur = np.where(free, np.cos(ang), ue), np.where(free, np.sin(ang), ur)
    glaciers = Objects(r.astype(float), c.astype(float), length / 2, width / 2, ue, ur, speed, motion, ids,
                       np.full(len(r), -1), slope)
    valley = u01(scene, S_GLACIER, ids, 7) < n.glacier_valley_fraction
    if valley.any():
        glaciers = glacier_tongues(scene, glaciers, valley)
    return glaciers


def hole_share(scene: Scene, objs: Objects) -> np.ndarray:
    """Share of each glacier's pixels decorrelated by its ice (drawn per glacier)."""
    lo, hi = scene.cfg.nuisance.glacier_hole_fraction
    return lo + u01(scene, S_GLACIER, objs.kid, 8) * (hi - lo)


def _unwrap_patches(scene: Scene) -> Objects:
    """Unwrapping errors: whole-cycle offsets with straight, sharp edges (or irregular ones), per track."""
    n = scene.cfg.nuisance
    yrs = years(scene.cfg)
    out = []
    for t in range(len(scene.tracks)):
        r, c, ids = candidates(scene, S_UNW + 1000 * (t + 1), n.unwrapping_per_1000km2 / 1000)
        if len(r) == 0:
            continue
        half = 20 + u01(scene, S_UNW, ids, 0) * 110
        ang = u01(scene, S_UNW, ids, 1) * np.pi
        cycles = np.where(u01(scene, S_UNW, ids, 2) < 0.5, -1.0, 1.0) * np.where(u01(scene, S_UNW, ids, 3) < 0.8, 1.0, 2.0)
        speed = cycles * SENTINEL_WAVELENGTH_MM / 2 / yrs
        one = np.ones(len(r))
        irregular = u01(scene, S_UNW_IRR, ids, 0) < n.unwrapping_irregular_fraction
        out.append(Objects(r.astype(float), c.astype(float), half, half * (0.4 + 0.6 * u01(scene, S_UNW, ids, 4)),
                           np.cos(ang), np.sin(ang), speed, np.tile([0.0, 0.0, 0.0], (len(r), 1)), ids,
                           np.full(len(r), t), 0 * one, kind=irregular.astype(np.int64)))
    return Objects.concat(out)


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
    return Scene(cfg, grid, river_rc, tuple(tracks), slides, _bowls(scene), _glaciers(scene), _unwrap_patches(scene),
                 volcanoes(scene), faults(scene))


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
        return _thin_overlaps(Objects.concat([kept, new]))
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
