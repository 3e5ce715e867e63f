"""Quality layers at ingest (coherence, velocity std, DEM, the producer's mask) and the quality
mask that run, plan and the baselines read the rates through."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from click.testing import CliRunner

from insar_slide.baselines import masked_rate
from insar_slide.cli import main
from insar_slide.errors import InputError
from insar_slide.grid import PixelWindow
from insar_slide.mosaic import describe, open_basin
from insar_slide.quality import quality_mask
from insar_slide.readers import ReadOptions, open_source
from insar_slide.run.config import DEFAULT_MIN_COHERENCE
from insar_slide.run.io import read_window
from insar_slide.run.plan import window_stats

from .conftest import CADIA, CAMPI, KIRISHIMA, write_tif

H, W = 64, 80


def _mintpy(folder, *, velocity, std, coherence):
    """A geocoded MintPy velocity.h5 (m/year, UTM) with velocityStd, and temporalCoherence.h5 beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    attrs = {"X_FIRST": "500000", "Y_FIRST": "3000000", "X_STEP": "30", "Y_STEP": "-30", "EPSG": "32647",
             "UNIT": "m/year", "ORBIT_DIRECTION": "ASCENDING", "trackNumber": "99", "HEADING": "-12.5",
             "CENTER_INCIDENCE_ANGLE": "39.0", "REF_Y": "1", "REF_X": "1"}
    with h5py.File(folder / "velocity.h5", "w") as f:
        f["velocity"] = velocity / 1000
        f["velocityStd"] = std / 1000
        f.attrs.update(attrs)
    with h5py.File(folder / "temporalCoherence.h5", "w") as f:
        f["temporalCoherence"] = coherence
        f.attrs.update({**attrs, "UNIT": "1"})
    return folder / "velocity.h5"


@pytest.fixture
def product(tmp_path):
    """Rates with a fast 'slide' in a decorrelated corner (coherence 0.05) and one in coherent ground."""
    rng = np.random.default_rng(1)
    vel = rng.normal(0, 1, (H, W)).astype("float32")
    vel[5:15, 5:15] = 40.0  # decorrelated: noise that looks fast
    vel[40:50, 50:60] = -30.0  # coherent: a real signal
    coh = np.full((H, W), 0.9, "float32")
    coh[:20, :20] = 0.05
    std = np.full((H, W), 1.5, "float32")
    return _mintpy(tmp_path / "mintpy", velocity=vel, std=std, coherence=coh), vel, coh


