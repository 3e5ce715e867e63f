"""Per-pixel shapes and velocity fields of catalogue objects, and their outlines as polygons.

Every function evaluates on a grid ``rows × cols`` of *global* pixel indices (1-D float arrays)
and depends only on the object and the pixel, so a field computed in one window agrees exactly
with the same field in any other window. Velocities are ``(east, north, up)`` rate fields in
mm/yr of the object's own motion, before projection on a track's line of sight.
"""

from __future__ import annotations

import numpy as np
import shapely

from .kinds import flow_speed_profile, glacier_speed_profile, path_motion
from .noise import SPLINE_STD, spline_grid
from .objects import S_SLIDE, S_TEX, S_UNW, S_UNW_IRR, Objects, Scene, u01

Field3 = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # mask, east, north, up


def _harmonics(scene: Scene, kid: int, phi: np.ndarray) -> np.ndarray:
    k_arr = np.array([kid])
    rad = np.ones_like(phi)
    for k in (2, 3, 4):
        amp = 0.12 * u01(scene, S_SLIDE, k_arr, 10 + k)[0]
        ph = 2 * np.pi * u01(scene, S_SLIDE, k_arr, 20 + k)[0]
        rad = rad + amp * np.cos(k * phi + ph)
    return rad


def lobe(scene: Scene, kid: int, centre: tuple[float, float], axes: tuple[float, float], axis: tuple[float, float],
         rows: np.ndarray, cols: np.ndarray, *, lobes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mask, profile) of a lobate shape: an ellipse of half-axes ``axes`` = (a, b) along
    ``axis`` = (ue, ur) in (col, row) pixel axes, with 2nd–4th harmonics seeded by ``kid`` and a
    wider toe; ``profile`` is 1 at the centre and 0 at the edge."""
    dr = rows[:, None] - centre[0]
    dc = cols[None, :] - centre[1]
    u = dc * axis[0] + dr * axis[1]
    v = -dc * axis[1] + dr * axis[0]
    ua, vb = u / axes[0], v / axes[1]
    q = np.hypot(ua, vb)
    rad = np.ones_like(q)
    if lobes:
        rad = _harmonics(scene, kid, np.arctan2(vb, ua))
        # Widen the toe (downslope half) a little: lobate, not elliptical.
        rad = rad * (1 + 0.15 * np.clip(ua, 0, 1))
    qn = q / rad
    mask = qn < 1
    profile = np.where(mask, np.sqrt(np.clip(1 - qn * qn, 0, 1)), 0.0)
    return mask, profile


def shape_field(scene: Scene, objs: Objects, i: int, rows: np.ndarray, cols: np.ndarray, *, lobes: bool = True,
                sharp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mask, profile) of object ``i`` on the grid ``rows × cols``; profile is 1 at the centre, 0 at the edge.

    ``sharp``: an unwrapping patch — a rotated rectangle cut by one more straight edge, or (kind 1)
    an irregular blob with the same sharp, whole-cycle step at its edge.
    """
    if sharp:
        dr = rows[:, None] - objs.row[i]
        dc = cols[None, :] - objs.col[i]
        ua = (dc * objs.ue[i] + dr * objs.ur[i]) / objs.a[i]
        vb = (-dc * objs.ur[i] + dr * objs.ue[i]) / objs.b[i]
        inside = (np.abs(ua) <= 1) & (np.abs(vb) <= 1)
        if objs.kind[i] == 1:
            stream = S_UNW_IRR * 1_000_003 + int(objs.kid[i]) % 1_000_003
            noise = spline_grid(scene.seed, stream, rows, cols, max(3.0, objs.a[i] / 2.5)) / SPLINE_STD
            mask = inside & (1.2 * (1 - np.hypot(ua, vb)) + 0.5 * noise > 0.3)
        else:
            cut = u01(scene, S_UNW, objs.kid[i:i + 1], 5)[0] * 2 - 1
            mask = inside & (ua + vb <= 1 + cut)
        return mask, mask.astype(float)
    if objs.kind[i] == 1:
        mask, q, _, _ = path_field(objs.geom[i], rows, cols)
        return mask, np.where(mask, np.sqrt(np.clip(1 - q * q, 0, 1)), 0.0)
    if objs.kind[i] == 2:
        masks = [lobe(scene, int(p[5]), (objs.row[i] + p[0], objs.col[i] + p[1]), (p[2], p[3]), (objs.ue[i], objs.ur[i]),
                      rows, cols, lobes=lobes) for p in objs.geom[i]]
        return np.logical_or.reduce([m for m, _ in masks]), np.maximum.reduce([p for _, p in masks])
    return lobe(scene, int(objs.kid[i]), (objs.row[i], objs.col[i]), (objs.a[i], objs.b[i]), (objs.ue[i], objs.ur[i]),
                rows, cols, lobes=lobes)


