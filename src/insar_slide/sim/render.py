"""Render any window of a :class:`~.scene.Scene`: rates per track, DEM, deformation mask.

Every value is a pure function of the scene and the global pixel position, so windows
rendered independently agree exactly where they meet.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from ..grid import PixelWindow
from .geometry import gradient_en
from .noise import SPLINE_STD, fbm_grid, hash_normal, hash_uniform, spline_grid
from .objects import (
    S_ALIAS,
    S_DEC,
    S_DEC_T,
    S_ESTEP,
    S_FROST,
    S_GLACIER,
    S_PIX,
    S_STORM,
    S_TURB,
    Scene,
)
from .scene import hole_share
from .shapes import fault_field, glacier_field, shape_field, slide_field, volcano_field
from .terrain import elevation_grid


def over_limit(scene: Scene, t: int, rows: np.ndarray, cols: np.ndarray, los_rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sensor's unwrapping limit on a track's deformation rate: (recorded rate, lost mask).

    Where |LOS rate| passes the limit (``radar.limit_mm_yr``, with a speckled edge from 0.8 to
    1.0 × the limit), the phase cannot be unwrapped: in smooth patches covering
    ``alias_fraction`` of the area the rate aliases (wraps into ±limit), elsewhere the pixel
    decorrelates (lost → NaN). Off (``radar.unwrapping_limit: false``): recorded as simulated.
    """
    radar = scene.cfg.radar
    if not radar.unwrapping_limit:
        return los_rate, np.zeros(los_rate.shape, bool)
    lim = radar.limit_mm_yr
    u = (hash_uniform(scene.seed, S_ALIAS + 100 * t, rows[:, None], cols[None, :]) + 1) / 2
    over = np.abs(los_rate) > lim * (0.8 + 0.2 * u)
    if not over.any():
        return los_rate, over
    zone = spline_grid(scene.seed, S_ALIAS + 100 * t + 1, rows, cols, 12.0) / SPLINE_STD
    alias = zone > norm.ppf(1 - radar.alias_fraction) if radar.alias_fraction > 0 else np.zeros(over.shape, bool)
    wrapped = np.mod(los_rate + lim, 2 * lim) - lim
    return np.where(over & alias, wrapped, los_rate), over & ~alias


