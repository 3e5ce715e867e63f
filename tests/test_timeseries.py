"""Per-slide time series: MintPy and LiCSBAS files written in their real formats with a known
slide signal, the numbers checked; the CLI and the run hook; the real Maoxian PS/SBAS series."""

from __future__ import annotations

import geopandas as gpd
import h5py
import numpy as np
import pandas as pd
import pytest
import shapely
from click.testing import CliRunner

from insar_slide.cli import main
from insar_slide.errors import InputError
from insar_slide.grid import PixelWindow
from insar_slide.timeseries import (
    outer_limits,
    series_for_inventory,
    slide_timeseries,
    timeseries_path,
)
from insar_slide.timeseries_fit import fit_recent, summarize
from insar_slide.timeseries_readers import open_series

from .conftest import REAL

UTM = "EPSG:32648"
X0, Y0, PX = 400_000.0, 3_550_000.0, 30.0  # upper-left corner of the MintPy grid
V0, ACC = -20.0, -10.0  # the slide: mm/yr at the first date, mm/yr²
V2 = 15.0  # a second, neighbouring slide (linear, toward the satellite)
DATES = np.arange(np.datetime64("2018-01-03"), np.datetime64("2021-01-01"), np.timedelta64(12, "D"))
T = (DATES - DATES[0]).astype(float) / 365.25
SIGNAL = V0 * T + ACC * T**2 / 2  # mm
RNG = np.random.default_rng(7)
COMMON = RNG.normal(0, 3, DATES.size)  # a per-date offset of the whole scene (atmosphere, reference drift)
S1 = (slice(20, 40), slice(20, 40))  # rows, cols of slide s1 (600 m square)
S2 = (slice(45, 53), slice(45, 53))  # slide s2, 150 m from s1: inside s1's ring, so it must be left out of it


def _square(rows: slice, cols: slice, *, x0: float = X0, y0: float = Y0, px: float = PX, shrink: float = 0.0):
    return shapely.box(x0 + (cols.start + shrink) * px, y0 - (rows.stop - shrink) * px,
                       x0 + (cols.stop - shrink) * px, y0 - (rows.start + shrink) * px)


@pytest.fixture
def mintpy_ts(tmp_path):
    """``geo_timeseries_ERA5_demErr.h5`` as MintPy writes it: metres, ``date`` as bytes, grid attributes."""
    cube = np.broadcast_to(COMMON[:, None, None], (DATES.size, 60, 60)).copy()
    cube[(slice(None), *S1)] += SIGNAL[:, None, None]
    cube[(slice(None), *S2)] += (V2 * T)[:, None, None]
    cube -= cube[:, 3:4, 3:4]  # referenced to pixel (3, 3), which is then 0 throughout
    cube += np.random.default_rng(1).normal(0, 0.3, cube.shape)  # pixel noise, mm
    cube[:, 3, 3] = 0.0
    cube[:, 0, :] = 0.0  # MintPy's fill of masked pixels: 0 at every date
    cube[:, 25, 20:25] = 0.0  # …some of them inside the slide, which must not pull its mean to 0
    cube[5, 30, 30] = np.nan  # one pixel missing on one date
    return _write_mintpy(tmp_path / "geo_timeseries_ERA5_demErr.h5", cube, DATES)


def _write_mintpy(path, cube, dates):
    with h5py.File(path, "w") as f:
        f.create_dataset("timeseries", data=(cube / 1000.0).astype("float32"), chunks=(dates.size, 20, 20))
        f.create_dataset("date", data=np.array([str(d).replace("-", "").encode() for d in dates]))
        f.create_dataset("bperp", data=np.zeros(dates.size, "float32"))
        f.attrs.update({"FILE_TYPE": "timeseries", "UNIT": "m", "X_FIRST": str(X0), "Y_FIRST": str(Y0),
                        "X_STEP": str(PX), "Y_STEP": str(-PX), "EPSG": "32648", "ORBIT_DIRECTION": "ASCENDING",
                        "trackNumber": "99", "HEADING": "-12.5", "CENTER_INCIDENCE_ANGLE": "39.2",
                        "REF_Y": "3", "REF_X": "3", "REF_DATE": "20180103", "LENGTH": "60", "WIDTH": "60"})
    return path


