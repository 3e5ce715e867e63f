"""The merge rules (core/merge.py) on hand-made boxes: ownership, NMS, dissolve, closing and
ids, with no Dask, no run directory and no mosaic."""

import numpy as np
import pandas as pd
import shapely

from insar_slide.core.merge import (
    MergeRules,
    fuse_tracks,
    merge_boxes,
    merge_features,
    nms,
    owned,
    owned_boxes,
    slide_ids,
    split_closed,
    to_map,
)
from insar_slide.core.tiling import Block, plan_windows
from insar_slide.grid import Grid

GRID = Grid("EPSG:32647", 0.0, 1000.0, 1.0, -1.0, 1000, 1000)
RULES = MergeRules(grid=GRID, halo=20, tracks=("asc", "desc"), score_threshold=0.5, nms_iou=0.5,
                   dissolve_overlap=0.2, window=250)
PLAN = plan_windows(GRID, ["asc", "desc"], window=250, halo=20)


def _win(track, r, c):
    return next(w for w in PLAN.windows if w.track == track and w.index == (r, c))


def _dets(*rows):
    return pd.DataFrame(rows, columns=["x0", "y0", "x1", "y1", "score"], dtype=float)


def test_pixel_boxes_become_map_boxes():
    m = to_map(_dets((10, 20, 30, 60, 0.9)), GRID)
    assert m.iloc[0].to_dict() == {"minx": 10.0, "maxx": 30.0, "miny": 940.0, "maxy": 980.0}


def test_a_box_belongs_to_the_window_whose_core_holds_its_centre():
    box = (240, 100, 270, 130, 0.9)  # centre x 255: in core (0, 1), in the halo of (0, 0)
    assert len(owned(_win("asc", 0, 0), _dets(box), RULES)) == 0
    got = owned(_win("asc", 0, 1), _dets(box), RULES)
    assert len(got) == 1 and got.iloc[0]["track"] == "asc" and got.iloc[0]["scale"] == 1
    assert len(owned(_win("asc", 0, 1), _dets((240, 100, 270, 130, 0.4)), RULES)) == 0  # below the threshold


def test_one_slide_seen_by_two_windows_and_two_tracks_is_one_feature():
    a = (240, 100, 270, 130, 0.9)
    boxes = owned_boxes([(_win("asc", 0, 0), _dets(a)), (_win("asc", 0, 1), _dets(a, (242, 101, 271, 131, 0.8))),
                         (_win("desc", 0, 1), _dets((238, 98, 268, 128, 0.7)))], RULES)
    assert len(boxes) == 3
    assert len(nms(boxes, RULES)) == 2  # the asc pair is one box; desc is NMSed apart (its own track)
    feats = merge_boxes(boxes, RULES)
    assert len(feats) == 1 and feats.iloc[0]["tracks"] == "asc,desc" and feats.iloc[0]["score"] == 0.9
    assert feats.iloc[0]["n_boxes"] == 2


def _feats(*rows):
    return pd.DataFrame({"geometry": [shapely.box(*r[:4]) for r in rows], "score": [r[4] for r in rows],
                         "tracks": [r[5] for r in rows], "n_boxes": 1, "scale": [r[6] if len(r) > 6 else 1 for r in rows]})


def test_a_slide_seen_on_two_tracks_is_its_best_box_not_their_union():
    # a 5-px slide, its two tracks' boxes 2 px apart: their union has IoU 0.36 with either
    feats = _feats((100, 100, 105, 105, 0.9, "asc"), (102, 101, 107, 106, 0.8, "desc"))
    assert shapely.area(shapely.envelope(shapely.union_all(feats.geometry))) == 42
    fused = fuse_tracks(feats, 0.3)
    assert len(fused) == 1 and fused.iloc[0]["tracks"] == "asc,desc" and fused.iloc[0]["n_boxes"] == 2
    assert fused.iloc[0]["geometry"].equals(shapely.box(100, 100, 105, 105)) and fused.iloc[0]["score"] == 0.9
    assert fuse_tracks(feats, 0.5).equals(feats)  # IoU 0.33 < 0.5: left to dissolve
    assert fuse_tracks(feats, None) is feats
    rules = MergeRules(**{**RULES.__dict__, "track_nms_iou": 0.3})
    boxes = pd.DataFrame({"minx": [100.0, 102.0], "miny": [100.0, 101.0], "maxx": [105.0, 107.0], "maxy": [105.0, 106.0],
                          "score": [0.9, 0.8], "track": ["asc", "desc"], "scale": [1, 1]})
    assert shapely.bounds(merge_boxes(boxes, rules).iloc[0]["geometry"]).tolist() == [100, 100, 105, 105]
    assert shapely.bounds(merge_boxes(boxes, RULES).iloc[0]["geometry"]).tolist() == [100, 100, 107, 106]


