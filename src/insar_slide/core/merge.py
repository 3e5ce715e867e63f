"""The merge rules, the pure part: per-window detections → slide features, on hand-made boxes
as well as on a run's (pandas, numpy, shapely and ``torchvision.ops``; no Dask, no files).

Rules (in this order):

1. **Ownership** (:func:`owned_boxes`). A detection belongs to the window whose *core* holds
   its box centre; the same slide seen in a neighbour's halo is dropped there. With ``halo`` ≥
   half a slide's extent, the owner saw the slide whole.
2. **Cross-tile NMS** (:func:`nms`: ``torchvision.ops.batched_nms`` per track and scale, IoU
   ``nms_iou``) for the boxes near seams that two windows both own a version of.
3. **Across tracks** (:func:`fuse_tracks`, when ``track_nms_iou`` is set). Boxes of different
   tracks (at one scale) with IoU ≥ ``track_nms_iou`` are one slide seen twice: the higher-scored
   box stands for it (greedy, as NMS) and takes the other's tracks and box count. Two tracks see
   a slide through different look angles and noise, so their boxes of it are offset by a few
   pixels; their union (rule 4) would be larger than the slide — for a 5-px slide often by more
   than the 0.5 IoU at which a detection counts.
4. **Dissolve** (:func:`.features.dissolve`, shared with the baselines). Boxes — of one track or
   of both — that share at least ``dissolve_overlap`` of the smaller one's area are one slide:
   their union is its polygon, its score the highest, ``tracks`` every track that saw it.

**Scales** (:mod:`.scales`). Boxes are stored in native pixels, a box belongs to the window of
its level whose core (×f) holds its centre, NMS runs per track *and scale*; between NMS and
dissolve come the size gate (:func:`size_gate`) and the fragments rule
(:func:`.scales.absorb_fragments`); with ``nested_share`` a finer feature smaller than that share
of a coarser one around it is neither its fragment nor dissolved into it. Rules 2 and 3 run at the leaves of the reduction tree,
where every box is still its own; above them only dissolve joins what blocks hand up, so a
slide whose two tracks' boxes fall in different leaves (centres a pixel apart across a leaf
border) is their union, as before rule 3. Greedy rules (NMS is one) are not associative: run
again at every block they would make the result depend on the blocks.

**Closing** (:func:`split_closed`). After a block of the reduction tree merges, a slide farther
than :func:`.scales.closing_margin` from every inner border of its block can meet nothing from
another block: it is closed; only the open ones travel up the tree.

**Frames.** Detections come in the native pixel frame (``x0, y0, x1, y1``: x = column,
y = row); :func:`to_map` turns them into the map frame (``minx, miny, maxx, maxy`` in the
grid's CRS), in which every later rule works.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import shapely
import torch
from torchvision.ops import batched_nms

from ..grid import Grid
from .features import absorb_into, dissolve, order_features
from .scales import absorb_fragments, closing_margin, gate
from .tiling import Block, Window

#: Bumped whenever a rule's behaviour changes: a stored block result of other rules is recomputed
#: (its key, ``run.merge.block_key``, holds this), the stored window detections are reused.
#: 2: rule 3 (across tracks), 2026-12-07.
RULES_VERSION = 2
BOX_COLUMNS = ["minx", "miny", "maxx", "maxy", "score", "track", "scale"]
PIXEL_COLUMNS = ["x0", "y0", "x1", "y1", "score"]


@dataclass(frozen=True, kw_only=True)
class MergeRules:
    """What the merge rules depend on (and nothing about where detections are kept)."""

    grid: Grid
    halo: int
    tracks: tuple[str, ...]
    score_threshold: float
    nms_iou: float
    dissolve_overlap: float
    scales: tuple[int, ...] = (1,)
    window: int = 0  # core size of the tiling (for block bounds)
    track_nms_iou: float | None = None  # rule 3 (None: off, boxes of two tracks are dissolved)
    nested_share: float = 0.0  # a finer feature smaller than this share of a coarser one is not its part


def empty_features() -> pd.DataFrame:
    return pd.DataFrame({"geometry": pd.Series([], dtype=object), "score": pd.Series([], dtype=float),
                         "tracks": pd.Series([], dtype=object), "n_boxes": pd.Series([], dtype=int),
                         "scale": pd.Series([], dtype=int)})


def to_map(pixel_boxes: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    """Boxes in the native pixel frame (``x0, y0, x1, y1``) → the map frame (``minx … maxy``)."""
    g = grid
    return pd.DataFrame({"minx": g.x0 + pixel_boxes["x0"] * g.dx, "maxx": g.x0 + pixel_boxes["x1"] * g.dx,
                         "miny": g.y0 + pixel_boxes["y1"] * g.dy, "maxy": g.y0 + pixel_boxes["y0"] * g.dy})


def owned(window: Window, detections: pd.DataFrame, rules: MergeRules) -> pd.DataFrame:
    """The detections of one window (native pixel frame, :data:`PIXEL_COLUMNS`) above the score
    threshold whose centre lies in the window's core (of its level, ×f), in the map frame."""
    g = rules.grid
    d = detections[detections["score"] >= rules.score_threshold]
    core = window.native_core()
    if window.scale != 1:  # a coarse level's last pixel may reach past the native grid
        d = d.assign(x0=d["x0"].clip(0, g.width), x1=d["x1"].clip(0, g.width),
                     y0=d["y0"].clip(0, g.height), y1=d["y1"].clip(0, g.height))
    cx, cy = (d["x0"] + d["x1"]) / 2, (d["y0"] + d["y1"]) / 2
    d = d[(cx >= core.col0) & (cx < core.col1) & (cy >= core.row0) & (cy < core.row1)]
    return to_map(d, g).assign(score=d["score"].to_numpy(), track=window.track, scale=window.scale)[BOX_COLUMNS]


