"""Catalogue entries of the wider simulated world: earthflows, compound slides, valley glaciers,
volcanic sources and creeping faults (computed once per scene; rendering is in :mod:`.shapes`).

- **Earthflows** (``kind`` 1): a centreline traced down the fall line from the slide's head, so
  it bends with the valley, ``length : width`` from ``landslides.earthflow_elongation``; half-width
  grows toward a lobate toe. Stored as ``geom`` = ``(m, 5)`` vertices (row, col, half-width px,
  position 0–1 from head to toe, local slope in degrees), about 1.5 px apart.
- **Compound slides** (``kind`` 2): 2–4 lobate kinematic elements along the slope axis, each with
  its own speed factor; ``geom`` = ``(k, 6)`` (row offset, col offset, half-length, half-width,
  speed factor, shape id), element 0 the main body at the slide's centre.
- **Valley glaciers** (``kind`` 1 in the glacier catalogue): a fall-line tongue like an
  earthflow, wide in its upper part and narrowing to the terminus.
- **Volcanic sources**: a Mogi point source at depth ``a`` px under ``(row, col)``, peak vertical
  rate ``speed`` (negative: deflation).
- **Faults**: a line through ``(row, col)`` along ``(ue, ur)`` creeping at ``speed`` mm/yr with
  locking depth ``a`` px (an arctan profile across it).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .objects import S_FAULT, S_FLOW, S_PART, S_VOLC, Objects, Scene, candidates, u01
from .terrain import elevation_points

PATH_STEP = 1.5  # px between centreline vertices
MIN_FLOW_PX = 24.0  # shorter slides stay lobate: a strip a few pixels long is no earthflow


def _downslope(scene: Scene, r: np.ndarray, c: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slope deg, row, col) of the downhill unit vector, from elevations ``d`` px either side."""
    z = elevation_points(scene, np.concatenate([r, r, r - d, r + d]), np.concatenate([c - d, c + d, c, c]))
    n = len(r)
    ge = (z[n:2 * n] - z[:n]) / (2 * d * scene.px)
    gn = -(z[3 * n:] - z[2 * n:3 * n]) / (2 * d * scene.px)
    g = np.hypot(ge, gn)
    safe = np.maximum(g, 1e-12)
    return np.degrees(np.arctan(g)), gn / safe, -ge / safe  # north is -row


def trace_fall_lines(scene: Scene, r0: np.ndarray, c0: np.ndarray, lengths: np.ndarray, *,
                     baseline: np.ndarray | None = None, min_slope_deg: float = 3.0) -> list[np.ndarray]:
    """Centrelines ``(m, 3)`` (row, col, slope deg) traced downhill from each head, at most ``lengths`` px.

    Each step goes ``PATH_STEP`` px along a blend of the previous direction (0.8) and the
    downslope direction (0.2) measured over ``baseline`` px (default 3; about the strip's
    half-width), so the line follows the valley, not the DEM's pixel-scale noise; it stops where
    the ground flattens below ``min_slope_deg`` (a valley floor).
    """
    n = len(r0)
    base = np.full(n, 3.0) if baseline is None else np.maximum(2.0, np.asarray(baseline, dtype=float))
    pr, pc = r0.astype(float).copy(), c0.astype(float).copy()
    dr, dc = np.zeros(n), np.zeros(n)
    travelled = np.zeros(n)
    alive = np.ones(n, bool)
    pts: list[list[tuple[float, float, float]]] = [[] for _ in range(n)]
    for _ in range(int(np.ceil(lengths.max() / PATH_STEP)) + 1 if n else 0):
        idx = np.nonzero(alive)[0]
        if not len(idx):
            break
        slope, nr, nc = _downslope(scene, pr[idx], pc[idx], base[idx])
        first = travelled[idx] == 0
        br = np.where(first, nr, 0.8 * dr[idx] + 0.2 * nr)
        bc = np.where(first, nc, 0.8 * dc[idx] + 0.2 * nc)
        norm = np.hypot(br, bc)
        for k, i in enumerate(idx):
            pts[i].append((pr[i], pc[i], slope[k]))
        stop = (slope < min_slope_deg) | (norm < 1e-6) | (travelled[idx] + PATH_STEP > lengths[idx])
        alive[idx[stop]] = False
        go = idx[~stop]
        ok = ~stop
        dr[go], dc[go] = br[ok] / norm[ok], bc[ok] / norm[ok]
        pr[go] += PATH_STEP * dr[go]
        pc[go] += PATH_STEP * dc[go]
        travelled[go] += PATH_STEP
    return [np.asarray(p, dtype=float).reshape(-1, 3) for p in pts]


