"""The reducer: per-window detections → one dissolved inventory, as a tree over map blocks.

The rules — ownership, cross-tile NMS, the cross-scale size gate and fragments, dissolve,
closing — are :mod:`..core.merge`; this module feeds them a run's stored detections, computes
the closed slides' rate statistics and refined outlines from the mosaic, and keeps each block's
result in the run directory (:class:`.store.RunStore`).

The reduction is a tree: level 1 handles ``reduce_block`` × ``reduce_block`` windows, each
further level 2 × 2 blocks of the level below. After each merge, a slide farther than
``halo·max(scales) + 1`` pixels (``halo + 1`` at one scale) from every inner border of its
block can no longer meet anything from another block (a box owned elsewhere reaches at most
``halo·f`` native px into it: its window's halo at scale ``f``; the first level's side is a
multiple of every factor, so no coarse core straddles a block): it is *closed* — its rate statistics and refined outline are computed right
there, on the worker, and written as a part file. Only the few *open* slides travel up the
tree, so no process ever holds all detections of the basin.

**Reuse.** A block's result depends only on the windows it covers: their detections and the
mosaic pixels inside their read areas (every box, and so every polygon and refined outline,
lies inside them). Its key hashes the merge settings with those windows' input fingerprints;
a block whose key is unchanged since the last run (an update where nothing changed there, a
resumed run) returns its stored open features and keeps its part file instead of recomputing
statistics and outlines. The cache file ``reduce/<block>.parquet`` is removed before a block
rewrites its part and written after, so a key on disk always describes the part beside it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import ndimage

from ..core.merge import (
    RULES_VERSION,
    MergeRules,
    merge_boxes,
    merge_features,
    owned_boxes,
    split_closed,
)
from ..core.tiling import Block, Window
from ..grid import Grid, PixelWindow
from ..inventory import polygon_rate_stats
from .io import rate_dataset, read_window
from .store import RunStore


@dataclass(frozen=True, kw_only=True)
class MergeSettings:
    """The merge rules and what the I/O around them needs (small; pickled into each task)."""

    rules: MergeRules
    mosaic: str
    store: RunStore
    outline: bool
    outline_min_abs_rate: float
    group: str | None = None
    min_coherence: float | None = None  # the outline reads the rates through the run's quality mask


def refine_outline(rate: np.ndarray, win: PixelWindow, grid: Grid, geom: Any, thr: float) -> Any:
    """The largest connected set of pixels inside ``geom`` with |rate| ≥ ``thr``, as a polygon."""
    from rasterio import features as rfeatures

    inside = grid.centres_inside(geom, win)
    fast = inside & (np.abs(np.nan_to_num(rate, nan=0.0)) >= thr)
    lab, n = ndimage.label(fast)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    mask = lab == (int(np.argmax(sizes)) + 1)
    shapes = [shapely.geometry.shape(sh) for sh, v in rfeatures.shapes(mask.astype(np.uint8), mask=mask,
                                                                      transform=grid.window_grid(win).transform) if v == 1]
    return shapely.union_all(shapes) if shapes else None


def finish(features: pd.DataFrame, s: MergeSettings) -> gpd.GeoDataFrame:
    """Closed features → rows with rate statistics (and refined outlines)."""
    grid = s.rules.grid
    crs = grid.crs
    if len(s.rules.scales) == 1:  # a single-scale inventory has the columns it had before scales
        features = features.drop(columns=["scale"], errors="ignore")
    gdf = gpd.GeoDataFrame(features.reset_index(drop=True), geometry="geometry", crs=crs)
    if not len(gdf):
        return gdf
    ds = rate_dataset(s.mosaic, s.group)
    stats = polygon_rate_stats(ds, gdf.geometry, min_coherence=s.min_coherence)
    gdf = pd.concat([gdf, stats.reset_index(drop=True)], axis=1)
    if s.outline:
        outlines: list[Any] = []
        for geom, track in zip(gdf.geometry, gdf["rate_track"], strict=True):
            win = grid.window_of_bounds(*geom.bounds)
            if not track or win.rows == 0 or win.cols == 0:
                outlines.append(None)
                continue
            outlines.append(refine_outline(read_window(s.mosaic, track, win, s.group, min_coherence=s.min_coherence),
                                           win, grid, geom,
                                           s.outline_min_abs_rate))
        gdf["outline"] = gpd.GeoSeries(outlines, crs=crs)
    return gpd.GeoDataFrame(gdf, geometry="geometry", crs=crs)


def block_key(s: MergeSettings, block: Block, tiling: tuple[int, int], root: bool, fingerprints: list[str]) -> str:
    """What a block's result depends on: merge settings, its place, its windows' input fingerprints."""
    r = s.rules
    h = hashlib.sha256(json.dumps({
        "block": block.name, "rules": RULES_VERSION, "window": r.window, "tiling": list(tiling), "root": root, "halo": r.halo,
        "tracks": list(r.tracks), "thr": r.score_threshold, "nms": r.nms_iou, "dissolve": r.dissolve_overlap,
        "outline": s.outline, "outline_thr": s.outline_min_abs_rate,
        "grid": [str(r.grid.crs), list(r.grid.transform)[:6], list(r.grid.shape)],
        **({"scales": list(r.scales)} if len(r.scales) > 1 else {}),
        **({"track_nms": r.track_nms_iou} if r.track_nms_iou is not None else {}),
        **({"nested": r.nested_share} if r.nested_share and len(r.scales) > 1 else {})}, sort_keys=True).encode())
    for fp in sorted(fingerprints):
        h.update(fp.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class BlockResult:
    """What a block of the reduction tree hands up: its open features, how many slides it
    closed (and wrote as its part file), and whether its stored result was reused."""

    open: pd.DataFrame
    n_closed: int
    reused: bool


@dataclass(frozen=True)
class BlockJob:
    """One block's place in the reduction: the block, the native tiling (rows, cols of cores),
    whether it is the root (nothing stays open), and its cache key (None: not kept)."""

    block: Block
    tiling: tuple[int, int]
    root: bool = False
    key: str | None = None


def _cached(job: BlockJob, s: MergeSettings) -> BlockResult | None:
    hit = s.store.read_block(job.block, job.key) if job.key is not None else None
    return BlockResult(hit[0], hit[1], True) if hit is not None else None


def _close(features: pd.DataFrame, job: BlockJob, s: MergeSettings) -> BlockResult:
    closed, open_ = (features, features.iloc[:0]) if job.root else split_closed(features, job.block, s.rules, job.tiling)
    s.store.forget_block(job.block)  # from here until the new entry is written, the part is not trusted
    s.store.write_block(job.block, finish(closed, s) if len(closed) else None, open_, job.key)
    return BlockResult(open_, len(closed), False)


def reduce_leaf(windows: list[Window], job: BlockJob, s: MergeSettings) -> BlockResult:
    """Level 1: the block's windows' (every scale's) owned boxes → :func:`..core.merge.merge_boxes`."""
    if (hit := _cached(job, s)) is not None:
        return hit
    boxes = owned_boxes(((w, s.store.read_detections(w)) for w in windows), s.rules)
    return _close(merge_boxes(boxes, s.rules), job, s)


def reduce_node(children: list[BlockResult], job: BlockJob, s: MergeSettings) -> BlockResult:
    """Level > 1: the children's open features → :func:`..core.merge.merge_features`."""
    if (hit := _cached(job, s)) is not None:
        return hit
    return _close(merge_features([c.open for c in children], s.rules), job, s)