def owned_boxes(detections: Iterable[tuple[Window, pd.DataFrame]], rules: MergeRules) -> pd.DataFrame:
    """Rule 1 over windows: their owned boxes in the map frame, :data:`BOX_COLUMNS`."""
    parts = [b for w, d in detections if len(b := owned(w, d, rules))]
    if not parts:
        return pd.DataFrame(columns=BOX_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def nms(boxes: pd.DataFrame, rules: MergeRules) -> pd.DataFrame:
    """Rule 2: cross-tile NMS per track and scale (``boxes``: map frame, :data:`BOX_COLUMNS`)."""
    if len(boxes) < 2:
        return boxes
    xy = torch.from_numpy(boxes[["minx", "miny", "maxx", "maxy"]].to_numpy(np.float64, copy=True))
    sc = torch.from_numpy(boxes["score"].to_numpy(np.float64, copy=True))
    idx = torch.as_tensor([rules.tracks.index(t) * len(rules.scales) + rules.scales.index(int(f))
                           for t, f in zip(boxes["track"], boxes["scale"], strict=True)])
    keep = batched_nms(xy, sc, idx, rules.nms_iou).numpy()
    return boxes.iloc[np.sort(keep)].reset_index(drop=True)


def size_gate(boxes: pd.DataFrame, rules: MergeRules) -> pd.DataFrame:
    """Drop coarse boxes no larger than what the next finer level sees whole (:func:`.scales.gate`)."""
    if len(rules.scales) == 1 or not len(boxes):
        return boxes
    g = rules.grid
    extent = np.maximum((boxes["maxx"] - boxes["minx"]).to_numpy(float) / g.dx,
                        (boxes["maxy"] - boxes["miny"]).to_numpy(float) / abs(g.dy))
    keep = gate(extent, boxes["scale"].to_numpy(np.int64), rules.scales, rules.halo)
    return boxes[keep].reset_index(drop=True)


def boxes_to_features(boxes: pd.DataFrame) -> pd.DataFrame:
    if not len(boxes):
        return empty_features()
    geoms = shapely.box(boxes["minx"], boxes["miny"], boxes["maxx"], boxes["maxy"])
    return pd.DataFrame({"geometry": list(geoms), "score": boxes["score"].astype(float).to_numpy(),
                         "tracks": boxes["track"].astype(str).to_numpy(), "n_boxes": 1,
                         "scale": boxes["scale"].astype(np.int64).to_numpy()})


def fuse_tracks(features: pd.DataFrame, iou: float | None) -> pd.DataFrame:
    """Rule 3: features of different tracks (at one scale) with IoU ≥ ``iou`` are one slide.

    Greedy in score order (ties: :func:`.features.order_features`' order, from the bounds), as
    NMS: a feature overlapping an already kept one by ``iou`` whose tracks it does not share is
    dropped and its tracks and box count pass to the highest-scored such feature. Features
    sharing a track never suppress each other (rule 2 has done that per track; a fragment's
    coarse feature may list several). ``iou=None`` returns ``features`` unchanged.
    """
    n = len(features)
    if iou is None or n < 2:
        return features
    if features["tracks"].nunique() < 2:
        return features
    features = order_features(features)
    tracks = features["tracks"].astype(str).to_numpy()
    sets = [frozenset(t.split(",")) for t in tracks]
    geoms = np.asarray(features["geometry"], dtype=object)
    score = features["score"].to_numpy(np.float64)
    scale = features["scale"].to_numpy(np.int64) if "scale" in features else np.ones(n, np.int64)
    a, b = shapely.STRtree(geoms).query(geoms)
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), -score))] = np.arange(n)
    m = (rank[b] < rank[a]) & (scale[a] == scale[b])  # b may suppress a
    a, b = a[m], b[m]
    disjoint = np.fromiter((not (sets[i] & sets[j]) for i, j in zip(a, b, strict=True)), bool, len(a))
    a, b = a[disjoint], b[disjoint]
    if not len(a):
        return features
    inter = shapely.area(shapely.intersection(geoms[a], geoms[b]))
    union = shapely.area(geoms[a]) + shapely.area(geoms[b]) - inter
    ok = inter >= iou * union
    a, b = a[ok], b[ok]
    order = np.lexsort((rank[b], rank[a]))  # by the suppressed one's rank, then its best keeper first
    a, b = a[order], b[order]
    parent = np.full(n, -1)
    k = 0
    for i in np.argsort(rank):  # rank order: a keeper's own fate is known before it is used
        while k < len(a) and rank[a[k]] < rank[i]:
            k += 1
        while k < len(a) and a[k] == i:
            if parent[i] < 0 and parent[b[k]] < 0:
                parent[i] = b[k]
            k += 1
    if (parent < 0).all():
        return features
    return absorb_into(features, parent)


