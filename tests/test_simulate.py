from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from insar_slide import open_basin
from insar_slide.cli import main
from insar_slide.grid import PixelWindow
from insar_slide.inventory import COLUMNS
from insar_slide.sim import basin as sim_basin
from insar_slide.sim.config import SimConfig, load_sim_config
from insar_slide.sim.render import deformation_mask, render
from insar_slide.sim.scene import build_scene

from .conftest import REPO

SMALL = REPO / "configs" / "sim_small.yaml"


def _cfg(**kw) -> SimConfig:
    base = {"seed": 3, "grid": {"shape": [384, 512], "chunk": 128}, "landslides": {"density_per_100km2": 25}}
    base.update(kw)
    return SimConfig.model_validate(base)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    res = CliRunner().invoke(main, ["simulate", str(SMALL), "--out", str(d / "s.zarr")])
    assert res.exit_code == 0, res.output
    return d / "s.zarr", d / "s.truth.parquet"


def test_cli_simulate_small_config_writes_two_tracks_and_truth(small):
    store, truth = small
    ds = xr.open_zarr(store)
    assert list(ds.track.values) == ["asc_099", "desc_062"]
    assert ds.los_rate.dtype == np.float32 and ds.los_rate.shape == (2, 1024, 1024)
    assert ds.los_rate.rio.crs.to_epsg() == 32647 and "dem" in ds
    gdf = gpd.read_parquet(truth)
    assert len(gdf) > 20 and set(COLUMNS) <= set(gdf.columns)
    assert (gdf.method == "truth").all() and gdf.crs.to_epsg() == 32647
    for col in ("peak_los_asc_099", "peak_los_desc_062", "slope_speed_mm_yr", "visible_fraction_asc_099"):
        assert gdf[col].notna().all()
    assert gdf.slide_id.is_unique