def path_field(gm: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mask, q, t, vertex) of a centreline object on ``rows × cols``.

    A pixel is inside when it is closer to some vertex than that vertex's half-width; of those,
    the vertex with the smallest ``distance - half-width`` owns it (first in order on a tie):
    ``q`` = distance / half-width there (0 on the centreline, 1 at the edge), ``t`` = its position
    from head (0) to toe (1), ``vertex`` its index (-1 outside).
    """
    h, w = len(rows), len(cols)
    best = np.full((h, w), np.inf)
    arg = np.full((h, w), -1, dtype=np.int64)
    dist = np.zeros((h, w))
    r0, c0 = rows[0] if h else 0.0, cols[0] if w else 0.0
    for k in range(len(gm)):
        pr, pc, hw = gm[k, 0], gm[k, 1], gm[k, 2]
        i0, i1 = max(0, int(np.floor(pr - hw - 1 - r0))), min(h, int(np.ceil(pr + hw + 1 - r0)) + 1)
        j0, j1 = max(0, int(np.floor(pc - hw - 1 - c0))), min(w, int(np.ceil(pc + hw + 1 - c0)) + 1)
        if i1 <= i0 or j1 <= j0:
            continue
        d = np.hypot(rows[i0:i1, None] - pr, cols[None, j0:j1] - pc)
        f = d - hw
        better = f < best[i0:i1, j0:j1]
        best[i0:i1, j0:j1][better] = f[better]
        arg[i0:i1, j0:j1][better] = k
        dist[i0:i1, j0:j1][better] = d[better]
    mask = best < 0
    arg = np.where(mask, arg, -1)
    safe = np.maximum(arg, 0)
    q = np.where(mask, dist / gm[safe, 2], 1.0)
    t = np.where(mask, gm[safe, 3], 0.0)
    return mask, q, t, arg


def _texture(scene: Scene, kid: int, rows: np.ndarray, cols: np.ndarray, spacing: float) -> np.ndarray:
    tex = spline_grid(scene.seed, S_TEX * 1_000_003 + kid % 1_000_003, rows, cols, max(2.0, spacing))
    return np.clip(tex / SPLINE_STD, -2, 2)


def slide_velocity(scene: Scene, i: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, slope-parallel speed mm/yr) of lobate landslide ``i``: peak ``speed``, internal variation."""
    s = scene.slides
    mask, profile = shape_field(scene, s, i, rows, cols)
    tex = _texture(scene, int(s.kid[i]), rows, cols, s.a[i] / 3)
    speed = s.speed[i] * profile ** 0.6 * (0.85 + 0.075 * tex)
    return mask, np.where(mask, np.minimum(speed, s.speed[i]), 0.0)


def _along_path(gm: np.ndarray, mask: np.ndarray, arg: np.ndarray, speed: np.ndarray) -> Field3:
    m = path_motion(gm)[np.maximum(arg, 0)]
    speed = np.where(mask, speed, 0.0)
    return mask, speed * m[..., 0], speed * m[..., 1], speed * m[..., 2]


def slide_field(scene: Scene, i: int, rows: np.ndarray, cols: np.ndarray) -> Field3:
    """(mask, east, north, up) velocity of landslide ``i`` (any kind), mm/yr."""
    s = scene.slides
    kid = int(s.kid[i])
    if s.kind[i] == 1:  # earthflow: slow head, fast body, slower toe; moves along its centreline
        gm = s.geom[i]
        mask, q, t, arg = path_field(gm, rows, cols)
        lat = np.sqrt(np.clip(1 - q * q, 0, 1))
        tex = _texture(scene, kid, rows, cols, float(np.median(gm[:, 2])))
        speed = s.speed[i] * flow_speed_profile(t) * lat ** 0.6 * (0.85 + 0.075 * tex)
        return _along_path(gm, mask, arg, np.minimum(speed, s.speed[i]))
    if s.kind[i] == 2:  # compound: each pixel moves with the element it is deepest inside
        tex = _texture(scene, kid, rows, cols, s.a[i] / 3)
        mask = np.zeros((len(rows), len(cols)), bool)
        speed = np.zeros(mask.shape)
        depth = np.zeros(mask.shape)
        for p in s.geom[i]:
            m, prof = lobe(scene, int(p[5]), (s.row[i] + p[0], s.col[i] + p[1]), (p[2], p[3]), (s.ue[i], s.ur[i]), rows, cols)
            take = m & (prof > depth)
            v = s.speed[i] * p[4] * prof ** 0.6 * (0.85 + 0.075 * tex)
            speed = np.where(take, np.minimum(v, s.speed[i] * p[4]), speed)
            depth = np.where(take, prof, depth)
            mask |= m
        mo = s.motion[i]
        return mask, speed * mo[0], speed * mo[1], speed * mo[2]
    mask, speed = slide_velocity(scene, i, rows, cols)
    mo = s.motion[i]
    return mask, speed * mo[0], speed * mo[1], speed * mo[2]


