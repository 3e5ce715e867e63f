"""The wider simulated world: earthflows, compound and fast slides, harder look-alikes."""

import geopandas as gpd
import numpy as np
import pytest

from insar_slide.grid import PixelWindow
from insar_slide.sim import basin as sim_basin
from insar_slide.sim.config import SimConfig, load_sim_config
from insar_slide.sim.render import deformation_mask, over_limit, render
from insar_slide.sim.scene import build_scene
from insar_slide.sim.shapes import path_field, slide_field
from insar_slide.sim.terrain import elevation_points

from .conftest import REPO

WIDE = {
    "landslides": {"density_per_100km2": 30, "size_px": [5, 200], "size_law": "loguniform", "earthflow_fraction": 0.35,
                   "compound_fraction": 0.25, "fast_fraction": 0.3, "edge_margin_px": 40},
    "radar": {"unwrapping_limit": True},
    "nuisance": {"subsidence_per_1000km2": 30, "subsidence_radius_px": [4, 60], "subsidence_loguniform": True,
                 "glaciers_per_1000km2": 20, "glacier_min_elevation_m": 3800, "glacier_hole_fraction": [0.0, 0.9],
                 "glacier_valley_fraction": 0.5, "glacier_free_orientation_fraction": 0.5, "unwrapping_per_1000km2": 20,
                 "unwrapping_irregular_fraction": 0.5, "volcanic_per_1000km2": 10, "elevation_step_mm_yr": 8, "faults": 1},
}


def _wide(**kw) -> SimConfig:
    base = {"seed": 20, "grid": {"shape": [512, 640], "chunk": 128}, **WIDE}
    base.update(kw)
    return SimConfig.model_validate(base)


@pytest.fixture(scope="module")
def scene():
    return build_scene(_wide())


def test_every_kind_is_present(scene):
    assert {0, 1, 2} <= set(scene.slides.kind.tolist())
    assert len(scene.volcanoes) and len(scene.faults) == 1 and len(scene.bowls)
    assert set(scene.glaciers.kind.tolist()) == {0, 1} and set(scene.unwrap.kind.tolist()) == {0, 1}
    assert (scene.slides.speed > scene.cfg.radar.limit_mm_yr).any()


def test_wide_render_is_seamless_across_windows(scene):
    whole, dem = render(scene, PixelWindow(0, 0, 512, 640))
    mask = deformation_mask(scene, PixelWindow(0, 0, 512, 640))
    for win in (PixelWindow(0, 0, 129, 333), PixelWindow(97, 201, 250, 311), PixelWindow(300, 400, 212, 240),
                PixelWindow(511, 639, 1, 1)):
        part, pdem = render(scene, win)
        np.testing.assert_array_equal(part, whole[:, win.row0:win.row1, win.col0:win.col1])
        np.testing.assert_array_equal(pdem, dem[win.row0:win.row1, win.col0:win.col1])
        np.testing.assert_array_equal(deformation_mask(scene, win), mask[win.row0:win.row1, win.col0:win.col1])


def test_earthflows_run_down_the_fall_line_and_are_elongated(scene):
    s = scene.slides
    flows = np.nonzero(s.kind == 1)[0]
    assert len(flows) >= 3
    for i in flows:
        gm = s.geom[i]
        z = elevation_points(scene, gm[:, 0], gm[:, 1])
        assert z[-1] < z[0] - 50  # the toe is well below the head…
        assert (np.diff(z) < 0).mean() > 0.7  # …and the line runs downhill nearly all the way
        length = np.hypot(np.diff(gm[:, 0]), np.diff(gm[:, 1])).sum()
        assert length / (2 * np.median(gm[:, 2])) >= 3
        # slow head, fast body: the speed at the head is a fraction of the peak
        rad = s.radius()[i]
        rr = np.arange(int(s.row[i] - rad), int(s.row[i] + rad) + 1, dtype=float)
        cc = np.arange(int(s.col[i] - rad), int(s.col[i] + rad) + 1, dtype=float)
        mask, ve, vn, vu = slide_field(scene, i, rr, cc)
        _, _, t, _ = path_field(gm, rr, cc)
        speed = np.sqrt(ve ** 2 + vn ** 2 + vu ** 2)
        assert speed[mask & (t < 0.05)].max() < 0.6 * speed[mask].max()


