"""Training chips from mosaics and inventories (the paper's section 2.3, with a leak-free split).

Per source mosaic and track: 512 × 512 windows on a grid with no overlap → keep windows whose
max |rate| ≥ 10 mm/yr (and, with a river line, whose centre lies within 50 km of it) → split
train/validation 7:3 by spatial blocks → only then rotate by 0/90/180/270° (clockwise) with
exact box transforms. The paper rotated first and then split, which puts rotated twins of
validation tiles into training; splitting first avoids that leak.

Output folder: ``images/<chip>.tif`` (float32 rate, mm/yr, NaN holes, georeferenced for the
unrotated chips), ``png/<chip>.png`` (for LabelImg), ``voc/<chip>.xml``, ``coco_train.json``,
``coco_val.json``, ``chips.csv`` (where each chip came from) and ``manifest.json``.

Regions not scored: a slide cut by the chip edge that the sliver rule drops, and (with a
simulated truth inventory) a slide below the labelling thresholds on the chip's track, are
written as COCO ``iscrowd`` annotations and VOC ``difficult`` objects. A detection there is
neither a hit nor a false alarm in ``evaluate`` — the model is not asked for these slides, but
finding one is not a mistake either. ``train`` with ``ignore_regions: true`` does not sample
anchors or proposals there as background; without it they are background, as before.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from pyproj import CRS
from rasterio.errors import NotGeoreferencedWarning

from ..atomic import atomic_path
from ..core.scales import level_shape
from ..errors import ConfigError, InputError
from ..grid import Grid, PixelWindow, chunk_windows
from ..inventory import read_inventory
from ..mosaic import grid_of, open_basin
from ..progress import Progress, steps_of
from ..run.io import read_level
from .boxes import SliverRule, block_split, clip_boxes, ignore_boxes, polygon_to_pixel, rotate_cw
from .config import ChipsConfig
from .voc import coco_dict, read_voc, voc_xml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Level:
    """A chip source's mosaic at its block-mean ``factor`` (1: native): the grid chips are cut
    on and the reader of its windows — :func:`..run.io.read_level`, the same pixels that
    multi-scale inference reads (a coarse pixel is the mean of the valid native pixels of its
    block, NaN when fewer than half are valid)."""

    mosaic: str
    factor: int
    grid: Grid
    tracks: tuple[str, ...]

    @classmethod
    def open(cls, mosaic: str, factor: int) -> Level:
        ds = open_basin(mosaic)
        g = grid_of(ds)
        rows, cols = level_shape(g.shape, factor)
        grid = Grid(g.crs, g.x0, g.y0, g.dx * factor, g.dy * factor, rows, cols)
        return cls(str(mosaic), factor, grid, tuple(str(t) for t in ds.track.values))

    def read(self, track: str, win: PixelWindow) -> np.ndarray:
        return read_level(self.mosaic, track, win, factor=self.factor)


@dataclass(frozen=True)
class Candidate:
    source: int
    track: str
    win: PixelWindow
    block: int


def _labels(gdf: gpd.GeoDataFrame, track: str, cfg: ChipsConfig) -> gpd.GeoDataFrame:
    """The inventory rows that are objects on ``track`` (truth: visible and fast enough there)."""
    peak, vis = f"peak_los_{track}", f"visible_fraction_{track}"
    if peak in gdf.columns and vis in gdf.columns:
        keep = (gdf[peak].abs() >= cfg.label_min_abs_los) & (gdf[vis] >= cfg.label_min_visible)
        return gdf[keep]
    return gdf


def _voc_to_inventory(folder: Path, manifest: Path, grid: Grid) -> gpd.GeoDataFrame:
    """Boxes drawn in LabelImg on chips → polygons in the mosaic CRS (un-rotating each chip)."""
    table = pd.read_csv(manifest).set_index("chip")
    polys = []
    for xml in sorted(folder.glob("*.xml")):
        chip = xml.stem
        if chip not in table.index:
            raise InputError(f"{xml}: chip {chip!r} is not in {manifest}; pass the chips.csv written with these chips")
        row = table.loc[chip]
        _, (h, w), boxes = read_voc(xml)
        turns = (4 - int(row["rotation"]) // 90) % 4  # undo the clockwise rotation
        _, back = rotate_cw(np.zeros((h, w)), boxes, turns)
        t = grid.window_grid(PixelWindow(int(row["row0"]), int(row["col0"]), h, w)).transform
        polys += [shapely.box(*(t * (x1, y1)), *(t * (x2, y2))).normalize() for x1, y1, x2, y2 in back]
    return gpd.GeoDataFrame({"method": "manual"}, geometry=polys, crs=grid.crs, index=range(len(polys)))


def _load_inventory(src: Any, grid: Grid) -> gpd.GeoDataFrame:
    p = Path(src.inventory)
    if p.is_dir():
        if not src.voc_manifest:
            raise ConfigError(f"sources.inventory: {p} is a VOC folder; also give sources.voc_manifest (its chips.csv)")
        return _voc_to_inventory(p, Path(src.voc_manifest), grid)
    gdf = read_inventory(p)
    if gdf.crs is None:
        raise InputError(f"{p}: the inventory has no CRS; set it (e.g. gdf.set_crs) and save it again")
    if CRS.from_user_input(gdf.crs) != CRS.from_user_input(grid.crs):
        log.warning("%s: reprojecting the inventory from %s to the mosaic CRS %s", p, gdf.crs, grid.crs)
        gdf = gdf.to_crs(grid.crs)
    return gdf


def _river_distance_ok(cfg: ChipsConfig, grid: Grid, wins: list[PixelWindow]) -> np.ndarray:
    if cfg.river is None:
        return np.ones(len(wins), bool)
    line = shapely.from_wkt(Path(cfg.river.wkt).read_text())
    line = gpd.GeoSeries([line], crs="EPSG:4326").to_crs(grid.crs).iloc[0]
    t = grid.transform
    centres = [shapely.Point(t * (w.col0 + w.cols / 2, w.row0 + w.rows / 2)) for w in wins]
    return np.array([line.distance(c) <= cfg.river.buffer_km * 1000 for c in centres])


def plan_chips(cfg: ChipsConfig, progress: Progress | None = None) -> list[Candidate]:
    """The windows that become chips (before the split and rotations); ``progress`` hears the
    windows scanned per source as ``scan``."""
    out: list[Candidate] = []
    first_of: dict[str, int] = {}  # the sources of one mosaic (at any scale) share its spatial blocks
    for s, src in enumerate(cfg.sources):
        first_of.setdefault(str(src.mosaic), s)
        level = Level.open(src.mosaic, src.scale)
        grid = level.grid
        names = list(level.tracks)
        tracks = src.tracks or tuple(names)
        unknown = set(tracks) - set(names)
        if unknown:
            raise ConfigError(f"sources[{s}].tracks: {sorted(unknown)} not in {src.mosaic} (it has {names})")
        wins = [w for w in chunk_windows(grid.shape, cfg.size) if w.rows == cfg.size and w.cols == cfg.size]
        near = _river_distance_ok(cfg, grid, wins)
        nb_cols = -(-grid.width * src.scale // cfg.split.block_px)
        step = steps_of(progress, "scan" if len(cfg.sources) == 1 else f"scan {s + 1}/{len(cfg.sources)}")
        for k, t in enumerate(tracks):
            step(k * len(wins), len(tracks) * len(wins))
            for w, ok in zip(wins, near, strict=True):
                if not ok:
                    continue
                block = level.read(t, w)
                valid = np.isfinite(block)
                if valid.mean() < cfg.min_valid_fraction or np.nanmax(np.abs(block)) < cfg.min_abs_rate:
                    continue
                # blocks in native pixels, so a place's native and coarse chips share a split
                bid = (w.row0 * src.scale // cfg.split.block_px) * nb_cols + w.col0 * src.scale // cfg.split.block_px
                out.append(Candidate(s, t, w, first_of[str(src.mosaic)] * 1_000_000 + bid))
        step(len(tracks) * len(wins), len(tracks) * len(wins))
    return out


def _box_side(geom: Any) -> float:
    x0, y0, x1, y1 = geom.bounds
    return float(max(x1 - x0, y1 - y0))


def _write_png(path: Path, rate: np.ndarray, clip: float = 40.0) -> None:
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#bdbdbd")
    plt.imsave(path, np.ma.masked_invalid(rate), cmap=cmap, vmin=-clip, vmax=clip)


def make_chips(cfg: ChipsConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Write the chip set described by ``cfg``; returns its summary (also in manifest.json).
    ``progress`` hears the windows scanned (``scan``) and the chips written (``chips``)."""
    for r in cfg.rotations:
        if r % 90 or not 0 <= r < 360:
            raise ConfigError(f"rotations: {r} is not one of 0, 90, 180, 270")
    cands = plan_chips(cfg, progress)
    if not cands:
        raise InputError("no window passes the filters (max |rate| ≥ min_abs_rate, valid fraction, river buffer); "
                         "lower min_abs_rate or check the mosaic")
    is_val = block_split(np.array([c.block for c in cands]), val_fraction=cfg.split.val_fraction, seed=cfg.split.seed)
    rule = SliverRule(cfg.sliver_min_fraction, cfg.sliver_min_side_px)
    out = Path(cfg.out)
    rows: list[dict[str, Any]] = []
    coco: dict[str, tuple[list[dict[str, Any]], list[np.ndarray], list[np.ndarray]]] = {"train": ([], [], []), "val": ([], [], [])}
    with atomic_path(out, overwrite=cfg.overwrite) as tmp:
        for sub in ("images", "png", "voc"):
            (tmp / sub).mkdir(parents=True)
        cache: dict[int, tuple[Level, gpd.GeoDataFrame]] = {}
        step = steps_of(progress, "chips")
        for n_done, (cand, val) in enumerate(zip(cands, is_val, strict=True)):
            step(n_done, len(cands))
            if cand.source not in cache:
                src = cfg.sources[cand.source]
                lv = Level.open(src.mosaic, src.scale)
                cache[cand.source] = (lv, _load_inventory(src, lv.grid))
            level, inv = cache[cand.source]
            grid = level.grid
            w = cand.win
            rate = level.read(cand.track, w)
            wgrid = grid.window_grid(w)
            labels = _labels(inv, cand.track, cfg)
            near = inv[inv.intersects(shapely.box(*wgrid.bounds))]
            is_label = near.index.isin(labels.index)
            geoms_px = [polygon_to_pixel(g, wgrid.transform) for g in near.geometry]
            labelled = [g for g, k in zip(geoms_px, is_label, strict=True) if k]
            others = [g for g, k in zip(geoms_px, is_label, strict=True) if not k]
            min_px = cfg.sources[cand.source].min_box_px
            if min_px > 0:  # too small for this level: neither a slide to find nor background
                big = [_box_side(g) >= min_px for g in labelled]
                others += [g for g, b in zip(labelled, big, strict=True) if not b]
                labelled = [g for g, b in zip(labelled, big, strict=True) if b]
            boxes = clip_boxes(labelled, (w.rows, w.cols), rule)
            ignore = ignore_boxes(labelled, others, (w.rows, w.cols), rule)
            split = "val" if val else "train"
            for rot in cfg.rotations:
                img, b = rotate_cw(rate, boxes, rot // 90)
                _, ig = rotate_cw(rate, ignore, rot // 90)
                name = f"s{cand.source}_{cand.track}_{w.row0}_{w.col0}_r{rot}"
                profile = {"driver": "GTiff", "height": img.shape[0], "width": img.shape[1], "count": 1,
                           "dtype": "float32", "nodata": float("nan"), "compress": "deflate"}
                if rot == 0:  # only the unrotated chip sits on the map
                    profile.update(crs=grid.crs, transform=wgrid.transform)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)  # rotated chips are off the map
                    with rasterio.open(tmp / "images" / f"{name}.tif", "w", **profile) as dst:
                        dst.write(img.astype("float32"), 1)
                _write_png(tmp / "png" / f"{name}.png", img)
                (tmp / "voc" / f"{name}.xml").write_text(voc_xml(f"{name}.png", img.shape, b, difficult=ig))
                images, blist, ilist = coco[split]
                images.append({"id": len(rows) + 1, "file_name": f"images/{name}.tif", "width": img.shape[1], "height": img.shape[0]})
                blist.append(b)
                ilist.append(ig)
                rows.append({"chip": name, "split": split, "source": cand.source, "mosaic": cfg.sources[cand.source].mosaic,
                             "track": cand.track, "row0": w.row0, "col0": w.col0, "rotation": rot, "n_boxes": len(b),
                             "n_ignore": len(ig)})
        step(len(cands), len(cands))
        for split, (images, blist, ilist) in coco.items():
            (tmp / f"coco_{split}.json").write_text(json.dumps(coco_dict(images, blist, ilist)))
        table = pd.DataFrame(rows)
        table.to_csv(tmp / "chips.csv", index=False)
        summary = {
            "chips": len(table), "windows": len(cands),
            "train": int((table.split == "train").sum()), "val": int((table.split == "val").sum()),
            "boxes_train": int(table.n_boxes[table.split == "train"].sum()),
            "boxes_val": int(table.n_boxes[table.split == "val"].sum()),
            "ignore_train": int(table.n_ignore[table.split == "train"].sum()),
            "ignore_val": int(table.n_ignore[table.split == "val"].sum()),
            "config": cfg.model_dump(mode="json"),
        }
        (tmp / "manifest.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
