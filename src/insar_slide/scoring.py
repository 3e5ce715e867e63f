"""Strict basin-level scores: COCO size classes, AP at IoU 0.5, false alarms per look-alike kind.

Scored strictly: every detection that matches no reference slide is false, except one lying at
least half inside the box of a simulated slide below the scoring cutoffs (``ignore``, see
:func:`insar_slide.compare.match`) — *below threshold*, neither true nor false.

Frames and units. Inventories, truth and look-alike footprints are in map units of one CRS (the
mosaic's: metres for a projected CRS); :class:`PixelSize` converts their axis-aligned boxes to
*pixels of the mosaic* (``x / dx``, ``y / dy``: origin at the CRS origin, so good for sizes and
overlaps, not for indexing the raster). Areas of ground are km².

- **Size class** of a box: its area in pixels² — ``small`` < 32², ``medium`` < 96², ``large``
  ≥ 96² (COCO's limits; COCO counts a box of exactly 32² or 96² in both neighbouring classes,
  here each box is in one class).
- **Recall per class**: reference slides of the class matched by :func:`compare.match` (the
  Table-4 matching, so the classes add up to Table 4) / reference slides of the class.
- **AP at IoU 0.5** (:func:`average_precision`): boxes only, COCO's ``evaluateImg`` and
  ``accumulate`` on the basin as one image — detections ranked by score (ties and missing
  scores: inventory order, missing last), each matched in turn to the best still-free
  reference box with IoU ≥ 0.5, preferring one not ignored; ``ignore`` boxes are crowd regions
  (intersection over the detection's area ≥ 0.5, any number of detections each); 101-point
  interpolated precision. Per class, reference boxes of other classes are ignored (and so are
  detections matched to them) and an unmatched detection counts in the class of its own box.
  Unlike COCO there is no cap of 100 detections per image.
- **False alarms** (:func:`attribute_false_alarms`): each one is given to the look-alike object
  whose footprint covers the largest share of its box (≥ 25 %; only objects on one of the
  detection's ``tracks``, or on every track), else to ``background``; counted once. Rates are per
  1,000 km² of mosaic with a measurement on at least one track (:func:`mosaic_area`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from .compare import Rule, match
from .errors import ConfigError, InputError

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger(__name__)

SIZE_CLASSES = ("small", "medium", "large")
SIZE_LIMITS_PX2 = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, math.inf)}
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AP_IOU = 0.5  # the AP reported is AP50, whatever IoU the Table-4 matching uses
BACKGROUND = "background"
MIN_NUISANCE_SHARE = 0.25
NUISANCE_COLUMNS = ("object_id", "kind", "track")


@dataclass(frozen=True)
class PixelSize:
    """One mosaic pixel in map units of the inventories' CRS: ``dx`` along x, ``dy`` along y (> 0)."""

    dx: float
    dy: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.dx) and math.isfinite(self.dy) and self.dx > 0 and self.dy > 0):
            raise ConfigError(f"pixel size must be two positive map lengths, got dx={self.dx}, dy={self.dy}; "
                              "pass --mosaic or e.g. --pixel-size 30")

    @classmethod
    def of(cls, ds: xr.Dataset) -> PixelSize:
        """The pixel of a mosaic Dataset, in its CRS units."""
        from .mosaic import grid_of

        g = grid_of(ds)
        return cls(g.dx, -g.dy)


@dataclass(frozen=True)
class MosaicArea:
    """Ground areas of a mosaic in km²: the whole grid, and pixels measured on ≥ 1 track."""

    grid_km2: float
    valid_km2: float


