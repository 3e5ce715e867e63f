"""The ground of a synthetic basin: grid and river line, distance to the river, elevation.

Pure functions of the scene and global pixel positions (see :mod:`.scene`), so any window's
terrain agrees exactly with its neighbours'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import shapely
from pyproj import CRS, Transformer

from ..grid import Grid
from .config import SimConfig
from .noise import SPLINE_STD, fbm_grid, fbm_points, hash_uniform, spline_grid, spline_points

if TYPE_CHECKING:
    from .objects import Scene

S_RELIEF, S_TRIB, S_RIVER = 1, 2, 16  # noise streams of the terrain (the others are in .scene)
DIST_NODE = 8  # river-distance lattice spacing, px


# ---------------------------------------------------------------------------- the grid and river

def _utm_epsg(lon: float, lat: float) -> str:
    zone = int((lon + 180) // 6) + 1
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def make_grid_and_river(cfg: SimConfig) -> tuple[Grid, np.ndarray]:
    g = cfg.grid
    lon, lat = g.centre
    crs = g.crs or _utm_epsg(lon, lat)
    if not CRS.from_user_input(crs).is_projected:
        from ..errors import ConfigError
        raise ConfigError(f"grid.crs: {crs} is not projected; the simulator needs metres (e.g. a UTM zone), or leave it out")
    to_map = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    h, w = g.shape
    if cfg.river.wkt:
        line_ll = shapely.from_wkt(open(cfg.river.wkt).read())
        xs, ys = to_map.transform(*np.asarray(line_ll.coords).T)
        line = shapely.LineString(np.column_stack([xs, ys]))
        cx, cy = to_map.transform(lon, lat)
        if cfg.river.centre_on_river:
            p = line.interpolate(line.project(shapely.Point(cx, cy)))
            cx, cy = p.x, p.y
        cx, cy = round(cx / g.pixel_size) * g.pixel_size, round(cy / g.pixel_size) * g.pixel_size
        grid = Grid(crs, cx - w / 2 * g.pixel_size, cy + h / 2 * g.pixel_size, g.pixel_size, -g.pixel_size, h, w)
        margin = (cfg.terrain.valley_halfwidth_m + 20 * g.pixel_size)
        xmin, ymin, xmax, ymax = grid.bounds
        box = shapely.box(xmin - margin, ymin - margin, xmax + margin, ymax + margin)
        clipped = line.intersection(box)
        parts = list(getattr(clipped, "geoms", [clipped]))
        coords = np.concatenate([np.asarray(pt.coords) for pt in parts if not pt.is_empty]) if parts and not clipped.is_empty else np.zeros((0, 2))
        # Keep the parts as separate polylines by inserting NaN rows between them.
        segs = []
        for part in parts:
            if part.is_empty:
                continue
            segs.append(np.asarray(part.coords))
            segs.append(np.full((1, 2), np.nan))
        coords = np.concatenate(segs) if segs else np.zeros((0, 2))
        rc = np.column_stack([(grid.y0 - coords[:, 1]) / g.pixel_size - 0.5, (coords[:, 0] - grid.x0) / g.pixel_size - 0.5])
        return grid, rc
    cx, cy = to_map.transform(lon, lat)
    cx, cy = round(cx / g.pixel_size) * g.pixel_size, round(cy / g.pixel_size) * g.pixel_size
    grid = Grid(crs, cx - w / 2 * g.pixel_size, cy + h / 2 * g.pixel_size, g.pixel_size, -g.pixel_size, h, w)
    # A synthetic meandering river from the northern to the southern edge.
    step = max(4.0, 200.0 / g.pixel_size)
    rows = np.arange(-200.0, h + 200.0, step)
    u = [hash_uniform(cfg.seed, S_RIVER, np.array(k), np.array(0)) for k in range(6)]
    wl1, wl2 = 60_000 / g.pixel_size * (1 + 0.3 * u[0]), 14_000 / g.pixel_size * (1 + 0.3 * u[1])
    amp1, amp2 = 0.12 * w * (1 + 0.3 * u[2]), 25_00 / g.pixel_size * (1 + 0.3 * u[3])
    cols = w / 2 + amp1 * np.sin(2 * np.pi * rows / wl1 + 3 * u[4]) + amp2 * np.sin(2 * np.pi * rows / wl2 + 3 * u[5])
    return grid, np.column_stack([rows, cols])


def _segments_near(river_rc: np.ndarray, r0: float, r1: float, c0: float, c1: float, margin: float) -> np.ndarray:
    """(m, 4) segments (ra, ca, rb, cb) whose bounding box comes within ``margin`` of the box."""
    if len(river_rc) < 2:
        return np.zeros((0, 4))
    a, b = river_rc[:-1], river_rc[1:]
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    lo_r, hi_r = np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 0], b[:, 0])
    lo_c, hi_c = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    ok &= (hi_r >= r0 - margin) & (lo_r <= r1 + margin) & (hi_c >= c0 - margin) & (lo_c <= c1 + margin)
    return np.column_stack([a[ok], b[ok]])


def _distance_to_segments(pr: np.ndarray, pc: np.ndarray, segs: np.ndarray, cap: float) -> np.ndarray:
    """Distance (px) from points to the nearest segment, capped at ``cap``."""
    d = np.full(pr.shape, cap, dtype=np.float64)
    for ra, ca, rb, cb in segs:
        vr, vc = rb - ra, cb - ca
        L2 = vr * vr + vc * vc
        t = np.clip(((pr - ra) * vr + (pc - ca) * vc) / L2, 0.0, 1.0) if L2 > 0 else np.zeros_like(pr)
        dd = np.hypot(pr - (ra + t * vr), pc - (ca + t * vc))
        d = np.minimum(d, dd)
    return d


def _river_distance(scene: Scene, rows: np.ndarray, cols: np.ndarray, grid_mode: bool) -> np.ndarray:
    """Distance to the river in metres, bilinear from a lattice of nodes every DIST_NODE px.

    ``grid_mode``: ``rows``/``cols`` are 1-D axes of a grid; else scattered points.
    """
    cap = scene.cfg.terrain.valley_halfwidth_m / scene.px + 4 * DIST_NODE
    nr0, nr1 = int(np.floor(rows.min() / DIST_NODE)), int(np.floor(rows.max() / DIST_NODE)) + 1
    nc0, nc1 = int(np.floor(cols.min() / DIST_NODE)), int(np.floor(cols.max() / DIST_NODE)) + 1
    segs = _segments_near(scene.river_rc, nr0 * DIST_NODE, nr1 * DIST_NODE, nc0 * DIST_NODE, nc1 * DIST_NODE, cap + DIST_NODE)
    if grid_mode:
        NR, NC = np.meshgrid(np.arange(nr0, nr1 + 1) * DIST_NODE, np.arange(nc0, nc1 + 1) * DIST_NODE, indexing="ij")
        nodes = _distance_to_segments(NR.astype(float), NC.astype(float), segs, cap)
        ur, uc = rows / DIST_NODE, cols / DIST_NODE
        ir, ic = np.floor(ur).astype(int), np.floor(uc).astype(int)
        tr, tc = (ur - ir)[:, None], (uc - ic)[None, :]
        jr, jc = ir - nr0, ic - nc0
        top = nodes[jr][:, jc] * (1 - tc) + nodes[jr][:, jc + 1] * tc
        bot = nodes[jr + 1][:, jc] * (1 - tc) + nodes[jr + 1][:, jc + 1] * tc
        return (top * (1 - tr) + bot * tr) * scene.px
    ur, uc = rows / DIST_NODE, cols / DIST_NODE
    ir, ic = np.floor(ur), np.floor(uc)
    tr, tc = ur - ir, uc - ic

    def node(dr: int, dc: int) -> np.ndarray:
        return _distance_to_segments((ir + dr) * DIST_NODE, (ic + dc) * DIST_NODE, segs, cap)

    top = node(0, 0) * (1 - tc) + node(0, 1) * tc
    bot = node(1, 0) * (1 - tc) + node(1, 1) * tc
    return (top * (1 - tr) + bot * tr) * scene.px


# ---------------------------------------------------------------------------- terrain

def _relief_args(scene: Scene) -> dict[str, float]:
    return {"largest": 40_000 / scene.px, "smallest": 2.0, "hurst": 0.85}


def _compose_elevation(scene: Scene, relief: np.ndarray, trib: np.ndarray, dist_m: np.ndarray) -> np.ndarray:
    t = scene.cfg.terrain
    floor_m = 250.0
    s = np.clip((dist_m - floor_m) / t.valley_halfwidth_m, 0.0, 1.0)
    incision = t.valley_depth_m * (1.0 - s) ** 1.6
    # Tributary valleys along the zero lines of a smooth noise field.
    v = 1.0 - np.minimum(1.0, np.abs(trib) / (0.35 * SPLINE_STD))
    tributaries = t.tributary_depth_m * v * v * s  # fade out toward the main valley floor
    return t.plateau_m + t.relief_m * relief * (0.4 + 0.6 * s) - incision - tributaries


def elevation_grid(scene: Scene, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    relief = fbm_grid(scene.seed, S_RELIEF, rows, cols, **_relief_args(scene))
    trib = spline_grid(scene.seed, S_TRIB, rows, cols, 5000 / scene.px)
    return _compose_elevation(scene, relief, trib, _river_distance(scene, rows, cols, True))


def elevation_points(scene: Scene, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    relief = fbm_points(scene.seed, S_RELIEF, rows, cols, **_relief_args(scene))
    trib = spline_points(scene.seed, S_TRIB, rows, cols, 5000 / scene.px)
    return _compose_elevation(scene, relief, trib, _river_distance(scene, rows, cols, False))


def terrain_at_points(scene: Scene, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(elevation m, dz/deast, dz/dnorth) at integer pixel positions (central differences)."""
    rr = np.concatenate([rows, rows, rows - 1, rows + 1, rows])
    cc = np.concatenate([cols - 1, cols + 1, cols, cols, cols])
    z = elevation_points(scene, rr.astype(float), cc.astype(float))
    n = len(rows)
    ge = (z[n:2 * n] - z[:n]) / (2 * scene.px)
    gn = -(z[3 * n:4 * n] - z[2 * n:3 * n]) / (2 * scene.px)
    return z[4 * n:], ge, gn
