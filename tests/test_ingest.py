import h5py
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from click.testing import CliRunner

from insar_slide import open_basin
from insar_slide.cli import main
from insar_slide.errors import GridError
from insar_slide.ingest import ingest
from insar_slide.readers import ReadOptions, open_source

from .conftest import CADIA, CAMPI, KIRISHIMA, write_tif


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("src,extra", [(KIRISHIMA, []), (CADIA, []), (CAMPI, ["--track", "desc_124"])])
def test_cli_ingest_real_products(real, tmp_path, src, extra):
    out = tmp_path / "m.zarr"
    res = CliRunner().invoke(main, ["ingest", str(src), "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    ds = xr.open_zarr(out)  # plain xarray, nothing project-specific
    rate = ds["los_rate"]
    assert rate.dtype == np.float32 and rate.dims == ("track", "y", "x")
    assert rate.attrs["units"] == "mm/yr"
    assert rate.rio.crs.to_epsg() == 4326
    got = rate.values[0]
    raw = h5py.File(src)["velocity"][:] * np.float32(1000) if src.suffix == ".h5" else np.fromfile(src, "<f4").reshape(got.shape)
    valid = np.isfinite(got)
    assert valid.mean() > 0.6
    np.testing.assert_array_equal(got[valid], raw[valid])
    assert not _leftovers(tmp_path)


def _frames(tmp_path, rates):
    # Two frames of one track overlapping by 100 columns, the second offset by +5 mm/yr there.
    t0 = Affine(30.0, 0, 500_000.0, 0, -30.0, 3_000_000.0)
    t1 = Affine(30.0, 0, 500_000.0 + 300 * 30.0, 0, -30.0, 3_000_000.0)
    a = write_tif(tmp_path / "f0.tif", rates, transform=t0)
    b = write_tif(tmp_path / "f1.tif", rates + 5, transform=t1)
    return a, b


@pytest.mark.parametrize("rule", ["mean", "first"])
def test_frames_of_one_track_are_mosaicked_with_the_overlap_rule(tmp_path, rates, rule):
    a, b = _frames(tmp_path, rates)
    srcs = [open_source(p, ReadOptions(track="asc_001")) for p in (a, b)]
    ingest(srcs, tmp_path / "m.zarr", overlap=rule, chunk=128)
    got = open_basin(tmp_path / "m.zarr")["los_rate"].values[0]
    assert got.shape == (300, 700)
    np.testing.assert_allclose(got[:, :300], rates[:, :300])
    first, second = rates[:, 300:400], rates[:, 0:100] + 5  # what each frame says there
    expect = (first + second) / 2 if rule == "mean" else first
    np.testing.assert_allclose(got[:, 300:400], expect, atol=1e-5)
    np.testing.assert_allclose(got[:, 400:], rates[:, 100:] + 5, atol=1e-5)


def test_tracks_are_stacked_on_the_union_grid(tmp_path, rates):
    a, b = _frames(tmp_path, rates)
    srcs = [open_source(a, ReadOptions(track="asc_001")), open_source(b, ReadOptions(track="desc_002"))]
    ingest(srcs, tmp_path / "m.zarr", chunk=128)
    ds = open_basin(tmp_path / "m.zarr")
    assert list(ds.track.values) == ["asc_001", "desc_002"]
    asc, desc = ds["los_rate"].values
    assert np.isnan(asc[:, 400:]).all() and np.isnan(desc[:, :300]).all()
    np.testing.assert_allclose(desc[:, 300:], rates + 5, atol=1e-5)


def _plane(transform, shape):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    x = transform.c + (cols + 0.5) * transform.a
    y = transform.f + (rows + 0.5) * transform.e
    return (0.002 * (x - 500_000) - 0.001 * (y - 3_000_000)).astype("float32")


def test_grids_that_cannot_be_stacked_need_reproject(tmp_path):
    ta = Affine(30.0, 0, 500_000.0, 0, -30.0, 3_000_000.0)
    tb = Affine(40.0, 0, 500_010.0, 0, -40.0, 3_000_000.0)
    a = write_tif(tmp_path / "a.tif", _plane(ta, (300, 400)), transform=ta)
    b = write_tif(tmp_path / "b.tif", _plane(tb, (200, 250)), transform=tb)
    srcs = [open_source(a, ReadOptions(track="asc")), open_source(b, ReadOptions(track="desc"))]
    with pytest.raises(GridError, match="pass --reproject"):
        ingest(srcs, tmp_path / "m.zarr")
    assert not (tmp_path / "m.zarr").exists() and not _leftovers(tmp_path)
    ingest(srcs, tmp_path / "m.zarr", reproject=True, chunk=128)
    ds = open_basin(tmp_path / "m.zarr")
    assert float(ds.x[1] - ds.x[0]) == pytest.approx(30.0)
    asc, desc = ds["los_rate"].values
    expect = _plane(ds["los_rate"].rio.transform(), desc.shape)
    # A bilinear warp of a plane is the plane, away from the edges.
    np.testing.assert_allclose(desc[5:250, 5:320], expect[5:250, 5:320], atol=1e-3)
    np.testing.assert_allclose(asc[:300, :400], expect[:300, :400], atol=1e-3)


def test_reproject_to_another_crs(real, tmp_path):
    src = open_source(CADIA)
    ingest([src], tmp_path / "utm.zarr", crs="EPSG:32755", resolution=40.0, chunk=128)
    ds = open_basin(tmp_path / "utm.zarr")
    assert ds["los_rate"].rio.crs.to_epsg() == 32755
    v = ds["los_rate"].values[0]
    raw = h5py.File(CADIA)["velocity"][:] * 1000
    assert abs(np.nanmedian(v) - np.nanmedian(raw)) < 0.5
    assert 0.5 < np.isfinite(v).mean() <= 1


def test_failed_ingest_leaves_nothing_behind(tmp_path, rates, monkeypatch):
    a = write_tif(tmp_path / "a.tif", rates)
    src = open_source(a)
    # The file goes bad after it was checked: the write fails half-way.
    a.write_bytes(a.read_bytes()[:3000])
    with pytest.raises(Exception):  # noqa: B017 - whatever rasterio raises mid-write
        ingest([src], tmp_path / "m.zarr", chunk=64)
    assert not (tmp_path / "m.zarr").exists() and not _leftovers(tmp_path)


def test_existing_store_is_kept_without_overwrite(tmp_path, rates):
    a = write_tif(tmp_path / "a.tif", rates)
    out = tmp_path / "m.zarr"
    res = CliRunner().invoke(main, ["ingest", str(a), "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["ingest", str(a), "--out", str(out)])
    assert res.exit_code == 1 and "--overwrite" in res.output
    res = CliRunner().invoke(main, ["ingest", str(a), "--out", str(out), "--units", "m/yr", "--overwrite"])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(open_basin(out)["los_rate"].values[0], rates * 1000, rtol=1e-6)


@pytest.mark.parametrize("make,needle", [
    (lambda p, r: write_tif(p / "x.tif", r, crs=None), "no CRS"),
    (lambda p, r: write_tif(p / "x.tif", r / 1000), "look like m/yr"),
    (lambda p, r: write_tif(p / "x.tif", np.full_like(r, np.nan)), "every pixel is NaN"),
    (lambda p, r: write_tif(p / "x.tif", r, transform=Affine(30, 3, 0, 3, -30, 0)), "rotated or skewed"),
])
def test_cli_bad_input_one_clear_error_and_no_store(tmp_path, rates, make, needle):
    src = make(tmp_path, rates)
    out = tmp_path / "m.zarr"
    res = CliRunner().invoke(main, ["ingest", str(src), "--out", str(out)])
    assert res.exit_code != 0
    assert needle in res.output and str(src.name) in res.output
    assert "Traceback" not in res.output
    assert not out.exists() and not _leftovers(tmp_path)


# ---------------------------------------------------------------- ingest that never corrupts silently (issue 21)


def test_products_of_unknown_track_are_never_averaged_into_one(tmp_path, rates):
    """An ascending and a descending GeoTIFF without --track would have cancelled: refused."""
    a = write_tif(tmp_path / "asc.tif", rates)
    d = write_tif(tmp_path / "desc.tif", -rates)
    out = tmp_path / "m.zarr"
    res = CliRunner().invoke(main, ["ingest", str(a), str(d), "--out", str(out)])
    assert res.exit_code != 0 and "would be averaged into one track 'los'" in res.output and "--track" in res.output
    assert not out.exists()
    res = CliRunner().invoke(main, ["ingest", str(a), str(d), "--out", str(out), "--track", "asc_001", "--track", "desc_002",
                                    "--heading", "-12", "--heading", "-168", "--incidence", "39"])
    assert res.exit_code == 0, res.output
    ds = open_basin(out)
    assert list(ds["track"].values) == ["asc_001", "desc_002"]
    assert list(ds["heading"].values) == [-12.0, -168.0] and list(ds["incidence"].values) == [39.0, 39.0]
    np.testing.assert_allclose(ds["los_rate"].values[1], -rates, atol=1e-6)
    # the same --track once for both: the user says they are frames of one track (same grid: averaged)
    res = CliRunner().invoke(main, ["ingest", str(a), str(a), "--out", str(tmp_path / "one.zarr"), "--track", "asc_001"])
    assert res.exit_code == 0, res.output
    # but frames that look different ways are never one track
    res = CliRunner().invoke(main, ["ingest", str(a), str(d), "--out", str(tmp_path / "bad.zarr"), "--track", "t",
                                    "--heading", "-12", "--heading", "-168"])
    assert res.exit_code != 0 and "look different ways" in res.output
    res = CliRunner().invoke(main, ["ingest", str(a), str(d), "--out", str(tmp_path / "bad.zarr"), "--heading", "1",
                                    "--heading", "2", "--heading", "3"])
    assert res.exit_code != 0 and "--heading given 3 times for 2 sources" in res.output


def test_sign_and_re_referencing(tmp_path, rates):
    src = write_tif(tmp_path / "away.tif", rates - 22.0)  # an unreferenced product, positive = away
    flipped = open_source(src, ReadOptions(track="t", sign="away"))
    win = flipped.grid.window_of_bounds(*flipped.grid.bounds)
    np.testing.assert_allclose(flipped.read(win), -(rates - 22.0), atol=1e-5)
    med = open_source(src, ReadOptions(track="t", reference="median"))
    assert med.offset == pytest.approx(float(np.median(rates)) - 22.0, abs=0.5)
    assert abs(float(np.nanmedian(med.read(win)))) < 0.5
    # a reference point reads (about) zero: the median of the 5 x 5 px around it
    from pyproj import Transformer
    x, y = flipped.grid.x0 + 100.5 * 30, flipped.grid.y0 - 50.5 * 30
    lon, lat = Transformer.from_crs(flipped.grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
    pt = open_source(src, ReadOptions(track="t", reference=f"{lat},{lon}"))
    assert pt.offset == pytest.approx(float(np.median(rates[48:53, 98:103])) - 22.0, abs=1e-4)
    with pytest.raises(Exception, match="outside"):
        open_source(src, ReadOptions(track="t", reference="0,0"))
    with pytest.raises(Exception, match="median' or LAT,LON"):
        open_source(src, ReadOptions(track="t", reference="stable"))
    out = tmp_path / "m.zarr"
    res = CliRunner().invoke(main, ["ingest", str(src), "--out", str(out), "--track", "t", "--sign", "away", "--reference", "median"])
    assert res.exit_code == 0, res.output
    ds = open_basin(out)
    assert abs(float(np.nanmedian(ds["los_rate"].values))) < 0.5
    import json
    assert json.loads(ds.attrs["corrections"])[str(src)]["sign_flipped"] is True


def test_ingest_warns_about_unknown_geometry_and_a_far_pixel(tmp_path, rates, caplog):
    fine = write_tif(tmp_path / "f.tif", rates, transform=Affine(17.0, 0, 500_000.0, 0, -17.0, 3_000_000.0))
    with caplog.at_level("WARNING"):
        ingest([open_source(fine, ReadOptions(track="t"))], tmp_path / "m.zarr", chunk=128)
    text = caplog.text
    assert "heading and incidence unknown" in text and "--heading and --incidence" in text
    assert "17.0 m" in text and "--reproject --resolution 30" in text and "run resamples every window" in text


def test_ingest_shows_progress(tmp_path, rates):
    src = write_tif(tmp_path / "a.tif", rates)
    res = CliRunner().invoke(main, ["ingest", str(src), "--out", str(tmp_path / "m.zarr"), "--track", "t", "--heading", "-12",
                                    "--incidence", "39"])
    assert res.exit_code == 0, res.output
    assert "ingest: 100%" in res.output and "task" in res.output


def test_an_unreferenced_real_licsbas_product_is_re_referenced(real):
    """The real Campi Flegrei LiCSBAS vel has a −22 mm/yr offset: 87 % of its pixels read
    ≥ 10 mm/yr, which defeats the stable-window skip; its median re-reference fixes that."""
    raw = open_source(CAMPI, ReadOptions(track="desc_124"))
    ref = open_source(CAMPI, ReadOptions(track="desc_124", reference="median"))
    v0, v1 = raw.sample(), ref.sample()
    v0, v1 = v0[np.isfinite(v0)], v1[np.isfinite(v1)]
    assert ref.offset == pytest.approx(-21.9, abs=0.2)
    assert (np.abs(v0) >= 10).mean() > 0.85 and (np.abs(v1) >= 10).mean() < 0.35