@pytest.fixture
def inventory():
    return gpd.GeoDataFrame({"slide_id": ["s1", "s2", "far"]},
                            geometry=[_square(*S1), _square(*S2), shapely.box(0, 0, 100, 100)], crs=UTM)


def test_mintpy_reader(mintpy_ts):
    src = open_series(mintpy_ts)
    assert src.product == "mintpy" and src.track.name == "asc_099" and src.grid.crs == "EPSG:32648"
    assert src.dates.dtype == np.dtype("datetime64[D]") and src.dates.size == DATES.size and src.dates[0] == DATES[0]
    block = src.read(PixelWindow(0, 0, 60, 60))
    assert block.shape == (DATES.size, 60, 60) and block.dtype == np.float32
    assert np.isnan(block[:, 0, :]).all() and np.isnan(block[:, 25, 20:25]).all()  # all-zero pixels: no data
    assert (block[:, 3, 3] == 0).all()  # the reference pixel stays
    np.testing.assert_allclose(block[:, 30, 30][np.isfinite(block[:, 30, 30])], SIGNAL[np.arange(DATES.size) != 5], atol=2.0)
    np.testing.assert_array_equal(src.read(PixelWindow(30, 30, 2, 2), slice(10, 12)), block[10:12, 30:32, 30:32])


def test_mintpy_slide_series_and_fit(mintpy_ts, inventory):
    table = slide_timeseries(inventory, [open_series(mintpy_ts)])
    assert set(table["slide_id"]) == {"s1", "s2"}  # 'far' is outside the product: no rows
    assert table.groupby("slide_id").size().tolist() == [DATES.size, DATES.size]
    s1 = table[table["slide_id"] == "s1"]
    assert s1["track"].unique().tolist() == ["asc_099"]
    # 400 pixels, 5 of them masked (all zero), one more missing on date 5
    assert s1["n_inside"].iloc[0] == 395 and s1["n_inside"].iloc[5] == 394
    # inside: the signal (+ the scene offset, which the reference pixel removed); the ring: 0
    np.testing.assert_allclose(s1["displacement_mm"], SIGNAL, atol=0.1)  # 0.3 mm noise over ~400 px: ~0.02 mm
    np.testing.assert_allclose(s1["reference_mm"], 0.0, atol=0.1)  # s2 (moving) is left out of the ring
    np.testing.assert_allclose(s1["relative_mm"], SIGNAL, atol=0.1)
    np.testing.assert_allclose(s1["fastest_mm"], SIGNAL, atol=0.5)  # a uniform slide: its fastest tenth moves alike
    assert s1["n_reference"].min() > 500
    s2 = table[table["slide_id"] == "s2"]
    np.testing.assert_allclose(s2["relative_mm"], V2 * T, atol=0.2)  # its ring leaves s1 out too

    summary = summarize(table).set_index("slide_id")
    r = summary.loc["s1"]
    assert r["series"] == "relative_mm" and r["n_dates"] == DATES.size
    assert r["acceleration_mm_yr2"] == pytest.approx(ACC, abs=0.5)
    assert r["velocity_end_mm_yr"] == pytest.approx(V0 + ACC * T[-1], abs=0.2)  # -49.9 mm/yr at the end
    assert r["total_mm"] == pytest.approx(SIGNAL[-1], abs=0.2)
    # straight line over the last third: the mean speed there, between the speed at its ends
    assert V0 + ACC * T[-1] < r["velocity_recent_mm_yr"] < V0 + ACC * T[-1] * 2 / 3
    assert summary.loc["s2", "velocity_mm_yr"] == pytest.approx(V2, abs=0.1)
    assert summary.loc["s2", "acceleration_mm_yr2"] == pytest.approx(0.0, abs=1.0)