def test_compound_slides_have_elements_at_different_speeds(scene):
    s = scene.slides
    i = int(np.nonzero(s.kind == 2)[0][0])
    factors = s.geom[i][:, 4]
    assert 2 <= len(factors) <= 4 and np.ptp(factors) > 0.1
    rad = s.radius()[i]
    rr = np.arange(int(s.row[i] - rad), int(s.row[i] + rad) + 1, dtype=float)
    cc = np.arange(int(s.col[i] - rad), int(s.col[i] + rad) + 1, dtype=float)
    mask, ve, vn, vu = slide_field(scene, i, rr, cc)
    speed = np.sqrt(ve ** 2 + vn ** 2 + vu ** 2)[mask]
    assert speed.max() > 0.5 * s.speed[i] * factors.max()


def test_unwrapping_limit_decorrelates_or_aliases_fast_ground(scene):
    lim = scene.cfg.radar.limit_mm_yr
    assert lim == pytest.approx(55.46 / 4 / 12 * 365.25)  # a quarter wavelength per 12-day revisit
    rows, cols = np.arange(200.0), np.arange(300.0)
    los = np.tile(np.linspace(0, 3 * lim, 300), (200, 1))
    rec, lost = over_limit(scene, 0, rows, cols, los)
    slow = los < 0.8 * lim
    np.testing.assert_array_equal(rec[slow], los[slow])
    assert not lost[slow].any()
    fast = los > lim
    assert lost[fast].mean() > 0.4
    aliased = fast & ~lost
    assert aliased.any() and (np.abs(rec[aliased]) <= lim).all()  # wrapped into the unwrappable range
    off = build_scene(_wide(radar={"unwrapping_limit": False}))
    rec, lost = over_limit(off, 0, rows, cols, los)
    np.testing.assert_array_equal(rec, los)
    assert not lost.any()


def test_the_truth_counts_a_fast_slides_lost_core_as_visible(tmp_path):
    cfg = _wide()
    store, truth = sim_basin.simulate(cfg, tmp_path / "w.zarr")
    t = gpd.read_parquet(truth)
    assert {"lobate", "earthflow", "compound"} <= set(t.kind)
    track = "asc_099"
    gap = t[f"visible_fraction_{track}"] - t[f"measured_fraction_{track}"]
    assert (gap >= -1e-12).all()
    fast = t.slope_speed_mm_yr > 2 * cfg.radar.limit_mm_yr
    assert fast.any() and gap[fast].max() > 0.1
    assert (gap[t.slope_speed_mm_yr < 0.5 * cfg.radar.limit_mm_yr].abs() < 1e-12).all()
    # Slides straddle the basin's edges.
    assert (~t.geometry.within(_bounds(store))).any()
    n = gpd.read_parquet(tmp_path / "w.nuisance.parquet")
    assert {"glacier", "subsidence", "volcanic", "unwrapping", "fault"} <= set(n.kind)
    assert n.crs == t.crs and n.geometry.is_valid.all() and (n.geometry.area > 0).all()
    assert set(n.track[n.kind == "unwrapping"]) <= {"asc_099", "desc_062"}
    assert (n.track[n.kind != "unwrapping"] == "").all()


def _bounds(store):
    import shapely

    from insar_slide import open_basin
    from insar_slide.mosaic import grid_of
    return shapely.box(*grid_of(open_basin(store)).bounds)


def test_wide_world_configs_parse_and_keep_the_old_world_unchanged():
    for p in sorted((REPO / "configs" / "wide").glob("*.yaml")):
        if p.name.startswith(("chips", "basin")):  # chips and run configs: tests/test_configs.py
            continue
        cfg = load_sim_config(p)
        assert cfg.radar.unwrapping_limit and cfg.landslides.earthflow_fraction > 0
    old = load_sim_config(REPO / "configs" / "sim_small.yaml")
    assert not old.radar.unwrapping_limit and old.landslides.earthflow_fraction == 0
    assert len(build_scene(old).volcanoes) == 0
