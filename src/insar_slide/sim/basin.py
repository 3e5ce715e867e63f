"""Simulate a basin: render the scene chunk by chunk with Dask into a mosaic, plus its truth."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd

from ..atomic import atomic_path, check_target
from ..errors import StoreError
from ..grid import PixelWindow, chunk_sizes
from ..inventory import polygon_rate_stats, write_inventory
from ..mosaic import (
    TrackInfo,
    build_dataset,
    check_same_grid,
    grid_of,
    open_basin,
    register_version,
    version_path,
    write_mosaic,
)
from .config import SimConfig
from .render import render
from .scene import Scene, build_scene, changes, slide_polygon, slide_velocity

log = logging.getLogger(__name__)


def _render_block(scene: Scene, block_info: dict | None = None) -> np.ndarray:
    assert block_info is not None
    (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
    rates, z = render(scene, PixelWindow(r0, c0, r1 - r0, c1 - c0))
    return np.concatenate([rates, z[None]], axis=0)


def lazy_layers(scene: Scene) -> tuple[da.Array, da.Array]:
    """(rates (track, y, x), dem (y, x)) as Dask arrays; each chunk renders only its window."""
    h, w = scene.grid.shape
    n = len(scene.tracks)
    chunk = scene.cfg.grid.chunk
    stack = da.map_blocks(_render_block, scene, dtype="float32",
                          chunks=((n + 1,), chunk_sizes(h, chunk), chunk_sizes(w, chunk)),
                          meta=np.empty((0, 0, 0), "float32"))
    return stack[:n], stack[n]


def simulate(cfg: SimConfig, out: str | Path, *, truth: str | Path | None = None, overwrite: bool = False,
             version: str | None = None) -> tuple[Path, Path]:
    """Write the simulated mosaic to ``out`` and its truth inventory (GeoParquet) to ``truth``.

    ``version``: add the simulation as a new version of the existing basin ``out`` (same grid
    and tracks; see :mod:`insar_slide.mosaic`), its truth beside it as
    ``<basin>.truth.<version>.parquet`` with a ``change`` column when ``cfg.evolution`` is set.
    """
    out = Path(out)
    target = out
    if version is not None:
        if not out.exists():
            raise StoreError(f"--add-version {version}: no basin at {out}; simulate the first version without it")
        target = version_path(out, version)
    truth_path = Path(truth) if truth else default_truth_path(out, version)
    check_target(target, overwrite=overwrite)
    check_target(truth_path, overwrite=overwrite)
    scene = build_scene(cfg)
    log.info("simulate: %d x %d px, %d tracks, %d landslides", *scene.grid.shape, len(scene.tracks), len(scene.slides))
    rates, dem = lazy_layers(scene)
    tracks = [TrackInfo(t.name, t.heading, t.incidence, cfg.time_span[0], cfg.time_span[1], ("simulated",)) for t in scene.tracks]
    attrs: dict[str, Any] = {"product": "simulated", "seed": cfg.seed, "time_span": "/".join(cfg.time_span),
                             "sim_config": cfg.model_dump_json()}
    if version is not None:
        attrs.update(version_label=version, version_added=datetime.now(UTC).isoformat())
    ds = build_dataset(rates, scene.grid, tracks, extra={"dem": dem}, attrs=attrs)
    ds["dem"].attrs.update({"units": "m", "long_name": "elevation"})
    if version is not None:
        check_same_grid(ds, out)
    # The mosaic and its truth are one product: both are built beside their targets and moved
    # into place together at the end, so a failure leaves any earlier pair untouched.
    with atomic_path(target, overwrite=overwrite) as tmp_store, atomic_path(truth_path, overwrite=overwrite) as tmp_truth:
        write_mosaic(ds, tmp_store, chunk=cfg.grid.chunk)
        gdf = truth_inventory(scene, tmp_store)
        if cfg.evolution is not None:
            base = build_scene(cfg.model_copy(update={"evolution": None}))
            change = changes(base.slides, scene.slides)
            gdf["change"] = [change[int(k)] for k in scene.slides.kid] if len(gdf) else pd.Series(dtype=object)
        write_inventory(gdf, tmp_truth, metadata={
            "method": "truth", "seed": cfg.seed, "mosaic": str(out), "version": version,
            "sim_config": cfg.model_dump(mode="json"),
            "stopped": [f"sim{cfg.seed}-{k}" for k, v in change.items() if v == "stopped"] if cfg.evolution else [],
        })
    if version is not None:
        register_version(out)
    return out, truth_path


def default_truth_path(out: Path, version: str | None = None) -> Path:
    suffix = f".truth.{version}.parquet" if version else ".truth.parquet"
    return out.with_name(out.name.removesuffix(".zarr") + suffix)


def truth_inventory(scene: Scene, mosaic: str | Path) -> gpd.GeoDataFrame:
    """One row per simulated landslide, contract-2 schema with ``method = truth``.

    Besides the contract columns: ``slope_speed_mm_yr``, ``slope_deg``, and per track
    ``peak_los_<track>`` (the slide's own signed LOS rate of largest magnitude, before
    atmosphere and noise) and ``visible_fraction_<track>`` (share of its pixels with a
    measurement). ``tracks`` lists the tracks where the slide is visible (≥ 50 % of pixels)
    with |peak LOS| ≥ 10 mm/yr.
    """
    s = scene.slides
    crs = scene.grid.crs
    if len(s) == 0:
        from ..inventory import empty_inventory
        return empty_inventory(crs)
    polys = [slide_polygon(scene, i) for i in range(len(s))]
    peaks = _peaks(scene)
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
        "slope_deg": s.slope_deg,
    })
    for k, n in enumerate(names):
        df[f"peak_los_{n}"] = peaks[:, k]
    df = pd.concat([df, stats.reset_index(drop=True)], axis=1)
    df["tracks"] = [",".join(n for k, n in enumerate(names)
                             if abs(peaks[i, k]) >= 10 and df.loc[i, f"valid_fraction_{n}"] >= 0.5) for i in range(len(df))]
    for n in names:
        df = df.rename(columns={f"valid_fraction_{n}": f"visible_fraction_{n}"})
    return gpd.GeoDataFrame(df, geometry=geoms.values, crs=crs)


def _peaks(scene: Scene) -> np.ndarray:
    s = scene.slides
    out = np.zeros((len(s), len(scene.tracks)))
    for i in range(len(s)):
        rad = s.radius()[i]
        rr = np.arange(int(s.row[i] - rad), int(s.row[i] + rad) + 1, dtype=float)
        cc = np.arange(int(s.col[i] - rad), int(s.col[i] + rad) + 1, dtype=float)
        _, speed = slide_velocity(scene, i, rr, cc)
        for k, t in enumerate(scene.tracks):
            los = speed * float(np.dot(s.motion[i], t.los))
            j = np.unravel_index(np.argmax(np.abs(los)), los.shape)
            out[i, k] = los[j]
    return out


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
