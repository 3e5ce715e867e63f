"""Slide features and the dissolve rule.

A *feature* table is a ``pandas.DataFrame`` with :data:`FEATURE_COLUMNS` (and, in multi-scale
runs, ``scale``): ``geometry`` a shapely polygon in the mosaic's map CRS, ``score`` the highest
detection score (NaN for the baselines), ``tracks`` the comma-joined tracks that saw it,
``n_boxes`` how many boxes or regions it is the union of.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

FEATURE_COLUMNS = ["geometry", "score", "tracks", "n_boxes"]


def order_features(features: pd.DataFrame) -> pd.DataFrame:
    """A deterministic order (by bounds, then score), whatever order the inputs came in."""
    if not len(features):
        return features
    b = shapely.bounds(np.asarray(features["geometry"], dtype=object))
    key = pd.DataFrame({"a": b[:, 0].round(3), "b": b[:, 1].round(3), "c": b[:, 2].round(3),
                        "d": b[:, 3].round(3), "e": -features["score"].to_numpy()})
    return features.iloc[key.sort_values(list("abcde"), kind="stable").index].reset_index(drop=True)


def absorb_into(features: pd.DataFrame, owner: np.ndarray) -> pd.DataFrame:
    """Drop every row ``i`` with ``owner[i] >= 0``, its tracks and box count passed to row
    ``owner[i]`` (a kept row); the kept rows in their order."""
    tracks = [set(str(t).split(",")) for t in features["tracks"]]
    boxes = features["n_boxes"].to_numpy(np.int64).copy()
    for i in np.flatnonzero(owner >= 0):
        tracks[owner[i]] |= tracks[i]
        boxes[owner[i]] += boxes[i]
    keep = owner < 0
    out = features[keep].copy()
    out["tracks"] = [",".join(sorted(tracks[i])) for i in np.flatnonzero(keep)]
    out["n_boxes"] = boxes[keep]
    return out.reset_index(drop=True)


def dissolve(features: pd.DataFrame, overlap: float, *, across_tracks_only: bool = False,
             nested_share: float = 0.0) -> pd.DataFrame:
    """Union the features that share ≥ ``overlap`` of the smaller one's area (transitively).

    ``across_tracks_only``: only pairs seen on different tracks are tested (features of one
    track known to be disjoint, like connected regions, whose exact tests can be costly).
    A merged feature's score is the highest, ``tracks`` every track, ``n_boxes`` the sum
    (``scale``, when present, the largest). The result is in :func:`order_features` order.

    ``nested_share`` (with a ``scale`` column): features of different scales whose smaller one
    covers less than this share of the larger one's area are not joined — a few small slides
    the native level sees whole are not parts of one box of a coarser level drawn around them.

    The rule is applied until nothing merges: a union can share enough with a third feature
    that each of its parts alone did not (found by a property test), so one pass would not be
    idempotent and the reduction tree's result would depend on its blocks.
    """
    features = order_features(features)
    n = len(features)
    columns = FEATURE_COLUMNS + (["scale"] if "scale" in features else [])
    if n < 2:
        return features
    geoms = np.asarray(features["geometry"], dtype=object)
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms)  # bounding boxes meet; the area test below is exact
    m = a < b
    if across_tracks_only:
        tr = features["tracks"].astype(str).to_numpy()
        m &= tr[a] != tr[b]
    a, b = a[m], b[m]
    if len(a):
        inter = shapely.area(shapely.intersection(geoms[a], geoms[b]))
        small = np.minimum(shapely.area(geoms[a]), shapely.area(geoms[b]))
        ok = inter >= overlap * small
        if nested_share > 0 and "scale" in features:
            scale = features["scale"].to_numpy(np.int64)
            large = np.maximum(shapely.area(geoms[a]), shapely.area(geoms[b]))
            ok &= (scale[a] == scale[b]) | (small >= nested_share * large)
        a, b = a[ok], b[ok]
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    if len(a) == 0:
        return features
    rows = []
    for k in np.unique(label):
        members = np.where(label == k)[0]
        if len(members) == 1:
            rows.append(features.iloc[members[0]].to_dict())
            continue
        sub = features.iloc[members]
        tracks = sorted(set().union(*[set(t.split(",")) for t in sub["tracks"]]))
        row = {"geometry": shapely.union_all(geoms[members]), "score": float(sub["score"].max()),
               "tracks": ",".join(tracks), "n_boxes": int(sub["n_boxes"].sum())}
        if "scale" in sub:
            row["scale"] = int(sub["scale"].max())
        rows.append(row)
    merged = order_features(pd.DataFrame(rows, columns=columns))
    return (dissolve(merged, overlap, across_tracks_only=across_tracks_only, nested_share=nested_share)
            if len(merged) > 1 else merged)
