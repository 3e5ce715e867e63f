"""The dissolve rule on hand-made boxes (no Dask, no files): :mod:`insar_slide.core.features`."""

from __future__ import annotations

import pandas as pd
import shapely

from insar_slide.core.features import FEATURE_COLUMNS, dissolve, order_features


def _feats(rows: list[tuple[tuple[float, float, float, float], float, str]], **extra: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"geometry": [shapely.box(*b) for b, _, _ in rows], "score": [s for _, s, _ in rows],
                         "tracks": [t for _, _, t in rows], "n_boxes": 1, **extra})


def test_boxes_sharing_enough_of_the_smaller_one_become_one_slide():
    f = _feats([((0, 0, 10, 10), 0.6, "asc"), ((5, 0, 15, 10), 0.9, "desc"), ((100, 100, 110, 110), 0.7, "asc")])
    out = dissolve(f, 0.2)
    assert list(out.columns) == FEATURE_COLUMNS and len(out) == 2
    merged = out.iloc[0]
    assert merged["geometry"].equals(shapely.box(0, 0, 15, 10))
    assert (merged["score"], merged["tracks"], merged["n_boxes"]) == (0.9, "asc,desc", 2)
    assert out.iloc[1]["geometry"].equals(shapely.box(100, 100, 110, 110))


def test_the_overlap_is_a_share_of_the_smaller_box():
    big, small = ((0, 0, 100, 100), 0.5, "asc"), ((90, 0, 110, 10), 0.5, "desc")  # half of the small box inside
    assert len(dissolve(_feats([big, small]), 0.5)) == 1
    assert len(dissolve(_feats([big, small]), 0.51)) == 2


def test_merging_is_transitive():
    chain = [((0, 0, 10, 10), 0.5, "a"), ((8, 0, 18, 10), 0.5, "b"), ((16, 0, 26, 10), 0.5, "c")]
    out = dissolve(_feats(chain), 0.2)
    assert len(out) == 1 and out.iloc[0]["tracks"] == "a,b,c" and out.iloc[0]["n_boxes"] == 3


def test_across_tracks_only_leaves_pairs_of_one_track_apart():
    same = _feats([((0, 0, 10, 10), 0.5, "asc"), ((0, 0, 10, 10), 0.8, "asc")])
    assert len(dissolve(same, 0.2)) == 1
    assert len(dissolve(same, 0.2, across_tracks_only=True)) == 2


def test_scale_is_the_largest_factor_and_the_order_does_not_depend_on_the_input():
    rows = [((0, 0, 10, 10), 0.5, "asc"), ((2, 2, 12, 12), 0.7, "desc"), ((50, 0, 60, 10), 0.4, "asc")]
    a = dissolve(_feats(rows, scale=[1, 2, 1]), 0.2)
    b = dissolve(_feats(rows[::-1], scale=[1, 2, 1][::-1]), 0.2)
    assert list(a["scale"]) == [2, 1]
    assert [g.wkb for g in a.geometry] == [g.wkb for g in b.geometry]
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))


def test_order_is_by_bounds_then_score():
    f = _feats([((5, 0, 6, 1), 0.1, "a"), ((0, 0, 1, 1), 0.2, "a"), ((0, 0, 1, 1), 0.9, "b")])
    assert list(order_features(f)["score"]) == [0.9, 0.2, 0.1]
    assert len(dissolve(f.iloc[:1], 0.2)) == 1 and dissolve(f.iloc[:0], 0.2).empty