def mosaic_area(ds: xr.Dataset) -> MosaicArea:
    """Areas of a mosaic (``los_rate (track, y, x)``, NaN = no data), reduced chunk by chunk with
    Dask to one count per row; a row's pixel area is geodesic for a geographic CRS."""
    from pyproj import CRS, Geod

    from .mosaic import RATE, grid_of

    g = grid_of(ds)
    per_row = np.asarray(ds[RATE].notnull().any("track").sum("x").compute().values, dtype=float)
    crs = CRS.from_user_input(g.crs)
    if crs.is_geographic:
        geod = Geod(ellps="WGS84")
        tops = g.y0 + np.arange(g.height) * g.dy
        row_km2 = np.array([abs(geod.polygon_area_perimeter([g.x0, g.x0 + g.dx, g.x0 + g.dx, g.x0],
                                                            [t + g.dy, t + g.dy, t, t])[0]) / 1e6 for t in tops])
    else:
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        row_km2 = np.full(g.height, g.dx * abs(g.dy) * unit * unit / 1e6)
    area = MosaicArea(g.area_km2(), float(per_row @ row_km2))
    log.info("mosaic: %.1f km² grid, %.1f km² measured on at least one track", area.grid_km2, area.valid_km2)
    return area


# ---------------------------------------------------------------------------- size classes and AP


def pixel_boxes(geoms: Any, pixel_size: PixelSize) -> np.ndarray:
    """Axis-aligned boxes of shapely geometries (map units) in pixels: float64 ``[N, 4]`` as
    ``(x0, y0, x1, y1)`` = bounds / pixel size."""
    b = shapely.bounds(np.asarray(geoms, dtype=object)).reshape(-1, 4)
    return b / np.array([pixel_size.dx, pixel_size.dy, pixel_size.dx, pixel_size.dy])


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``[N, 4]`` ``(x0, y0, x1, y1)`` boxes, in the boxes' units squared."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def size_class(area_px2: np.ndarray) -> np.ndarray:
    """COCO size class of each box area in pixels²: ``small`` < 32², ``medium`` < 96², else ``large``."""
    a = np.asarray(area_px2, dtype=float)
    return np.where(a < SIZE_LIMITS_PX2["small"][1], "small", np.where(a < SIZE_LIMITS_PX2["medium"][1], "medium", "large"))