def test_block_reads_ask_only_for_their_dates(mintpy_ts, inventory, monkeypatch):
    """A window larger than MAX_BLOCK values is read in date blocks, the masked (all-zero) pixels
    found block by block: no read asks h5py for more dates than a block; the table is the one
    read in one block."""
    import insar_slide.timeseries as ts
    from insar_slide.timeseries_readers import SeriesRaster

    one = slide_timeseries(inventory, [open_series(mintpy_ts)])
    asked = []
    raw = SeriesRaster._raw

    def spy(self, win, dates):
        out = raw(self, win, dates)
        asked.append(out.size)
        return out

    monkeypatch.setattr(SeriesRaster, "_raw", spy)
    monkeypatch.setattr(ts, "MAX_BLOCK", 16_000)  # 4 to 13 dates a block for the windows of s1 and s2
    blocks = slide_timeseries(inventory, [open_series(mintpy_ts)])
    assert max(asked) <= 16_000 and len(asked) > 2 * DATES.size / 13  # a mask pass and a value pass, in blocks
    pd.testing.assert_frame_equal(blocks, one)
    assert blocks.query("slide_id == 's1'")["n_inside"].iloc[0] == 395  # the masked pixels still left out


def test_fastest_tenth_is_not_chosen_on_its_own_noise():
    """A slide moving uniformly at V0 with 5 mm of noise per pixel and date: the tenth chosen by
    |velocity| over the whole series looks faster than V0 over the recent third too (its noise
    was chosen); chosen on the first half, its recent velocity is V0's."""
    from insar_slide.timeseries import FASTEST_SHARE, _fastest, _mean_count

    vals = V0 * T[:, None] + np.random.default_rng(11).normal(0, 5.0, (DATES.size, 2000))
    fit = fit_recent(DATES, _fastest(vals, DATES))
    assert fit is not None and fit.velocity_recent == pytest.approx(V0, abs=0.6)
    v_all = np.polyfit(T, vals, 1)[0]
    whole = np.argsort(-np.abs(v_all))[: int(FASTEST_SHARE * vals.shape[1])]
    biased = fit_recent(DATES, _mean_count(vals[:, whole])[0])
    assert biased is not None and biased.velocity_recent < V0 - 0.6  # what the whole-series choice reported
    assert biased.velocity_recent < fit.velocity_recent - 0.6
    stable = np.random.default_rng(12).normal(0, 5.0, (DATES.size, 2000))
    assert fit_recent(DATES, _fastest(stable, DATES)).velocity_recent == pytest.approx(0.0, abs=0.6)


def test_scene_offset_is_removed_by_the_ring(tmp_path, inventory):
    """Without a reference pixel the scene's per-date offset stays in the mean inside; the ring
    measures it and the relative series is the slide's own motion."""
    cube = np.broadcast_to(COMMON[:, None, None], (DATES.size, 60, 60)).copy()
    cube[(slice(None), *S1)] += SIGNAL[:, None, None]
    path = tmp_path / "timeseries.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("timeseries", data=(cube / 10.0).astype("float32"))
        f.create_dataset("date", data=np.array([str(d).replace("-", "").encode() for d in DATES]))
        f.attrs.update({"UNIT": "cm", "X_FIRST": str(X0), "Y_FIRST": str(Y0), "X_STEP": str(PX),
                        "Y_STEP": str(-PX), "UTM_ZONE": "48N"})
    s1 = slide_timeseries(inventory, [open_series(path, track="asc_099")]).query("slide_id == 's1'")
    np.testing.assert_allclose(s1["displacement_mm"], SIGNAL + COMMON, atol=1e-3)
    np.testing.assert_allclose(s1["reference_mm"], COMMON, atol=1e-3)
    np.testing.assert_allclose(s1["relative_mm"], SIGNAL, atol=1e-3)


