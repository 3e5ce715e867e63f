"""Stage 5 of ``run``: a run's part files → one inventory in a deterministic order with stable
ids, and the optional outputs beside it (GeoPackage, KML, ``slide_id`` raster, quick look, HTML
report, per-slide time series with a folder of one plot per slide)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ..core.merge import slide_ids
from ..grid import Grid
from ..inventory import COLUMNS, finish_schema
from ..mosaic import resolve_version_group
from ..storage import is_url, join, with_suffix
from .config import RunConfig
from .plan import aoi_geometry

INVENTORY_COLUMNS = [*COLUMNS[:-1], "slide_num", "n_boxes", "geometry"]


def assemble(parts: list[Path], grid: Grid, cfg: RunConfig, *, run_id: str, model_id: str) -> gpd.GeoDataFrame:
    """This run's part files → one inventory in a deterministic order with stable ids."""
    frames = [gpd.read_parquet(p) for p in parts]
    frames = [f for f in frames if len(f)]
    if frames:
        gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=grid.crs)
    else:
        gdf = gpd.GeoDataFrame({"score": pd.Series([], dtype=float), "tracks": pd.Series([], dtype=object),
                                "n_boxes": pd.Series([], dtype=int)}, geometry=gpd.GeoSeries([], crs=grid.crs), crs=grid.crs)
    if cfg.aoi is not None and len(gdf):
        aoi = aoi_geometry(cfg.aoi, grid.crs)
        gdf = gdf[shapely.intersects(aoi, np.asarray(gdf.geometry.centroid, dtype=object))]
    gdf["slide_id"] = slide_ids(gdf.geometry, grid)
    b = gdf.geometry.bounds
    order = np.lexsort((b["minx"].to_numpy(), -b["maxy"].to_numpy())) if len(gdf) else np.zeros(0, int)
    gdf = gdf.iloc[order].reset_index(drop=True)
    gdf["slide_num"] = np.arange(1, len(gdf) + 1, dtype=np.int32)
    gdf["method"] = "faster_rcnn"
    gdf["run_id"] = run_id
    gdf["model_id"] = model_id
    if len(cfg.scales) == 1:
        return finish_schema(gdf, grid, INVENTORY_COLUMNS)
    gdf["scale"] = (gdf["scale"] if "scale" in gdf else pd.Series([], dtype=float)).astype(np.int64)
    return finish_schema(gdf, grid, [*INVENTORY_COLUMNS[:-1], "scale", "geometry"])


def write_extras(gdf: gpd.GeoDataFrame, cfg: RunConfig, *, ds: Any, grid: Grid,
                 written: dict[str, str] | None = None) -> dict[str, str]:
    """The optional outputs beside the inventory; ``written`` (name → path) fills as each lands.
    An OSError names the output it was writing."""
    out = cfg.out
    written = {} if written is None else written
    stem = str(with_suffix(out, ""))
    todo: list[tuple[str, str | Path, Callable[[], object]]] = []
    group = resolve_version_group(cfg.mosaic, cfg.version)
    mosaic = join(cfg.mosaic, group) if group else cfg.mosaic  # a version is a whole store
    if cfg.outputs.geopackage:
        from ..gis import write_geopackage
        gpkg = with_suffix(out, ".gpkg")
        todo.append(("geopackage", gpkg, lambda: write_geopackage(gdf, gpkg)))
    if cfg.outputs.kml:
        from ..gis import write_kml
        kml = with_suffix(out, ".kml")
        todo.append(("kml", kml, lambda: write_kml(gdf, kml, name=f"insar-slide: {stem.rsplit('/', 1)[-1]}")))
    if cfg.outputs.slide_id_raster:
        from .raster import write_slide_raster
        path = f"{stem}.slide_id.zarr"
        todo.append(("slide_id_raster", path, lambda: write_slide_raster(gdf, ds, grid, path if is_url(path) else Path(path))))
    if cfg.outputs.quicklook:
        from ..quicklook import quicklook
        png = f"{stem}.png"
        todo.append(("quicklook", png, lambda: quicklook(mosaic, png, inventory=gdf)))
    if cfg.outputs.report:
        from ..report import write_report
        page = f"{stem}.html"
        todo.append(("report", page, lambda: write_report(mosaic, gdf, page)))
    if cfg.outputs.timeseries:
        from ..timeseries import series_for_inventory, timeseries_path, write_timeseries
        from ..timeseries_plot import replace_plots
        series, plots = timeseries_path(out), f"{stem}.timeseries"
        made: dict[str, Any] = {}

        def write_series() -> None:
            made["table"], summary, made["meta"] = series_for_inventory(gdf, cfg.outputs.timeseries)
            write_timeseries(made["table"], series, summary=summary, metadata=made["meta"], overwrite=True)

        todo.append(("timeseries", series, write_series))
        todo.append(("timeseries_plots", plots, lambda: replace_plots(made["table"], plots,
                                                                      ring_m=(made["meta"]["ring_m"][0], made["meta"]["ring_m"][1]))))
    for name, target, write in todo:
        try:
            write()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        written[name] = str(target)
    return written
