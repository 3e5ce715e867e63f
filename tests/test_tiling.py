"""The pure window plan (core/tiling.py): built from (grid, tracks, window, halo, scales, aoi)
alone, in microseconds, with no mosaic and no Dask."""

import time
from dataclasses import replace

import pytest
import shapely

from insar_slide.core.tiling import (
    Block,
    Window,
    WindowPlan,
    classify,
    plan_windows,
    reduction_tree,
)
from insar_slide.grid import Grid, PixelWindow

GRID = Grid("EPSG:32647", 500_000.0, 3_300_000.0, 30.0, -30.0, 1000, 1300)


def test_a_plan_reads_nothing_and_tiles_every_track_and_level():
    t0 = time.perf_counter()
    plan = plan_windows(GRID, ["asc", "desc"], window=512, halo=64, scales=(1, 2))
    assert time.perf_counter() - t0 < 0.05
    assert plan.tilings == {1: (2, 3), 2: (1, 2)}
    assert (plan.n_rows, plan.n_cols) == (2, 3)
    assert len(plan.windows) == 2 * (6 + 2) and {w.status for w in plan.windows} == {"pending"}
    first = plan.windows[0]
    assert first.key == "asc/r00000_c00000" and first.read == PixelWindow(0, 0, 576, 576)
    coarse = [w for w in plan.windows if w.scale == 2]
    assert coarse[1].key == "asc/x2_r00000_c00001" and coarse[1].native_core() == PixelWindow(0, 1024, 1000, 276)  # may reach past the grid (1300)
    assert coarse[1].native_index == (0, 2)
    # frozen and printable
    with pytest.raises(AttributeError):
        plan.window = 256  # type: ignore[misc]
    assert "pending" in str(plan) and "cores 512 px + halo 64 px" in str(plan)


def test_windows_outside_the_aoi_are_marked_without_reading():
    x0, y0 = GRID.x0, GRID.y0
    aoi = shapely.box(x0, y0 - 100 * 30, x0 + 100 * 30, y0)  # the top-left 100 x 100 px
    plan = plan_windows(GRID, ["asc"], window=512, halo=64, aoi=aoi)
    assert [w.status for w in plan.windows] == ["pending"] + ["outside_aoi"] * 5
    assert plan.counts() == {"planned": 6, "run": 0, "skipped_outside_aoi": 5, "skipped_no_data": 0,
                             "skipped_stable": 0, "pending": 1}


def test_the_reduction_tree_belongs_to_the_plan_and_ends_in_one_block():
    plan = plan_windows(GRID, ["asc"], window=100, halo=10)
    levels = plan.blocks(4)
    assert levels == reduction_tree(10, 13, 4)
    assert [len(lv) for lv in levels] == [12, 4, 1]
    assert levels[-1] == [Block(3, 0, 0, 10, 13)]
    for lv in levels:  # each level covers every core once
        cells = [(r, c) for b in lv for r in range(b.r0, b.r1) for c in range(b.c0, b.c1)]
        assert sorted(cells) == [(r, c) for r in range(10) for c in range(13)]


def test_skip_rules():
    assert classify(0, 0, 100, min_valid_fraction=0.05, min_hot_pixels=4) == "no_data"
    assert classify(4, 4, 100, min_valid_fraction=0.05, min_hot_pixels=4) == "no_data"
    assert classify(50, 3, 100, min_valid_fraction=0.05, min_hot_pixels=4) == "stable"
    assert classify(50, 4, 100, min_valid_fraction=0.05, min_hot_pixels=4) == "run"


def test_with_windows_returns_a_new_plan():
    plan = plan_windows(GRID, ["asc"], window=512, halo=64)
    done = plan.with_windows([Window(w.track, w.index, w.core, w.read, "run") for w in plan.windows])
    assert isinstance(done, WindowPlan) and len(done.to_run()) == 6 and not plan.to_run()
    assert done.read_overhead() == pytest.approx(sum(w.read.rows * w.read.cols for w in done.windows) / (1000 * 1300))


def test_a_geographic_grid_still_gets_km2():
    geo = Grid("EPSG:4326", 100.0, 30.0, 0.0003, -0.0003, 1000, 1000)  # ~29 x 33 m at 30°N
    plan = plan_windows(geo, ["asc"], window=512, halo=64)
    px_km2 = plan.pixel_km2()
    assert 0.0009 < px_km2 < 0.0011
    ran = plan.with_windows([replace(w, status="run") for w in plan.windows])
    run_line = next(line for line in str(ran).splitlines() if line.strip().startswith("run "))
    assert f"{1000 * 1000 * px_km2:.1f} km²" in run_line


def test_detection_tasks_group_one_track_scale_and_shape_and_come_largest_first():
    from insar_slide.run.detect import window_batches

    plan = plan_windows(GRID, ["asc", "desc"], window=512, halo=64, scales=(1, 2))
    windows = list(plan.windows)
    for batch in (1, 3):
        batches = window_batches(windows, batch)
        assert sorted(w.key for b in batches for w in b) == sorted(w.key for w in windows)  # each window once
        assert all(len(b) <= batch and len({(w.track, w.scale, w.read.rows, w.read.cols) for w in b}) == 1
                   for b in batches)
        sizes = [sum(w.read.rows * w.read.cols for w in b) for b in batches]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    # one window a batch: the largest native windows (576 x 640 px here) first, a small coarse edge last
    first, last = window_batches(windows, 1)[0][0], window_batches(windows, 1)[-1][0]
    assert first.scale == 1 and (first.read.rows, first.read.cols) == (576, 640)
    assert last.scale == 2 and last.read.rows * last.read.cols == min(w.read.rows * w.read.cols for w in windows)
