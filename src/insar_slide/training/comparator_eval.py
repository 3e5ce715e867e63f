"""Score a comparator's run folder (``train-comparator``) on a chip split with the code of
``insar-slide evaluate``: read its ``comparator.json``, predict every chip, :func:`~.comparators.score`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..model.encoding import InputEncoding
from .comparators import Predictions, comparator, score
from .data import read_split


def read_card(run: str | Path) -> dict[str, Any]:
    """The ``comparator.json`` of a run folder (kind, weights, encoding, epochs, seconds)."""
    p = Path(run) / "comparator.json"
    if not p.is_file():
        raise InputError(f"{run}: no comparator.json; pass a run folder written by `insar-slide train-comparator`")
    card: dict[str, Any] = json.loads(p.read_text())
    comparator(card["kind"])
    return card


def predict_run(run: str | Path, chips: list[Any], *, device: str = "cpu") -> Predictions:
    """(boxes, scores) per chip from the run's checkpoint (YOLO: best.pt, else last.pt; DETR: last/)."""
    card = read_card(run)
    enc = InputEncoding.from_dict(card["encoding"])
    if card["kind"] == "detr":
        from .detr import predict_detr

        return predict_detr(card["weights"], chips, encoding=enc)
    from .yolo import predict_yolo

    return predict_yolo(card["weights"], chips, encoding=enc, device=device)


def evaluate_run(run: str | Path, chips_dir: str | Path, *, out: str | Path, split: str = "val",
                 score_threshold: float = 0.5, device: str = "cpu", overwrite: bool = True) -> dict[str, Any]:
    """Predict the split's chips with the run's model and score them (:func:`~.comparators.score`);
    the metrics row also carries the run's epochs, training seconds and prediction seconds."""
    card = read_card(run)
    chips, coco = read_split(chips_dir, split)
    t0 = time.perf_counter()
    preds = predict_run(run, chips, device=device)
    extra = {"epochs": card.get("epochs_done", card.get("epochs")), "train_seconds": card.get("seconds"),
             "predict_seconds": round(time.perf_counter() - t0, 1), "split": split, "chips": str(chips_dir)}
    return score(chips, coco, preds, name=card["name"], backbone=card["backbone"], out=out,
                 score_threshold=score_threshold, source=str(card["weights"]), extra=extra, overwrite=overwrite)