def test_quality_mask_rule():
    coh = np.array([[0.1, 0.5, np.nan]])
    mask = np.array([[1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(quality_mask(coh, None, 0.2), [[True, False, False]])  # NaN coherence: kept
    np.testing.assert_array_equal(quality_mask(coh, mask, 0.2), [[True, True, False]])
    assert quality_mask(coh, mask, None) is None and quality_mask(None, None, 0.2) is None


def test_mintpy_layers_are_found_beside_velocity_and_ingested(product, tmp_path):
    path, _, coh = product
    src = open_source(path)
    assert src.layer_names == ("velocity_std", "coherence")
    np.testing.assert_allclose(src.read_layer("velocity_std", PixelWindow(0, 0, H, W)), 1.5, rtol=1e-6)  # m/yr x 1000
    out = tmp_path / "b.zarr"
    res = CliRunner().invoke(main, ["ingest", str(path), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = xr.open_zarr(out)  # plain xarray: the layers are ordinary variables of the store
    assert ds["coherence"].dims == ("track", "y", "x") and ds["velocity_std"].attrs["units"] == "mm/yr"
    np.testing.assert_allclose(ds["coherence"].values[0], coh)
    assert "temporal coherence" in json.loads(ds.attrs["coherence_kind"])["asc_099"][0]


def test_run_reads_rates_through_the_quality_mask(product, tmp_path):
    path, _, _ = product
    out = tmp_path / "b.zarr"
    CliRunner().invoke(main, ["ingest", str(path), "--out", str(out), "--no-progress"])
    win = PixelWindow(0, 0, H, W)
    raw = read_window(str(out), "asc_099", win)
    masked = read_window(str(out), "asc_099", win, min_coherence=0.2)
    assert np.isfinite(raw[:20, :20]).all() and np.isnan(masked[:20, :20]).all()
    np.testing.assert_array_equal(masked[20:], raw[20:])
    # the plan's skip rule counts fast pixels after the mask: the decorrelated 'slide' is gone
    (n_valid, n_hot, _, _), = window_stats(str(out), "asc_099", [win], 10.0)
    (m_valid, m_hot, _, _), = window_stats(str(out), "asc_099", [win], 10.0, min_coherence=0.2)
    assert (n_hot, m_hot) == (200, 100) and n_valid - m_valid == 400
    # the baselines read the same mask (lazily, with Dask)
    ds = open_basin(out)
    assert int(np.isfinite(masked_rate(ds, "asc_099", 0.2).compute()).sum()) == H * W - 400
    assert masked_rate(ds, "asc_099", None) is not None
    d = describe(ds, min_coherence=0.2)
    assert d["tracks"][0]["masked_fraction"] == pytest.approx(400 / (H * W), abs=1e-4)
    res = CliRunner().invoke(main, ["info", str(out)])
    assert f"coherence < {DEFAULT_MIN_COHERENCE:g}" in res.output and "7.8% of its valid pixels masked" in res.output


def test_a_mosaic_without_layers_is_read_as_stored(tmp_path, rates):
    tif = write_tif(tmp_path / "r.tif", rates)
    out = tmp_path / "b.zarr"
    assert CliRunner().invoke(main, ["ingest", str(tif), "--out", str(out), "--track", "asc_001"]).exit_code == 0
    win = PixelWindow(0, 0, 50, 50)
    np.testing.assert_array_equal(read_window(str(out), "asc_001", win, min_coherence=0.9), read_window(str(out), "asc_001", win))
    assert describe(open_basin(out), min_coherence=0.2)["tracks"][0]["masked_fraction"] is None


def test_geotiff_layers_given_at_ingest_and_a_dem_on_another_grid_is_warped(tmp_path, rates):
    tif = write_tif(tmp_path / "r.tif", rates)
    coh = write_tif(tmp_path / "coh.tif", np.full(rates.shape, 0.7, "float32"))
    # a DEM at 60 m on a lattice of its own, a plane rising 1 m per metre east: bilinear keeps it exact inside
    h, w = rates.shape[0] // 2 + 4, rates.shape[1] // 2 + 4
    xs = 500_000.0 - 60 + (np.arange(w) + 0.5) * 60
    dem = write_tif(tmp_path / "dem.tif", np.tile(xs - 500_000.0, (h, 1)).astype("float32"),
                    transform=Affine(60.0, 0, 500_000.0 - 60, 0, -60.0, 3_000_060.0))
    out = tmp_path / "b.zarr"
    res = CliRunner().invoke(main, ["ingest", str(tif), "--out", str(out), "--track", "asc_001", "--coherence", str(coh),
                                    "--dem", str(dem), "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = open_basin(out)
    assert ds["dem"].dims == ("y", "x") and ds["dem"].attrs["units"] == "m"
    np.testing.assert_allclose(ds["coherence"].values[0], 0.7)
    centre_x = ds["x"].values - 500_000.0
    np.testing.assert_allclose(ds["dem"].values[10, 5:-5], centre_x[5:-5], atol=1e-3)


def test_a_layer_that_does_not_fit_is_one_clear_error(tmp_path, rates):
    tif = write_tif(tmp_path / "r.tif", rates)
    far = write_tif(tmp_path / "far.tif", rates, transform=Affine(30.0, 0, 900_000.0, 0, -30.0, 1_000_000.0))
    with pytest.raises(InputError, match="does not overlap"):
        open_source(tif, ReadOptions(track="a", coherence=str(far)))
    with pytest.raises(InputError, match=r"--velocity-std .*no such file"):
        open_source(tif, ReadOptions(track="a", velocity_std=str(tmp_path / "none.tif")))


def test_real_products_ingest_with_their_quality_layers(real, tmp_path):
    """Kirishima (MintPy, temporal coherence beside velocity.h5), Cadia (geo_ files) and
    Campi Flegrei (LiCSBAS coh_avg, vstd, mask, hgt): each layer lands, with the masked share
    the README quotes at the default threshold."""
    want = {
        "kirishima": (KIRISHIMA, [], {"coherence", "velocity_std"}, 0.0001),
        "cadia": (CADIA, [], {"coherence", "velocity_std"}, 0.1053),
        "campi": (CAMPI, ["--track", "desc_124"], {"coherence", "velocity_std", "mask", "dem"}, 0.2669),
    }
    for name, (src, extra, layers, share) in want.items():
        out = tmp_path / f"{name}.zarr"
        res = CliRunner().invoke(main, ["ingest", str(src), "--out", str(out), "--no-progress", *extra])
        assert res.exit_code == 0, res.output
        ds = open_basin(out)
        assert set(ds.data_vars) - {"los_rate"} == layers, name
        got = describe(ds, min_coherence=DEFAULT_MIN_COHERENCE)["tracks"][0]["masked_fraction"]
        assert got == pytest.approx(share, abs=0.0005), name
    ds = open_basin(tmp_path / "campi.zarr")
    assert float(ds["dem"].max()) == pytest.approx(463.49, abs=0.01)  # hgt: Monte Nuovo / Solfatara rim heights
    assert float(np.nanmedian(ds["velocity_std"].values)) == pytest.approx(0.60, abs=0.01)
    kir = open_basin(tmp_path / "kirishima.zarr")
    assert float(np.nanmedian(kir["velocity_std"].values)) == pytest.approx(2.18, abs=0.01)  # m/year x 1000


class _Frame:
    """A stand-in frame of one track on a 4 x 4 lattice: rates 0, a layer of one value."""

    def __init__(self, value: float, col0: int):
        from insar_slide.grid import Grid
        from insar_slide.mosaic import TrackInfo

        self.grid = Grid("EPSG:32647", 500_000.0 + 30 * col0, 3_000_000.0, 30.0, -30.0, 4, 4)
        self.track = TrackInfo("asc_001")
        self.value, self.layer_names = value, ("mask", "point_count", "coherence")

    def read(self, win):
        return np.zeros((win.rows, win.cols), "float32")

    def read_layer(self, name, win):
        return np.full((win.rows, win.cols), self.value, "float32")


def test_counts_add_up_and_masks_are_not_averaged_where_frames_overlap():
    from insar_slide.ingest import IngestPlan, read_block

    a, b = _Frame(0.0, 0), _Frame(3.0, 2)  # overlapping in columns 2-3
    from insar_slide.grid import Grid

    grid = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 4, 6)
    plan = IngestPlan(grid, (a.track,), ((a, b),), reproject=False, overlap="mean")
    win = PixelWindow(0, 0, 4, 6)
    np.testing.assert_array_equal(read_block(plan, 0, win, "point_count")[0], [0, 0, 3, 3, 3, 3])  # summed
    np.testing.assert_array_equal(read_block(plan, 0, win, "mask")[0], [0, 0, 0, 0, 3, 3])  # the first frame's
    np.testing.assert_array_equal(read_block(plan, 0, win, "coherence")[0], [0, 0, 1.5, 1.5, 3, 3])  # averaged