@pytest.fixture
def licsbas_cum(tmp_path):
    """``cum.h5`` as LiCSBAS13_sb_inv.py writes it: mm, ``imdates`` int, corner = centre of pixel (0, 0)."""
    lon0, lat0, step = 103.9, 32.08, 0.0003
    cube = np.zeros((DATES.size, 80, 80), "float32")
    cube[:, 30:50, 30:50] = SIGNAL[:, None, None]
    cube[:, 70:, :] = np.nan  # masked by LiCSBAS15
    folder = tmp_path / "099A_05432_131313" / "TS_GEOCml1"
    folder.mkdir(parents=True)
    path = folder / "cum.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("imdates", data=np.array([int(str(d).replace("-", "")) for d in DATES], "int32"))
        f.create_dataset("cum", data=cube)
        f.create_dataset("vel", data=np.zeros((80, 80), "float32"))
        f.create_dataset("gap", data=np.zeros((DATES.size - 1, 80, 80), "int8"))
        for k, v in (("corner_lat", lat0), ("corner_lon", lon0), ("post_lat", -step), ("post_lon", step)):
            f.create_dataset(k, data=v)
        f.create_dataset("refarea", data="5:10/5:10")
    # the slide in the mosaic CRS (UTM): the moving box shrunk by 1.5 px, reprojected
    box = shapely.box(lon0 + 31 * step, lat0 - 48 * step, lon0 + 48 * step, lat0 - 31 * step)
    inv = gpd.GeoDataFrame({"slide_id": ["L1"]}, geometry=[box], crs="EPSG:4326").to_crs(UTM)
    return path, inv


def test_licsbas_cum_reprojected_inventory(licsbas_cum):
    path, inv = licsbas_cum
    src = open_series(path)
    assert src.product == "licsbas" and src.track.name == "asc_099" and src.grid.crs == "EPSG:4326"
    assert src.grid.x0 == pytest.approx(103.9 - 0.00015) and src.grid.y0 == pytest.approx(32.08 + 0.00015)
    table = slide_timeseries(inv, [src])
    assert 250 < table["n_inside"].iloc[0] < 300  # 17 x 17 px centres
    np.testing.assert_allclose(table["displacement_mm"], SIGNAL, atol=1e-4)
    np.testing.assert_allclose(table["reference_mm"], 0.0, atol=1e-6)  # no motion in the ring
    fit = fit_recent(DATES, table["relative_mm"].to_numpy())
    assert fit is not None and fit.acceleration == pytest.approx(ACC, abs=1e-3)


E0, N0 = 4_300_000.0, 2_500_000.0  # EGMS fixture: the slide's lower-left corner, EPSG:3035
EGMS_L2 = ["pid", "mp_type", "latitude", "longitude", "easting", "northing", "height", "height_wgs84", "line", "pixel",
           "rmse", "temporal_coherence", "amplitude_dispersion", "incidence_angle", "track_angle", "los_east",
           "los_north", "los_up", "mean_velocity", "mean_velocity_std", "acceleration", "acceleration_std",
           "seasonality", "seasonality_std"]


@pytest.fixture
def egms_l2b(tmp_path):
    """An EGMS L2b CSV (documented columns, then one column per date, mm): 12 points inside the
    slide move at -12 mm/yr, the 20 of its ring do not, 3 far away; coordinates in EPSG:3035."""
    dates = DATES[::3]
    t = (dates - dates[0]).astype(float) / 365.25
    rng = np.random.default_rng(3)
    inside = [(E0 + rng.uniform(20, 280), N0 + rng.uniform(20, 280)) for _ in range(12)]
    ring = [(E0 + 300 + rng.uniform(100, 400), N0 + rng.uniform(0, 300)) for _ in range(20)]
    far = [(E0 + 5000, N0 + 5000), (E0 - 3000, N0 + 100), (E0 + 150, N0 - 2000)]
    lines = [",".join([*EGMS_L2, *[str(d).replace("-", "") for d in dates]])]
    for k, (e, n) in enumerate(inside + ring + far):
        v = -12.0 if k < len(inside) else 0.0
        series = v * t + rng.normal(0, 0.5, t.size)
        row = [f"P{k}", "PS", "45.0", "10.0", f"{e:.2f}", f"{n:.2f}", "500", "540", "1", "1", "1.0", "0.9", "0.2",
               "38.5", "-10.2", "-0.6", "-0.1", "0.78", f"{v:.2f}", "0.5", "0", "0", "0", "0", *[f"{x:.2f}" for x in series]]
        lines.append(",".join(row))
    path = tmp_path / "EGMS_L2b_088_0297_IW2_VV_2018_2022_1.csv"
    path.write_text("\n".join(lines) + "\n")
    inv = gpd.GeoDataFrame({"slide_id": ["E1"]}, geometry=[shapely.box(E0, N0, E0 + 300, N0 + 300)], crs="EPSG:3035")
    return path, inv


