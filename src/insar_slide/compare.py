"""Object-level comparison of two inventories (the counts of the paper's Table 4).

Matching is one-to-one and greedy: pairs are taken in order of decreasing overlap (ties: higher
detection score first). Rules:

- ``box`` (default): IoU of the polygons' bounding boxes ≥ ``threshold`` (0.5) — the paper's
  detection criterion, since the detector's output is a box;
- ``polygon``: IoU of the polygons themselves ≥ ``threshold``.

``visible_truth`` selects the simulated slides a detector can be asked to find: on some track,
|peak LOS| ≥ 10 mm/yr and at least half the slide measured (the same rule as training labels).
The other simulated slides (``hidden_truth``) can be passed as ``ignore``: a detection that
matches none of the reference and lies at least half inside one of their boxes (COCO's rule
for ``iscrowd`` regions) found a real slide too slow or too masked to be asked for — it counts
as ``below_threshold``, neither correct nor new, and precision leaves it out
(``precision_all`` counts it as new). Callers that know the mosaic clip the truth to it first
(:func:`within_extent`): a detector can only be asked for what the mosaic shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import shapely

Rule = Literal["box", "polygon"]


@dataclass
class Match:
    a_matched: np.ndarray  # per row of A: index into B, or -1
    b_matched: np.ndarray  # per row of B: index into A, or -1
    rule: str
    a_ignored: np.ndarray | None = None  # per row of A: unmatched but inside an ignore region

    @property
    def tp(self) -> int:
        return int((self.a_matched >= 0).sum())

    def counts(self) -> dict[str, Any]:
        """A = detections, B = reference: Table 4's counts and object-level P/R/F1."""
        tp, n_a, n_b = self.tp, len(self.a_matched), len(self.b_matched)
        ign = int(self.a_ignored.sum()) if self.a_ignored is not None else 0
        p = tp / (n_a - ign) if n_a - ign else 0.0
        r = tp / n_b if n_b else 0.0
        return {"correctly_detected": tp, "not_detected": n_b - tp, "newly_detected": n_a - tp - ign,
                "below_threshold": ign, "total_detected": n_a, "total_reference": n_b, "precision": p, "recall": r,
                "f1": 2 * p * r / (p + r) if p + r else 0.0, "precision_all": tp / n_a if n_a else 0.0, "rule": self.rule}


def _visible(truth: gpd.GeoDataFrame, min_abs_los: float, min_visible: float) -> np.ndarray:
    tracks = [c.removeprefix("peak_los_") for c in truth.columns if c.startswith("peak_los_")]
    if not tracks:
        return np.ones(len(truth), bool)
    keep = np.zeros(len(truth), bool)
    for t in tracks:
        vis = truth.get(f"visible_fraction_{t}")
        ok = truth[f"peak_los_{t}"].abs().to_numpy() >= min_abs_los
        if vis is not None:
            ok &= vis.to_numpy() >= min_visible
        keep |= ok
    return keep


