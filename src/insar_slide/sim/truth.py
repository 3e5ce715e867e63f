"""What a simulated basin holds: the truth inventory of its landslides and the catalogue of its
look-alikes (both GeoParquet, in the mosaic CRS)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio import features
from rasterio.transform import Affine

from ..inventory import empty_inventory, polygon_rate_stats
from ..mosaic import grid_of, open_basin
from .render import over_limit
from .scene import Scene
from .shapes import object_polygon, shape_field, slide_field, slide_velocity

SLIDE_KINDS = {0: "lobate", 1: "earthflow", 2: "compound"}


def truth_inventory(scene: Scene, mosaic: str | Path) -> gpd.GeoDataFrame:
    """One row per simulated landslide, contract-2 schema with ``method = truth``.

    Besides the contract columns: ``slope_speed_mm_yr`` (the slide's peak speed),
    ``slope_speed_mean_mm_yr`` (its speed averaged over its pixels: what the measured
    ``v_slope_mm_yr`` estimates, see :mod:`insar_slide.decompose`), ``up_mean_mm_yr``,
    ``east_mean_mm_yr`` and ``north_mean_mm_yr`` (its velocity's components averaged over its
    pixels, up / east / north positive: what ``v_up_mm_yr`` / ``v_east_mm_yr`` estimate, north
    being what they neglect), ``slope_deg``, ``kind`` (lobate,
    earthflow, compound), ``length_px`` (along the slope or the centreline), and per track
    ``peak_los_<track>`` (the slide's own signed LOS rate of largest magnitude, before
    atmosphere, noise and the sensor's limit), ``measured_fraction_<track>`` (share of its
    pixels with a measurement) and ``visible_fraction_<track>``: the share that shows the slide
    — measured, or lost because the slide itself moves faster than the sensor can unwrap (a
    fast core is a hole ringed by moving margins). ``tracks`` lists the tracks where the slide
    is visible (≥ 50 % of pixels) with |peak LOS| ≥ 10 mm/yr.
    """
    s = scene.slides
    crs = scene.grid.crs
    if len(s) == 0:
        return empty_inventory(crs)
    polys = [object_polygon(scene, s, i) for i in range(len(s))]
    peaks, lost, mean_speed, mean_vel = _peaks(scene)
    geoms = gpd.GeoSeries(polys, crs=crs)
    ds = open_basin(mosaic)
    stats = _stats_parallel(ds, geoms, scene.cfg.grid.chunk)
    names = [t.name for t in scene.tracks]
    df = pd.DataFrame({
        "slide_id": [f"sim{scene.seed}-{int(k)}" for k in s.kid],
        "method": "truth",
        "score": np.nan,
        "area_m2": geoms.area.to_numpy(),
        "run_id": f"simulate-seed{scene.seed}",
        "model_id": "",
        "slope_speed_mm_yr": s.speed,
        "slope_speed_mean_mm_yr": mean_speed,
        "up_mean_mm_yr": mean_vel[:, 2],
        "east_mean_mm_yr": mean_vel[:, 0],
        "north_mean_mm_yr": mean_vel[:, 1],
        "slope_deg": s.slope_deg,
        "kind": [SLIDE_KINDS[int(k)] for k in s.kind],
        "length_px": 2 * s.a,
    })
    for k, n in enumerate(names):
        df[f"peak_los_{n}"] = peaks[:, k]
    df = pd.concat([df, stats.reset_index(drop=True)], axis=1)
    for k, n in enumerate(names):
        df[f"measured_fraction_{n}"] = df[f"valid_fraction_{n}"]
        df[f"valid_fraction_{n}"] = np.minimum(1.0, df[f"valid_fraction_{n}"].to_numpy() + lost[:, k])
    df["tracks"] = [",".join(n for k, n in enumerate(names)
                             if abs(peaks[i, k]) >= 10 and df.loc[i, f"valid_fraction_{n}"] >= 0.5) for i in range(len(df))]
    for n in names:
        df = df.rename(columns={f"valid_fraction_{n}": f"visible_fraction_{n}"})
    return gpd.GeoDataFrame(df, geometry=geoms.values, crs=crs)


def _peaks(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per slide and track: the signed LOS peak, and the share of its pixels the sensor loses;
    per slide: its mean speed (mm/yr) and mean velocity (east, north, up; mm/yr) over its pixels."""
    s = scene.slides
    peaks = np.zeros((len(s), len(scene.tracks)))
    lost = np.zeros((len(s), len(scene.tracks)))
    mean_speed = np.full(len(s), np.nan)
    mean_vel = np.full((len(s), 3), np.nan)
    for i in range(len(s)):
        rad = s.radius()[i]
        rr = np.arange(int(s.row[i] - rad), int(s.row[i] + rad) + 1, dtype=float)
        cc = np.arange(int(s.col[i] - rad), int(s.col[i] + rad) + 1, dtype=float)
        if s.kind[i] == 0:  # the lobate case as it always was (bit for bit)
            mask, speed = slide_velocity(scene, i, rr, cc)
            fields = [speed * float(np.dot(s.motion[i], t.los)) for t in scene.tracks]
            vel = [speed * s.motion[i][c] for c in range(3)]
        else:
            mask, ve, vn, vu = slide_field(scene, i, rr, cc)
            fields = [ve * t.los[0] + vn * t.los[1] + vu * t.los[2] for t in scene.tracks]
            speed = np.sqrt(ve * ve + vn * vn + vu * vu)
            vel = [ve, vn, vu]
        if mask.any():
            mean_speed[i] = float(speed[mask].mean())
            mean_vel[i] = [float(v[mask].mean()) for v in vel]
        for k, los in enumerate(fields):
            j = np.unravel_index(np.argmax(np.abs(los)), los.shape)
            peaks[i, k] = los[j]
            if scene.cfg.radar.unwrapping_limit and mask.any():
                _, gone = over_limit(scene, k, rr, cc, los)
                lost[i, k] = float((gone & mask).sum() / mask.sum())
    return peaks, lost, mean_speed, mean_vel


def _stats_parallel(ds: Any, geoms: gpd.GeoSeries, chunk: int) -> pd.DataFrame:
    """Rate statistics of every polygon, one Dask task per mosaic chunk holding their centres.

    Each task reads its chunk (plus the polygons' overhang) once, not once per polygon.
    A thread pool, not ``dask.delayed``: a lazy Dataset passed to a delayed function would be
    computed whole before the call (the full mosaic in memory).
    """
    c = geoms.centroid
    g = grid_of(ds)
    key = (np.floor((g.y0 - c.y.to_numpy()) / -g.dy / chunk).astype(int) * 1_000_000
           + np.floor((c.x.to_numpy() - g.x0) / g.dx / chunk).astype(int))
    order = np.argsort(key, kind="stable")
    groups = np.split(order, np.nonzero(np.diff(key[order]))[0] + 1)
    groups = [idx for idx in groups if len(idx)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        frames = list(pool.map(lambda idx: polygon_rate_stats(ds, geoms.iloc[idx]), groups))
    stats = pd.concat(frames, ignore_index=True)
    stats.index = np.concatenate(groups)
    return stats.sort_index()


def _mask_polygon(scene: Scene, objs: Any, i: int) -> shapely.Geometry:
    """The footprint of an unwrapping patch: its rendered mask, polygonised pixel by pixel."""
    rad = objs.radius()[i]
    r0, c0 = int(objs.row[i] - rad), int(objs.col[i] - rad)
    rr = np.arange(r0, int(objs.row[i] + rad) + 1, dtype=float)
    cc = np.arange(c0, int(objs.col[i] + rad) + 1, dtype=float)
    mask, _ = shape_field(scene, objs, i, rr, cc, sharp=True)
    g = scene.grid
    t = Affine(g.dx, 0, g.x0 + c0 * g.dx, 0, g.dy, g.y0 + r0 * g.dy)
    shapes = [shapely.geometry.shape(geom) for geom, v in features.shapes(mask.astype(np.uint8), mask=mask, transform=t) if v]
    return shapely.union_all(shapes) if shapes else shapely.Polygon()


def nuisance_catalogue(scene: Scene) -> gpd.GeoDataFrame:
    """The look-alikes of a basin, one row per object: ``object_id``, ``kind`` (glacier,
    subsidence, volcanic, unwrapping, fault), ``track`` (the track name; "" = every track),
    ``peak_mm_yr`` (signed peak rate of the object's own motion or offset) and its footprint
    polygon (glacier and bowl outlines, unwrapping patches as rendered, a volcanic source's
    disc within 1.5 depths (≥ 17 % of its peak uplift), a fault's band of one locking depth).
    Frost heave and the elevation-band signal are fields over whole terrain classes, not
    objects, and are not listed."""
    g = scene.grid
    rows: list[dict[str, Any]] = []
    for i in range(len(scene.glaciers)):
        rows.append({"kind": "glacier", "track": "", "kid": scene.glaciers.kid[i], "peak_mm_yr": scene.glaciers.speed[i],
                     "geometry": object_polygon(scene, scene.glaciers, i, lobes=False)})
    for i in range(len(scene.bowls)):
        rows.append({"kind": "subsidence", "track": "", "kid": scene.bowls.kid[i], "peak_mm_yr": -scene.bowls.speed[i],
                     "geometry": object_polygon(scene, scene.bowls, i, lobes=False)})
    v = scene.volcanoes
    for i in range(len(v)):
        x, y = g.x0 + (v.col[i] + 0.5) * g.dx, g.y0 + (v.row[i] + 0.5) * g.dy
        rows.append({"kind": "volcanic", "track": "", "kid": v.kid[i], "peak_mm_yr": v.speed[i],
                     "geometry": shapely.Point(x, y).buffer(1.5 * v.a[i] * abs(g.dx))})
    u = scene.unwrap
    for i in range(len(u)):
        rows.append({"kind": "unwrapping", "track": scene.tracks[int(u.track[i])].name, "kid": u.kid[i],
                     "peak_mm_yr": u.speed[i], "geometry": _mask_polygon(scene, u, i)})
    f = scene.faults
    bounds = shapely.box(*g.bounds)
    for i in range(len(f)):
        x, y = g.x0 + (f.col[i] + 0.5) * g.dx, g.y0 + (f.row[i] + 0.5) * g.dy
        far = (g.width + g.height) * abs(g.dx)
        e, n = f.ue[i], -f.ur[i]  # strike as (east, north)
        line = shapely.LineString([(x - far * e, y - far * n), (x + far * e, y + far * n)])
        rows.append({"kind": "fault", "track": "", "kid": f.kid[i], "peak_mm_yr": f.speed[i],
                     "geometry": line.buffer(f.a[i] * abs(g.dx) / 2, cap_style="flat").intersection(bounds)})
    if not rows:
        return gpd.GeoDataFrame({"object_id": [], "kind": [], "track": [], "peak_mm_yr": []},
                                geometry=gpd.GeoSeries([], crs=g.crs), crs=g.crs)
    df = pd.DataFrame(rows)
    df.insert(0, "object_id", [f"sim{scene.seed}-{k}-{int(kid)}" for k, kid in zip(df.kind, df.kid, strict=True)])
    return gpd.GeoDataFrame(df.drop(columns="kid"), geometry="geometry", crs=g.crs)
