"""Multi-scale inference (`scales:` in basin.yaml): the block-mean levels, the cross-scale merge
rule on hand-made boxes, and `insar-slide run` / `plan` end to end.

The end-to-end merge tests store every window's detections beforehand (as tests/test_run.py
does) from a detector that only reports what fits its window: a slide inside the window's read
area is reported whole; of a slide cut by it, only a sloppy box of the part inside the window's
core — the slide grown by 16 px, clipped to the core and shrunk by 8 px of the window's level:
the fragments a real model gives, or worse, for a slide larger than its window, sticking out of
the slide where its edge is inside the window. The resume test runs a real (untrained) model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import yaml
from click.testing import CliRunner

from insar_slide.cli import main
from insar_slide.core.merge import MergeRules, merge_boxes, merge_features, split_closed
from insar_slide.core.scales import (
    absorb_fragments,
    block_mean,
    closing_margin,
    first_block,
    min_extent_px,
    pixel_advice,
)
from insar_slide.core.tiling import Block
from insar_slide.errors import ConfigError
from insar_slide.grid import Grid, PixelWindow
from insar_slide.mosaic import TrackInfo, build_dataset, write_mosaic
from insar_slide.run.config import load_run_config
from insar_slide.run.detect import file_hash, fingerprint
from insar_slide.run.io import read_level
from insar_slide.run.pipeline import detect_settings, run
from insar_slide.run.plan import make_plan

GRID = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 512, 640)
BIG = (40, 300, 250, 570)    # (row0, col0, row1, col1): 210 x 270 px, 6.3 x 8.1 km; windows of 128 + 2 x 32 px
SMALL = (380, 60, 420, 100)  # 40 x 40 px: native windows see it whole


def _rates() -> np.ndarray:
    rng = np.random.default_rng(5)
    r = rng.normal(0, 1.0, (2, *GRID.shape)).astype("float32")
    for t, boxes in enumerate(([BIG, SMALL], [BIG])):
        for r0, c0, r1, c1 in boxes:
            r[t, r0:r1, c0:c1] = -40.0
    r[:, 500:, :] = np.nan
    return r


@pytest.fixture(scope="module")
def basin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scales") / "basin.zarr"
    tracks = [TrackInfo("asc", -12.0, 40.0, "2020-01-01", "2021-01-01", ("test",)),
              TrackInfo("desc", -168.0, 40.0, "2020-01-01", "2021-01-01", ("test",))]
    write_mosaic(build_dataset(da.from_array(_rates(), chunks=(1, 128, 128)), GRID, tracks), path, chunk=128)
    return path


def _config(tmp: Path, basin: Path, model: Path, **kw: object) -> Path:
    cfg = {"mosaic": str(basin), "out": str(tmp / "inv.parquet"), "model": str(model), "window": 128, "halo": 32,
           "cluster": {"workers": 1, "threads_per_worker": 1, "dashboard": False},
           "outputs": {"quicklook": False, "slide_id_raster": False, "report": False, "kml": False, "geopackage": False}, **kw}
    p = tmp / "basin.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _clip(box: tuple[int, int, int, int], win: PixelWindow, shrink: int = 0) -> tuple[int, int, int, int] | None:
    r0, c0 = max(box[0], win.row0) + shrink, max(box[1], win.col0) + shrink
    r1, c1 = min(box[2], win.row1) - shrink, min(box[3], win.col1) - shrink
    return (r0, c0, r1, c1) if r1 - r0 >= 12 and c1 - c0 >= 12 else None  # no slivers


def _inject(cfg_path: Path) -> int:
    """Store what a detector that sees only its own window reports, for every window to run."""
    cfg = load_run_config(cfg_path)
    plan = make_plan(cfg)
    s = detect_settings(cfg, plan.grid, model_hash=file_hash(cfg.model_path))
    truth = {"asc": [BIG, SMALL], "desc": [BIG]}
    for w in plan.to_run():
        f = w.scale
        read = PixelWindow(w.read.row0 * f, w.read.col0 * f, w.read.rows * f, w.read.cols * f)
        found = []
        for box in truth[w.track]:
            whole = _clip(box, read)
            grown = (box[0] - 16, box[1] - 16, box[2] + 16, box[3] + 16)
            seen = whole if whole == box else _clip(grown, w.native_core(), 8 * f)
            if seen is not None:
                found.append((seen[1], seen[0], seen[3], seen[2]))
        arr = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        s.store.write_detections(w, arr, scores=np.full(len(arr), 0.9),
                         meta={"fingerprint": fingerprint(w, s), "window": w.key, "model": s.model_hash})
    return len(plan.to_run())


def _map_box(r0: int, c0: int, r1: int, c1: int) -> shapely.Geometry:
    t = GRID.transform
    return shapely.box(*(t * (c0, r1)), *(t * (c1, r0)))


# ---------------------------------------------------------------------------- levels


def test_block_mean_rule_and_ragged_edge():
    a = np.array([[1, 3, 5, np.nan, 7],
                  [np.nan, 8, np.nan, np.nan, 9],
                  [2, np.nan, np.nan, np.nan, np.nan]], dtype=np.float32)
    m = block_mean(a, 2, (2, 3))
    assert m[0, 0] == 4.0 and np.isnan(m[0, 1])  # 3 of 4 valid: their mean; 1 of 4: NaN
    assert m[0, 2] == 8.0  # the ragged last column: 2 in-grid pixels, both valid
    assert m[1, 0] == 2.0 and np.isnan(m[1, 1]) and np.isnan(m[1, 2])  # 1 of 2 in-grid valid counts as half
    assert m.dtype == np.float32


def test_a_level_read_per_window_equals_the_whole_level(basin):
    rates = _rates()[0]
    whole = block_mean(rates, 3, (171, 214))
    for win in (PixelWindow(0, 0, 40, 50), PixelWindow(131, 170, 40, 44), PixelWindow(77, 5, 13, 200)):
        np.testing.assert_array_equal(read_level(str(basin), "asc", win, None, 3), whole[win.slices()])


# ---------------------------------------------------------------------------- the cross-scale rule


S = MergeRules(grid=GRID, halo=32, tracks=("asc", "desc"), score_threshold=0.5, nms_iou=0.5, dissolve_overlap=0.2,
               scales=(1, 2), window=128)


def _boxes(*rows: tuple[tuple[int, int, int, int], float, str, int]) -> pd.DataFrame:
    """(row0, col0, row1, col1) pixel boxes → the map-unit box table merge works on."""
    out = []
    for (r0, c0, r1, c1), score, track, scale in rows:
        minx, miny, maxx, maxy = _map_box(r0, c0, r1, c1).bounds
        out.append({"minx": minx, "miny": miny, "maxx": maxx, "maxy": maxy, "score": score, "track": track, "scale": scale})
    return pd.DataFrame(out)


def test_a_large_coarse_box_absorbs_its_native_fragments_and_a_small_slide_beside_it_stays():
    feats = merge_boxes(_boxes((BIG, 0.8, "asc", 2),
                               ((48, 308, 120, 376), 0.95, "asc", 1), ((136, 392, 242, 504), 0.7, "desc", 1),
                               ((48, 520, 120, 600), 0.9, "asc", 1),   # 62 % inside the big box: a fragment
                               ((260, 300, 300, 340), 0.9, "asc", 1)), S)  # beside it, touching nothing
    assert len(feats) == 2
    big = feats[feats["scale"] == 2].iloc[0]
    assert big["geometry"].equals(_map_box(*BIG))  # the coarse box is the outline, fragments add nothing
    assert big["tracks"] == "asc,desc" and big["n_boxes"] == 4 and big["score"] == 0.8
    small = feats[feats["scale"] == 1].iloc[0]
    assert small["geometry"].equals(_map_box(260, 300, 300, 340)) and small["n_boxes"] == 1


def test_with_nested_share_small_whole_slides_inside_a_coarse_box_stay_their_own():
    # round 8 on the demo: one coarse box on an unwrapping block held ten small slides the native
    # level found whole; with nested_share they stay slides, and real fragments still join
    boxes = _boxes((BIG, 0.8, "asc", 2),
                   ((48, 308, 120, 376), 0.95, "asc", 1),   # 72 x 68 px: 8.6 % of the big box, a fragment
                   ((100, 400, 110, 410), 0.97, "asc", 1),  # 10 x 10 px inside: 0.18 %
                   ((200, 500, 212, 508), 0.9, "desc", 1))  # 12 x 8 px inside: 0.17 %
    joined = merge_boxes(boxes, S)
    assert len(joined) == 1 and joined["n_boxes"].iloc[0] == 4
    kept = merge_boxes(boxes, replace(S, nested_share=0.02))
    assert len(kept) == 3
    big = kept[kept["scale"] == 2].iloc[0]
    assert big["n_boxes"] == 2 and big["geometry"].equals(_map_box(*BIG))
    small = kept[kept["scale"] == 1].sort_values("score", ascending=False)
    assert small.geometry.iloc[0].equals(_map_box(100, 400, 110, 410)) and small["tracks"].iloc[1] == "desc"
    # the same rule one level up the reduction tree, and at one scale it changes nothing
    assert len(merge_features([kept.iloc[:1], kept.iloc[1:]], replace(S, nested_share=0.02))) == 3
    one = boxes.assign(scale=1)
    pd.testing.assert_frame_equal(merge_boxes(one, replace(S, scales=(1,), nested_share=0.02)),
                                  merge_boxes(one, replace(S, scales=(1,))))


def test_a_small_coarse_box_gives_way_to_the_native_detection():
    assert min_extent_px(2, (1, 2), 32) == 64 and min_extent_px(4, (1, 2, 4), 32) == 128
    feats = merge_boxes(_boxes((SMALL, 0.95, "asc", 2), ((382, 61, 419, 99), 0.8, "asc", 1)), S)
    assert len(feats) == 1
    assert feats["scale"].iloc[0] == 1 and feats.geometry.iloc[0].equals(_map_box(382, 61, 419, 99))
    # the same two boxes at one scale are two boxes of one slide, dissolved
    one = merge_boxes(_boxes((SMALL, 0.95, "asc", 1), ((382, 61, 419, 99), 0.8, "asc", 1)),
                      replace(S, scales=(1,)))
    assert len(one) == 1 and one["n_boxes"].iloc[0] == 1  # NMS: IoU 0.88


def test_fragments_of_fragments_end_at_the_coarsest_box():
    g = [_map_box(0, 0, 400, 400), _map_box(10, 10, 200, 200), _map_box(20, 20, 60, 60), _map_box(300, 300, 500, 500)]
    feats = pd.DataFrame({"geometry": g, "score": [0.7, 0.8, 0.9, 0.9], "tracks": ["asc", "desc", "asc", "desc"],
                          "n_boxes": [1, 2, 1, 1], "scale": [4, 2, 1, 1]})
    out = absorb_fragments(feats)
    assert len(out) == 2  # the 4th lies 25 % inside: not a fragment
    top = out[out["scale"] == 4].iloc[0]
    assert top["n_boxes"] == 4 and top["tracks"] == "asc,desc" and top["geometry"].equals(g[0])
    one_scale = feats.assign(scale=1)
    pd.testing.assert_frame_equal(absorb_fragments(one_scale), one_scale)


def test_closing_accounts_for_the_coarse_halo():
    assert first_block(4, (1, 2)) == 4 and first_block(1, (1, 2)) == 2 and first_block(4, (1, 3)) == 12
    assert closing_margin(32, (1,)) == 33 and closing_margin(32, (1, 2)) == 65
    # 40 px from the inner border at column 256 of the block of windows (0..1, 0..1): a coarse
    # box owned by the neighbouring block may still reach it (up to 2 x 32 px)
    feats = merge_boxes(_boxes(((20, 170, 60, 216), 0.9, "asc", 1)), S)
    block = Block(1, 0, 0, 2, 2)
    closed, open_ = split_closed(feats, block, S, (4, 5))
    assert len(open_) == 1 and len(closed) == 0
    closed, open_ = split_closed(feats, block, replace(S, scales=(1,)), (4, 5))
    assert len(open_) == 0 and len(closed) == 1


# ---------------------------------------------------------------------------- config and plan


def test_bad_scales_are_one_line_errors(tmp_path, basin, model_file):
    for bad, word in (([0, 1], ">= 1"), ([1, 2, 2], "distinct"), ([2], "must include 1")):
        with pytest.raises(ConfigError, match=word) as e:
            load_run_config(_config(tmp_path, basin, model_file, scales=bad))
        assert "scales" in str(e.value) and "\n" not in str(e.value).strip()
    with pytest.raises(ConfigError, match=r"factor 16 gives a 32 x 40 px level .* under 64 px a side"):
        make_plan(load_run_config(_config(tmp_path, basin, model_file, scales=[1, 16])))
    small = make_plan(load_run_config(_config(tmp_path, basin, model_file, scales=[1, 8])))  # one ragged window
    assert small.tilings[8] == (1, 1)
    assert load_run_config(_config(tmp_path, basin, model_file, scales=[2, 1])).scales == [1, 2]


def test_the_default_scales_fit_a_small_mosaic_and_set_ones_are_checked(tmp_path, model_file, caplog):
    # A 100 x 140 px product (a single volcano): its x2 level would be 50 x 70 px, under 64 a
    # side. On the default scales it is planned at the native level with a warning; a config
    # that asks for x2 is told why that cannot be.
    small_grid = Grid("EPSG:32647", 500_000.0, 3_000_000.0, 30.0, -30.0, 100, 140)
    small = tmp_path / "small.zarr"
    write_mosaic(build_dataset(da.from_array(np.full((1, 100, 140), -20.0, "float32"), chunks=(1, 100, 140)), small_grid,
                              [TrackInfo("asc", -12.0, 40.0, "2020-01-01", "2021-01-01", ("test",))]), small, chunk=128)
    with caplog.at_level("WARNING"):
        plan = make_plan(load_run_config(_config(tmp_path, small, model_file)))
    assert plan.scales == (1,) and plan.tilings == {1: (1, 2)}  # 128-px cores
    assert "x2 level of this 100 x 140 px mosaic would be 50 x 70 px" in caplog.text and "detecting at [1]" in caplog.text
    with pytest.raises(ConfigError, match="factor 2 gives a 50 x 70 px level"):
        make_plan(load_run_config(_config(tmp_path, small, model_file, scales=[1, 2])))


def test_plan_shows_the_windows_of_every_scale(tmp_path, basin, model_file):
    plan = make_plan(load_run_config(_config(tmp_path, basin, model_file, scales=[1, 2])))
    assert plan.tilings == {1: (4, 5), 2: (2, 3)}
    coarse = [w for w in plan.windows if w.scale == 2]
    assert len(coarse) == 12 and {w.key for w in coarse if w.status == "run"} >= {"asc/x2_r00000_c00001", "desc/x2_r00000_c00001"}
    assert plan.counts()["planned"] == 2 * (20 + 6) == sum(c["planned"] for c in plan.scale_counts().values())
    res = CliRunner().invoke(main, ["plan", str(tmp_path / "basin.yaml")])
    assert res.exit_code == 0, res.output
    assert "scale x1 (native pixel): 4 x 5 cores" in res.output and "scale x2 (block mean of 2 x 2 px): 2 x 3 cores" in res.output


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("reduce_block", [1, 4])
def test_a_slide_larger_than_the_window_is_reported_once(tmp_path, basin, model_file, reduce_block):
    (tmp_path / "one").mkdir()
    single = _config(tmp_path / "one", basin, model_file, scales=[1], reduce_block=reduce_block)
    _inject(single)
    run(load_run_config(single), echo=lambda s: None)
    frags = gpd.read_parquet(tmp_path / "one" / "inv.parquet")
    assert "scale" not in frags and len(frags[frags.intersects(_map_box(*BIG))]) >= 4  # the problem: fragments

    multi = _config(tmp_path, basin, model_file, scales=[1, 2], reduce_block=reduce_block)
    n = _inject(multi)
    res = run(load_run_config(multi), echo=lambda s: None)
    assert res.summary.windows["computed"] == 0 and res.summary.windows["reused"] == n
    inv = gpd.read_parquet(tmp_path / "inv.parquet")
    assert len(inv) == 2
    big = inv[inv.intersects(_map_box(*BIG))]
    assert len(big) == 1 and big.geometry.iloc[0].equals(_map_box(*BIG))
    assert big["tracks"].iloc[0] == "asc,desc" and big["scale"].iloc[0] == 2 and big["n_boxes"].iloc[0] >= 6
    small = inv[inv.intersects(_map_box(*SMALL))]
    assert len(small) == 1 and small.geometry.iloc[0].equals(_map_box(*SMALL)) and small["scale"].iloc[0] == 1
    assert (inv["rate_p95_abs"] > 35).all()
    cols = list(inv.columns)
    assert cols.index("scale") == cols.index("n_boxes") + 1


@pytest.mark.slow
def test_a_multi_scale_run_resumes_to_the_same_inventory(tmp_path, basin, model_file):
    cfg = load_run_config(_config(tmp_path, basin, model_file, scales=[1, 2], tracks=["asc"], score_threshold=0.3))
    seen: list[tuple[str, int, int]] = []
    first = run(cfg, echo=lambda s: None, progress=lambda *a: seen.append(a))
    by = first.summary.windows_by_scale
    n_run = first.summary.windows["computed"]
    detect = [a for a in seen if a[0] == "detect"]
    assert detect and detect[-1] == ("detect", n_run, n_run) and [d for _, d, _ in detect] == sorted(d for _, d, _ in detect)
    assert {a[0] for a in seen} == {"plan x1", "plan x2", "detect"}  # the plan of each scale reports too
    assert by["x2"]["run"] >= 2 and first.summary.windows["computed"] == by["x1"]["run"] + by["x2"]["run"]
    inv = gpd.read_parquet(tmp_path / "inv.parquet")
    assert len(inv) > 0 and set(inv["scale"]) <= {1, 2}
    again = run(cfg, echo=lambda s: None)
    assert again.summary.windows["computed"] == 0 and again.summary.windows["reused"] == first.summary.windows["run"]
    assert again.summary.blocks["reused"] == again.summary.blocks["total"]
    pd.testing.assert_frame_equal(inv, gpd.read_parquet(tmp_path / "inv.parquet"))


# ---------------------------------------------------------------------------- training pixel


def test_a_pixel_far_from_the_training_pixel_is_named_with_the_factor_that_fixes_it():
    assert pixel_advice(28.0, 30.0, (1,)) is None and pixel_advice(37.0, 30.0, (1,)) is None
    ten = pixel_advice(10.0, 30.0, (1,))
    assert ten is not None and "(10.0 m)" in ten and "(30.0 m)" in ten and "add 3 to scales (e.g. scales: [1, 3])" in ten
    fifteen = pixel_advice(15.0, 30.0, (1, 2))
    assert fifteen is not None and "level x2 (30.0 m) in scales matches it" in fifteen
    coarse = pixel_advice(85.0, 30.0, (1,))
    assert coarse is not None and "smaller to it" in coarse and "no block mean brings it closer" in coarse
    assert all("\n" not in m for m in (ten, fifteen, coarse))


def test_checkpoints_record_the_training_pixel_and_old_ones_mean_30_m(tmp_path):
    import json

    from affine import Affine

    from insar_slide.model.checkpoint import training_pixel_m
    from insar_slide.training.train import chips_pixel_size_m
    from tests.conftest import write_tif

    rate = np.zeros((16, 16), np.float32)
    write_tif(tmp_path / "rot.tif", rate, crs=None)  # a rotated chip: no georeference
    write_tif(tmp_path / "a.tif", rate, transform=Affine(15.0, 0, 500_000.0, 0, -15.0, 3_000_000.0))
    (tmp_path / "coco_train.json").write_text(json.dumps({"images": [{"file_name": "rot.tif"}, {"file_name": "a.tif"}]}))
    assert chips_pixel_size_m(tmp_path) == 15.0
    assert training_pixel_m({}) == 30.0 and training_pixel_m({"pixel_size_m": 15.0}) == 15.0