def test_info_and_quicklook_on_a_simulated_basin(small, tmp_path):
    store, truth = small
    res = CliRunner().invoke(main, ["info", str(store)])
    assert res.exit_code == 0, res.output
    assert "asc_099" in res.output and "desc_062" in res.output and "943.72 km²" in res.output
    png = tmp_path / "map.png"
    res = CliRunner().invoke(main, ["quicklook", str(store), "--inventory", str(truth), "--out", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000


def test_render_is_seamless_across_windows():
    scene = build_scene(_cfg())
    whole, dem = render(scene, PixelWindow(0, 0, 384, 512))
    for win in (PixelWindow(0, 0, 100, 333), PixelWindow(97, 201, 250, 311), PixelWindow(383, 511, 1, 1)):
        part, pdem = render(scene, win)
        np.testing.assert_array_equal(part, whole[:, win.row0:win.row1, win.col0:win.col1])
        np.testing.assert_array_equal(pdem, dem[win.row0:win.row1, win.col0:win.col1])


def test_stores_written_with_different_chunks_are_identical(tmp_path):
    a, _ = sim_basin.simulate(_cfg(), tmp_path / "a.zarr")
    b, _ = sim_basin.simulate(_cfg(grid={"shape": [384, 512], "chunk": 96 * 2}), tmp_path / "b.zarr")
    np.testing.assert_array_equal(open_basin(a).los_rate.values, open_basin(b).los_rate.values)
    assert open_basin(a).los_rate.chunks != open_basin(b).los_rate.chunks


def test_deterministic_by_seed():
    r1, _ = render(build_scene(_cfg()), PixelWindow(0, 0, 64, 64))
    r2, _ = render(build_scene(_cfg()), PixelWindow(0, 0, 64, 64))
    r3, _ = render(build_scene(_cfg(seed=4)), PixelWindow(0, 0, 64, 64))
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(r1, r3, equal_nan=True)


def test_landslides_are_plausible_and_differ_between_tracks(small):
    gdf = gpd.read_parquet(small[1])
    assert gdf.slope_deg.between(12, 45).all()
    assert gdf.slope_speed_mm_yr.between(5, 200).all()
    assert (gdf.slope_speed_mm_yr < 20).mean() > 0.1  # faint slides near the threshold
    px_area = 30.0 * 30.0
    lengths = np.sqrt(gdf.area_m2 / px_area)
    assert lengths.min() < 10 and lengths.max() > 40
    asc, desc = gdf.peak_los_asc_099, gdf.peak_los_desc_062
    assert (np.sign(asc) != np.sign(desc)).mean() > 0.2  # east/west-facing slopes
    assert (np.abs(asc) - np.abs(desc)).abs().median() > 2
    # The slide's own peak shows in the mosaic: rate statistics track it.
    best = np.maximum(np.abs(asc), np.abs(desc))
    strong = best > 30
    assert np.corrcoef(best[strong], gdf.rate_p95_abs[strong])[0, 1] > 0.9


def test_stable_ground_looks_like_real_rate_maps():
    """Calibration against DESIGN.md's measurements of real products on stable ground.

    Kirishima (ALOS-2, mountains): robust std 2.4 mm/yr, √semivariance 1.2 / 1.9 / 2.3 / 2.5
    mm/yr at 0.1 / 0.5 / 1 / 2 km, ~1 % of valid pixels at |rate| ≥ 10 mm/yr, 0–30 % holes.
    """
    scene = build_scene(load_sim_config(SMALL))
    win = PixelWindow(0, 0, 1024, 1024)
    rate, _ = render(scene, win)
    stable = ~deformation_mask(scene, win)
    above10 = []
    for v in rate:
        assert 0.02 < np.isnan(v).mean() < 0.3
        s = v[stable & np.isfinite(v)]
        robust_std = 1.4826 * np.median(np.abs(s - np.median(s)))
        assert 1.8 < robust_std < 3.5, robust_std
        above10.append((np.abs(s) >= 10).mean())

        def semivar(lag_px, v=v):
            a, b = v[:, :-lag_px], v[:, lag_px:]
            m = stable[:, :-lag_px] & stable[:, lag_px:] & np.isfinite(a) & np.isfinite(b)
            return np.sqrt(0.5 * np.mean((a[m] - b[m]) ** 2))

        s01, s05, s2 = semivar(3), semivar(17), semivar(67)
        assert 0.8 < s01 < s05 < s2 < 4, (s01, s05, s2)
    # Heavy tails: some stable pixels pass the 10 mm/yr threshold (storms vary by scene).
    assert 0.0005 < np.mean(above10) < 0.04, above10


def test_nuisance_deformation_is_present():
    cfg = _cfg(grid={"shape": [1024, 1024], "chunk": 512},
               nuisance={"subsidence_per_1000km2": 30, "unwrapping_per_1000km2": 20, "glaciers_per_1000km2": 20})
    scene = build_scene(cfg)
    assert len(scene.bowls) > 0 and len(scene.unwrap) > 0
    assert (scene.bowls.slope_deg < 5).all()  # bowls sit on flat ground
    # Unwrapping errors are whole-cycle offsets: ±1 or ±2 × (λ/2) over the time span.
    years = (np.datetime64("2020-12-31") - np.datetime64("2017-01-01")).astype(int) / 365.25
    cycles = np.abs(scene.unwrap.speed) / (55.46 / 2 / years)
    np.testing.assert_allclose(cycles, np.round(cycles), atol=1e-9)
    assert set(np.round(cycles)) <= {1.0, 2.0}


def test_jinsha_config_follows_the_real_river_and_tracks(real):
    cfg = load_sim_config(REPO / "configs" / "sim_jinsha.yaml")
    cfg = cfg.model_copy(update={"grid": cfg.grid.model_copy(update={"shape": (512, 512)})})
    scene = build_scene(cfg)
    headings = [t.heading for t in scene.tracks]
    assert headings == [-12.5, -167.3]
    rc = scene.river_rc[np.isfinite(scene.river_rc).all(1)]
    inside = (rc[:, 0] >= 0) & (rc[:, 0] < 512) & (rc[:, 1] >= 0) & (rc[:, 1] < 512)
    assert inside.sum() >= 2  # the real centre line crosses the grid
    _, dem = render(scene, PixelWindow(0, 0, 512, 512))
    r, c = rc[inside][0].round().astype(int)
    assert dem[r, c] < np.percentile(dem, 10)  # the river runs in the valley floor


@pytest.mark.parametrize("text,needle", [
    ("grid:\n  shap: [1, 2]\n", "unknown key 'grid.shap'"),
    ("grid:\n  pixel_size: -30\n", "invalid value for 'grid.pixel_size'"),
    ("landslides:\n  speed_mm_yr: [50, 5]\n", "speed_mm_yr"),
    ("tracks:\n  - {name: a}\n", "needs heading and incidence"),
    ("river:\n  wkt: nowhere.wkt\n", "river.wkt"),
    ("- 1\n- 2\n", "top level must be a mapping"),
])
def test_bad_simulation_configs_are_one_line_errors(tmp_path, text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    res = CliRunner().invoke(main, ["simulate", str(cfg), "--out", str(tmp_path / "x.zarr")])
    assert res.exit_code == 2, res.output
    assert needle in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists()


def test_failed_truth_leaves_no_mosaic(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(sim_basin, "truth_inventory", boom)
    with pytest.raises(RuntimeError):
        sim_basin.simulate(_cfg(), tmp_path / "s.zarr")
    assert list(tmp_path.iterdir()) == []


def test_demo_config_is_the_small_sample_config():
    assert load_sim_config(SMALL) == __import__("insar_slide.sim.config", fromlist=["demo_config"]).demo_config()


def test_cli_demo_runs_the_reference_model(tmp_path):
    """The README's main job: simulate the demo basin, run the shipped model, score it."""
    from insar_slide.run.config import REFERENCE_MODEL
    assert REFERENCE_MODEL.is_file(), f"the reference model {REFERENCE_MODEL} is not in the repository"
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "demo"
    for name in ("basin.zarr", "basin.truth.parquet", "inventory.parquet", "inventory.png", "inventory.slide_id.zarr"):
        assert (out / name).exists(), name
    assert "windows: 10 planned" in res.output and "against the simulated truth" in res.output
    import geopandas as gpd
    assert len(gpd.read_parquet(out / "inventory.parquet")) > 0


def test_demo_run_config_is_the_sample_basin_config():
    from insar_slide.run.config import demo_run_config, load_run_config
    repo = Path(__file__).resolve().parents[1]
    assert demo_run_config(repo / "out" / "demo") == load_run_config(repo / "configs" / "basin_demo.yaml")


def test_failed_overwrite_keeps_the_previous_pair(tmp_path, monkeypatch):
    store, truth = sim_basin.simulate(_cfg(), tmp_path / "s.zarr")
    before = open_basin(store).los_rate.values.copy()

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(sim_basin, "truth_inventory", boom)
    with pytest.raises(RuntimeError):
        sim_basin.simulate(_cfg(seed=99), store, overwrite=True)
    np.testing.assert_array_equal(open_basin(store).los_rate.values, before)
    assert truth.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s.nuisance.parquet", "s.truth.parquet", "s.zarr"]
