"""Summary of workflows/wide_eval.sh: strict figures per basin and pooled over the test family.

Pooled over the test basins: precision, recall and F1 from the summed counts, recall on COCO
"large" slides, and false alarms on look-alikes (every kind except ``background``) per 1,000 km²
of measured area. Per basin also AP50 per size class (AP does not pool) and the earthflow check
of issue 16: every visible earthflow at least 100 px long should be one detection (one
inventory slide over it) whose box has IoU >= 0.5 with its own.

    python benchmarks/wide_eval_table.py out/eval_wide --basins tuning test_20m test_40m test_30m
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import geopandas as gpd
import numpy as np

from insar_slide.compare import visible_truth, within_extent
from insar_slide.mosaic import grid_of, open_basin

LOOKALIKE_EXCLUDE = {"background", "all"}


def box_iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    w, h = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = w * h
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def earthflows(inv: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, min_px: float = 100.0,
               bounds: tuple[float, float, float, float] | None = None) -> list[dict]:
    vis = visible_truth(within_extent(truth, bounds) if bounds is not None else truth)  # as `compare --mosaic` scores it
    rows = []
    for _, t in vis[(vis.get("kind") == "earthflow") & (vis.length_px >= min_px)].iterrows():
        over = inv[inv.intersects(t.geometry)]
        best = max((box_iou(t.geometry.bounds, g.bounds) for g in over.geometry), default=0.0)
        rows.append({"slide_id": t.slide_id, "length_px": round(float(t.length_px), 1),
                     "speed_mm_yr": round(float(t.slope_speed_mm_yr), 1), "detections_over_it": len(over),
                     "best_box_iou": round(best, 3), "ok": len(over) == 1 and best >= 0.5})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--basins", nargs="+", default=["tuning", "test_20m", "test_40m", "test_30m"])
    a = ap.parse_args()
    per, pooled = {}, {"tp": 0, "fn": 0, "fp": 0, "below": 0, "large_n": 0, "large_hit": 0, "lookalike_fa": 0,
                       "valid_km2": 0.0, "flows": []}
    for b in a.basins:
        s = json.loads((a.out / b / "scores.json").read_text())
        ((_, r),) = s["inventories"].items()
        kinds = r["false_alarms"]["kinds"]
        look = sum(v["false_alarms"] for k, v in kinds.items() if k not in LOOKALIKE_EXCLUDE)
        inv = gpd.read_parquet(a.out / b / "inventory.parquet")
        truth = gpd.read_parquet(Path(s["reference"]))
        flows = earthflows(inv, truth, bounds=grid_of(open_basin(s["mosaic"])).bounds if s.get("mosaic") else None)
        per[b] = {"precision": r["precision"], "recall": r["recall"], "f1": r["f1"], "ap50": r["ap50"],
                  "found": r["correctly_detected"], "missed": r["not_detected"], "false": r["newly_detected"],
                  "below_threshold": r["below_threshold"], "size_classes": r["size_classes"],
                  "lookalike_false_alarms": look, "background_false_alarms": kinds.get("background", {}).get("false_alarms", 0),
                  "lookalike_fa_per_1000km2": look / s["areas"]["valid_km2"] * 1000, "valid_km2": s["areas"]["valid_km2"],
                  "false_alarms_by_kind": {k: v["false_alarms"] for k, v in kinds.items()}, "earthflows_100px": flows}
        if b.startswith("test"):
            pooled["tp"] += r["correctly_detected"]
            pooled["fn"] += r["not_detected"]
            pooled["fp"] += r["newly_detected"]
            pooled["below"] += r["below_threshold"]
            pooled["large_n"] += r["size_classes"]["large"]["n_truth"]
            pooled["large_hit"] += r["size_classes"]["large"]["matched"]
            pooled["lookalike_fa"] += look
            pooled["valid_km2"] += s["areas"]["valid_km2"]
            pooled["flows"] += flows
    out = {"basins": per}
    if pooled["tp"] + pooled["fn"]:
        p = pooled["tp"] / max(1, pooled["tp"] + pooled["fp"])
        rec = pooled["tp"] / (pooled["tp"] + pooled["fn"])
        out["test_family"] = {
            "precision": p, "recall": rec, "f1": 2 * p * rec / (p + rec) if p + rec else 0.0,
            "found": pooled["tp"], "missed": pooled["fn"], "false": pooled["fp"], "below_threshold": pooled["below"],
            "large_recall": pooled["large_hit"] / pooled["large_n"] if pooled["large_n"] else float("nan"),
            "large_n": pooled["large_n"],
            "lookalike_fa_per_1000km2": pooled["lookalike_fa"] / pooled["valid_km2"] * 1000, "valid_km2": pooled["valid_km2"],
            "earthflows_100px": len(pooled["flows"]), "earthflows_100px_ok": sum(f["ok"] for f in pooled["flows"]),
        }
    (a.out / "wide_eval.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    lines = ["| basin | found / missed / false (below) | P | R | F1 | AP50 | AP50 s / m / l | recall large | "
             "look-alike FA per 1,000 km² | background FA | earthflows ≥ 100 px one box IoU ≥ 0.5 |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    fmt = lambda v: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"  # noqa: E731
    for b, r in per.items():
        sc = r["size_classes"]
        lines.append(f"| {b} | {r['found']} / {r['missed']} / {r['false']} ({r['below_threshold']}) | {fmt(r['precision'])} | "
                     f"{fmt(r['recall'])} | {fmt(r['f1'])} | {fmt(r['ap50'])} | "
                     f"{' / '.join(fmt(sc[k]['ap50']) for k in ('small', 'medium', 'large'))} | {fmt(sc['large']['recall'])} "
                     f"({sc['large']['matched']}/{sc['large']['n_truth']}) | {r['lookalike_fa_per_1000km2']:.2f} | "
                     f"{r['background_false_alarms']} | {sum(f['ok'] for f in r['earthflows_100px'])} of {len(r['earthflows_100px'])} |")
    if "test_family" in out:
        t = out["test_family"]
        lines.append(f"| **test family (pooled)** | {t['found']} / {t['missed']} / {t['false']} ({t['below_threshold']}) | "
                     f"**{t['precision']:.3f}** | **{t['recall']:.3f}** | **{t['f1']:.3f}** | | | **{fmt(t['large_recall'])}** "
                     f"({t['large_n']}) | **{t['lookalike_fa_per_1000km2']:.2f}** | | {t['earthflows_100px_ok']} of {t['earthflows_100px']} |")
    md = "\n".join(lines) + "\n"
    (a.out / "wide_eval.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