def within_extent(truth: gpd.GeoDataFrame, bounds: tuple[float, float, float, float]) -> gpd.GeoDataFrame:
    """The truth as a mosaic of these bounds (minx, miny, maxx, maxy, the truth's CRS) shows it.

    A simulated slide may run past the mosaic's edge (the simulator places slides across basin
    edges); outside the mosaic nothing is measured. So each polygon is clipped to the extent, and
    its ``visible_fraction_<track>`` (and ``measured_fraction_<track>``) are scaled by the share
    of its area inside: a slide mostly outside is no longer asked for, one straddling the edge is
    matched by its part inside, and a slide wholly outside is dropped. (Without those columns —
    a reference that is not a simulated truth — every slide with a part inside stays, clipped.)
    """
    box = shapely.box(*bounds)
    geoms = shapely.make_valid(np.asarray(truth.geometry, dtype=object))  # a hand-drawn bowtie must not stop scoring
    area = shapely.area(geoms)
    parts = _polygonal(shapely.intersection(geoms, box))
    share = np.where(area > 0, shapely.area(parts) / np.where(area > 0, area, 1), 1.0)
    if (share >= 1 - 1e-9).all():
        return truth
    out = truth.copy()
    out["inside_fraction"] = share
    for c in out.columns:
        if c.startswith(("visible_fraction_", "measured_fraction_")):
            out[c] = out[c].to_numpy() * share
    cut = share < 1 - 1e-9
    out.loc[cut, out.geometry.name] = parts[cut]
    return out[share > 0]


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """The polygon parts of each geometry: a clipped concave slide can come back with stray lines
    or points along the edge, which would stretch its bounding box."""
    out = geoms.copy()
    for i in np.flatnonzero(shapely.get_type_id(geoms) == 7):  # GeometryCollection
        polys = [g for g in shapely.get_parts(geoms[i]) if shapely.get_type_id(g) in (3, 6)]
        out[i] = shapely.union_all(polys) if polys else shapely.Polygon()
    return out


def visible_truth(truth: gpd.GeoDataFrame, *, min_abs_los: float = 10.0, min_visible: float = 0.5) -> gpd.GeoDataFrame:
    """The simulated slides a detector is asked to find (clip the truth to the mosaic first with
    :func:`within_extent`)."""
    return truth[_visible(truth, min_abs_los, min_visible)]


def hidden_truth(truth: gpd.GeoDataFrame, *, min_abs_los: float = 10.0, min_visible: float = 0.5) -> gpd.GeoDataFrame:
    """The simulated slides :func:`visible_truth` leaves out (real, but not asked for)."""
    return truth[~_visible(truth, min_abs_los, min_visible)]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = shapely.area(shapely.intersection(a, b))
    union = shapely.area(a) + shapely.area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _ignored(ga: np.ndarray, unmatched: np.ndarray, ignore: gpd.GeoDataFrame, threshold: float) -> np.ndarray:
    out = np.zeros(len(ga), bool)
    gi = shapely.envelope(np.asarray(ignore.geometry, dtype=object))
    if not len(gi) or not unmatched.any():
        return out
    boxes = shapely.envelope(ga)
    ia, ii = shapely.STRtree(gi).query(boxes, predicate="intersects")
    area = shapely.area(boxes[ia])
    ioa = np.where(area > 0, shapely.area(shapely.intersection(boxes[ia], gi[ii])) / np.where(area > 0, area, 1), 0.0)
    out[ia[ioa >= threshold]] = True
    return out & unmatched


def match(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, *, rule: Rule = "box", threshold: float = 0.5,
          ignore: gpd.GeoDataFrame | None = None) -> Match:
    """Match inventory ``a`` (e.g. detections) against ``b`` (e.g. truth); ``b`` and ``ignore``
    are reprojected to ``a``'s CRS. An unmatched row of ``a`` whose box lies at least
    ``threshold`` inside the box of an ``ignore`` row is flagged in ``a_ignored``."""
    if a.crs is not None and b.crs is not None and a.crs != b.crs:
        b = b.to_crs(a.crs)
    if ignore is not None and a.crs is not None and ignore.crs is not None and a.crs != ignore.crs:
        ignore = ignore.to_crs(a.crs)
    ga, gb = np.asarray(a.geometry, dtype=object), np.asarray(b.geometry, dtype=object)
    if rule == "box":
        ga, gb = shapely.envelope(ga), shapely.envelope(gb)
    am, bm = np.full(len(ga), -1), np.full(len(gb), -1)
    if len(ga) and len(gb):
        tree = shapely.STRtree(gb)
        ia, ib = tree.query(ga, predicate="intersects")
        iou = _iou(ga[ia], gb[ib])
        ok = iou >= threshold
        ia, ib, iou = ia[ok], ib[ok], iou[ok]
        score = a["score"].to_numpy(float)[ia] if "score" in a.columns else np.zeros(len(ia))
        for k in np.lexsort((-np.nan_to_num(score), -iou)):
            if am[ia[k]] < 0 and bm[ib[k]] < 0:
                am[ia[k]], bm[ib[k]] = ib[k], ia[k]
    ignored = _ignored(np.asarray(a.geometry, dtype=object), am < 0, ignore, threshold) if ignore is not None else None
    return Match(am, bm, f"{rule} IoU >= {threshold}", ignored)


