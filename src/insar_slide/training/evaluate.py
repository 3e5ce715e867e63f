"""``insar-slide evaluate`` and ``pseudo-label``: metrics, PR curves, ablation tables, labels.

COCO numbers come from faster-coco-eval in the layout of the paper's Table 3; precision,
recall and F1 at IoU 0.5 at the model's score threshold; with several checkpoints, a table in
the layout of Table 2 (markdown + CSV).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..model.checkpoint import load_checkpoint, resolve_score_threshold
from ..model.device import pick_device
from ..progress import Progress, steps_of
from .data import Chip, read_chip, read_split, read_splits
from .metrics import COCO_NAMES, ignored_flags, match_flags
from .train import evaluate_predictions, predict_chips
from .voc import coco_dict, voc_xml

BACKBONE = {"r34": "ResNet-34", "r34_fpn": "ResNet-34+FPN", "r34_fpn_cbam": "ResNet-34+FPN+CBAM"}


def pr_curve(chips: list[Chip], preds: list[tuple[np.ndarray, np.ndarray]], iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, precision, score) as the score threshold falls to each detection's score, at IoU ``iou``.

    Matching is greedy by score, so the matches above any threshold are a prefix of these.
    Detections in a chip's ignore regions are left out (neither hits nor false alarms).
    """
    scores, hits = [], []
    n_gt = sum(len(c.boxes) for c in chips)
    for c, (bx, sc) in zip(chips, preds, strict=True):
        h = match_flags(c.boxes, bx, sc, iou=iou)
        scored = ~ignored_flags(bx, h, c.ignore, ioa=iou)
        scores += sc[scored].tolist()
        hits += h[scored].tolist()
    if not scores:
        return np.zeros(1), np.ones(1), np.ones(1)
    o = np.argsort(-np.asarray(scores), kind="stable")
    h = np.asarray(hits)[o]
    tp = np.cumsum(h)
    return tp / max(n_gt, 1), tp / np.arange(1, len(h) + 1), np.asarray(scores)[o]


