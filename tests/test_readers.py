import shutil

import h5py
import numpy as np
import pytest
from affine import Affine

from insar_slide.errors import InputError, UnitsError
from insar_slide.grid import PixelWindow
from insar_slide.readers import ReadOptions, open_source

from .conftest import CADIA, CAMPI, KIRISHIMA, write_tif


def _all(src):
    return src.read(PixelWindow(0, 0, *src.grid.shape))


def test_mintpy_kirishima(real):
    src = open_source(KIRISHIMA)
    raw = h5py.File(KIRISHIMA)["velocity"][:]
    got = _all(src)
    assert src.grid.crs == "EPSG:4326" and src.product == "mintpy"
    assert src.track.name == "desc_023" and src.track.heading == pytest.approx(-169.615, abs=1e-3)
    assert (src.grid.x0, src.grid.y0) == (pytest.approx(130.8199074075), pytest.approx(31.9800925925))
    valid = np.isfinite(got)
    np.testing.assert_array_equal(got[valid], (raw * np.float32(1000))[valid])
    # MintPy fills masked pixels with 0: they become NaN, but the reference pixel stays 0.
    assert np.isnan(got[(raw == 0)]).sum() == (raw == 0).sum() - 1
    assert got[346, 162] == 0


def test_mintpy_keep_zeros(real):
    got = _all(open_source(KIRISHIMA, ReadOptions(keep_zeros=True)))
    assert np.isfinite(got).all()


def test_mintpy_cadia_nan_mask_and_incidence(real):
    src = open_source(CADIA)
    got = _all(src)
    raw = h5py.File(CADIA)["velocity"][:]
    assert src.track.name == "desc_045" and src.track.incidence == pytest.approx(36.266, abs=1e-3)
    assert np.isnan(got[np.isnan(raw)]).all()
    valid = np.isfinite(got)
    np.testing.assert_array_equal(got[valid], (raw * np.float32(1000))[valid])


def test_licsbas_with_dem_par(real):
    src = open_source(CAMPI, ReadOptions(track="desc_124"))
    got = _all(src)
    raw = np.fromfile(CAMPI, "<f4").reshape(121, 191)
    assert src.grid.shape == (121, 191) and src.grid.crs == "EPSG:4326"
    # EQA corner_lat/lon are pixel centres: the grid corner is half a pixel out.
    assert src.grid.x0 == pytest.approx(14.02994428828 - 0.0009999992 / 2)
    assert src.grid.y0 == pytest.approx(40.89966842648 + 0.0009999992 / 2)
    np.testing.assert_array_equal(got, raw)
    assert src.track.name == "desc_124"


def test_licsbas_frame_id_names_the_track(real, tmp_path):
    d = tmp_path / "124D_04854_171313" / "TS_GEOCml1" / "results"
    d.mkdir(parents=True)
    shutil.copy(CAMPI, d / "vel")
    (tmp_path / "124D_04854_171313" / "TS_GEOCml1" / "info").mkdir()
    shutil.copy(CAMPI.parents[1] / "info" / "EQA.dem_par", tmp_path / "124D_04854_171313" / "TS_GEOCml1" / "info")
    assert open_source(d / "vel").track.name == "desc_124"


def test_truncated_licsbas_is_refused(real, tmp_path):
    (tmp_path / "info").mkdir()
    shutil.copy(CAMPI.parents[1] / "info" / "EQA.dem_par", tmp_path / "info")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "vel").write_bytes(CAMPI.read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated"):
        open_source(tmp_path / "raw" / "vel")


def test_truncated_h5_is_refused(real, tmp_path):
    bad = tmp_path / "velocity.h5"
    bad.write_bytes(KIRISHIMA.read_bytes()[:100_000])
    with pytest.raises(InputError, match="truncated or corrupt"):
        open_source(bad)


def test_corrupt_tif_is_refused(tmp_path, rates):
    good = write_tif(tmp_path / "a.tif", rates)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(InputError, match=r"bad\.tif"):
        open_source(bad)


def test_geotiff_nodata_becomes_nan(tmp_path, rates):
    data = rates.copy()
    data[:10] = -9999
    src = open_source(write_tif(tmp_path / "a.tif", data, nodata=-9999))
    got = _all(src)
    assert np.isnan(got[:10]).all() and np.array_equal(got[10:], rates[10:])


def test_geotiff_without_crs_needs_crs_option(tmp_path, rates):
    p = write_tif(tmp_path / "nocrs.tif", rates, crs=None)
    with pytest.raises(InputError, match="no CRS; pass --crs"):
        open_source(p)
    assert open_source(p, ReadOptions(crs="EPSG:32647")).grid.crs == "EPSG:32647"


def test_rotated_geotiff_is_refused(tmp_path, rates):
    p = write_tif(tmp_path / "rot.tif", rates, transform=Affine(30, 5, 500000, 5, -30, 3000000))
    with pytest.raises(InputError, match="rotated or skewed"):
        open_source(p)


def test_m_per_yr_passed_as_mm_per_yr_is_detected(tmp_path, rates):
    p = write_tif(tmp_path / "m.tif", rates / 1000)
    with pytest.raises(UnitsError, match="--units m/yr"):
        open_source(p)
    src = open_source(p, ReadOptions(units="m/yr"))
    np.testing.assert_allclose(_all(src), rates, rtol=1e-5)


def test_all_nan_raster_is_refused(tmp_path):
    p = write_tif(tmp_path / "nan.tif", np.full((50, 50), np.nan))
    with pytest.raises(InputError, match="every pixel is NaN"):
        open_source(p)


def test_unknown_format_is_refused(tmp_path):
    p = tmp_path / "rates.txt"
    p.write_text("1,2,3\n")
    with pytest.raises(InputError, match="unrecognised format"):
        open_source(p)


def test_licsbas_vel_geotiff_matches_the_binary(real, tmp_path):
    binary = open_source(CAMPI, ReadOptions(track="desc_124"))
    d = tmp_path / "124D_04854_171313"
    d.mkdir()
    tif = write_tif(d / "vel.geo.tif", _all(binary), transform=binary.grid.transform, crs="EPSG:4326")
    src = open_source(tif)
    assert src.track.name == "desc_124" and src.grid == binary.grid
    np.testing.assert_array_equal(_all(src), _all(binary))
