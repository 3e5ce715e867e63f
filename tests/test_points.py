"""Point products: EGMS L2a/L2b/L3 and StaMPS CSVs recognised, read, gridded and ingested."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from pyproj import Transformer

from insar_slide import open_basin
from insar_slide.cli import main
from insar_slide.errors import InputError
from insar_slide.grid import PixelWindow
from insar_slide.ingest import ingest
from insar_slide.pointgrid import DEFAULT_CELL_M, PointSource, cell_median, grid_points
from insar_slide.points import iter_point_chunks, read_points, sniff
from insar_slide.readers import ReadOptions, open_source

from .conftest import REAL, need_real

MAOXIAN = REAL / "maoxian_stamps_points"
# The EGMS Product Description's attribute tables (L2a/L2b, then L3), then one column per date.
L2_COLUMNS = ["pid", "mp_type", "latitude", "longitude", "easting", "northing", "height", "height_wgs84", "line",
              "pixel", "rmse", "temporal_coherence", "amplitude_dispersion", "incidence_angle", "track_angle",
              "los_east", "los_north", "los_up", "mean_velocity", "mean_velocity_std", "acceleration",
              "acceleration_std", "seasonality", "seasonality_std"]
L3_COLUMNS = ["pid", "easting", "northing", "height", "rmse", "mean_velocity", "mean_velocity_std", "acceleration",
              "acceleration_std", "seasonality", "seasonality_std"]
DATES = ["20180104", "20180116", "20180209", "20180305", "20180410", "20180522", "20181230"]
L2A = "EGMS_L2a_088_0297_IW2_VV_2018_2022_1.csv"
X0, Y0 = 4_041_000.0, 2_810_010.0  # EPSG:3035 (north-east France), on the 30 m lattice


def _years() -> np.ndarray:
    d = pd.to_datetime(DATES, format="%Y%m%d")
    return np.asarray((d - d[0]).days / 365.25)


def write_l2(path: Path, e, n, v, *, coherence=None, std=None, track_angle: float = -12.5,
             incidence=None) -> Path:
    """An EGMS L2a/L2b CSV in the documented layout: EPSG:3035 easting/northing, LOS mm/yr, dates."""
    e, n, v = (np.asarray(a, dtype="float64") for a in (e, n, v))
    k = e.size
    lon, lat = Transformer.from_crs("EPSG:3035", "EPSG:4326", always_xy=True).transform(e, n)
    df = pd.DataFrame({
        "pid": [f"0x{i:08x}" for i in range(k)], "mp_type": "PS", "latitude": lat, "longitude": lon, "easting": e,
        "northing": n, "height": 300.0, "height_wgs84": 348.0, "line": 100, "pixel": 200, "rmse": 1.1,
        "temporal_coherence": 0.8 if coherence is None else coherence, "amplitude_dispersion": 0.2,
        "incidence_angle": np.linspace(36, 40, k) if incidence is None else incidence, "track_angle": track_angle,
        "los_east": -0.6, "los_north": -0.1, "los_up": 0.78, "mean_velocity": v,
        "mean_velocity_std": 0.5 if std is None else std, "acceleration": 0.0, "acceleration_std": 0.1,
        "seasonality": 1.0, "seasonality_std": 0.2,
    })
    disp = np.round(v[:, None] * _years()[None, :], 2)
    df = pd.concat([df, pd.DataFrame(disp, columns=DATES)], axis=1)
    assert list(df.columns[:len(L2_COLUMNS)]) == L2_COLUMNS
    df.to_csv(path, index=False)
    return path


def write_l3(path: Path, e, n, v) -> Path:
    e, n, v = (np.asarray(a, dtype="float64") for a in (e, n, v))
    df = pd.DataFrame({"pid": [f"E32N34_{i}" for i in range(e.size)], "easting": e, "northing": n, "height": 300.0,
                       "rmse": 0.9, "mean_velocity": v, "mean_velocity_std": 0.3, "acceleration": 0.0,
                       "acceleration_std": 0.1, "seasonality": 0.5, "seasonality_std": 0.1})
    df = pd.concat([df, pd.DataFrame(np.round(v[:, None] * _years()[None, :], 2), columns=DATES)], axis=1)
    assert list(df.columns[:len(L3_COLUMNS)]) == L3_COLUMNS
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def scatter() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """48 points over 600 × 300 m with a slide-like patch of -25 mm/yr in the east."""
    rng = np.random.default_rng(20)
    e = X0 + rng.uniform(0, 600, 48)
    n = Y0 - rng.uniform(0, 300, 48)
    v = rng.normal(0, 1.5, 48).round(2)
    v[(e > X0 + 400) & (n < Y0 - 100)] = -25.0
    return e, n, v


@pytest.fixture
def maoxian() -> Path:
    need_real()
    if not MAOXIAN.is_dir():
        pytest.skip(f"{MAOXIAN} is missing")
    return MAOXIAN


# ---------------------------------------------------------------------------- recognising and reading

def test_the_header_decides_the_format_not_the_name(tmp_path, scatter, maoxian):
    l2 = write_l2(tmp_path / L2A, *scatter)
    assert sniff(l2).product == "egms_l2a" and sniff(l2).crs == "EPSG:3035"
    l2b = shutil.copy(l2, tmp_path / "EGMS_L2b_088_0297_IW2_VV_2018_2022_1.csv")
    assert sniff(l2b).product == "egms_l2b"
    renamed = shutil.copy(l2, tmp_path / "points.csv")
    assert sniff(renamed).product == "egms_l2a"
    assert read_points(renamed).track.name == "asc"  # no track number in the name: the direction alone
    l3 = write_l3(tmp_path / "EGMS_L3_E32N34_100km_U_2018_2022_1.csv", *scatter)
    assert (sniff(l3).product, sniff(l3).component) == ("egms_l3", "vertical")
    stamps = sniff(maoxian / "Maoxian_PS.csv")
    assert stamps.product == "stamps" and stamps.crs == "EPSG:4326"
    assert str(stamps.dates[0]) == "2014-11-25" and str(stamps.dates[-1]) == "2017-06-18"


def test_read_egms_l2a(tmp_path, scatter):
    e, n, v = scatter
    t = read_points(write_l2(tmp_path / L2A, e, n, v, incidence=np.r_[np.full(47, 38.0), 44.0]))
    assert (t.product, t.crs, len(t)) == ("egms_l2a", "EPSG:3035", 48)
    np.testing.assert_allclose(t.x, e)
    np.testing.assert_allclose(t.velocity, v, atol=1e-5)
    assert t.velocity.dtype == np.float32 and t.coherence is not None and t.velocity_std is not None
    assert t.dates.dtype == np.dtype("datetime64[D]") and t.dates.size == len(DATES)
    assert t.displacement.shape == (48, len(DATES))
    np.testing.assert_allclose(t.displacement[:, -1], np.round(v * _years()[-1], 2), atol=1e-4)
    assert t.track.name == "asc_088"  # relative orbit from the name, direction from track_angle
    assert t.track.heading == pytest.approx(-12.5) and t.track.incidence == pytest.approx(38.0)  # the median
    assert (t.track.start_date, t.track.end_date) == ("20180104", "20181230")
    ll = read_points(tmp_path / L2A, crs="EPSG:4326")
    src = pd.read_csv(tmp_path / L2A)
    np.testing.assert_allclose(ll.x, src["longitude"], atol=1e-9)
    np.testing.assert_allclose(ll.y, src["latitude"], atol=1e-9)


def test_a_descending_track_angle_names_a_descending_track(tmp_path, scatter):
    t = read_points(write_l2(tmp_path / L2A, *scatter, track_angle=-167.0))
    assert t.track.name == "desc_088" and t.track.heading == pytest.approx(-167.0)


def test_read_real_stamps_exports(maoxian):
    for name, n, m in (("Maoxian_PS.csv", 97, 41), ("Maoxian_SBAS.csv", 608, 38)):
        t = read_points(maoxian / name, track="asc_128")
        assert (t.product, t.crs, len(t), t.dates.size, t.displacement.shape) == ("stamps", "EPSG:4326", n, m, (n, m))
        assert t.track.name == "asc_128" and math.isnan(t.track.heading)
        assert -28.6 <= t.velocity.min() < -25 and t.velocity.max() < 10  # SOURCE.txt: -28.5 .. +6 (SBAS: 9.7)
        assert 103.6 < t.x.min() < t.x.max() < 103.7 and 32.0 < t.y.min() < t.y.max() < 32.1
        assert t.velocity_std is None and t.coherence is None


def test_velocities_are_read_without_the_series_in_chunks(tmp_path, scatter, monkeypatch):
    path = write_l2(tmp_path / L2A, *scatter)
    chunks = list(iter_point_chunks(sniff(path), rows=10))
    assert [c.x.size for c in chunks] == [10, 10, 10, 10, 8]
    assert all(c.displacement is None for c in chunks)
    whole, _ = grid_points(path)
    monkeypatch.setattr("insar_slide.points.CHUNK_ROWS", 7)
    chunked, _ = grid_points(path)
    np.testing.assert_array_equal(whole.velocity, chunked.velocity)
    np.testing.assert_array_equal(whole.count, chunked.count)


@pytest.mark.parametrize("text", ["a,b,c\n1,2,3\n", "", "pid,easting,northing\n1,2,3\n"])
def test_a_csv_that_is_no_point_product_is_one_clear_line(tmp_path, text):
    bad = tmp_path / "table.csv"
    bad.write_text(text)
    with pytest.raises(InputError) as exc:
        open_source(bad)
    msg = str(exc.value)
    assert "\n" not in msg and "expected an EGMS L2a/L2b CSV" in msg and "mean_velocity" in msg and "StaMPS" in msg


# ---------------------------------------------------------------------------- gridding

def test_cell_median():
    flat = np.array([0, 0, 0, 2, 2, 3, 3])
    vals = np.array([3.0, 1.0, 2.0, -4.0, -6.0, np.nan, 5.0])
    out = cell_median(flat, vals, (2, 2))
    np.testing.assert_array_equal(out, np.array([[2.0, np.nan], [-5.0, 5.0]], dtype="float32"))


def test_grid_median_count_and_lattice(tmp_path):
    # cell A (row 0, col 0): 3 points; cell B (row 0, col 1): 2 points; cell C (row 2, col 0): 1; one NaN point
    e = np.array([5, 12, 29, 35, 50, 7, 20]) + X0
    n = Y0 - np.array([3, 10, 25, 5, 29, 75, 80])
    v = np.array([-10, -20, -30, -4, -6, 7, np.nan])
    coh = np.array([0.5, 0.9, 0.7, 0.6, 0.8, 0.4, 0.3])
    std = np.array([1, 3, 2, 1, 2, 4, 5])
    path = write_l2(tmp_path / L2A, e, n, v, coherence=coh, std=std)
    cells, track = grid_points(path)
    g = cells.grid
    assert (g.dx, g.x0 % 30, g.y0 % 30, g.shape, g.crs) == (30.0, 0.0, 0.0, (3, 2), "EPSG:3035")
    assert (g.x0, g.y0) == (X0, Y0)  # cell edges on whole multiples of 30 m
    np.testing.assert_array_equal(cells.count, [[3, 2], [0, 0], [1, 0]])
    np.testing.assert_array_equal(cells.velocity, np.array([[-20, -5], [np.nan, np.nan], [7, np.nan]], dtype="float32"))
    np.testing.assert_allclose(cells.coherence, [[0.7, 0.7], [np.nan, np.nan], [0.4, np.nan]], rtol=1e-6)
    np.testing.assert_allclose(cells.velocity_std, [[2, 1.5], [np.nan, np.nan], [4, np.nan]], rtol=1e-6)
    assert cells.n_points == 6 and track.name == "asc_088"
    src = open_source(path)
    assert src.layer_names == ("coherence", "velocity_std", "point_count")
    np.testing.assert_array_equal(src.read_layer("point_count", PixelWindow(0, 0, 3, 2)), cells.count)
    np.testing.assert_allclose(src.read_layer("coherence", PixelWindow(2, 0, 1, 2)), [[0.4, np.nan]], rtol=1e-6)
    assert np.isnan(src.read_layer("dem", PixelWindow(0, 0, 3, 2))).all()
    assert "6 points → 3 cells of 30 m" in cells.describe()


def test_the_default_cell_is_the_models_training_pixel():
    from insar_slide.model.checkpoint import read_metadata, training_pixel_m
    from insar_slide.run.config import default_model

    if not default_model().is_file():
        pytest.skip("no reference model here")
    assert DEFAULT_CELL_M == training_pixel_m(read_metadata(default_model()))


def test_two_tiles_of_one_track_mosaic_seamlessly(tmp_path, scatter):
    e, n, v = scatter
    west = e < X0 + 300  # a cell edge: no cell holds points of both files
    a = write_l2(tmp_path / L2A, e[west], n[west], v[west])
    b = write_l2(tmp_path / L2A.replace("0297", "0298"), e[~west], n[~west], v[~west])
    (tmp_path / "all").mkdir()
    both = write_l2(tmp_path / "all" / L2A, e, n, v)
    srcs = [open_source(p) for p in (a, b)]
    assert [s.track.name for s in srcs] == ["asc_088", "asc_088"]
    out = ingest(srcs, tmp_path / "m.zarr")
    ds = open_basin(out)
    assert list(ds.track.values) == ["asc_088"]
    union, _ = grid_points(both)
    assert ds.los_rate.rio.transform() == union.grid.transform and ds.los_rate.shape[1:] == union.grid.shape
    np.testing.assert_array_equal(ds.los_rate.isel(track=0).values, union.velocity)


def test_grid_in_another_crs(maoxian):
    cells, _ = grid_points(maoxian / "Maoxian_PS.csv", cell_size=50, crs="EPSG:3035", track="asc_128")
    assert cells.grid.crs == "EPSG:3035" and cells.grid.x0 % 50 == 0 and cells.grid.y0 % 50 == 0
    assert cells.count.sum() == 97
    with pytest.raises(InputError, match="--cell-size in degrees"):
        grid_points(maoxian / "Maoxian_PS.csv", crs="EPSG:4326", track="asc_128")
    with pytest.raises(InputError, match="not a CRS pyproj knows"):
        grid_points(maoxian / "Maoxian_PS.csv", crs="EPSG:99999", track="asc_128")


# ---------------------------------------------------------------------------- EGMS L3

def test_l3_up_and_east_become_two_tracks_of_one_mosaic(tmp_path):
    ee, nn = np.meshgrid(3_200_050 + 100 * np.arange(6), 3_400_050 + 100 * np.arange(5))
    e, n = ee.ravel(), nn.ravel()
    keep = np.ones(e.size, bool)
    keep[[3, 17]] = False  # two empty cells
    up, east = -0.5 * np.arange(e.size), 0.25 * np.arange(e.size)
    u = write_l3(tmp_path / "EGMS_L3_E32N34_100km_U_2018_2022_1.csv", e[keep], n[keep], up[keep])
    w = write_l3(tmp_path / "EGMS_L3_E32N34_100km_E_2018_2022_1.csv", e[keep], n[keep], east[keep])
    srcs = [open_source(u), open_source(w)]
    assert all(isinstance(s, PointSource) for s in srcs)
    assert [(s.track.name, s.component) for s in srcs] == [("vertical", "vertical"), ("east_west", "east_west")]
    ds = open_basin(ingest(srcs, tmp_path / "l3.zarr"))
    assert list(ds.track.values) == ["vertical", "east_west"]
    assert json.loads(ds.attrs["components"]) == {"vertical": "vertical", "east_west": "east_west"}
    assert int(ds["point_count"].sum()) == 2 * int(keep.sum())  # one L3 point per filled cell, per component
    assert np.isnan(ds.heading.values).all() and np.isnan(ds.incidence.values).all()
    assert ds.los_rate.rio.transform().c == 3_200_000 and ds.los_rate.shape == (2, 5, 6)  # one L3 point per 100 m cell
    for k, vals in enumerate((up, east)):
        got = np.array([float(ds.los_rate.isel(track=k).sel(x=x, y=y).values) for x, y in zip(e, n, strict=True)])
        np.testing.assert_allclose(got[keep], vals[keep], atol=1e-5)
        assert np.isnan(got[~keep]).all()


def test_l3_without_a_component_in_its_name_needs_track(tmp_path):
    path = write_l3(tmp_path / "ortho.csv", [3_200_050.0], [3_400_050.0], [1.0])
    with pytest.raises(InputError, match="--track vertical or --track east_west"):
        open_source(path)
    assert open_source(path, ReadOptions(track="vertical")).track.name == "vertical"


# ---------------------------------------------------------------------------- the CLI

def test_cli_ingest_egms(tmp_path, scatter):
    path = write_l2(tmp_path / L2A, *scatter)
    out = tmp_path / "egms.zarr"
    res = CliRunner().invoke(main, ["ingest", str(path), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "48 points → " in res.output and "cells of 30 m" in res.output
    ds = open_basin(out)
    assert list(ds.track.values) == ["asc_088"] and ds.heading.values[0] == pytest.approx(-12.5)
    assert ds.los_rate.rio.crs.to_epsg() == 3035 and abs(ds.los_rate.rio.transform().a) == 30
    rate = ds.los_rate.isel(track=0).values
    assert np.isfinite(rate).sum() == len(np.unique(np.c_[(scatter[0] // 30), (scatter[1] // 30)], axis=0))
    assert np.nanmin(rate) == -25.0
    if "coherence" in ds:  # the quality layers, once ingest writes them
        assert np.nanmax(ds.coherence.values) == pytest.approx(0.8)
    res = CliRunner().invoke(main, ["ingest", str(path), "--out", str(tmp_path / "utm.zarr"), "--no-progress",
                                    "--cell-size", "60", "--grid-crs", "EPSG:32631"])
    assert res.exit_code == 0, res.output
    ds = open_basin(tmp_path / "utm.zarr")
    assert ds.los_rate.rio.crs.to_epsg() == 32631 and ds.los_rate.rio.transform().a == 60
    assert ds.los_rate.rio.transform().c % 60 == 0 and np.nanmin(ds.los_rate.values) == -25.0


def test_cli_a_bad_csv_is_one_line_and_no_store(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    res = CliRunner().invoke(main, ["ingest", str(bad), "--out", str(tmp_path / "x.zarr")])
    assert res.exit_code == 1 and "expected an EGMS L2a/L2b CSV" in res.output
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("name,cells", [("Maoxian_PS.csv", 64), ("Maoxian_SBAS.csv", 129)])
def test_cli_ingest_real_stamps(tmp_path, maoxian, name, cells):
    out = tmp_path / "maoxian.zarr"
    res = CliRunner().invoke(main, ["ingest", str(maoxian / name), "--out", str(out), "--track", "asc_128",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"→ {cells} cells of 30 m" in res.output
    ds = open_basin(out)
    assert ds.los_rate.rio.crs.to_epsg() == 32648  # the UTM zone of 103.66 E
    t = read_points(maoxian / name, crs="EPSG:32648")
    tr = ds.los_rate.rio.transform()
    rows = np.floor((t.y - tr.f) / tr.e).astype(int)
    cols = np.floor((t.x - tr.c) / tr.a).astype(int)
    rate = ds.los_rate.isel(track=0).values
    assert np.isfinite(rate[rows, cols]).all()  # a value wherever there is a point
    assert np.isfinite(rate).sum() == cells  # and nowhere else
    assert t.velocity.min() <= np.nanmin(rate) < -20 and np.nanmax(rate) <= t.velocity.max()  # medians of the points
