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
from .scene import (
    S_DEC,
    S_DEC_T,
    S_FROST,
    S_GLACIER,
    S_PIX,
    S_STORM,
    S_TURB,
    Scene,
    shape_field,
    slide_velocity,
)
from .terrain import elevation_grid


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
    for objs, kind in ((scene.slides, "slide"), (scene.bowls, "bowl"), (scene.glaciers, "glacier")):
        for i in objs.in_window(win):
            r0 = max(win.row0, int(objs.row[i] - objs.radius()[i]))
            r1 = min(win.row1, int(objs.row[i] + objs.radius()[i]) + 1)
            c0 = max(win.col0, int(objs.col[i] - objs.radius()[i]))
            c1 = min(win.col1, int(objs.col[i] + objs.radius()[i]) + 1)
            if r1 <= r0 or c1 <= c0:
                continue
            rr, cc = np.arange(r0, r1, dtype=float), np.arange(c0, c1, dtype=float)
            if kind == "slide":
                mask, speed = slide_velocity(scene, i, rr, cc)
            elif kind == "bowl":
                mask, prof = shape_field(scene, objs, i, rr, cc, lobes=False)
                speed = objs.speed[i] * prof ** 2
            else:
                mask, prof = shape_field(scene, objs, i, rr, cc, lobes=False)
                speed = objs.speed[i] * np.sqrt(prof)
                glacier_mask[r0 - win.row0:r1 - win.row0, c0 - win.col0:c1 - win.col0] |= mask
            sl = (slice(r0 - win.row0, r1 - win.row0), slice(c0 - win.col0, c1 - win.col0))
            m = objs.motion[i]
            de[sl] += speed * m[0]
            dn[sl] += speed * m[1]
            du[sl] += speed * m[2]
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
        rate = de * los[0] + dn * los[1] + du * los[2]
        for i in scene.unwrap.in_window(win):
            if scene.unwrap.track[i] != t:
                continue
            mask, _ = shape_field(scene, scene.unwrap, i, rows, cols, sharp=True)
            rate += np.where(mask, scene.unwrap.speed[i], 0.0)
        turb = fbm_grid(scene.seed, S_TURB + 100 * t, rows, cols, largest=20_000 / scene.px, smallest=2.0, hurst=0.3)
        rate += a.turbulence_mm_yr * storm_amp * turb
        rate += tr.strat_k * (z - z_ref) / 1000.0
        rate += tr.ramp[0] * xr_km[None, :] / 100 + tr.ramp[1] * yr_km[:, None] / 100
        rate += a.pixel_noise_mm_yr * hash_normal(scene.seed, S_PIX + 100 * t, rows[:, None].astype(np.int64), cols[None, :].astype(np.int64))
        # Holes: decorrelation (shared + per-track), glacier ice, layover and shadow.
        hc = cfg.holes
        holes = np.zeros((h, wd), bool)
        if hc.decorrelation_fraction > 0:
            dec_t = fbm_grid(scene.seed, S_DEC_T + 100 * t, rows, cols, largest=20.0, smallest=1.5, hurst=0.5)
            score = 0.8 * dec_shared + 0.6 * dec_t + dec_bias
            holes |= score > norm.ppf(1 - hc.decorrelation_fraction) * 1.0 + 0.35
        holes |= glacier_mask & (hash_uniform(scene.seed, S_GLACIER + t, rows[:, None], cols[None, :]) < 0.2)
        if hc.layover_shadow:
            rise = np.degrees(np.arctan(ge * tr.look[0] + gn * tr.look[1]))  # terrain rise along the look
            holes |= (rise > tr.incidence) | (-rise > 90.0 - tr.incidence)
        rate[holes] = np.nan
        out[t] = rate.astype(np.float32)
    return out, z.astype(np.float32)


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
    n = scene.cfg.nuisance
    if n.frost_heave:
        zh = elevation_grid(scene, np.arange(win.row0 - 1, win.row1 + 1, dtype=np.float64),
                            np.arange(win.col0 - 1, win.col1 + 1, dtype=np.float64))
        ge, gn = gradient_en(zh, scene.px)
        slope = np.degrees(np.arctan(np.hypot(ge, gn)))
        mask |= (zh[1:-1, 1:-1] > n.frost_min_elevation_m) & (slope < 12)
    return mask
