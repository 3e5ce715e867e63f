"""The paper's Table 2 with all six rows measured here (issue 22; run by workflows/table2.sh).

Reads the ``metrics.json`` that ``insar-slide evaluate`` (the three Faster R-CNN variants, one
file) and ``insar-slide evaluate-comparator`` (YOLO V5, YOLO V12, DETR, one file each) wrote on
the held-out region's chips and on the tuning region's, and writes ``benchmarks/results/table2.md``:
one row per model, first cell its name, then P, R, F1, mAP50, mAP50-95 on the held-out region
(as the paper's Table 2), mAP50 and F1 on the tuning region, the epochs trained, the training
wall time and the command. Every figure comes from a metrics file; a model without one is named
under the table as not measured, never given numbers. With ``--paper FILE`` (YAML: row name →
{P, R, F1, mAP50, mAP50-95} in %), the paper's figures are printed beside ours.

    .venv/bin/python benchmarks/table2_table.py --table2 out/table2 --ablation out/ablation
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
#: Row name → how to find it: ("comparator", kind) or ("faster", backbone name in evaluate's metrics).
ROWS = [("Faster R-CNN ResNet-34+FPN+CBAM", "faster", "ResNet-34+FPN+CBAM"),
        ("Faster R-CNN ResNet-34+FPN", "faster", "ResNet-34+FPN"),
        ("Faster R-CNN ResNet-34", "faster", "ResNet-34"),
        ("YOLO V5", "comparator", "yolov5"),
        ("YOLO V12", "comparator", "yolov12"),
        ("DETR", "comparator", "detr")]
VARIANT = {"ResNet-34+FPN+CBAM": "r34_fpn_cbam", "ResNet-34+FPN": "r34_fpn", "ResNet-34": "r34"}


def _rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def _faster_training(checkpoint: str) -> tuple[int | None, float | None]:
    """(epochs, training seconds) from the metrics.csv beside a Faster R-CNN checkpoint."""
    p = Path(checkpoint).parent / "metrics.csv"
    if not p.is_file():
        return None, None
    with open(p) as f:
        rows = list(csv.DictReader(f))
    return len(rows), sum(float(r.get("seconds") or 0) for r in rows)


def collect(table2: Path, ablation: Path) -> dict[str, dict[str, Any]]:
    """Row name → {held-out metrics row, tuning metrics row, epochs, seconds, command}."""
    out: dict[str, dict[str, Any]] = {}
    for name, how, key in ROWS:
        if how == "faster":
            held = next((r for r in _rows(ablation / "eval" / "metrics.json") if r["backbone"] == key), None)
            tune = next((r for r in _rows(ablation / "eval_tuning" / "metrics.json") if r["backbone"] == key), None)
            if held is None:
                continue
            epochs, seconds = _faster_training(held["checkpoint"])
            configs = "configs/ablation_paper" if ablation.name == "ablation_paper" else "configs/ablation"
            command = f"insar-slide train {configs}/train_{VARIANT[key]}.yaml"
        else:
            held = next(iter(_rows(table2 / "eval" / key / "metrics.json")), None)
            tune = next(iter(_rows(table2 / "eval_tuning" / key / "metrics.json")), None)
            if held is None:
                continue
            epochs, seconds = held.get("epochs"), held.get("train_seconds")
            card = table2 / key / "comparator.json"
            extra = json.loads(card.read_text()) if card.is_file() else {}
            crop = f" --crop-size {extra['crop_size']}" if extra.get("crop_size") else ""
            command = f"insar-slide train-comparator {key} out/chips_train --out out/table2/{key} --epochs {epochs}{crop}"
        out[name] = {"held": held, "tune": tune, "epochs": epochs, "seconds": seconds, "command": command}
    return out


def _pct(v: Any) -> str:
    return "–" if v is None or v != v else f"{100 * float(v):.1f}"


def _hours(s: Any) -> str:
    return "–" if s is None else f"{float(s) / 3600:.2f} h"


def markdown(rows: dict[str, dict[str, Any]], paper: dict[str, dict[str, float]] | None = None) -> str:
    today = dt.date.today().isoformat()
    lines = [f"# Table 2 — all six detectors on the same chips, measured {today}", "",
             "Held-out region: P, R, F1 at IoU 0.5 and score ≥ 0.5, COCO mAP50 and mAP50-95 (%), scored by "
             "`insar-slide evaluate`'s code with the chips' ignore regions; tuning region: mAP50 and F1. "
             "Produced by `bash workflows/table2.sh` (benchmarks/table2_table.py).", "",
             "| model | P | R | F1 | mAP50 | mAP50-95 | tuning: mAP50 | tuning: F1 | epochs | training wall time | command |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, _, _ in ROWS:
        if name not in rows:
            continue
        r = rows[name]
        h, t = r["held"], r["tune"] or {}
        lines.append(f"| {name} | {_pct(h['precision'])} | {_pct(h['recall'])} | {_pct(h['f1'])} | {_pct(h['AP50'])} | "
                     f"{_pct(h['AP'])} | {_pct(t.get('AP50'))} | {_pct(t.get('f1'))} | {r['epochs'] or '–'} | "
                     f"{_hours(r['seconds'])} | `{r['command']}` |")
    missing = [name for name, _, _ in ROWS if name not in rows]
    if missing:
        lines += ["", "Not measured yet (no metrics file): " + ", ".join(missing) + "."]
    if paper:
        lines += ["", "The paper's figures (%):", "", "| model | P | R | F1 | mAP50 | mAP50-95 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {n} | " + " | ".join(str(v.get(k, "–")) for k in ("P", "R", "F1", "mAP50", "mAP50-95")) + " |"
                  for n, v in paper.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table2", type=Path, default=REPO / "out" / "table2", help="The comparators' folder of workflows/table2.sh.")
    ap.add_argument("--ablation", type=Path, default=REPO / "out" / "ablation", help="The folder of workflows/ablation.sh.")
    ap.add_argument("--paper", type=Path, help="YAML of the paper's figures (row name → P, R, F1, mAP50, mAP50-95).")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "table2.md")
    a = ap.parse_args()
    rows = collect(a.table2, a.ablation)
    if not rows:
        raise SystemExit(f"no metrics under {a.table2}/eval* or {a.ablation}/eval*; run workflows/table2.sh first")
    paper = yaml.safe_load(a.paper.read_text()) if a.paper else None
    a.out.write_text(markdown(rows, paper))
    print(f"wrote {a.out} ({len(rows)} of {len(ROWS)} rows)")


if __name__ == "__main__":
    main()
