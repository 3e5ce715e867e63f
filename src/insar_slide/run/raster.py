"""The ``slide_id`` layer: the inventory rasterised on the mosaic grid, as a sibling Zarr store.

Value ``k`` is the slide with ``slide_num == k`` (0 = no slide), so a notebook can do
``rate.where(slide_id == k)``. Written chunk by chunk (the mosaic's chunking), each chunk
burning only the polygons that touch it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import geopandas as gpd
import numpy as np
import shapely
import xarray as xr

from ..grid import Grid, PixelWindow
from ..storage import is_url, staged


def _burn(block_info: dict[Any, Any] | None, geoms: np.ndarray, nums: np.ndarray, tree: shapely.STRtree, grid: Grid) -> np.ndarray:
    from rasterio import features

    if block_info is None:  # dask.array.map_blocks always passes it
        raise ValueError("_burn needs dask's block_info")
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    win = PixelWindow(r0, c0, r1 - r0, c1 - c0)
    wg = grid.window_grid(win)
    hits = tree.query(shapely.box(*wg.bounds))
    if not len(hits):
        return np.zeros(win.rows * win.cols, np.int32).reshape(win.rows, win.cols)
    return features.rasterize(((geoms[i], int(nums[i])) for i in sorted(hits)), out_shape=(win.rows, win.cols),
                              transform=wg.transform, fill=0, dtype="int32")


def write_slide_raster(gdf: gpd.GeoDataFrame, ds: xr.Dataset, grid: Grid, path: str | Path, *, chunk: int | None = None) -> str | Path:
    geoms = np.asarray(gdf.geometry, dtype=object)
    nums = gdf["slide_num"].to_numpy()
    tree = shapely.STRtree(geoms)
    if chunk is None:
        chunks = ds["los_rate"].chunks
        size = chunks[1][0] if chunks else 1024
    else:
        size = chunk
    arr = da.map_blocks(lambda block_info=None: _burn(block_info, geoms, nums, tree, grid),
                        dtype=np.int32, chunks=(da.core.normalize_chunks(size, grid.shape)), meta=np.zeros((0, 0), np.int32))
    layer = xr.DataArray(arr, dims=("y", "x"), coords={"y": grid.y_coords(), "x": grid.x_coords()},
                         attrs={"long_name": "slide number (inventory column slide_num); 0 = none"})
    out = layer.to_dataset(name="slide_id").rio.write_crs(grid.crs).rio.write_transform(grid.transform).set_coords("spatial_ref")
    out["slide_id"].encoding["coordinates"] = "spatial_ref"
    target = path if is_url(path) else Path(path)
    with staged(target, overwrite=True) as tmp:
        out.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)
    return target
