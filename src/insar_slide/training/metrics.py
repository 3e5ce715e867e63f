"""Detection metrics: COCO (via faster-coco-eval, not re-implemented) and P/R/F1 at IoU 0.5."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from ..model.detector import mostly_inside

COCO_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def coco_metrics(gt: dict[str, Any], detections: Sequence[dict[str, Any]]) -> dict[str, float]:
    """COCO box metrics of ``detections`` ([{image_id, bbox [x, y, w, h], score, category_id}])."""
    from faster_coco_eval import COCO, COCOeval_faster

    if all(a.get("iscrowd") for a in gt["annotations"]):  # nothing to find (ignore regions only)
        return {k: float("nan") for k in COCO_NAMES}
    coco_gt = COCO(gt)
    if not detections:
        return {k: 0.0 for k in COCO_NAMES}
    coco_dt = coco_gt.loadRes(list(detections))
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {k: float(v) for k, v in zip(COCO_NAMES, ev.stats[:12], strict=True)}


def match_flags(gt_boxes: np.ndarray, det_boxes: np.ndarray, scores: np.ndarray, *, iou: float = 0.5) -> np.ndarray:
    """For each detection, whether it is a true positive when matched greedily in score order
    to the unmatched ground-truth box it overlaps most (IoU ≥ ``iou``)."""
    flags = np.zeros(len(det_boxes), bool)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return flags
    ious = box_iou(torch.as_tensor(det_boxes, dtype=torch.float64), torch.as_tensor(gt_boxes, dtype=torch.float64)).numpy()
    taken = np.zeros(len(gt_boxes), bool)
    for d in np.argsort(-scores, kind="stable"):
        cand = np.where(~taken & (ious[d] >= iou))[0]
        if len(cand):
            taken[cand[np.argmax(ious[d, cand])]] = True
            flags[d] = True
    return flags


def ignored_flags(det_boxes: np.ndarray, hits: np.ndarray, ignore_boxes: np.ndarray | None, *, ioa: float = 0.5) -> np.ndarray:
    """For each detection that is not a hit, whether it falls in a region not scored: at least
    ``ioa`` of its area inside one ignore box — COCO's rule for ``iscrowd`` regions."""
    if ignore_boxes is None or len(ignore_boxes) == 0 or len(det_boxes) == 0:
        return np.zeros(len(det_boxes), bool)
    inside = mostly_inside(torch.as_tensor(det_boxes, dtype=torch.float64).reshape(-1, 4),
                           torch.as_tensor(ignore_boxes, dtype=torch.float64).reshape(-1, 4), ioa).numpy()
    return ~np.asarray(hits, bool) & inside


def match_at_iou(gt_boxes: np.ndarray, det_boxes: np.ndarray, scores: np.ndarray, *, iou: float = 0.5,
                 ignore_boxes: np.ndarray | None = None) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of :func:`match_flags`; detections in
    ``ignore_boxes`` (:func:`ignored_flags`) count as neither."""
    hits = match_flags(gt_boxes, det_boxes, scores, iou=iou)
    tp = int(hits.sum())
    n_ignored = int(ignored_flags(det_boxes, hits, ignore_boxes, ioa=iou).sum())
    return tp, len(det_boxes) - tp - n_ignored, len(gt_boxes) - tp


def prf1(per_image: Sequence[tuple[np.ndarray, ...]], *, score_threshold: float, iou: float = 0.5) -> dict[str, float]:
    """Precision, recall, F1 over images of (gt boxes, det boxes, scores[, ignore boxes]) at a
    score threshold; a detection in an ignore region is neither a true nor a false positive."""
    tp = fp = fn = 0
    for gt, det, sc, *rest in per_image:
        keep = sc >= score_threshold
        a, b, c = match_at_iou(gt, det[keep], sc[keep], iou=iou, ignore_boxes=rest[0] if rest else None)
        tp, fp, fn = tp + a, fp + b, fn + c
    p = tp / (tp + fp) if tp + fp else float("nan") if tp + fn == 0 else 0.0
    r = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * p * r / (p + r) if p + r and not np.isnan(p) and not np.isnan(r) else 0.0
    return {"precision": p, "recall": r, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