def _pairs(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersecting (detection, reference) pairs with their overlap: IoU, or for a crowd box the
    intersection over the detection's area (COCO)."""
    if not len(det) or not len(gt):
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    tree = shapely.STRtree(shapely.box(*gt.T))
    idet, igt = tree.query(shapely.box(*det.T), predicate="intersects")
    d, g = det[idet], gt[igt]
    iw = np.clip(np.minimum(d[:, 2], g[:, 2]) - np.maximum(d[:, 0], g[:, 0]), 0, None)
    ih = np.clip(np.minimum(d[:, 3], g[:, 3]) - np.maximum(d[:, 1], g[:, 1]), 0, None)
    inter, ad, ag = iw * ih, box_area(d), box_area(g)
    denom = np.where(crowd[igt], ad, ad + ag - inter)
    return idet, igt, np.where(denom > 0, inter / np.where(denom > 0, denom, 1), 0.0)


def _coco_match(order: np.ndarray, n_gt: int, pairs: tuple[np.ndarray, np.ndarray, np.ndarray], gt_ignore: np.ndarray,
                crowd: np.ndarray, iou: float) -> np.ndarray:
    """COCO's greedy matching, detections taken in ``order``: per detection the reference index
    it matched, or -1. Among candidates, not-ignored references come first; a crowd box can take
    any number of detections, another reference one."""
    idet, igt, ov = pairs
    by_det: dict[int, list[tuple[int, float]]] = {}
    for k in np.lexsort((igt, gt_ignore[igt])):  # candidate order of COCO: not ignored first, then index
        by_det.setdefault(int(idet[k]), []).append((int(igt[k]), float(ov[k])))
    taken = np.zeros(n_gt, bool)
    out = np.full(len(order), -1)
    t = min(iou, 1 - 1e-10)
    for d in order:
        best, m = t, -1
        for g, v in by_det.get(int(d), ()):
            if taken[g] and not crowd[g]:
                continue
            if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                break
            if v < best:
                continue
            best, m = v, g
        if m > -1:
            out[d] = m
            taken[m] = True
    return out


def average_precision(det_boxes: np.ndarray, gt_boxes: np.ndarray, *, scores: np.ndarray, crowd_boxes: np.ndarray | None = None,
                      iou: float = 0.5, area_range: tuple[float, float] | None = None) -> float:
    """COCO average precision (101-point interpolated) of one image.

    ``det_boxes`` ``[N, 4]``, ``gt_boxes`` ``[M, 4]``, ``crowd_boxes`` ``[K, 4]``: ``(x0, y0, x1, y1)``
    in pixels; ``scores`` ``[N]`` (NaN ranks last). ``area_range`` ``[lo, hi)`` in pixels²:
    references outside it are ignored, so are detections matched to them or unmatched with their
    own area outside it. Crowd boxes are always ignored references. NaN if no reference counts.
    """
    det = np.asarray(det_boxes, float).reshape(-1, 4)
    crowd_b = np.zeros((0, 4)) if crowd_boxes is None else np.asarray(crowd_boxes, float).reshape(-1, 4)
    gt = np.concatenate([np.asarray(gt_boxes, float).reshape(-1, 4), crowd_b])
    crowd = np.arange(len(gt)) >= len(gt) - len(crowd_b)
    lo, hi = area_range if area_range is not None else (0.0, math.inf)
    a_gt, a_det = box_area(gt), box_area(det)
    gt_ignore = crowd | (a_gt < lo) | (a_gt >= hi)
    n_pos = int((~gt_ignore).sum())
    if n_pos == 0:
        return float("nan")
    s = np.asarray(scores, float).reshape(-1)
    order = np.argsort(-np.where(np.isnan(s), -np.inf, s), kind="mergesort")
    m = _coco_match(order, len(gt), _pairs(det, gt, crowd), gt_ignore, crowd, iou)[order]
    ignored = np.where(m >= 0, gt_ignore[np.maximum(m, 0)], (a_det[order] < lo) | (a_det[order] >= hi))
    tp = np.cumsum((m >= 0) & ~ignored)
    fp = np.cumsum((m < 0) & ~ignored)
    if not len(tp):
        return 0.0
    rc = tp / n_pos
    pr = tp / (tp + fp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope
    idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
    q = np.where(idx < len(pr), pr[np.minimum(idx, len(pr) - 1)], 0.0)
    return float(q.mean())


# ---------------------------------------------------------------------------- look-alikes


def nuisance_path_for(reference: str | Path) -> Path:
    """The look-alike catalogue the simulator writes beside ``<stem>.truth.parquet``: ``<stem>.nuisance.parquet``."""
    p = Path(reference)
    stem = p.name.removesuffix(".truth.parquet") if p.name.endswith(".truth.parquet") else p.stem
    return p.with_name(f"{stem}.nuisance.parquet")


def read_nuisance(path: str | Path) -> gpd.GeoDataFrame:
    """Read a look-alike catalogue (GeoParquet: ``object_id``, ``kind``, ``track`` ("" = every
    track), footprint ``geometry`` in the mosaic CRS; an object seen on two tracks may have a row
    per track, counted as one object)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such look-alike catalogue; give an existing --nuisance file or leave the option out")
    try:
        gdf = gpd.read_parquet(p)
    except Exception as exc:
        raise InputError(f"{p}: cannot read as a GeoParquet look-alike catalogue ({exc})") from exc
    missing = [c for c in NUISANCE_COLUMNS if c not in gdf.columns]
    if missing:
        raise InputError(f"{p}: look-alike catalogue lacks column(s) {', '.join(missing)}; "
                         f"it needs {', '.join(NUISANCE_COLUMNS)} and geometry")
    gdf = gdf.assign(kind=gdf["kind"].astype(str), track=gdf["track"].fillna("").astype(str),
                     object_id=gdf["object_id"].astype(str))
    if not gdf.geometry.is_valid.all():
        gdf = gdf.set_geometry(shapely.make_valid(np.asarray(gdf.geometry, dtype=object)), crs=gdf.crs)
    return gdf


def _track_sets(det: gpd.GeoDataFrame) -> list[set[str] | None]:
    if "tracks" not in det.columns:
        return [None] * len(det)
    return [({t.strip() for t in str(v).split(",") if t.strip()} or None) if isinstance(v, str) else None
            for v in det["tracks"]]


def attribute_false_alarms(boxes: np.ndarray, nuisance: gpd.GeoDataFrame, *,
                           tracks: list[set[str] | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Give each detection box (shapely boxes, map units) to the look-alike object covering the
    largest share of its area, if ≥ 25 %: ``(kind [N] str, object row [N], -1 = background)``.
    An object with a ``track`` applies only to detections on that track (``tracks`` per box;
    None = on every track)."""
    n = len(boxes)
    kinds, rows = np.full(n, BACKGROUND, dtype=object), np.full(n, -1)
    if not n or not len(nuisance):
        return kinds, rows
    geoms = np.asarray(nuisance.geometry, dtype=object)
    ib, io = shapely.STRtree(geoms).query(boxes, predicate="intersects")
    obj_track = nuisance["track"].to_numpy()
    ts = tracks if tracks is not None else [None] * n
    keep = np.array([not obj_track[o] or ts[b] is None or obj_track[o] in ts[b] for b, o in zip(ib, io, strict=True)], bool)
    ib, io = ib[keep], io[keep]
    area = shapely.area(boxes[ib])
    share = np.where(area > 0, shapely.area(shapely.intersection(boxes[ib], geoms[io])) / np.where(area > 0, area, 1), 0.0)
    order = np.lexsort((-share, ib))  # per box, largest share first
    ib, io, share = ib[order], io[order], share[order]
    _, first = np.unique(ib, return_index=True)
    best = first[share[first] >= MIN_NUISANCE_SHARE]
    rows[ib[best]] = io[best]
    kinds[ib[best]] = nuisance["kind"].to_numpy()[io[best]]
    return kinds, rows


# ---------------------------------------------------------------------------- the report


@dataclass
class StrictReport:
    """Strict scores of one inventory: Table-4 ``counts`` (:meth:`compare.Match.counts`),
    ``ap50`` (box rule), ``size_classes`` (rows ``small medium large all``: ``n_truth matched
    recall ap50``), and ``false_alarms`` (rows per look-alike kind, ``background``, ``all``:
    ``objects objects_with_false_alarm false_alarms per_1000_km2``; only ``all`` without a
    catalogue)."""

    counts: dict[str, Any]
    ap50: float
    size_classes: pd.DataFrame
    false_alarms: pd.DataFrame
    area: MosaicArea | None = None
    catalogue: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN → None)."""
        def clean(v: Any) -> Any:
            if v is pd.NA:
                return None
            if isinstance(v, float | np.floating):
                return None if math.isnan(v) else float(v)
            return int(v) if isinstance(v, np.integer) else v
        sc = {r.pop("class"): {k: clean(v) for k, v in r.items()} for r in self.size_classes.to_dict("records")}
        fa = {r.pop("kind"): {k: clean(v) for k, v in r.items()} for r in self.false_alarms.to_dict("records")}
        return {**{k: clean(v) for k, v in self.counts.items()}, "ap50": clean(self.ap50), "size_classes": sc,
                "false_alarms": {"catalogue": self.catalogue, "kinds": fa, "notes": self.notes}}


def _reproject(gdf: gpd.GeoDataFrame | None, crs: Any) -> gpd.GeoDataFrame | None:
    if gdf is not None and crs is not None and gdf.crs is not None and gdf.crs != crs:
        return gdf.to_crs(crs)
    return gdf


def _false_alarm_table(false: gpd.GeoDataFrame, nuisance: gpd.GeoDataFrame | None, area: MosaicArea | None) -> pd.DataFrame:
    """Rows per look-alike kind, ``background`` and ``all`` (only ``all`` without a catalogue)."""
    def rate(c: int) -> float:
        return c / area.valid_km2 * 1000 if area is not None and area.valid_km2 > 0 else float("nan")

    rows: list[dict[str, Any]] = []
    if nuisance is not None:
        boxes = shapely.envelope(np.asarray(false.geometry, dtype=object))
        kinds, objs = attribute_false_alarms(boxes, nuisance, tracks=_track_sets(false))
        ids = nuisance["object_id"].to_numpy()
        n_kind = nuisance.groupby("kind")["object_id"].nunique()  # an object may have one row per track
        for k in [*sorted(n_kind.index), BACKGROUND]:
            on = (kinds == k) & (objs >= 0)
            c = int((kinds == k).sum())
            rows.append({"kind": k, "objects": int(n_kind.get(k, 0)), "objects_with_false_alarm": len(set(ids[objs[on]])),
                         "false_alarms": c, "per_1000_km2": rate(c)})
        rows[-1].update(objects=None, objects_with_false_alarm=None)  # background: no objects
    rows.append({"kind": "all", "objects": nuisance["object_id"].nunique() if nuisance is not None else None,
                 "objects_with_false_alarm": sum(r["objects_with_false_alarm"] or 0 for r in rows) if nuisance is not None else None,
                 "false_alarms": len(false), "per_1000_km2": rate(len(false))})
    return pd.DataFrame(rows).astype({"objects": "Int64", "objects_with_false_alarm": "Int64", "false_alarms": "int64"})


def strict_report(detections: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, *, pixel_size: PixelSize,
                  ignore: gpd.GeoDataFrame | None = None, nuisance: gpd.GeoDataFrame | None = None,
                  area: MosaicArea | None = None, rule: Rule = "box", iou: float = 0.5) -> StrictReport:
    """Score ``detections`` against ``truth`` (the slides asked for) strictly; ``ignore`` holds the
    simulated slides below the cutoffs, ``nuisance`` the look-alike catalogue (None: not
    attributed), ``area`` the mosaic's areas (None: no rates). Everything is reprojected to
    ``truth``'s CRS, whose units ``pixel_size`` is in."""
    crs = truth.crs
    det = _reproject(detections, crs)
    ignore, nuisance = _reproject(ignore, crs), _reproject(nuisance, crs)
    assert det is not None
    m = match(det, truth, rule=rule, threshold=iou, ignore=ignore)
    counts = m.counts()
    d_geom, t_geom = np.asarray(det.geometry, dtype=object), np.asarray(truth.geometry, dtype=object)
    db, tb = pixel_boxes(d_geom, pixel_size), pixel_boxes(t_geom, pixel_size)
    cb = pixel_boxes(np.asarray(ignore.geometry, dtype=object), pixel_size) if ignore is not None and len(ignore) else None
    scores = det["score"].to_numpy(float) if "score" in det.columns else np.full(len(det), np.nan)
    t_class = size_class(box_area(tb))
    rows = []
    for name in (*SIZE_CLASSES, "all"):
        sel = t_class == name if name != "all" else np.ones(len(tb), bool)
        n, hit = int(sel.sum()), int((m.b_matched[sel] >= 0).sum())
        ap = average_precision(db, tb, scores=scores, crowd_boxes=cb, iou=AP_IOU,
                               area_range=SIZE_LIMITS_PX2[name] if name != "all" else None)
        rows.append({"class": name, "n_truth": n, "matched": hit, "recall": hit / n if n else float("nan"), "ap50": ap})
    sizes = pd.DataFrame(rows)
    false = (m.a_matched < 0) & ~(m.a_ignored if m.a_ignored is not None else np.zeros(len(det), bool))
    fa = _false_alarm_table(det[false], nuisance, area)
    notes = [] if nuisance is not None else ["no look-alike catalogue: false alarms not attributed to kinds"]
    if area is None:
        notes.append("no mosaic: no rates per 1,000 km²")
    return StrictReport(counts, sizes.loc[sizes["class"] == "all", "ap50"].item(), sizes, fa,
                        area=area, catalogue=nuisance is not None, notes=notes)
