import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from insar_slide import open_basin
from insar_slide.cli import main
from insar_slide.errors import StoreError
from insar_slide.ingest import ingest
from insar_slide.maps import pick_overview
from insar_slide.mosaic import describe, open_overview, overview_factors
from insar_slide.quicklook import quicklook
from insar_slide.readers import open_source

from .conftest import KIRISHIMA, write_tif


def test_describe_matches_numpy(real, tmp_path):
    ingest([open_source(KIRISHIMA)], tmp_path / "k.zarr", chunk=128)
    ds = open_basin(tmp_path / "k.zarr")
    d = describe(ds)
    v = ds.los_rate.values[0]
    finite = v[np.isfinite(v)]
    t = d["tracks"][0]
    assert t["name"] == "desc_023"
    assert t["valid_fraction"] == pytest.approx(finite.size / v.size, abs=1e-4)
    for q in (1, 50, 99):
        assert t["percentiles_mm_yr"][f"p{q}"] == pytest.approx(np.percentile(finite, q), abs=0.06)
    assert d["grid"]["crs"] == "EPSG:4326" and d["chunks"] == [1, 128, 128]
    assert 100 < d["extent_km2"] < 110  # 541 x 541 px of ~18 x 20 m


def test_cli_info_json(real, tmp_path):
    ingest([open_source(KIRISHIMA)], tmp_path / "k.zarr", chunk=256)
    res = CliRunner().invoke(main, ["info", str(tmp_path / "k.zarr"), "--json"])
    assert res.exit_code == 0, res.output
    assert '"desc_023"' in res.output


def test_overviews_are_block_means_and_quicklook_reads_them(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(0, 5, (2048, 1536)).astype("float32")
    data[:100, :100] = np.nan
    ingest([open_source(write_tif(tmp_path / "a.tif", data))], tmp_path / "m.zarr", chunk=512)
    assert overview_factors(tmp_path / "m.zarr") == [4, 16]
    ov = open_overview(tmp_path / "m.zarr", 4).values[0]
    assert ov.shape == (512, 384)
    np.testing.assert_allclose(ov[40, 50], data[160:164, 200:204].mean(), rtol=1e-5)
    assert np.isnan(ov[0, 0])
    # The overview's centres are the blocks' centres on the full-resolution lattice.
    full = open_basin(tmp_path / "m.zarr")
    assert float(open_overview(tmp_path / "m.zarr", 4).x[0]) == pytest.approx(float(full.x[:4].mean()))
    assert pick_overview(tmp_path / "m.zarr", (2048, 1536), 600) == (4, True)
    assert pick_overview(tmp_path / "m.zarr", (2048, 1536), 100) == (16, True)
    png = quicklook(tmp_path / "m.zarr", tmp_path / "q.png", max_side=600)
    assert png.stat().st_size > 10_000


def test_open_basin_refuses_what_is_not_a_mosaic(tmp_path):
    with pytest.raises(StoreError, match="no basin mosaic"):
        open_basin(tmp_path / "missing.zarr")
    xr.Dataset({"other": ("x", np.arange(3))}).to_zarr(tmp_path / "other.zarr", zarr_format=3)
    with pytest.raises(StoreError, match="not a basin mosaic"):
        open_basin(tmp_path / "other.zarr")
    res = CliRunner().invoke(main, ["info", str(tmp_path / "other.zarr")])
    assert res.exit_code == 1 and "not a basin mosaic" in res.output
