"""The strict scores of :mod:`.scoring` as Markdown tables (``insar-slide compare`` writes them)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .scoring import MIN_NUISANCE_SHARE, StrictReport


def _f(v: Any, fmt: str = ".3f") -> str:
    return "–" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def size_class_markdown(reports: dict[str, StrictReport]) -> str:
    """One table for all inventories: per size class, reference slides, matched, recall, AP50."""
    lines = ["| inventory | size class | n truth | matched | recall | AP50 |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, r in reports.items():
        for row in r.size_classes.to_dict("records"):
            lines.append(f"| {name} | {row['class']} | {row['n_truth']} | {row['matched']} | {_f(row['recall'])} | {_f(row['ap50'])} |")
    return ("\n".join(lines) + "\n\nSize class of each reference slide's box in mosaic pixels (small < 32², medium < 96², "
            "large ≥ 96²); AP50: COCO 101-point AP at box IoU ≥ 0.5, below-threshold detections ignored.\n")


def false_alarm_markdown(reports: dict[str, StrictReport]) -> str:
    """One table for all inventories: false alarms per look-alike kind, and the area they are per."""
    lines = ["| inventory | kind | objects | objects with a false alarm | false alarms | per 1,000 km² |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, r in reports.items():
        for row in r.false_alarms.to_dict("records"):
            lines.append(f"| {name} | {row['kind']} | {_f(row['objects'], 'd')} | {_f(row['objects_with_false_alarm'], 'd')} | "
                         f"{row['false_alarms']} | {_f(row['per_1000_km2'], '.2f')} |")
    first = next(iter(reports.values()), None)
    area = first.area if first else None
    tail = (f"Area: {area.valid_km2:.1f} km² measured on at least one track (grid {area.grid_km2:.1f} km²). " if area else "")
    notes = "; ".join(first.notes) + ". " if first and first.notes else ""
    return ("\n".join(lines) + f"\n\n{tail}{notes}A false alarm (unmatched, not below threshold) goes to the look-alike "
            f"covering the largest share of its box (≥ {MIN_NUISANCE_SHARE:.0%}), else to background.\n")