def test_egms_l2b_points(egms_l2b):
    path, inv = egms_l2b
    table = slide_timeseries(inv, [open_series(path)])
    assert table["track"].unique().tolist() == ["asc_088"] and table["product"].iloc[0] == "egms_l2b"
    assert (table["n_inside"] == 12).all() and (table["n_reference"] == 20).all()
    r = summarize(table).iloc[0]
    assert r["series"] == "relative_mm" and r["velocity_mm_yr"] == pytest.approx(-12.0, abs=0.5)
    assert r["acceleration_mm_yr2"] == pytest.approx(0.0, abs=3 * r["acceleration_std"] + 1)
    np.testing.assert_allclose(table["reference_mm"], 0.0, atol=0.5)


def test_points_read_only_around_the_slides(egms_l2b, monkeypatch):
    """A point series is streamed, keeping only the points in the rings' bounding boxes (here
    given in UTM: reprojected to the file's EPSG:3035); the table is the one from every point."""
    import insar_slide.points as points

    path, inv = egms_l2b
    whole = open_series(path)
    assert len(whole) == 35
    monkeypatch.setattr(points, "CHUNK_ROWS", 7)  # several chunks
    near = open_series(path, within=outer_limits(inv.to_crs("EPSG:32632")))
    assert len(near) == 32 and near.displacement.shape == (32, whole.dates.size)  # the 3 far points are not kept
    assert near.track == whole.track and near.crs == "EPSG:3035"
    far = np.isin(whole.x, [E0 + 5000, E0 - 3000, E0 + 150])
    np.testing.assert_array_equal(np.sort(near.x), np.sort(whole.x[~far]))
    pd.testing.assert_frame_equal(slide_timeseries(inv, [near]), slide_timeseries(inv, [whole]))
    table, _, meta = series_for_inventory(inv, [path])  # what the CLI and run use
    pd.testing.assert_frame_equal(table, slide_timeseries(inv, [whole]))
    assert meta["units"] == "mm, positive toward the satellite"
    geo = open_series(path, crs="EPSG:4326", within=outer_limits(inv))
    assert len(geo) == 32 and geo.crs == "EPSG:4326" and (np.abs(geo.y - 45) < 20).all()


def test_egms_l3_units_are_up(tmp_path):
    """An EGMS L3 vertical series: the table metadata says + up, not toward the satellite."""
    dates = DATES[::6]
    lines = [",".join(["pid", "easting", "northing", "height", "rmse", "mean_velocity", "mean_velocity_std", "acceleration",
                       "acceleration_std", "seasonality", "seasonality_std", *[str(d).replace("-", "") for d in dates]])]
    for k, (e, n) in enumerate([(E0 + 50 + 100 * i, N0 + 50 + 100 * j) for i in range(-4, 8) for j in range(-4, 8)]):
        v = -8.0 if E0 < e < E0 + 300 and N0 < n < N0 + 300 else 0.0
        lines.append(",".join([f"L{k}", f"{e}", f"{n}", "500", "1", f"{v}", "0.5", "0", "0", "0", "0",
                               *[f"{v * (d - dates[0]).astype(float) / 365.25:.2f}" for d in dates]]))
    path = tmp_path / "EGMS_L3_E43N25_100km_U_2018_2022_1.csv"
    path.write_text("\n".join(lines) + "\n")
    inv = gpd.GeoDataFrame({"slide_id": ["U1"]}, geometry=[shapely.box(E0, N0, E0 + 300, N0 + 300)], crs="EPSG:3035")
    table, summary, meta = series_for_inventory(inv, [path])
    assert table["track"].unique().tolist() == ["vertical"] and meta["units"] == "mm, positive up"
    assert summary["velocity_mm_yr"].iloc[0] == pytest.approx(-8.0, abs=0.1)