def best_f1(recall: np.ndarray, precision: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """The score threshold with the highest F1 on this split (choose it on validation chips,
    never on the held-out ones). Thresholds between tied scores are not separable: the last
    detection of a run of equal scores counts."""
    f1 = np.where(recall + precision > 0, 2 * recall * precision / np.maximum(recall + precision, 1e-12), 0.0)
    last = np.r_[score[1:] != score[:-1], True]  # a threshold keeps every detection of its score
    f1 = np.where(last, f1, -1.0)
    k = int(np.argmax(f1))
    return {"best_f1": float(f1[k]), "best_f1_threshold": float(score[k]),
            "best_f1_precision": float(precision[k]), "best_f1_recall": float(recall[k])}


def evaluate(checkpoints: list[str], chips_dir: str | list[str], *, out: str, split: str = "val", device: str = "auto",
             score_threshold: float | None = None, overwrite: bool = True, progress: Progress | None = None) -> pd.DataFrame:
    """Evaluate checkpoints on a chip split (of one folder, or several pooled); write metrics.json,
    table2.{md,csv}, table3.md, pr_curve.png. ``progress`` hears the chips predicted, as
    ``evaluate`` (``evaluate k/n`` per checkpoint)."""
    chips, coco = read_splits(chips_dir, split)
    dev = pick_device(device)
    rows, curves = [], []
    table3 = ""
    for k, ck in enumerate(checkpoints):
        model, mcfg, meta = load_checkpoint(ck, device=dev)
        thr = resolve_score_threshold(score_threshold, meta)
        stage = "evaluate" if len(checkpoints) == 1 else f"evaluate {k + 1}/{len(checkpoints)}"
        preds = predict_chips(model, chips, mcfg.encoding, dev, step=steps_of(progress, stage))
        m = evaluate_predictions(chips, coco, preds, thr)
        rec, prec, sc = pr_curve(chips, preds)
        rows.append({"checkpoint": ck, "method": "Faster R-CNN", "backbone": BACKBONE[mcfg.variant], "score_threshold": thr, **m,
                     **best_f1(rec, prec, sc)})
        curves.append((BACKBONE[mcfg.variant], rec, prec))
        if not table3:
            table3 = _table3(m)
    df = pd.DataFrame(rows)
    target = Path(out)
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "metrics.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
        t2 = df[["method", "backbone", "precision", "recall", "f1", "AP50", "AP"]].rename(columns={"AP50": "mAP50", "AP": "mAP50-95"})
        t2.to_csv(tmp / "table2.csv", index=False)
        (tmp / "table2.md").write_text(_markdown(t2))
        (tmp / "table3.md").write_text(table3)
        _plot_pr(curves, tmp / "pr_curve.png")
    return df


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [f"{v:.2%}" if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _table3(m: dict[str, float]) -> str:
    spec = [("Average Precision (AP)", "0.50:0.95", "all", 100, "AP"), ("Average Precision (AP)", "0.50", "all", 100, "AP50"),
            ("Average Precision (AP)", "0.75", "all", 100, "AP75"), ("Average Precision (AP)", "0.50:0.95", "small", 100, "AP_small"),
            ("Average Precision (AP)", "0.50:0.95", "medium", 100, "AP_medium"), ("Average Precision (AP)", "0.50:0.95", "large", 100, "AP_large"),
            ("Average Recall (AR)", "0.50:0.95", "all", 1, "AR1"), ("Average Recall (AR)", "0.50:0.95", "all", 10, "AR10"),
            ("Average Recall (AR)", "0.50:0.95", "all", 100, "AR100"), ("Average Recall (AR)", "0.50:0.95", "small", 100, "AR_small"),
            ("Average Recall (AR)", "0.50:0.95", "medium", 100, "AR_medium"), ("Average Recall (AR)", "0.50:0.95", "large", 100, "AR_large")]
    assert {s[4] for s in spec} == set(COCO_NAMES)
    lines = ["| Metric | IoU | Area | maxDets | Value |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {m[k]:.3f} |" for a, b, c, d, k in spec]
    return "\n".join(lines) + "\n"


def _plot_pr(curves: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4.5), constrained_layout=True)
    for name, r, p in curves:
        ax.plot(r, p, label=name)
    ax.set_xlabel("recall (IoU 0.5)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def pseudo_label(checkpoint: str, chips_dir: str, out: str, *, split: str = "train", score_threshold: float = 0.8,
                 device: str = "auto", overwrite: bool = False) -> dict[str, Any]:
    """Label chips with a model's boxes above ``score_threshold``: VOC per chip (with scores) + COCO.

    The VOC files open in LabelImg for review; the reviewed folder goes back into ``chips``
    as an inventory (with the chip set's chips.csv) for a second training round.
    """
    chips, coco = read_split(chips_dir, split)
    dev = pick_device(device)
    model, mcfg, _ = load_checkpoint(checkpoint, device=dev)
    preds = predict_chips(model, chips, mcfg.encoding, dev)
    target = Path(out)
    kept: list[np.ndarray] = []
    with atomic_path(target, overwrite=overwrite) as tmp:
        (tmp / "voc").mkdir(parents=True)
        for c, (bx, sc) in zip(chips, preds, strict=True):
            keep = sc >= score_threshold
            h, w = read_chip(c.path).shape
            (tmp / "voc" / f"{c.path.stem}.xml").write_text(voc_xml(f"{c.path.stem}.png", (h, w), bx[keep], scores=sc[keep].tolist()))
            kept.append(bx[keep])
        (tmp / f"coco_{split}_pseudo.json").write_text(json.dumps(coco_dict(coco["images"], kept)))
    return {"chips": len(chips), "boxes": int(sum(len(k) for k in kept)), "score_threshold": score_threshold}