def status_frame(inv: gpd.GeoDataFrame, matched: np.ndarray, other: gpd.GeoDataFrame, *, role: str,
                 name: str, ignored: np.ndarray | None = None) -> gpd.GeoDataFrame:
    """One row per feature of ``inv`` with its match status and the id it matched."""
    ok = matched >= 0
    if role == "detection":
        status = np.where(ok, "correctly_detected", "newly_detected")
        if ignored is not None:
            status = np.where(ignored, "below_threshold", status)
    else:
        status = np.where(ok, "correctly_detected", "not_detected")
    ids = other["slide_id"].to_numpy() if "slide_id" in other.columns else np.arange(len(other)).astype(str)
    out = gpd.GeoDataFrame({
        "source": name, "role": role,
        "slide_id": inv["slide_id"].to_numpy() if "slide_id" in inv.columns else np.arange(len(inv)).astype(str),
        "status": status,
        "matched_id": [str(ids[j]) if j >= 0 else "" for j in matched],
    }, geometry=inv.geometry.to_numpy(), crs=inv.crs)
    return out


def compare_inventories(inventories: dict[str, gpd.GeoDataFrame], reference: gpd.GeoDataFrame, *, rule: Rule = "box",
                        threshold: float = 0.5, ignore: gpd.GeoDataFrame | None = None) -> tuple[Any, dict[str, gpd.GeoDataFrame]]:
    """Table 4 for each inventory against one reference (detections inside ``ignore`` regions
    counted apart, see :func:`match`), and per-feature statuses."""
    import pandas as pd

    rows, statuses = [], {}
    for name, inv in inventories.items():
        if reference.crs is not None and inv.crs is not None and inv.crs != reference.crs:
            inv = inv.to_crs(reference.crs)
        m = match(inv, reference, rule=rule, threshold=threshold, ignore=ignore)
        method = str(inv["method"].iloc[0]) if "method" in inv.columns and len(inv) else name
        rows.append({"inventory": name, "method": method, **m.counts()})
        statuses[name] = pd.concat([status_frame(inv, m.a_matched, reference, role="detection", name=name, ignored=m.a_ignored),
                                    status_frame(reference, m.b_matched, inv, role="reference", name=name)], ignore_index=True)
    return pd.DataFrame(rows), statuses


def table_markdown(df: Any) -> str:
    ign = bool(len(df)) and bool(df["below_threshold"].sum())
    head = ("| inventory | method | correctly detected | not detected | newly detected | "
            + ("below threshold | " if ign else "") + "total detected | precision | recall | F1 |")
    lines = [head, "| --- | --- |" + " ---: |" * (8 if ign else 7)]
    for r in df.to_dict("records"):
        lines.append(f"| {r['inventory']} | {r['method']} | {r['correctly_detected']} | {r['not_detected']} | "
                     f"{r['newly_detected']} | " + (f"{r['below_threshold']} | " if ign else "")
                     + f"{r['total_detected']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")
    rule = df["rule"].iloc[0] if len(df) else ""
    n_ref = int(df["total_reference"].iloc[0]) if len(df) else 0
    note = ("; below threshold: detections of simulated slides below the reference's thresholds, "
            "neither correct nor new (precision counting them as new: "
            + ", ".join(f"{r['precision_all']:.3f}" for r in df.to_dict("records")) + ")") if ign else ""
    return "\n".join(lines) + f"\n\nReference: {n_ref} features; one-to-one matching, {rule}{note}.\n"