def test_fit_recent_span_and_noise():
    rng = np.random.default_rng(0)
    y = SIGNAL + rng.normal(0, 1.0, DATES.size)
    fit = fit_recent(DATES, y)
    assert fit is not None
    assert fit.start >= DATES[-1] - np.timedelta64(366, "D") and fit.n == int((T >= T[-1] * 2 / 3).sum())
    assert abs(fit.acceleration - ACC) < 3 * fit.acceleration_std  # recovered within its error
    assert abs(fit.velocity_end - (V0 + ACC * T[-1])) < 3 * fit.velocity_end_std
    short = fit_recent(DATES, y, recent_days=30)
    assert short is not None and short.n == 6  # extended back to six dates
    assert fit_recent(DATES[:4], y[:4]) is None


def test_open_series_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_series(tmp_path / "nope.h5")
    p = tmp_path / "velocity.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("velocity", data=np.zeros((3, 3), "float32"))
    with pytest.raises(InputError, match="no 'timeseries'"):
        open_series(p)
    radar = tmp_path / "timeseries.h5"
    with h5py.File(radar, "w") as f:
        f.create_dataset("timeseries", data=np.zeros((2, 3, 3), "float32"))
        f.create_dataset("date", data=np.array([b"20200101", b"20200113"]))
    with pytest.raises(InputError, match="not geocoded"):
        open_series(radar)