def glacier_field(scene: Scene, i: int, rows: np.ndarray, cols: np.ndarray) -> Field3:
    """(mask, east, north, up) of glacier ``i``: plug flow, fastest on its centre line."""
    g = scene.glaciers
    if g.kind[i] == 1:
        gm = g.geom[i]
        mask, q, t, arg = path_field(gm, rows, cols)
        prof = np.sqrt(np.clip(1 - q * q, 0, 1))
        return _along_path(gm, mask, arg, g.speed[i] * glacier_speed_profile(t) * np.sqrt(prof))
    mask, prof = shape_field(scene, g, i, rows, cols, lobes=False)
    speed = g.speed[i] * np.sqrt(prof)
    mo = g.motion[i]
    return mask, speed * mo[0], speed * mo[1], speed * mo[2]


def volcano_field(objs: Objects, i: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(east, north, up) of a Mogi source: u_z ∝ d³ / (r² + d²)^1.5, u_r ∝ d² r / (r² + d²)^1.5,
    peak vertical rate ``speed`` over the source, tapered to zero between 3 and 4 depths."""
    d = objs.a[i]
    dr = rows[:, None] - objs.row[i]
    dc = cols[None, :] - objs.col[i]
    r2 = dr * dr + dc * dc
    base = objs.speed[i] * d / (r2 + d * d) ** 1.5
    taper = 1 - np.clip((np.sqrt(r2) / d - 3.0), 0, 1) ** 2 * (3 - 2 * np.clip(np.sqrt(r2) / d - 3.0, 0, 1))
    uz = base * d * d * taper
    return base * d * dc * taper, -base * d * dr * taper, uz


def fault_field(objs: Objects, i: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) of a creeping strike-slip fault: (speed / π) · arctan(x / D) along strike."""
    dr = rows[:, None] - objs.row[i]
    dc = cols[None, :] - objs.col[i]
    x = -dc * objs.ur[i] + dr * objs.ue[i]
    s = objs.speed[i] / np.pi * np.arctan(x / objs.a[i])
    return s * objs.ue[i], -s * objs.ur[i]


# ---------------------------------------------------------------------------- outlines

def _to_map(scene: Scene, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    g = scene.grid
    return np.column_stack([g.x0 + (cols + 0.5) * g.dx, g.y0 + (rows + 0.5) * g.dy])


def _lobe_polygon(scene: Scene, kid: int, centre: tuple[float, float], axes: tuple[float, float],
                  axis: tuple[float, float], *, lobes: bool = True, n: int = 96) -> shapely.Polygon:
    phi = np.linspace(-np.pi, np.pi, n, endpoint=False)
    rad = _harmonics(scene, kid, phi) if lobes else np.ones_like(phi)
    if lobes:
        ua = rad * np.cos(phi)
        rad = rad * (1 + 0.15 * np.clip(ua, 0, 1))
    ua, vb = rad * np.cos(phi), rad * np.sin(phi)
    u, v = ua * axes[0], vb * axes[1]
    dc = u * axis[0] - v * axis[1]
    dr = u * axis[1] + v * axis[0]
    return shapely.make_valid(shapely.Polygon(_to_map(scene, centre[0] + dr, centre[1] + dc)))


def _path_polygon(scene: Scene, gm: np.ndarray) -> shapely.Geometry:
    pts = shapely.points(_to_map(scene, gm[:, 0], gm[:, 1]))
    return shapely.make_valid(shapely.union_all(shapely.buffer(pts, gm[:, 2] * abs(scene.grid.dx), quad_segs=8)))


def object_polygon(scene: Scene, objs: Objects, i: int, *, lobes: bool = True) -> shapely.Geometry:
    """The outline of object ``i`` (the edge of its shape) in map coordinates."""
    if objs.kind[i] == 1 and objs.geom[i] is not None:
        return _path_polygon(scene, objs.geom[i])
    if objs.kind[i] == 2:
        return shapely.make_valid(shapely.union_all([
            _lobe_polygon(scene, int(p[5]), (objs.row[i] + p[0], objs.col[i] + p[1]), (p[2], p[3]), (objs.ue[i], objs.ur[i]),
                          lobes=lobes) for p in objs.geom[i]]))
    return _lobe_polygon(scene, int(objs.kid[i]), (objs.row[i], objs.col[i]), (objs.a[i], objs.b[i]),
                         (objs.ue[i], objs.ur[i]), lobes=lobes)
