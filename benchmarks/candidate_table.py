"""Summary of workflows/candidate_eval.sh: one row per model-dependent README figure.

Reads what the workflow wrote under its folder (held-out chips metrics, the held-out and tuning
compare tables, the demo's score line, the real-data table, the wider world's strict table) and
writes ``summary.md`` and ``summary.json`` beside them. A step that was not run is left out.
Two folders side by side (``--against``: e.g. the shipped model's) give a column each.

    python benchmarks/candidate_table.py out/candidate_r8 --against out/candidate_shipped
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from typing import Any


def _compare(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    row = next(csv.DictReader(path.open()))
    return {k: float(row[k]) for k in ("correctly_detected", "not_detected", "newly_detected", "below_threshold",
                                       "precision", "recall", "f1", "precision_all")}


def collect(folder: Path) -> dict[str, Any]:
    """The figures of one workflow folder."""
    out: dict[str, Any] = {"model": (folder / "model.txt").read_text().strip() if (folder / "model.txt").is_file() else ""}
    m = folder / "eval_heldout" / "metrics.json"
    if m.is_file():
        r = json.loads(m.read_text())[0]
        out["heldout_chips"] = {k: r.get(k) for k in ("AP50", "AP", "precision", "recall", "f1", "best_f1_threshold",
                                                         "score_threshold")}
    for name in ("heldout", "tuning"):
        if (c := _compare(folder / name / "compare" / "table.csv")) is not None:
            out[name] = c
    d = folder / "demo" / "demo.txt"
    if d.is_file():
        text = d.read_text()
        nums = dict(re.findall(r"(found|missed|false) (\d+)", text))
        f1 = re.search(r"F1 ([0-9.]+)", text)
        out["demo"] = {**{k: int(v) for k, v in nums.items()}, "f1": float(f1.group(1)) if f1 else None}
    r = folder / "real" / "results" / "real_data.json"
    if r.is_file():
        out["real"] = {p["name"]: {"detections": p["n_detections"], "false_alarms": p["n_false_alarms"],
                                   "not_yet_explained": sum(d["verdict"] == "not yet explained" for d in p["detections"])}
                       for p in json.loads(r.read_text())["products"]}
    w = folder / "wide" / "wide_eval.json"
    if w.is_file():
        wide = json.loads(w.read_text())
        out["wide"] = {b: {k: v[k] for k in ("precision", "recall", "f1", "lookalike_fa_per_1000km2")}
                       for b, v in wide["basins"].items()}
        if "test_family" in wide:
            out["wide"]["test family (pooled)"] = {k: wide["test_family"].get(k) for k in
                                                   ("precision", "recall", "f1", "large_recall", "lookalike_fa_per_1000km2")}
    return out


def rows(fig: dict[str, Any]) -> dict[str, str]:
    """Figure name → its text, in a fixed order."""
    def f(x: Any) -> str:
        return "" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)
    res: dict[str, str] = {}
    if "heldout_chips" in fig:
        h = fig["heldout_chips"]
        res["held-out chips: AP50 / P / R / F1 at the model's threshold"] = (
            " / ".join(f(h[k]) for k in ("AP50", "precision", "recall", "f1"))
            + (f" (at {h['score_threshold']:g})" if h.get("score_threshold") is not None else ""))
    for name in ("heldout", "tuning"):
        if name in fig:
            c = fig[name]
            res[f"{name} basin: found / missed / new (below); P / R / F1"] = (
                f"{c['correctly_detected']:.0f} / {c['not_detected']:.0f} / {c['newly_detected']:.0f} "
                f"({c['below_threshold']:.0f}); {f(c['precision'])} / {f(c['recall'])} / {f(c['f1'])}")
    if "demo" in fig:
        d = fig["demo"]
        res["demo: found / missed / false; F1"] = f"{d.get('found')} / {d.get('missed')} / {d.get('false')}; {f(d.get('f1'))}"
    for name, p in fig.get("real", {}).items():
        res[f"real {name}: detections (false alarms, unexplained)"] = (
            f"{p['detections']} ({p['false_alarms']}, {p['not_yet_explained']})")
    for name, b in fig.get("wide", {}).items():
        res[f"wide {name}: P / R / F1; look-alike FA per 1,000 km²"] = (
            f"{f(b['precision'])} / {f(b['recall'])} / {f(b['f1'])}; {f(b['lookalike_fa_per_1000km2'])}"
            + (f"; large recall {f(b['large_recall'])}" if b.get("large_recall") is not None else ""))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--against", type=Path, help="another candidate_eval.sh folder, shown in a second column")
    a = ap.parse_args()
    figs = [collect(a.folder)] + ([collect(a.against)] if a.against else [])
    tables = [rows(fg) for fg in figs]
    names = list(dict.fromkeys(k for t in tables for k in t))
    heads = [Path(fg["model"]).name or str(a.folder) for fg in figs]
    lines = ["| figure | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(heads)]
    lines += [f"| {n} | " + " | ".join(t.get(n, "") for t in tables) + " |" for n in names]
    md = "\n".join(lines) + "\n"
    (a.folder / "summary.md").write_text(md)
    (a.folder / "summary.json").write_text(json.dumps(figs, indent=1) + "\n")
    print(md, end="")


if __name__ == "__main__":
    main()
