"""Ad-hoc questions about a mosaic and its inventory, for notebooks.

>>> import insar_slide as isl
>>> ds = isl.open_basin("out/demo/basin.zarr")
>>> inv = isl.open_inventory("out/demo/inventory.parquet")
>>> isl.slides_in_bbox(inv, 530_000, 3_050_000, 540_000, 3_060_000)     # map units of the mosaic
>>> isl.slide_rates(ds, inv, inv.slide_id[0])                            # DataArray (track, y, x)
>>> isl.slide_table(ds, inv)                                             # per-slide statistics
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr

from .errors import InputError
from .inventory import read_inventory
from .mosaic import RATE, grid_of


def open_inventory(path: str | Path) -> gpd.GeoDataFrame:
    """An inventory (GeoParquet from ``run``/``baseline``/``simulate``, or any vector file)."""
    return read_inventory(path)


def _row(inv: gpd.GeoDataFrame, slide_id: str) -> gpd.GeoSeries:
    hit = inv[inv["slide_id"] == slide_id]
    if hit.empty:
        raise InputError(f"slide_id {slide_id!r} is not in the inventory ({len(inv)} slides)")
    return hit.iloc[0]


def slides_in_bbox(inv: gpd.GeoDataFrame, xmin: float, ymin: float, xmax: float, ymax: float) -> gpd.GeoDataFrame:
    """Slides whose polygon meets the box (inventory CRS units), using the spatial index."""
    idx = inv.sindex.query(shapely.box(xmin, ymin, xmax, ymax), predicate="intersects")
    return inv.iloc[np.sort(idx)]


def slide_rates(ds: xr.Dataset, inv: gpd.GeoDataFrame, slide_id: str, *, pad: int = 0) -> xr.DataArray:
    """The mosaic's rates inside one slide (NaN outside its polygon), cropped to its bounds + ``pad`` px."""
    row = _row(inv, slide_id)
    geom = row.geometry
    if inv.crs is not None and ds.rio.crs is not None and inv.crs != ds.rio.crs:
        geom = gpd.GeoSeries([geom], crs=inv.crs).to_crs(ds.rio.crs).iloc[0]
    grid = grid_of(ds)
    xmin, ymin, xmax, ymax = geom.bounds
    win = grid.window_of_bounds(xmin - pad * grid.dx, ymin + pad * grid.dy, xmax + pad * grid.dx, ymax - pad * grid.dy)
    rs, cs = win.slices()
    sub = ds[RATE].isel(y=rs, x=cs)
    inside = shapely.contains_xy(geom, sub.x.values[None, :], sub.y.values[:, None])
    return sub.where(xr.DataArray(inside, dims=("y", "x"), coords={"y": sub.y, "x": sub.x}))


def slide_table(ds: xr.Dataset, inv: gpd.GeoDataFrame) -> pd.DataFrame:
    """Per slide and track: valid pixels, mean, median, min, max and p95 |rate| inside its polygon."""
    rows = []
    for sid in inv["slide_id"]:
        r = slide_rates(ds, inv, sid).load()
        for t in r["track"].values:
            v = r.sel(track=t).values
            v = v[np.isfinite(v)]
            rows.append({"slide_id": sid, "track": str(t), "n_valid": int(v.size),
                         "mean": float(v.mean()) if v.size else np.nan,
                         "median": float(np.median(v)) if v.size else np.nan,
                         "min": float(v.min()) if v.size else np.nan, "max": float(v.max()) if v.size else np.nan,
                         "p95_abs": float(np.percentile(np.abs(v), 95)) if v.size else np.nan})
    return pd.DataFrame(rows)
