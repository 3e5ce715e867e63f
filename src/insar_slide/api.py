"""Detection and simulation from a notebook, on xarray objects, with no YAML and no command line.

>>> import insar_slide as isl
>>> ds, truth = isl.simulate(seed=3, shape=(512, 512), truth=True)   # an in-memory Dataset
>>> inv = isl.detect(ds["los_rate"])                                  # GeoDataFrame, as `run` writes
>>> comp = isl.decompose(ds)            # v_up, v_east, v_slope (mm/yr) per pixel: insar_slide.decompose

:func:`detect` goes through the same plan → detect → merge code as ``insar-slide run``: the
``DataArray`` is written as a mosaic (Zarr) into a temporary folder (``workdir``; a folder the
workers see when the client is a remote cluster's), a run configuration is built from the
keyword arguments, and the run uses the notebook's current ``distributed.Client`` if there is
one, else an embedded cluster (threads of this process for a scene of a few windows).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Literal, overload

import dask.array as da
import geopandas as gpd
import numpy as np
import xarray as xr

from .decompose import decompose as decompose  # the per-pixel LOS decomposition, re-exported
from .errors import InputError
from .grid import Grid
from .manifest import MANIFEST_ATTR
from .mosaic import TrackInfo, build_dataset, open_basin, write_mosaic

log = logging.getLogger(__name__)


def _rate_cube(rate: xr.DataArray, track: str) -> xr.DataArray:
    """``rate`` as a north-up (track, y, x) DataArray with a CRS."""
    if not isinstance(rate, xr.DataArray):
        raise InputError(f"detect takes an xarray DataArray of LOS rates (mm/yr), not {type(rate).__name__}")
    if rate.rio.crs is None:
        raise InputError("the DataArray has no CRS; set one first, e.g. rate = rate.rio.write_crs('EPSG:32647')")
    if rate.ndim == 2:
        rate = rate.expand_dims(track=[track])
    if rate.ndim != 3 or rate.dims[1:] != ("y", "x") or rate.dims[0] != "track":
        raise InputError(f"detect takes dims (y, x) or (track, y, x); this DataArray has {rate.dims}")
    if rate.sizes["y"] > 1 and float(rate["y"][1] - rate["y"][0]) > 0:
        rate = rate.isel(y=slice(None, None, -1))  # south-up → north-up
    return rate


def _tracks(rate: xr.DataArray) -> list[TrackInfo]:
    def coord(name: str, i: int, default: Any) -> Any:
        return rate[name].values[i] if name in rate.coords and rate[name].dims == ("track",) else default

    return [TrackInfo(str(t), float(coord("heading", i, np.nan)), float(coord("incidence", i, np.nan)),
                      str(coord("start_date", i, "")), str(coord("end_date", i, "")), ("notebook",))
            for i, t in enumerate(rate["track"].values)]


def _dem_layer(dem: xr.DataArray, cube: xr.DataArray) -> da.Array:
    """``dem`` as a lazy (y, x) array on ``cube``'s (north-up) grid."""
    if not isinstance(dem, xr.DataArray) or dem.dims != ("y", "x"):
        raise InputError("dem must be an xarray DataArray with dims (y, x) (elevation, m), e.g. ds['dem']")
    if dem.sizes["y"] > 1 and float(dem["y"][1] - dem["y"][0]) > 0:
        dem = dem.isel(y=slice(None, None, -1))
    if dem.shape != cube.shape[1:] or not (np.allclose(dem["x"], cube["x"]) and np.allclose(dem["y"], cube["y"])):
        raise InputError(f"dem ({dem.sizes['y']} x {dem.sizes['x']} px) is not on the rates' grid "
                         f"({cube.sizes['y']} x {cube.sizes['x']} px); reproject it first (dem.rio.reproject_match(rate))")
    return dem.data if isinstance(dem.data, da.Array) else da.from_array(np.asarray(dem.values, dtype="float32"),
                                                                           chunks=(1024, 1024))