def test_cli_timeseries(tmp_path, mintpy_ts, inventory):
    inv_path = tmp_path / "inv.parquet"
    inventory.to_parquet(inv_path)
    res = CliRunner().invoke(main, ["timeseries", str(inv_path), str(mintpy_ts), "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert "2 of 3 slides" in res.output
    table = pd.read_parquet(tmp_path / "inv.timeseries.parquet")
    assert list(table.columns[:4]) == ["slide_id", "track", "date", "displacement_mm"]
    assert not table.duplicated(["slide_id", "date", "track"]).any()
    summary = pd.read_parquet(tmp_path / "inv.timeseries_summary.parquet").set_index("slide_id")
    assert summary.loc["s1", "acceleration_mm_yr2"] == pytest.approx(ACC, abs=0.5)
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["s1.png", "s2.png"] and (tmp_path / "plots" / "s1.png").stat().st_size > 20_000
    again = CliRunner().invoke(main, ["timeseries", str(inv_path), str(mintpy_ts)])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = CliRunner().invoke(main, ["timeseries", str(inv_path), str(mintpy_ts), str(mintpy_ts),
                                    "--track", "a", "--track", "b", "--track", "c", "--overwrite"])
    assert bad.exit_code == 2 and "--track given 3 times for 2 series" in bad.output
    away = gpd.GeoDataFrame({"slide_id": ["x"]}, geometry=[shapely.box(0, 0, 50, 50)], crs=UTM)
    away.to_parquet(tmp_path / "away.parquet")
    none = CliRunner().invoke(main, ["timeseries", str(tmp_path / "away.parquet"), str(mintpy_ts)])
    assert none.exit_code == 1 and "none of the 1 slides" in none.output
    assert not (tmp_path / "away.timeseries.parquet").exists()


def test_cli_few_dates_and_plot_options(tmp_path, inventory):
    """Five dates: no recent fit (NaT), yet the command prints its table and draws its plots;
    plots already there are refused without --overwrite, in one line naming the flag."""
    cube = np.zeros((5, 60, 60))
    cube[(slice(None), *S1)] = SIGNAL[:5, None, None]
    cube[(slice(None), *S2)] = (V2 * T[:5])[:, None, None]
    path = _write_mintpy(tmp_path / "geo_timeseries.h5", cube, DATES[:5])
    inv_path = tmp_path / "inv.parquet"
    inventory.to_parquet(inv_path)
    plots = tmp_path / "plots"
    res = CliRunner().invoke(main, ["timeseries", str(inv_path), str(path), "--plots", str(plots), "--gap", "90"])
    assert res.exit_code == 0, res.output
    assert "too few dates for a recent fit" in res.output and "2 plot(s)" in res.output
    assert pd.read_parquet(tmp_path / "inv.timeseries_summary.parquet")["recent_start"].isna().all()
    assert sorted(p.name for p in plots.iterdir()) == ["s1.png", "s2.png"]
    (tmp_path / "inv.timeseries.parquet").unlink()
    again = CliRunner().invoke(main, ["timeseries", str(inv_path), str(path), "--plots", str(plots)])
    assert again.exit_code == 1 and "pass --overwrite" in again.output and len(again.output.strip().splitlines()) == 1
    assert not (tmp_path / "inv.timeseries.parquet").exists()  # refused before any work
    ok = CliRunner().invoke(main, ["timeseries", str(inv_path), str(path), "--plots", str(plots), "--overwrite"])
    assert ok.exit_code == 0, ok.output


def test_plot_legend_names_the_ring_and_share(mintpy_ts, inventory):
    from matplotlib.figure import Figure

    from insar_slide.timeseries_plot import _panel

    table = slide_timeseries(inventory, [open_series(mintpy_ts)], gap_m=90, width_m=300).query("slide_id == 's1'")
    ax = Figure().subplots()
    _panel(ax, table, {}, (90.0, 390.0))
    labels = ax.get_legend_handles_labels()[1]
    assert any("stable ring 90–390 m" in x for x in labels) and any("fastest 10% inside (40 px" in x for x in labels)


def test_table_and_summary_land_together(tmp_path, mintpy_ts, inventory, monkeypatch):
    """A failure while writing the summary leaves neither file (both go to temporaries first)."""
    import pyarrow.parquet as pq

    from insar_slide.timeseries import write_timeseries

    table, summary, meta = series_for_inventory(inventory, [mintpy_ts])
    real = pq.write_table
    calls = []

    def fail_second(arrow, where, **kw):
        calls.append(where)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(arrow, where, **kw)

    monkeypatch.setattr(pq, "write_table", fail_second)
    with pytest.raises(OSError, match="No space"):
        write_timeseries(table, tmp_path / "x.timeseries.parquet", summary=summary, metadata=meta)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("x")) == []
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # temporaries cleaned up
    monkeypatch.setattr(pq, "write_table", real)
    written = write_timeseries(table, tmp_path / "x.timeseries.parquet", summary=summary, metadata=meta)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["x.timeseries.parquet", "x.timeseries_summary.parquet"]


def test_run_writes_the_series_beside_the_inventory(tmp_path, mintpy_ts, inventory):
    from insar_slide.grid import Grid
    from insar_slide.run.config import load_run_config
    from insar_slide.run.outputs import write_extras

    (tmp_path / "basin.yaml").write_text(
        f"mosaic: basin.zarr\nout: out/inventory.parquet\noutputs: {{geopackage: false, kml: false, slide_id_raster: false, "
        f"quicklook: false, report: false, timeseries: [{mintpy_ts.name}]}}\n")
    cfg = load_run_config(tmp_path / "basin.yaml")
    assert cfg.outputs.timeseries == [str(mintpy_ts)]  # relative to the config's folder
    grid = Grid(UTM, X0, Y0, PX, -PX, 60, 60)
    written = write_extras(inventory, cfg, ds=None, grid=grid)
    out = tmp_path / "out"
    assert written == {"timeseries": str(out / "inventory.timeseries.parquet"),
                       "timeseries_plots": str(out / "inventory.timeseries")}
    assert timeseries_path(cfg.out) == out / "inventory.timeseries.parquet"
    assert (out / "inventory.timeseries_summary.parquet").exists()
    # a plot per slide with measurements ('far' has none), in a folder a rerun replaces whole
    assert sorted(p.name for p in (out / "inventory.timeseries").iterdir()) == ["s1.png", "s2.png"]
    write_extras(inventory[inventory["slide_id"] != "s2"], cfg, ds=None, grid=grid)
    assert sorted(p.name for p in (out / "inventory.timeseries").iterdir()) == ["s1.png"]


MAOXIAN = REAL / "maoxian_stamps_points"


@pytest.fixture
def maoxian():
    if not (MAOXIAN / "Maoxian_PS.csv").exists():
        pytest.skip(f"{MAOXIAN} is missing")
    inv = gpd.read_file(MAOXIAN / "Maoxian_polygon.geojson")
    sources = [open_series(MAOXIAN / "Maoxian_PS.csv", track="asc_PS"),
               open_series(MAOXIAN / "Maoxian_SBAS.csv", track="asc_SBAS")]
    table = slide_timeseries(inv, sources)
    return table, summarize(table).set_index("track")


def test_maoxian_pre_failure_series(maoxian):
    """The real Sentinel-1 PS and SBAS series over the Maoxian slide, which failed on 2017-06-24."""
    table, summary = maoxian
    assert table.groupby("track").size().to_dict() == {"asc_PS": 41, "asc_SBAS": 38}
    assert table["date"].max() == pd.Timestamp("2017-06-18") and table["date"].min() == pd.Timestamp("2014-11-25")
    ps, sbas = summary.loc["asc_PS"], summary.loc["asc_SBAS"]
    assert ps["n_inside"] == 74 and sbas["n_inside"] == 597
    # the outline (source area and runout path, 1.5 km²) as a whole: a few mm/yr away from the satellite
    assert -15 < ps["total_mm"] < -8 and -6 < ps["velocity_mm_yr"] < -2
    # its moving part, the fastest tenth of the PS (8 PS, chosen on the first half of the dates):
    # ~5 cm away from the satellite in 2.6 years (-53 mm, -21 mm/yr)…
    assert -60 < ps["fastest_total_mm"] < -45 and -26 < ps["fastest_velocity_mm_yr"] < -18
    # …and faster over the last ten months before the failure than on average (-28 mm/yr), on
    # dates that played no part in choosing them
    assert ps["fastest_velocity_recent_mm_yr"] < ps["fastest_velocity_mm_yr"] - 5
    assert ps["fastest_velocity_recent_mm_yr"] < -25
    # SBAS's fastest tenth by |velocity| over the first half are 60 pixels moving toward the satellite
    # (+7 mm/yr over the whole series, +3 mm/yr recently): not the slide's precursor; chosen on the
    # whole series (the pixels its own noise made fast) they had shown -12 and -24 mm/yr
    assert 0 < sbas["fastest_velocity_mm_yr"] < 12 and -5 < sbas["fastest_velocity_recent_mm_yr"] < 8
    # the ring holds only a few points (the data were cropped around the slide)
    assert table.groupby("track")["n_reference"].max().to_dict() == {"asc_PS": 12, "asc_SBAS": 7}


def test_maoxian_figure(maoxian, tmp_path):
    from insar_slide.timeseries_plot import plot_slide

    table, _ = maoxian
    out = plot_slide(table, tmp_path / "maoxian.png", events=[("2017-06-24", "failure 2017-06-24")],
                     title="Maoxian (Xinmo) landslide, Sichuan: Sentinel-1 ascending PS and SBAS (SNAP-StaMPS) "
                           "before its failure on 2017-06-24")
    from PIL import Image
    with Image.open(out) as im:
        assert im.size[0] > 1400 and im.size[1] > 900
