"""Object-level comparison of two inventories (the counts of the paper's Table 4).

Matching is one-to-one and greedy: pairs are taken in order of decreasing overlap (ties: higher
detection score first). Rules:

- ``box`` (default): IoU of the polygons' bounding boxes ≥ ``threshold`` (0.5) — the paper's
  detection criterion, since the detector's output is a box;
- ``polygon``: IoU of the polygons themselves ≥ ``threshold``.

``visible_truth`` selects the simulated slides a detector can be asked to find: on some track,
|peak LOS| ≥ 10 mm/yr and at least half the slide measured (the same rule as training labels).
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

    @property
    def tp(self) -> int:
        return int((self.a_matched >= 0).sum())

    def counts(self) -> dict[str, Any]:
        """A = detections, B = reference: Table 4's counts and object-level P/R/F1."""
        tp, n_a, n_b = self.tp, len(self.a_matched), len(self.b_matched)
        p = tp / n_a if n_a else 0.0
        r = tp / n_b if n_b else 0.0
        return {"correctly_detected": tp, "not_detected": n_b - tp, "newly_detected": n_a - tp,
                "total_detected": n_a, "total_reference": n_b, "precision": p, "recall": r,
                "f1": 2 * p * r / (p + r) if p + r else 0.0, "rule": self.rule}


def visible_truth(truth: gpd.GeoDataFrame, *, min_abs_los: float = 10.0, min_visible: float = 0.5) -> gpd.GeoDataFrame:
    tracks = [c.removeprefix("peak_los_") for c in truth.columns if c.startswith("peak_los_")]
    if not tracks:
        return truth
    keep = np.zeros(len(truth), bool)
    for t in tracks:
        vis = truth.get(f"visible_fraction_{t}")
        ok = truth[f"peak_los_{t}"].abs().to_numpy() >= min_abs_los
        if vis is not None:
            ok &= vis.to_numpy() >= min_visible
        keep |= ok
    return truth[keep]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = shapely.area(shapely.intersection(a, b))
    union = shapely.area(a) + shapely.area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, *, rule: Rule = "box", threshold: float = 0.5) -> Match:
    """Match inventory ``a`` (e.g. detections) against ``b`` (e.g. truth); ``b`` is reprojected to ``a``'s CRS."""
    if a.crs is not None and b.crs is not None and a.crs != b.crs:
        b = b.to_crs(a.crs)
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
    return Match(am, bm, f"{rule} IoU >= {threshold}")


def status_frame(inv: gpd.GeoDataFrame, matched: np.ndarray, other: gpd.GeoDataFrame, *, role: str,
                 name: str) -> gpd.GeoDataFrame:
    """One row per feature of ``inv`` with its match status and the id it matched."""
    ok = matched >= 0
    if role == "detection":
        status = np.where(ok, "correctly_detected", "newly_detected")
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
                        threshold: float = 0.5) -> tuple[Any, dict[str, gpd.GeoDataFrame]]:
    """Table 4 for each inventory against one reference, and per-feature statuses."""
    import pandas as pd

    rows, statuses = [], {}
    for name, inv in inventories.items():
        if reference.crs is not None and inv.crs is not None and inv.crs != reference.crs:
            inv = inv.to_crs(reference.crs)
        m = match(inv, reference, rule=rule, threshold=threshold)
        method = str(inv["method"].iloc[0]) if "method" in inv.columns and len(inv) else name
        rows.append({"inventory": name, "method": method, **m.counts()})
        statuses[name] = pd.concat([status_frame(inv, m.a_matched, reference, role="detection", name=name),
                                    status_frame(reference, m.b_matched, inv, role="reference", name=name)], ignore_index=True)
    return pd.DataFrame(rows), statuses


def table_markdown(df: Any) -> str:
    head = "| inventory | method | correctly detected | not detected | newly detected | total detected | precision | recall | F1 |"
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in df.to_dict("records"):
        lines.append(f"| {r['inventory']} | {r['method']} | {r['correctly_detected']} | {r['not_detected']} | "
                     f"{r['newly_detected']} | {r['total_detected']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")
    rule = df["rule"].iloc[0] if len(df) else ""
    n_ref = int(df["total_reference"].iloc[0]) if len(df) else 0
    return "\n".join(lines) + f"\n\nReference: {n_ref} features; one-to-one matching, {rule}.\n"