def _smooth(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _path_geom(line: np.ndarray, halfwidth: np.ndarray) -> np.ndarray:
    seg = np.hypot(np.diff(line[:, 0]), np.diff(line[:, 1]))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = s / max(s[-1], 1e-9)
    return np.column_stack([line[:, 0], line[:, 1], halfwidth, t, line[:, 2]])


def _as_paths(objs: Objects, idx: np.ndarray, geoms: list[np.ndarray]) -> Objects:
    """Objects ``idx`` become centreline objects (kind 1) with the given geometries."""
    row, col, a, b = objs.row.copy(), objs.col.copy(), objs.a.copy(), objs.b.copy()
    kind, extent, geom, slope = objs.kind.copy(), objs.extent.copy(), objs.geom.copy(), objs.slope_deg.copy()
    motion = objs.motion.copy()
    for i, gm in zip(idx, geoms, strict=True):
        lo, hi = gm[:, :2].min(0), gm[:, :2].max(0)
        cr, cc = (lo + hi) / 2
        row[i], col[i] = cr, cc
        extent[i] = float(np.hypot(gm[:, 0] - cr, gm[:, 1] - cc).max() + gm[:, 2].max() + 2)
        a[i] = float(np.hypot(np.diff(gm[:, 0]), np.diff(gm[:, 1])).sum() / 2)
        b[i] = float(np.median(gm[:, 2]))
        slope[i] = float(gm[:, 4].mean())
        kind[i] = 1
        geom[i] = gm
        motion[i] = path_motion(gm).mean(0)
    return dataclasses.replace(objs, row=row, col=col, a=a, b=b, kind=kind, extent=extent, geom=geom,
                               slope_deg=slope, motion=motion)


def path_motion(gm: np.ndarray) -> np.ndarray:
    """(m, 3) unit motion (east, north, up) at each vertex: along the centreline, down its slope."""
    r, c = gm[:, 0], gm[:, 1]
    tr = np.gradient(r) if len(r) > 1 else np.zeros(1)
    tc = np.gradient(c) if len(c) > 1 else np.ones(1)
    n = np.hypot(tr, tc)
    n = np.where(n > 0, n, 1.0)
    th = np.radians(gm[:, 4])
    return np.column_stack([np.cos(th) * tc / n, -np.cos(th) * tr / n, -np.sin(th)])


def to_earthflows(scene: Scene, objs: Objects, sel: np.ndarray) -> Objects:
    """Turn the selected slides into earthflows along the fall line from their head.

    Slides shorter than ``MIN_FLOW_PX``, and those whose fall line runs out (a valley floor)
    before half their drawn length, stay lobate.
    """
    L = scene.cfg.landslides
    idx = np.nonzero(sel & (2 * objs.a >= MIN_FLOW_PX))[0]
    ids = objs.kid[idx]
    lo, hi = L.earthflow_elongation
    elong = lo + u01(scene, S_FLOW, ids, 0) * (hi - lo)
    length = 2 * objs.a[idx]
    half = np.maximum(2.0, length / elong / 2)
    lines = trace_fall_lines(scene, objs.row[idx], objs.col[idx], length, baseline=half)
    keep, geoms = [], []
    for k, (i, line) in enumerate(zip(idx, lines, strict=True)):
        if len(line) < 4 or (len(line) - 1) * PATH_STEP < 0.5 * length[k]:
            continue
        t = np.linspace(0.0, 1.0, len(line))
        wob = 1 + 0.12 * np.sin(2 * np.pi * (t * (1 + 2 * u01(scene, S_FLOW, ids[k:k + 1], 1)[0])
                                            + u01(scene, S_FLOW, ids[k:k + 1], 2)[0]))
        w = half[k] * (0.75 + 0.25 * t + 0.55 * np.exp(-((t - 0.88) / 0.1) ** 2)) * wob
        keep.append(i)
        geoms.append(_path_geom(line, w))
    return _as_paths(objs, np.asarray(keep, dtype=np.int64), geoms) if keep else objs


def flow_speed_profile(t: np.ndarray) -> np.ndarray:
    """Share of an earthflow's peak speed along it: a slow head, a fast body, a slower toe."""
    return (0.3 + 0.7 * _smooth(t / 0.25)) * (1 - 0.6 * _smooth((t - 0.75) / 0.25))


def glacier_speed_profile(t: np.ndarray) -> np.ndarray:
    """Share of a valley glacier's peak speed: slow at the head wall, fastest mid-tongue, slow at the snout."""
    return 0.35 + 0.65 * np.sin(np.pi * np.clip(t, 0, 1)) ** 0.5


def glacier_tongues(scene: Scene, objs: Objects, sel: np.ndarray) -> Objects:
    """The selected glaciers become valley tongues: traced down the fall line, narrowing to the snout."""
    idx = np.nonzero(sel)[0]
    lines = trace_fall_lines(scene, objs.row[idx], objs.col[idx], 2 * objs.a[idx], baseline=objs.b[idx], min_slope_deg=1.0)
    keep, geoms = [], []
    for i, line in zip(idx, lines, strict=True):
        if len(line) < 8:
            continue
        t = np.linspace(0.0, 1.0, len(line))
        keep.append(i)
        geoms.append(_path_geom(line, objs.b[i] * (1.15 - 0.55 * t)))
    return _as_paths(objs, np.asarray(keep, dtype=np.int64), geoms) if keep else objs


def path_discs(gm: np.ndarray) -> np.ndarray:
    """(k, 3) discs (row, col, radius) covering a centreline object, for overlap tests."""
    step = max(1, int(np.median(gm[:, 2]) / PATH_STEP))
    sub = gm[::step]
    return np.column_stack([sub[:, 0], sub[:, 1], sub[:, 2] + 1])


def compound_parts(scene: Scene, objs: Objects, sel: np.ndarray) -> Objects:
    """Give the selected slides 2–4 kinematic elements along their slope axis (kind 2)."""
    idx = np.nonzero(sel)[0]
    kind, extent, geom = objs.kind.copy(), objs.extent.copy(), objs.geom.copy()
    for i in idx:
        kid = objs.kid[i:i + 1]
        n = 2 + int(u01(scene, S_PART, kid, 0)[0] * 3)
        a, b, ue, ur = objs.a[i], objs.b[i], objs.ue[i], objs.ur[i]
        rows = [(0.0, 0.0, a, b, 1.0, int(kid[0]) * 8)]
        for e in range(1, n):
            u = [u01(scene, S_PART, kid, 10 * e + j)[0] for j in range(6)]
            along = (-1 if e == 1 else 1) * (0.55 + 0.45 * u[0]) * a * (1 + 0.6 * (e == 3))
            lateral = (u[1] - 0.5) * 0.6 * b
            factor = 1.2 + 0.6 * u[5] if u[4] < 0.25 else 0.15 + 0.5 * u[5]
            rows.append((along * ur + lateral * ue, along * ue - lateral * ur,
                         a * (0.35 + 0.35 * u[2]), b * (0.4 + 0.4 * u[3]), factor, int(kid[0]) * 8 + e))
        parts = np.asarray(rows, dtype=float)
        kind[i] = 2
        geom[i] = parts
        extent[i] = float((np.hypot(parts[:, 0], parts[:, 1]) + np.maximum(parts[:, 2], parts[:, 3]) * 1.4 * 1.15 + 2).max())
    return dataclasses.replace(objs, kind=kind, extent=extent, geom=geom)


def volcanoes(scene: Scene) -> Objects:
    n = scene.cfg.nuisance
    r, c, ids = candidates(scene, S_VOLC, n.volcanic_per_1000km2 / 1000)
    if len(r) == 0:
        return Objects.empty()
    dlo, dhi = n.volcanic_depth_px
    depth = np.exp(np.log(dlo) + u01(scene, S_VOLC, ids, 0) * (np.log(dhi) - np.log(dlo)))
    lo, hi = n.volcanic_mm_yr
    peak = (lo + u01(scene, S_VOLC, ids, 1) * (hi - lo)) * np.where(u01(scene, S_VOLC, ids, 2) < 0.7, 1.0, -1.0)
    one = np.ones(len(r))
    return Objects(r.astype(float), c.astype(float), depth, depth, one, 0 * one, peak, np.zeros((len(r), 3)), ids,
                   np.full(len(r), -1), 0 * one, extent=4 * depth)


def faults(scene: Scene) -> Objects:
    n = scene.cfg.nuisance
    k = n.faults
    if k == 0:
        return Objects.empty()
    ids = np.arange(k, dtype=np.int64)
    h, w = scene.grid.shape
    r = u01(scene, S_FAULT, ids, 0) * h
    c = u01(scene, S_FAULT, ids, 1) * w
    ang = u01(scene, S_FAULT, ids, 2) * np.pi
    lo, hi = n.fault_mm_yr
    speed = (lo + u01(scene, S_FAULT, ids, 3) * (hi - lo)) * np.where(u01(scene, S_FAULT, ids, 4) < 0.5, 1.0, -1.0)
    klo, khi = n.fault_locking_km
    lock_px = (klo + u01(scene, S_FAULT, ids, 5) * (khi - klo)) * 1000 / scene.px
    one = np.ones(k)
    return Objects(r, c, lock_px, lock_px, np.cos(ang), np.sin(ang), speed, np.zeros((k, 3)), ids,
                   np.full(k, -1), 0 * one, extent=np.full(k, np.inf))
