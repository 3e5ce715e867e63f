import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from insar_slide import open_basin
from insar_slide.ingest import ingest
from insar_slide.inventory import (
    COLUMNS,
    inventory_metadata,
    polygon_rate_stats,
    read_inventory,
    write_inventory,
)
from insar_slide.readers import ReadOptions, open_source

from .conftest import write_tif


@pytest.fixture
def mosaic(tmp_path):
    data = np.zeros((200, 300), "float32")
    data[50:100, 50:100] = -20.0
    data[50:60, 50:100] = np.nan  # a tenth of the slide without measurement
    data[150:160, 200:210] = 7.0
    src = write_tif(tmp_path / "a.tif", data)
    ingest([open_source(src, ReadOptions(units="mm/yr", track="asc"))], tmp_path / "m.zarr", chunk=64)
    return open_basin(tmp_path / "m.zarr")


def _box(ds, r0, c0, r1, c1):
    x0, y0 = float(ds.x[0]) - 15, float(ds.y[0]) + 15
    return shapely.box(x0 + c0 * 30, y0 - r1 * 30, x0 + c1 * 30, y0 - r0 * 30)


def test_polygon_rate_stats(mosaic):
    geoms = gpd.GeoSeries([_box(mosaic, 50, 50, 100, 100), _box(mosaic, 150, 200, 160, 210)], crs=mosaic.los_rate.rio.crs)
    st = polygon_rate_stats(mosaic, geoms)
    assert st.rate_mean.tolist() == pytest.approx([-20.0, 7.0])
    assert st.valid_fraction.tolist() == pytest.approx([0.8, 1.0])
    assert (st.rate_track == "asc").all()
    # Read once for the batch, or polygon by polygon: the same numbers.
    pd.testing.assert_frame_equal(st, polygon_rate_stats(mosaic, geoms, max_block_px=0))
    # Binned by tile (two small ones share a tile, the large one is read alone): same numbers, same order.
    more = gpd.GeoSeries([*geoms, _box(mosaic, 152, 202, 155, 206), _box(mosaic, 10, 250, 14, 255)], crs=geoms.crs)
    pd.testing.assert_frame_equal(polygon_rate_stats(mosaic, more, max_block_px=400),
                                  polygon_rate_stats(mosaic, more))


def test_inventory_round_trip_with_metadata(tmp_path, mosaic):
    geoms = [_box(mosaic, 50, 50, 100, 100)]
    gdf = gpd.GeoDataFrame({"slide_id": ["a"], "method": ["truth"], "score": [np.nan], "tracks": ["asc"],
                            "area_m2": [2.25e6], "rate_mean": [-20.0], "rate_p95_abs": [20.0], "valid_fraction": [0.8],
                            "rate_track": ["asc"], "run_id": ["r"], "model_id": [""]}, geometry=geoms, crs="EPSG:32647")
    path = write_inventory(gdf, tmp_path / "inv.parquet", metadata={"config": {"a": 1}})
    back = read_inventory(path)
    assert list(back.columns) == list(gdf.columns) and back.crs.to_epsg() == 32647
    assert inventory_metadata(path) == {"config": {"a": 1}}
    with pytest.raises(ValueError, match="unknown method"):
        write_inventory(gdf.assign(method="guess"), tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()
    assert set(COLUMNS) <= set(back.columns)


def test_streamed_stats_of_a_basin_sized_polygon_equal_the_single_read(tmp_path):
    """A polygon larger than the read block (a basin-spanning Gi* region) is streamed tile by
    tile; mean, exact 95th percentile, valid fractions and the chosen track stay the same."""
    rng = np.random.default_rng(3)
    srcs = []
    for k, track in enumerate(("asc", "desc")):
        data = rng.normal(0, 8 + 4 * k, (300, 400)).astype("float32")
        data[rng.random(data.shape) < 0.1] = np.nan
        srcs.append(open_source(write_tif(tmp_path / f"{track}.tif", data), ReadOptions(units="mm/yr", track=track)))
    ingest(srcs, tmp_path / "m.zarr", chunk=64)
    ds = open_basin(tmp_path / "m.zarr")
    x0, y0 = float(ds.x[0]) - 15, float(ds.y[0]) + 15
    line = shapely.LineString([(x0 + 300, y0 - 300), (x0 + 11000, y0 - 8000), (x0 + 3000, y0 - 8600)])
    geom = line.buffer(1500).difference(shapely.Point(x0 + 6000, y0 - 4300).buffer(900))  # with a hole
    geoms = gpd.GeoSeries([geom, _box(ds, 10, 10, 20, 20)], crs=ds.los_rate.rio.crs)
    whole = polygon_rate_stats(ds, geoms)
    streamed = polygon_rate_stats(ds, geoms, max_block_px=64 * 64)  # the large one in ≥ 30 tiles
    pd.testing.assert_frame_equal(streamed, whole, rtol=1e-6)
    assert whole.rate_track[0] == "desc" and 0.85 < whole.valid_fraction[0] < 0.95