def detect(rate: xr.DataArray, *, model: str | Path | None = None, window: int = 1024, halo: int = 64,
           scales: list[int] | None = None, score_threshold: float | None = None, track: str = "los",
           client: Any = None, workdir: str | Path | None = None, dem: xr.DataArray | None = None,
           **config: Any) -> gpd.GeoDataFrame:
    """Find landslides in ``rate`` (mm/yr, + toward the satellite; dims ``(y, x)`` or
    ``(track, y, x)``, in memory or Dask-backed, with a CRS) → the inventory GeoDataFrame.

    ``dem``: elevations (m, dims ``(y, x)``, on ``rate``'s grid) for the slope-parallel speed
    ``v_slope_mm_yr`` of each slide (:mod:`insar_slide.decompose`); without it that column is NaN.

    ``model``: a checkpoint (default: the shipped reference model). Any other key of the run
    configuration (``skip``, ``nms_iou``, ``device``, ``cluster``, ``aoi`` …) may be given as a
    keyword; ``track`` names a 2-D array's track. ``client``: a ``distributed.Client`` (default:
    the current one, if any).
    """
    from .run.config import Outputs, RunConfig
    from .run.pipeline import run

    cube = _rate_cube(rate, track)
    grid = Grid.from_transform(str(cube.rio.crs), cube.rio.transform(recalc=True), cube.sizes["y"], cube.sizes["x"],
                               source="the DataArray")
    data = cube.data if isinstance(cube.data, da.Array) else da.from_array(np.asarray(cube.values, dtype="float32"),
                                                                           chunks=(1, 1024, 1024))
    extra = {} if dem is None else {"dem": _dem_layer(dem, cube)}
    ds = build_dataset(data.astype("float32"), grid, _tracks(cube), extra=extra,
                       attrs={"product": str(rate.name or "notebook")})
    if client is None:
        try:
            from distributed import get_client
            client = get_client()
        except ValueError:  # no current client: run() starts its own
            client = None
    with tempfile.TemporaryDirectory(prefix="insar-slide-detect-", dir=workdir) as tmp:
        mosaic = Path(tmp) / "mosaic.zarr"
        write_mosaic(ds, mosaic, chunk=min(1024, max(window, 256)))
        cfg_args: dict[str, Any] = {"mosaic": str(mosaic), "out": str(Path(tmp) / "inventory.parquet"), "model": model,
                                    "window": window, "halo": halo, "score_threshold": score_threshold,
                                    "outputs": Outputs().only_inventory(), "cluster": {"dashboard": False}, **config}
        if scales is not None:
            cfg_args["scales"] = scales
        cfg = RunConfig.model_validate({k: (str(v) if isinstance(v, Path) else v) for k, v in cfg_args.items()})
        result = run(cfg, client=client, echo=log.info)
        return result.inventory.copy()


@overload
def simulate(config: Any = ..., *, seed: int | None = ..., shape: tuple[int, int] | None = ...,
             truth: Literal[False] = ...) -> xr.Dataset: ...
@overload
def simulate(config: Any = ..., *, seed: int | None = ..., shape: tuple[int, int] | None = ...,
             truth: Literal[True]) -> tuple[xr.Dataset, gpd.GeoDataFrame]: ...
def simulate(config: Any = None, *, seed: int | None = None, shape: tuple[int, int] | None = None,
             truth: bool = False) -> xr.Dataset | tuple[xr.Dataset, gpd.GeoDataFrame]:
    """A simulated basin as an in-memory mosaic ``Dataset`` (``los_rate`` (track, y, x), ``dem``),
    and with ``truth=True`` its truth inventory too.

    ``config``: a :class:`~insar_slide.sim.config.SimConfig`, a simulation YAML, or None for the
    demo scene (``insar-slide demo``'s); ``seed`` and ``shape`` (rows, cols) override it.
    """
    from .sim.basin import simulate as simulate_to
    from .sim.config import SimConfig, demo_config, load_sim_config

    cfg = demo_config() if config is None else config if isinstance(config, SimConfig) else load_sim_config(config)
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": seed})
    if shape is not None:
        chunk = min(cfg.grid.chunk, max(512, *shape))
        cfg = cfg.model_copy(update={"grid": cfg.grid.model_copy(update={"shape": tuple(shape), "chunk": chunk})})
    with tempfile.TemporaryDirectory(prefix="insar-slide-simulate-") as tmp:
        store, truth_path = simulate_to(cfg, Path(tmp) / "basin.zarr")
        ds = open_basin(store).load()
        gdf = gpd.read_parquet(truth_path) if truth else None
    ds.attrs.pop(MANIFEST_ATTR, None)  # the chunk list of a store that is gone
    return (ds, gdf) if truth else ds