def render(scene: Scene, win: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
    """Rates ``(track, rows, cols)`` float32 mm/yr (NaN = hole) and DEM ``(rows, cols)`` of a window."""
    cfg = scene.cfg
    rows = np.arange(win.row0, win.row1, dtype=np.float64)
    cols = np.arange(win.col0, win.col1, dtype=np.float64)
    zh = elevation_grid(scene, np.arange(win.row0 - 1, win.row1 + 1, dtype=np.float64),
                        np.arange(win.col0 - 1, win.col1 + 1, dtype=np.float64))
    z = zh[1:-1, 1:-1]
    ge, gn = gradient_en(zh, scene.px)
    slope = np.arctan(np.hypot(ge, gn))

    # Deformation shared by all tracks, as (east, north, up) rate fields.
    de = np.zeros(z.shape)
    dn = np.zeros(z.shape)
    du = np.zeros(z.shape)
    glacier_mask = np.zeros(z.shape, bool)
    glacier_thr = np.full(z.shape, -1.0)  # hash threshold of ice decorrelation (share p -> 2p - 1)
    for objs, kind in ((scene.slides, "slide"), (scene.bowls, "bowl"), (scene.glaciers, "glacier"),
                       (scene.volcanoes, "volcano")):
        share = hole_share(scene, objs) if kind == "glacier" else None
        for i in objs.in_window(win):
            rad = objs.radius()[i]
            r0 = max(win.row0, int(objs.row[i] - rad))
            r1 = min(win.row1, int(objs.row[i] + rad) + 1)
            c0 = max(win.col0, int(objs.col[i] - rad))
            c1 = min(win.col1, int(objs.col[i] + rad) + 1)
            if r1 <= r0 or c1 <= c0:
                continue
            rr, cc = np.arange(r0, r1, dtype=float), np.arange(c0, c1, dtype=float)
            sl = (slice(r0 - win.row0, r1 - win.row0), slice(c0 - win.col0, c1 - win.col0))
            if kind == "slide":
                mask, ve, vn, vu = slide_field(scene, i, rr, cc)
            elif kind == "bowl":
                mask, prof = shape_field(scene, objs, i, rr, cc, lobes=False)
                speed = objs.speed[i] * prof ** 2
                m = objs.motion[i]
                ve, vn, vu = speed * m[0], speed * m[1], speed * m[2]
            elif kind == "glacier":
                mask, ve, vn, vu = glacier_field(scene, i, rr, cc)
                glacier_mask[sl] |= mask
                assert share is not None
                glacier_thr[sl] = np.where(mask, np.maximum(glacier_thr[sl], 2 * share[i] - 1), glacier_thr[sl])
            else:
                ve, vn, vu = volcano_field(objs, i, rr, cc)
            de[sl] += ve
            dn[sl] += vn
            du[sl] += vu
    for i in range(len(scene.faults)):
        ve, vn = fault_field(scene.faults, i, rows, cols)
        de += ve
        dn += vn
    n = cfg.nuisance
    if n.frost_heave:
        w = np.clip((z - n.frost_min_elevation_m) / 200.0, 0, 1) * (np.degrees(slope) < 12)
        if w.any():
            f = spline_grid(scene.seed, S_FROST, rows, cols, 300 / scene.px) / SPLINE_STD
            du += w * (-3.0 + 5.0 * f)

    a = cfg.atmosphere
    storm = spline_grid(scene.seed, S_STORM, rows, cols, 4_000 / scene.px) / SPLINE_STD
    # Smooth (not sharp-edged) regions of stronger turbulence: a wet season over part of the basin.
    storm_amp = 1.0 + 2.0 * np.clip((storm - norm.ppf(1 - a.turbulence_storm_fraction)) / 0.6 + 0.5, 0, 1) \
        if a.turbulence_storm_fraction > 0 else 1.0
    dec_shared = fbm_grid(scene.seed, S_DEC, rows, cols, largest=40.0, smallest=1.5, hurst=0.5)
    # Vegetated low ground and steep slopes decorrelate more.
    dec_bias = 0.5 * np.clip((3500.0 - z) / 1500.0, 0, 1) + 0.8 * np.clip((np.degrees(slope) - 35.0) / 20.0, 0, 1)
    h, wd = win.rows, win.cols
    out = np.empty((len(scene.tracks), h, wd), dtype=np.float32)
    xr_km = (cols - scene.grid.width / 2) * scene.px / 1000
    yr_km = -(rows - scene.grid.height / 2) * scene.px / 1000
    z_ref = cfg.terrain.plateau_m - cfg.terrain.valley_depth_m / 2
    for t, tr in enumerate(scene.tracks):
        los = tr.los
        rate, lost = over_limit(scene, t, rows, cols, de * los[0] + dn * los[1] + du * los[2])
        for i in scene.unwrap.in_window(win):
            if scene.unwrap.track[i] != t:
                continue
            mask, _ = shape_field(scene, scene.unwrap, i, rows, cols, sharp=True)
            rate += np.where(mask, scene.unwrap.speed[i], 0.0)
        turb = fbm_grid(scene.seed, S_TURB + 100 * t, rows, cols, largest=20_000 / scene.px, smallest=2.0, hurst=0.3)
        rate += a.turbulence_mm_yr * storm_amp * turb
        rate += tr.strat_k * (z - z_ref) / 1000.0
        if n.elevation_step_mm_yr > 0:
            rate += elevation_step(scene, t, z)
        rate += tr.ramp[0] * xr_km[None, :] / 100 + tr.ramp[1] * yr_km[:, None] / 100
        rate += a.pixel_noise_mm_yr * hash_normal(scene.seed, S_PIX + 100 * t, rows[:, None].astype(np.int64), cols[None, :].astype(np.int64))
        # Holes: decorrelation (shared + per-track), glacier ice, layover and shadow.
        hc = cfg.holes
        holes = lost.copy()
        if hc.decorrelation_fraction > 0:
            dec_t = fbm_grid(scene.seed, S_DEC_T + 100 * t, rows, cols, largest=20.0, smallest=1.5, hurst=0.5)
            score = 0.8 * dec_shared + 0.6 * dec_t + dec_bias
            holes |= score > norm.ppf(1 - hc.decorrelation_fraction) * 1.0 + 0.35
        holes |= glacier_mask & (hash_uniform(scene.seed, S_GLACIER + t, rows[:, None], cols[None, :]) < glacier_thr)
        if hc.layover_shadow:
            rise = np.degrees(np.arctan(ge * tr.look[0] + gn * tr.look[1]))  # terrain rise along the look
            holes |= (rise > tr.incidence) | (-rise > 90.0 - tr.incidence)
        rate[holes] = np.nan
        out[t] = rate.astype(np.float32)
    return out, z.astype(np.float32)


def elevation_step(scene: Scene, t: int, z: np.ndarray) -> np.ndarray:
    """A track's seasonal/thermal signal tied to elevation: a step of up to
    ``nuisance.elevation_step_mm_yr`` (either sign) across a 100–400 m band of elevation."""
    cfg = scene.cfg
    u = [float(hash_uniform(scene.seed, S_ESTEP, np.array(t), np.array(k))) for k in range(3)]
    amp = cfg.nuisance.elevation_step_mm_yr * u[0]
    z_t = cfg.terrain.plateau_m - cfg.terrain.valley_depth_m * (0.5 + 0.35 * u[1])
    width = 250.0 + 150.0 * u[2]
    return amp * 0.5 * np.tanh((z - z_t) / width)


def deformation_mask(scene: Scene, win: PixelWindow) -> np.ndarray:
    """Pixels of ``win`` where the scene puts any deformation or artefact (not atmosphere).

    Landslides, subsidence bowls, glaciers, unwrapping patches (any track) and frost-heave
    ground: everything else is "stable ground", where only atmosphere and noise remain.
    """
    rows = np.arange(win.row0, win.row1, dtype=np.float64)
    cols = np.arange(win.col0, win.col1, dtype=np.float64)
    mask = np.zeros((win.rows, win.cols), bool)
    for objs, lobes, sharp in ((scene.slides, True, False), (scene.bowls, False, False),
                               (scene.glaciers, False, False), (scene.unwrap, False, True)):
        for i in objs.in_window(win):
            m, _ = shape_field(scene, objs, i, rows, cols, lobes=lobes, sharp=sharp)
            mask |= m
    v = scene.volcanoes
    for i in v.in_window(win):
        mask |= np.hypot(rows[:, None] - v.row[i], cols[None, :] - v.col[i]) < 2 * v.a[i]
    n = scene.cfg.nuisance
    if n.frost_heave:
        zh = elevation_grid(scene, np.arange(win.row0 - 1, win.row1 + 1, dtype=np.float64),
                            np.arange(win.col0 - 1, win.col1 + 1, dtype=np.float64))
        ge, gn = gradient_en(zh, scene.px)
        slope = np.degrees(np.arctan(np.hypot(ge, gn)))
        mask |= (zh[1:-1, 1:-1] > n.frost_min_elevation_m) & (slope < 12)
    return mask
