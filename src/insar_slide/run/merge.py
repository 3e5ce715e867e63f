"""The reducer: per-window detections → one dissolved inventory, as a tree over map blocks.

Rules (in this order):

1. **Ownership.** A detection belongs to the window whose *core* holds its box centre; the
   same slide seen in a neighbour's halo is dropped there. With ``halo`` ≥ half a slide's
   extent, the owner saw the slide whole.
2. **Cross-tile NMS** (``torchvision.ops.batched_nms``, per track, IoU ``nms_iou``) for the
   boxes near seams that two windows both own a version of (centres on either side).
3. **Dissolve** (:func:`insar_slide.core.features.dissolve`, shared with the baselines).
   Boxes — of one track or of both — that share at least ``dissolve_overlap`` of the smaller
   one's area are one slide: their union is its polygon, its score the highest, ``tracks``
   every track that saw it (``shapely.STRtree`` finds the pairs).

**Scales** (``scales: [1, f, …]``, :mod:`.scales`). Windows of every level take part; their
boxes are stored in native pixels, a box belongs to the window of its level whose core (×f)
holds its centre, and NMS runs per track *and scale*. Between NMS and dissolve come the
cross-scale rules: a coarse box is kept only when its longer side exceeds ``2·halo·f'`` native
px (``f'`` the next finer factor: smaller slides that level sees whole, at a finer pixel, so
its detection wins); a feature lying ≥ 50 % of its own area inside a coarser one is that one's
fragment — dropped, its tracks and box count passed on, its geometry not. They run at every
level of the tree (fragments and their coarse box may sit in different blocks). A large slide
is thus one slide with the coarse box as its polygon, a small one is found at the native
pixel, and column ``scale`` (multi-scale runs only) is the largest factor among the boxes
whose union is the polygon.

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
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import torch
from scipy import ndimage
from torchvision.ops import batched_nms

from ..atomic import replace_file
from ..core.features import dissolve
from ..grid import Grid, PixelWindow
from ..inventory import polygon_rate_stats
from .detect import read_detections, result_path
from .io import rate_dataset, read_window
from .plan import Window
from .scales import absorb_fragments, closing_margin, gate


@dataclass(frozen=True)
class MergeSettings:
    mosaic: str
    run_dir: str
    grid: Grid
    halo: int
    tracks: tuple[str, ...]
    score_threshold: float
    nms_iou: float
    dissolve_overlap: float
    outline: bool
    outline_min_abs_rate: float
    group: str | None = None
    scales: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class Block:
    """A rectangle of cores in the tiling: rows ``r0..r1-1``, cols ``c0..c1-1`` of windows."""

    level: int
    r0: int
    c0: int
    r1: int
    c1: int

    @property
    def name(self) -> str:
        return f"L{self.level}_r{self.r0:05d}_c{self.c0:05d}"


def empty_features() -> pd.DataFrame:
    return pd.DataFrame({"geometry": pd.Series([], dtype=object), "score": pd.Series([], dtype=float),
                         "tracks": pd.Series([], dtype=object), "n_boxes": pd.Series([], dtype=int),
                         "scale": pd.Series([], dtype=int)})


BOX_COLUMNS = ["minx", "miny", "maxx", "maxy", "score", "track", "scale"]


def owned_boxes(windows: list[Window], s: MergeSettings) -> pd.DataFrame:
    """Boxes above the score threshold whose centre lies in their window's core (of the
    window's level, ×f in native pixels), in map units, with their scale."""
    g = s.grid
    parts = []
    for w in windows:
        d = read_detections(result_path(s.run_dir, w))
        d = d[d["score"] >= s.score_threshold]
        core = w.native_core()
        if w.scale != 1:  # a coarse level's last pixel may reach past the native grid
            d = d.assign(x0=d["x0"].clip(0, g.width), x1=d["x1"].clip(0, g.width),
                         y0=d["y0"].clip(0, g.height), y1=d["y1"].clip(0, g.height))
        cx, cy = (d["x0"] + d["x1"]) / 2, (d["y0"] + d["y1"]) / 2
        own = (cx >= core.col0) & (cx < core.col1) & (cy >= core.row0) & (cy < core.row1)
        d = d[own]
        if len(d):
            parts.append(pd.DataFrame({"minx": g.x0 + d["x0"] * g.dx, "maxx": g.x0 + d["x1"] * g.dx,
                                       "miny": g.y0 + d["y1"] * g.dy, "maxy": g.y0 + d["y0"] * g.dy,
                                       "score": d["score"], "track": w.track, "scale": w.scale}))
    if not parts:
        return pd.DataFrame(columns=BOX_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def nms(boxes: pd.DataFrame, s: MergeSettings) -> pd.DataFrame:
    """Cross-tile NMS per track and scale (``boxes``: map units, :data:`BOX_COLUMNS`)."""
    if len(boxes) < 2:
        return boxes
    xy = torch.from_numpy(boxes[["minx", "miny", "maxx", "maxy"]].to_numpy(np.float64, copy=True))
    sc = torch.from_numpy(boxes["score"].to_numpy(np.float64, copy=True))
    idx = torch.as_tensor([s.tracks.index(t) * len(s.scales) + s.scales.index(int(f))
                           for t, f in zip(boxes["track"], boxes["scale"], strict=True)])
    keep = batched_nms(xy, sc, idx, s.nms_iou).numpy()
    return boxes.iloc[np.sort(keep)].reset_index(drop=True)


def size_gate(boxes: pd.DataFrame, s: MergeSettings) -> pd.DataFrame:
    """Drop coarse boxes no larger than what the next finer level sees whole (:func:`.scales.gate`)."""
    if len(s.scales) == 1 or not len(boxes):
        return boxes
    g = s.grid
    extent = np.maximum((boxes["maxx"] - boxes["minx"]).to_numpy(float) / g.dx,
                        (boxes["maxy"] - boxes["miny"]).to_numpy(float) / abs(g.dy))
    keep = gate(extent, boxes["scale"].to_numpy(np.int64), s.scales, s.halo)
    return boxes[keep].reset_index(drop=True)


def merge_boxes(boxes: pd.DataFrame, s: MergeSettings) -> pd.DataFrame:
    """A leaf's owned boxes → NMS → size gate → fragments → dissolve: its features."""
    feats = boxes_to_features(size_gate(nms(boxes, s), s))
    return dissolve(absorb_fragments(feats), s.dissolve_overlap)


def boxes_to_features(boxes: pd.DataFrame) -> pd.DataFrame:
    if not len(boxes):
        return empty_features()
    geoms = shapely.box(boxes["minx"], boxes["miny"], boxes["maxx"], boxes["maxy"])
    return pd.DataFrame({"geometry": list(geoms), "score": boxes["score"].astype(float).to_numpy(),
                         "tracks": boxes["track"].astype(str).to_numpy(), "n_boxes": 1,
                         "scale": boxes["scale"].astype(np.int64).to_numpy()})


def block_bounds(block: Block, s: MergeSettings, window: int) -> tuple[float, float, float, float]:
    g = s.grid
    c0, c1 = block.c0 * window, min(block.c1 * window, g.width)
    r0, r1 = block.r0 * window, min(block.r1 * window, g.height)
    return g.x0 + c0 * g.dx, g.y0 + r1 * g.dy, g.x0 + c1 * g.dx, g.y0 + r0 * g.dy


def split_closed(features: pd.DataFrame, block: Block, s: MergeSettings, window: int,
                 tiling: tuple[int, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(closed, open): open features come within :func:`.scales.closing_margin` px (halo + 1 at
    one scale) of an inner border of the block."""
    if not len(features):
        return features, features
    g = s.grid
    xmin, ymin, xmax, ymax = block_bounds(block, s, window)
    margin = closing_margin(s.halo, s.scales)
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


def refine_outline(rate: np.ndarray, win: PixelWindow, grid: Grid, geom: Any, thr: float) -> Any:
    """The largest connected set of pixels inside ``geom`` with |rate| ≥ ``thr``, as a polygon."""
    from rasterio import features as rfeatures

    xs = grid.x0 + (np.arange(win.col0, win.col1) + 0.5) * grid.dx
    ys = grid.y0 + (np.arange(win.row0, win.row1) + 0.5) * grid.dy
    inside = shapely.contains_xy(geom, xs[None, :], ys[:, None])
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
    crs = s.grid.crs
    if len(s.scales) == 1:  # a single-scale inventory has the columns it had before scales
        features = features.drop(columns=["scale"], errors="ignore")
    gdf = gpd.GeoDataFrame(features.reset_index(drop=True), geometry="geometry", crs=crs)
    if not len(gdf):
        return gdf
    ds = rate_dataset(s.mosaic, s.group)
    stats = polygon_rate_stats(ds, gdf.geometry)
    gdf = pd.concat([gdf, stats.reset_index(drop=True)], axis=1)
    if s.outline:
        outlines: list[Any] = []
        for geom, track in zip(gdf.geometry, gdf["rate_track"], strict=True):
            win = s.grid.window_of_bounds(*geom.bounds)
            if not track or win.rows == 0 or win.cols == 0:
                outlines.append(None)
                continue
            outlines.append(refine_outline(read_window(s.mosaic, track, win, s.group), win, s.grid, geom,
                                           s.outline_min_abs_rate))
        gdf["outline"] = gpd.GeoSeries(outlines, crs=crs)
    return gpd.GeoDataFrame(gdf, geometry="geometry", crs=crs)


def part_path(run_dir: str, block: Block) -> Path:
    return Path(run_dir) / "parts" / f"{block.name}.parquet"


def cache_path(run_dir: str, block: Block) -> Path:
    return Path(run_dir) / "reduce" / f"{block.name}.parquet"


CACHE_KEY = b"insar_slide_block"


def block_key(s: MergeSettings, block: Block, window: int, tiling: tuple[int, int], root: bool,
              fingerprints: list[str]) -> str:
    """What a block's result depends on: merge settings, its place, its windows' input fingerprints."""
    h = hashlib.sha256(json.dumps({
        "block": block.name, "window": window, "tiling": list(tiling), "root": root, "halo": s.halo,
        "tracks": list(s.tracks), "thr": s.score_threshold, "nms": s.nms_iou, "dissolve": s.dissolve_overlap,
        "outline": s.outline, "outline_thr": s.outline_min_abs_rate,
        "grid": [str(s.grid.crs), list(s.grid.transform)[:6], list(s.grid.shape)],
        **({"scales": list(s.scales)} if len(s.scales) > 1 else {})}, sort_keys=True).encode())
    for fp in sorted(fingerprints):
        h.update(fp.encode())
    return h.hexdigest()


def _cached(block: Block, s: MergeSettings, key: str) -> tuple[pd.DataFrame, int, bool] | None:
    path = cache_path(s.run_dir, block)
    try:
        table = pq.read_table(path)
        info = json.loads((table.schema.metadata or {})[CACHE_KEY])
    except Exception:  # none, truncated or foreign: recompute
        return None
    if info.get("key") != key or (info["n_closed"] and not part_path(s.run_dir, block).exists()):
        return None
    df = table.to_pandas()
    feats = pd.DataFrame({"geometry": list(shapely.from_wkb(df["geometry"].to_numpy())), "score": df["score"].astype(float),
                          "tracks": df["tracks"].astype(object), "n_boxes": df["n_boxes"].astype(int),
                          "scale": df["scale"].astype(int) if "scale" in df else 1})
    return (feats if len(feats) else empty_features()), int(info["n_closed"]), True


def _close(features: pd.DataFrame, block: Block, s: MergeSettings, window: int, tiling: tuple[int, int],
           root: bool, key: str | None) -> tuple[pd.DataFrame, int, bool]:
    closed, open_ = (features, features.iloc[:0]) if root else split_closed(features, block, s, window, tiling)
    cache = cache_path(s.run_dir, block)
    cache.unlink(missing_ok=True)  # from here until the new one is written, the part is not trusted
    if len(closed):
        done = finish(closed, s)
        replace_file(part_path(s.run_dir, block), lambda tmp: done.to_parquet(tmp, index=False))
    else:
        part_path(s.run_dir, block).unlink(missing_ok=True)
    if key is not None:
        table = pa.table({"geometry": pa.array(list(shapely.to_wkb(np.asarray(open_["geometry"], dtype=object))), pa.binary()),
                          "score": pa.array(open_["score"].to_numpy(float), pa.float64()),
                          "tracks": pa.array([str(t) for t in open_["tracks"]], pa.string()),
                          "n_boxes": pa.array(open_["n_boxes"].to_numpy(np.int64), pa.int64()),
                          "scale": pa.array(open_["scale"].to_numpy(np.int64), pa.int64())})
        table = table.replace_schema_metadata({CACHE_KEY: json.dumps({"key": key, "n_closed": len(closed)}).encode()})
        replace_file(cache, lambda tmp: pq.write_table(table, tmp))
    return open_, len(closed), False


def reduce_leaf(windows: list[Window], block: Block, s: MergeSettings, window: int, tiling: tuple[int, int],
                root: bool = False, key: str | None = None) -> tuple[pd.DataFrame, int, bool]:
    """Level 1: the block's windows' (every scale's) owned boxes → :func:`merge_boxes` →
    (open features, n closed, reused)."""
    if key is not None and (hit := _cached(block, s, key)) is not None:
        return hit
    return _close(merge_boxes(owned_boxes(windows, s), s), block, s, window, tiling, root, key)


def reduce_node(children: list[tuple[pd.DataFrame, int, bool]], block: Block, s: MergeSettings, window: int,
                tiling: tuple[int, int], root: bool = False, key: str | None = None) -> tuple[pd.DataFrame, int, bool]:
    """Level > 1: the children's open features → fragments → dissolve → (open features, n
    closed, reused)."""
    if key is not None and (hit := _cached(block, s, key)) is not None:
        return hit
    opened = [c[0] for c in children if len(c[0])]
    feats = pd.concat(opened, ignore_index=True) if opened else empty_features()
    return _close(dissolve(absorb_fragments(feats), s.dissolve_overlap), block, s, window, tiling, root, key)


def slide_ids(gdf: gpd.GeoDataFrame, grid: Grid) -> list[str]:
    """Ids from the polygon's bounds on the pixel grid: equal detections give equal ids."""
    out = []
    for minx, miny, maxx, maxy in shapely.bounds(np.asarray(gdf.geometry, dtype=object)):
        key = (f"{grid.crs}|{round((minx - grid.x0) / grid.dx)}|{round((maxy - grid.y0) / grid.dy)}|"
               f"{round((maxx - grid.x0) / grid.dx)}|{round((miny - grid.y0) / grid.dy)}")
        out.append("fr-" + hashlib.sha1(key.encode()).hexdigest()[:12])
    return out
