"""Hard-negative mining: the training chips on which a model raises confident false alarms.

The model a run starts from (its ``init_weights``, or the checkpoint it resumes) is run once over
the unrotated training chips; a detection with score ≥ ``min_score`` is a *hard negative* when it
matches no labelled slide (IoU < ``match_iou``) and lies mostly (≥ 50 % of its area) neither in a
labelled slide's box nor in an ignore region — a look-alike the model takes for a slide, not a
loose box on a real one. The rotated twins of a chip get the same boxes turned with it
(:func:`.boxes.rotate_cw`), so mining costs one forward pass per place, not four.

Training then sees every chip with hard negatives ``oversample`` times an epoch, and a crop of
such a chip is centred on one of its hard negatives with probability ``focus`` — the false alarm
is in view and is background to the loss. Validation chips are never mined: the operating
threshold is still chosen on validation data that this step has not looked at.

Written once per training run to ``<out>/hard_negatives.json`` (atomically, with the model it was
mined with), so ``--resume`` trains on the same list.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from pydantic import Field
from torchvision.ops import box_iou

from ..atomic import atomic_path
from ..config import StrictModel
from ..errors import InputError
from ..model.detector import mostly_inside
from .boxes import rotate_cw

log = logging.getLogger(__name__)

FILE = "hard_negatives.json"


class HardNegatives(StrictModel):
    """``hard_negatives:`` of a training config."""

    min_score: float = Field(0.5, gt=0, lt=1, description="a detection at least this confident can be a hard negative")
    match_iou: float = Field(0.3, gt=0, lt=1, description="a detection with IoU ≥ this to a labelled slide is not a false alarm")
    oversample: int = Field(2, ge=1, le=8, description="times an epoch a chip with hard negatives is seen")
    focus: float = Field(0.5, ge=0, le=1, description="probability that such a chip's crop is centred on one of them")


def false_alarms(boxes: np.ndarray, scores: np.ndarray, truth: np.ndarray, ignore: np.ndarray,
                 cfg: HardNegatives) -> np.ndarray:
    """The (k, 4) detections of one chip that are hard negatives under ``cfg`` (module docstring)."""
    keep = scores >= cfg.min_score
    det = torch.as_tensor(np.asarray(boxes, dtype=np.float64)[keep].reshape(-1, 4))
    if not len(det):
        return np.zeros((0, 4))
    bad = torch.ones(len(det), dtype=torch.bool)
    truth_t = torch.as_tensor(np.asarray(truth, dtype=np.float64).reshape(-1, 4))
    if len(truth_t):
        bad &= box_iou(det, truth_t).max(dim=1).values < cfg.match_iou
    cover = torch.cat([truth_t, torch.as_tensor(np.asarray(ignore, dtype=np.float64).reshape(-1, 4))])
    bad &= ~mostly_inside(det, cover, 0.5)  # the evaluation's own test for a box in a region
    return det[bad].numpy()


def twins(chips_csv: Path) -> dict[str, tuple[str, int]]:
    """Training chip name → (its unrotated twin's name, clockwise quarter turns)."""
    out = {}
    with chips_csv.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    for r in rows:
        rot = int(r["rotation"])
        suffix = f"_r{rot}"
        if not r["chip"].endswith(suffix):
            raise InputError(f"{chips_csv}: chip {r['chip']} does not end in {suffix}; re-cut the chips with this version")
        out[r["chip"]] = (r["chip"][:-len(suffix)] + "_r0", rot // 90)
    return out


def mine(predict: Callable[[Sequence[Any]], list[tuple[np.ndarray, np.ndarray]]], chips: Sequence[Any],
         chips_folder: Path, cfg: HardNegatives) -> dict[str, list[list[float]]]:
    """Chip name → its hard negatives (boxes) for the training ``chips`` (``.path``, ``.boxes``,
    ``.ignore``); ``predict`` maps chips to (boxes, scores). Only unrotated chips are run."""
    by_name = {c.path.stem: c for c in chips}
    tw = twins(chips_folder / "chips.csv")
    base = [c for c in chips if tw.get(c.path.stem, (c.path.stem, 0))[1] == 0]
    found: dict[str, np.ndarray] = {}
    for c, (bx, sc) in zip(base, predict(base), strict=True):
        fa = false_alarms(bx, sc, c.boxes, c.ignore, cfg)
        if len(fa):
            found[c.path.stem] = fa
    out: dict[str, list[list[float]]] = {}
    sides: dict[str, int] = {}  # one header read per place, not per rotated twin
    for name in by_name:
        src, turns = tw.get(name, (name, 0))
        if src not in found:
            continue
        fa = found[src]
        if turns:
            if src not in sides:
                sides[src] = _chip_side(by_name[src].path)
            h = sides[src]
            _, fa = rotate_cw(np.zeros((h, h), np.uint8), fa, turns)
        out[name] = np.round(fa, 2).tolist()
    return out


def _chip_side(path: Path) -> int:
    with rasterio.open(path) as src:
        if src.height != src.width:
            raise InputError(f"{path}: chips are square for rotation; this one is {src.width} x {src.height}")
        return int(src.height)


def load_or_mine(out: Path, model_tag: str, mine_fn: Callable[[], dict[str, list[list[float]]]]) -> dict[str, np.ndarray]:
    """The hard negatives of the run in ``out``: read from :data:`FILE`, or mined now and written."""
    f = out / FILE
    if f.is_file():
        doc = json.loads(f.read_text())
        log.info("hard negatives from %s (mined with %s): %d chips", f, doc.get("model"), len(doc["chips"]))
    else:
        doc = {"model": model_tag, "chips": mine_fn()}
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(f, overwrite=False) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))
        log.info("mined %d training chips with hard negatives -> %s", len(doc["chips"]), f)
    return {k: np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in doc["chips"].items()}
