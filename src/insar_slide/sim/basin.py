"""Simulate a basin: render the scene chunk by chunk with Dask into a mosaic, plus its truth."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from ..atomic import atomic_path, check_target
from ..errors import StoreError
from ..grid import PixelWindow, chunk_sizes
from ..inventory import write_inventory
from ..mosaic import (
    TrackInfo,
    build_dataset,
    check_same_grid,
    register_version,
    version_path,
    write_mosaic,
)
from ..progress import Progress
from .config import SimConfig
from .render import render
from .scene import Scene, build_scene, changes
from .truth import nuisance_catalogue, truth_inventory

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
             version: str | None = None, progress: Progress | None = None) -> tuple[Path, Path]:
    """Write the simulated mosaic to ``out`` and its truth inventory (GeoParquet) to ``truth``.

    ``version``: add the simulation as a new version of the existing basin ``out`` (same grid
    and tracks; see :mod:`insar_slide.mosaic`), its truth beside it as
    ``<basin>.truth.<version>.parquet`` with a ``change`` column when ``cfg.evolution`` is set.
    ``progress`` hears the rendered chunks as ``simulate``.
    """
    out = Path(out)
    target = out
    if version is not None:
        if not out.exists():
            raise StoreError(f"--add-version {version}: no basin at {out}; simulate the first version without it")
        target = Path(version_path(out, version))  # a local basin: a local path
    truth_path = Path(truth) if truth else default_truth_path(out, version)
    nuisance_path = truth_path.with_name(truth_path.name.replace(".truth", ".nuisance", 1)) \
        if ".truth" in truth_path.name else truth_path.with_suffix(".nuisance.parquet")
    for p in (target, truth_path, nuisance_path):
        check_target(p, overwrite=overwrite)
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
    with atomic_path(target, overwrite=overwrite) as tmp_store, atomic_path(truth_path, overwrite=overwrite) as tmp_truth, \
            atomic_path(nuisance_path, overwrite=overwrite) as tmp_nuisance:
        write_mosaic(ds, tmp_store, chunk=cfg.grid.chunk, progress=progress, stage="simulate")
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
        nuisance_catalogue(scene).to_parquet(tmp_nuisance, index=False)
    if version is not None:
        register_version(out)
    return out, truth_path


def default_truth_path(out: Path, version: str | None = None) -> Path:
    suffix = f".truth.{version}.parquet" if version else ".truth.parquet"
    return out.with_name(out.name.removesuffix(".zarr") + suffix)