def test_across_tracks_is_greedy_and_leaves_one_track_and_other_scales_alone():
    feats = _feats((0, 0, 10, 10, 0.9, "asc"), (1, 0, 11, 10, 0.8, "desc"), (2, 0, 12, 10, 0.7, "asc"),
                   (0, 0, 10, 10, 0.95, "desc", 2))
    fused = fuse_tracks(feats, 0.5)
    # desc 0.8 goes into asc 0.9; asc 0.7 overlaps only what is gone on the other track (desc 0.8)
    # and its own track (asc 0.9): it stays; the scale-2 box is never compared with scale 1
    assert sorted(fused["score"]) == [0.7, 0.9, 0.95]
    assert fused.set_index("score").loc[0.9, "tracks"] == "asc,desc"
    assert fused.set_index("score").loc[0.7, "tracks"] == "asc"
    # the result does not depend on the row order, ties in score included
    again = fuse_tracks(feats.iloc[::-1].reset_index(drop=True), 0.5)
    assert sorted(again["score"]) == [0.7, 0.9, 0.95]
    tie = _feats((0, 0, 10, 10, 0.9, "asc"), (2, 0, 12, 10, 0.9, "desc"))
    kept = [shapely.bounds(fuse_tracks(t, 0.5).iloc[0]["geometry"]).tolist() for t in (tie, tie.iloc[::-1])]
    assert kept[0] == kept[1]
    # a feature that already lists a track (a coarse slide that absorbed fragments) is not
    # suppressed by, and does not suppress, a box of that track: rule 2 decides within a track
    shared = _feats((0, 0, 10, 10, 0.9, "asc,desc"), (1, 0, 11, 10, 0.8, "asc"))
    assert len(fuse_tracks(shared, 0.3)) == 2


def test_update_continues_a_slide_whose_box_comes_from_the_other_track_next_time():
    import geopandas as gpd

    from insar_slide.run.update import match_identity

    old = gpd.GeoDataFrame(geometry=[shapely.box(100, 100, 105, 105)])
    new = gpd.GeoDataFrame(geometry=[shapely.box(102, 101, 107, 106)])  # 12/25 of the smaller: < 0.5
    assert match_identity(new, old).tolist() == [-1]
    assert match_identity(new, old, iou=0.3).tolist() == [0]  # IoU 0.32: the merge calls them one slide


def test_slides_near_an_inner_border_stay_open():
    feats = merge_boxes(owned_boxes([(_win("asc", 0, 0), _dets((100, 100, 140, 140, 0.9))),
                                     (_win("asc", 0, 1), _dets((300, 100, 340, 140, 0.9), (480, 100, 499, 140, 0.9)))],
                                    RULES), RULES)
    block = Block(1, 0, 0, 2, 2)  # cores 0..499 px: its inner borders are x = 500 and y = 500
    closed, open_ = split_closed(feats, block, RULES, (4, 4))
    assert len(closed) == 2 and len(open_) == 1
    assert shapely.bounds(open_.iloc[0]["geometry"])[2] == 499
    # at the next level the open slide merges with what the neighbour block hands up
    other = merge_boxes(owned_boxes([(_win("asc", 0, 2), _dets((485, 105, 530, 150, 0.8)))], RULES), RULES)
    up = merge_features([open_, other], RULES)
    assert len(up) == 1 and up.iloc[0]["n_boxes"] == 2


def test_slide_ids_are_stable_and_follow_the_pixel_grid():
    g = [shapely.box(10, 900, 30, 950), shapely.box(10.0000001, 900, 30, 950), shapely.box(11, 900, 30, 950)]
    ids = slide_ids(g, GRID)
    assert ids[0] == ids[1] != ids[2] and all(i.startswith("fr-") for i in ids)
    assert slide_ids(np.array([], dtype=object), GRID) == []