def merge_boxes(boxes: pd.DataFrame, rules: MergeRules) -> pd.DataFrame:
    """A leaf's owned boxes → NMS → size gate → fragments → across tracks → dissolve: its features."""
    feats = boxes_to_features(size_gate(nms(boxes, rules), rules))
    return dissolve(fuse_tracks(absorb_fragments(feats, rules.nested_share), rules.track_nms_iou), rules.dissolve_overlap,
                    nested_share=rules.nested_share)


def merge_features(children: Sequence[pd.DataFrame], rules: MergeRules) -> pd.DataFrame:
    """The open features of a block's children → fragments → dissolve."""
    opened = [c for c in children if len(c)]
    feats = pd.concat(opened, ignore_index=True) if opened else empty_features()
    return dissolve(absorb_fragments(feats, rules.nested_share), rules.dissolve_overlap, nested_share=rules.nested_share)


def block_bounds(block: Block, grid: Grid, window: int) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a block's cores in the map frame."""
    g = grid
    c0, c1 = block.c0 * window, min(block.c1 * window, g.width)
    r0, r1 = block.r0 * window, min(block.r1 * window, g.height)
    return g.x0 + c0 * g.dx, g.y0 + r1 * g.dy, g.x0 + c1 * g.dx, g.y0 + r0 * g.dy


def split_closed(features: pd.DataFrame, block: Block, rules: MergeRules,
                 tiling: tuple[int, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(closed, open): open features come within :func:`.scales.closing_margin` px (halo + 1 at
    one scale) of an inner border of the block."""
    if not len(features):
        return features, features
    g = rules.grid
    xmin, ymin, xmax, ymax = block_bounds(block, g, rules.window)
    margin = closing_margin(rules.halo, rules.scales)
    mx, my = margin * g.dx, margin * abs(g.dy)
    b = shapely.bounds(np.asarray(features["geometry"], dtype=object))
    open_ = np.zeros(len(features), bool)
    if block.c0 > 0:
        open_ |= b[:, 0] < xmin + mx
    if block.c1 < tiling[1]:
        open_ |= b[:, 2] > xmax - mx
    if block.r0 > 0:
        open_ |= b[:, 3] > ymax - my
    if block.r1 < tiling[0]:
        open_ |= b[:, 1] < ymin + my
    return features[~open_].reset_index(drop=True), features[open_].reset_index(drop=True)


def slide_ids(geometries: Sequence[Any], grid: Grid) -> list[str]:
    """Ids from the polygons' bounds on the pixel grid: equal detections give equal ids."""
    out = []
    for minx, miny, maxx, maxy in shapely.bounds(np.asarray(geometries, dtype=object)).reshape(-1, 4):
        key = (f"{grid.crs}|{round((minx - grid.x0) / grid.dx)}|{round((maxy - grid.y0) / grid.dy)}|"
               f"{round((maxx - grid.x0) / grid.dx)}|{round((miny - grid.y0) / grid.dy)}")
        out.append("fr-" + hashlib.sha1(key.encode()).hexdigest()[:12])
    return out
