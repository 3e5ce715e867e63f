"""The paper's Table 2 comparators on this project's chips: conversion there and back (issue 22).

Nothing here imports ``ultralytics`` or ``transformers``; the conversions are numpy and files,
so they are tested without the optional extra (``training/yolo.py`` and ``training/detr.py``
hold the training wrappers, which import them on demand).

There — from a chip folder of ``insar-slide chips`` (``images/<chip>.tif``, float32 mm/yr with
NaN holes; ``coco_{train,val}.json`` in pixel ``[x, y, w, h]``, the split already made by whole
spatial blocks), with the split untouched:

* **YOLO** (:func:`write_yolo_dataset`): ``images/{train,val}/<chip>.png``, 8-bit RGB, the
  project's three channels of :class:`~insar_slide.model.encoding.InputEncoding` mapped affinely
  to 0-255 (:func:`encode_uint8`: rate → (rate + 1) / 2, |rate| and valid as they are; one step
  is 2 x clip / 255 = 0.47 mm/yr at the default 60 mm/yr clip), because ultralytics reads 8-bit
  images and divides by 255; ``labels/{train,val}/<chip>.txt`` as ``0 cx cy w h`` normalised to
  the chip; ``data.yaml``. **Ignore regions** (COCO ``iscrowd``) have no place in the YOLO
  format: they are left out of the labels, so YOLO is taught them as background, as the Faster
  R-CNN is with ``ignore_regions: false``; they are kept beside the labels in
  ``ignore/{split}/<chip>.txt`` (same format) and scored as ignore regions by :func:`score`.
* **DETR** (:func:`write_detr_dataset`): ``coco_{train,val}.json`` whose images are the chip
  files themselves (``file_name`` relative to the chip folder, which the document names), with
  the encoding recorded; class id 0 = landslide (DETR's own ids; its "no object" class is
  implicit); ``iscrowd`` annotations kept, and left out of the training targets
  (:func:`detr_target`) as transformers' DETR image processor does.

Back — each comparator's detections become, per chip and in chip order, ``(boxes (n, 4) x1, y1,
x2, y2 in the chip's pixel frame, scores (n,))``, the structure ``insar-slide evaluate`` scores;
:func:`score` runs the same code on them (COCO via faster-coco-eval, P/R/F1 at IoU 0.5 with
ignore regions, best-F1 threshold) and writes the same files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..atomic import atomic_path
from ..errors import ConfigError, InputError
from ..model.encoding import InputEncoding
from .data import Chip, read_chip, read_split
from .evaluate import _markdown, _plot_pr, _table3, best_f1, pr_curve
from .train import evaluate_predictions

#: The rows of the paper's Table 2 this module adds: CLI name → (first cell of the row, backbone).
COMPARATORS = {"yolov5": ("YOLO V5", "CSP-Darknet53"), "yolov12": ("YOLO V12", "R-ELAN"), "detr": ("DETR", "ResNet-50")}
CLASS_NAME = "landslide"
SPLITS = ("train", "val")
#: Per chip and in chip order: (boxes (n, 4) x1, y1, x2, y2 pixels, scores (n,)).
Predictions = list[tuple[np.ndarray, np.ndarray]]


class MissingExtraError(ConfigError):
    """The optional ``compare`` extra (ultralytics, transformers) is not installed."""


def require_extra(module: str) -> None:
    """Raise :class:`MissingExtraError` naming the fix if ``module`` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"the comparators need {module}, which is not installed; "
                                "install the optional extra: pip install -e '.[compare]'")


# ---------------------------------------------------------------------------- boxes


def to_normalised_cxcywh(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """``boxes`` (n, 4) x1, y1, x2, y2 pixels → (n, 4) cx, cy, w, h as fractions of the chip."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    return np.column_stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]) / scale


def from_normalised_cxcywh(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(n, 4) cx, cy, w, h as fractions of the chip → (n, 4) x1, y1, x2, y2 pixels, clipped to it."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([width, height, width, height], dtype=np.float64)
    out = np.column_stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2])
    return np.clip(out, 0, [width, height, width, height])


def yolo_label_text(boxes: np.ndarray, width: int, height: int) -> str:
    """The lines of a YOLO label file: ``0 cx cy w h`` per box, normalised, 7 decimals."""
    return "".join(f"0 {cx:.7f} {cy:.7f} {w:.7f} {h:.7f}\n" for cx, cy, w, h in to_normalised_cxcywh(boxes, width, height))


def read_yolo_label_text(text: str, width: int, height: int) -> np.ndarray:
    """A YOLO label file's boxes (class 0 only) → (n, 4) x1, y1, x2, y2 pixels."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    bad = [r for r in rows if len(r) != 5 or r[0] != "0"]
    if bad:
        raise InputError(f"a YOLO label line is {' '.join(bad[0])!r}; expected '0 cx cy w h' (one class, normalised)")
    return from_normalised_cxcywh(np.asarray([[float(v) for v in r[1:]] for r in rows]), width, height)


def detr_target(chip: Chip, width: int, height: int) -> dict[str, np.ndarray]:
    """DETR's training target for a chip: ``class_labels`` (n,) zeros and ``boxes`` (n, 4)
    normalised cx, cy, w, h; the chip's ignore regions are not targets (they are scored as
    ignore regions instead)."""
    return {"class_labels": np.zeros(len(chip.boxes), dtype=np.int64),
            "boxes": to_normalised_cxcywh(chip.boxes, width, height).astype(np.float32)}


# ---------------------------------------------------------------------------- images


def encode_uint8(rate: np.ndarray, encoding: InputEncoding) -> np.ndarray:
    """``rate`` (rows, cols) mm/yr → (rows, cols, 3) uint8 in RGB order: the encoding's three
    channels, rate mapped (x + 1) / 2 from [-1, 1], |rate| and valid from [0, 1], then x 255."""
    enc = encoding.encode(rate).numpy()
    enc[0] = (enc[0] + 1.0) / 2.0
    return np.round(np.clip(enc, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)


def decode_uint8(img: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_uint8` up to its 1/255 step: (rows, cols, 3) uint8 RGB →
    (3, rows, cols) float32 in the encoding's ranges."""
    x = img.astype(np.float32).transpose(2, 0, 1) / 255.0
    x[0] = x[0] * 2.0 - 1.0
    return x


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb, mode="RGB").save(path, optimize=False, compress_level=1)


# ---------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class ConvertedSplit:
    """What one split became: chips written, boxes labelled, ignore regions set aside."""

    split: str
    chips: int
    boxes: int
    ignore: int


def _chips_of(chips_dir: str | Path, split: str, limit: int | None) -> tuple[list[Chip], dict[str, Any]]:
    chips, coco = read_split(chips_dir, split)
    if limit:
        chips = chips[:limit]
    return chips, coco


def write_yolo_dataset(chips_dir: str | Path, out: str | Path, *, encoding: InputEncoding | None = None,
                       max_chips: dict[str, int] | None = None, overwrite: bool = False) -> list[ConvertedSplit]:
    """Write the ultralytics YOLO dataset of a chip folder to ``out`` (layout in the module
    docstring); ``max_chips`` keeps the first n chips of a split (as ``max_train_chips`` does)."""
    enc = encoding or InputEncoding()
    target = Path(out)
    done = []
    with atomic_path(target, overwrite=overwrite) as tmp:
        for split in SPLITS:
            chips, _ = _chips_of(chips_dir, split, (max_chips or {}).get(split))
            for sub in ("images", "labels", "ignore"):
                (tmp / sub / split).mkdir(parents=True)
            for c in chips:
                rate = read_chip(c.path)
                h, w = rate.shape
                _write_png(tmp / "images" / split / f"{c.path.stem}.png", encode_uint8(rate, enc))
                (tmp / "labels" / split / f"{c.path.stem}.txt").write_text(yolo_label_text(c.boxes, w, h))
                if len(c.ignore):
                    (tmp / "ignore" / split / f"{c.path.stem}.txt").write_text(yolo_label_text(c.ignore, w, h))
            done.append(ConvertedSplit(split, len(chips), int(sum(len(c.boxes) for c in chips)),
                                       int(sum(len(c.ignore) for c in chips))))
        data = {"path": str(target.resolve()), "train": "images/train", "val": "images/val", "nc": 1, "names": {0: CLASS_NAME},
                "channels": 3, "insar_slide": {"chips": str(Path(chips_dir).resolve()), "encoding": enc.to_dict(),
                                               "image_mapping": "rgb = round(255 * [(rate + 1) / 2, abs_rate, valid])"}}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return done


def write_detr_dataset(chips_dir: str | Path, out: str | Path, *, encoding: InputEncoding | None = None,
                       max_chips: dict[str, int] | None = None, overwrite: bool = False) -> list[ConvertedSplit]:
    """Write DETR's COCO-style documents of a chip folder to ``out`` (``coco_{split}.json``; the
    images stay the chip files, encoded on reading with the encoding recorded in the document)."""
    enc = encoding or InputEncoding()
    target = Path(out)
    root = Path(chips_dir).resolve()
    done = []
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        for split in SPLITS:
            chips, coco = _chips_of(chips_dir, split, (max_chips or {}).get(split))
            images = coco["images"][:len(chips)]
            anns: list[dict[str, Any]] = []
            for im, c in zip(images, chips, strict=True):
                for crowd, boxes in ((0, c.boxes), (1, c.ignore)):
                    for x1, y1, x2, y2 in boxes:
                        anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": 0, "iscrowd": crowd,
                                     "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                     "area": float((x2 - x1) * (y2 - y1))})
            doc = {"images": images, "annotations": anns, "categories": [{"id": 0, "name": CLASS_NAME}],
                   "insar_slide": {"chips": str(root), "encoding": enc.to_dict()}}
            (tmp / f"coco_{split}.json").write_text(json.dumps(doc))
            done.append(ConvertedSplit(split, len(chips), int(sum(len(c.boxes) for c in chips)),
                                       int(sum(len(c.ignore) for c in chips))))
    return done


def read_detr_split(doc_path: str | Path) -> tuple[list[Chip], InputEncoding]:
    """The chips (with boxes and ignore regions) and encoding of a document of :func:`write_detr_dataset`."""
    p = Path(doc_path)
    if not p.is_file():
        raise InputError(f"{p}: no such DETR dataset document; write it with write_detr_dataset (train-comparator does)")
    doc = json.loads(p.read_text())
    root = Path(doc["insar_slide"]["chips"])
    by_img: dict[int, tuple[list[list[float]], list[list[float]]]] = {im["id"]: ([], []) for im in doc["images"]}
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        by_img[a["image_id"]][1 if a.get("iscrowd") else 0].append([x, y, x + w, y + h])
    chips = [Chip(root / im["file_name"], *(np.asarray(v, dtype=np.float64).reshape(-1, 4) for v in by_img[im["id"]]))
             for im in doc["images"]]
    return chips, InputEncoding.from_dict(doc["insar_slide"]["encoding"])


# ---------------------------------------------------------------------------- back: scoring


def detections_json(coco: dict[str, Any], preds: Predictions) -> list[dict[str, Any]]:
    """``preds`` as a COCO results list ([{image_id, category_id 1, bbox [x, y, w, h], score}])
    against the chip folder's ``coco`` document, in chip order."""
    ids = [im["id"] for im in coco["images"]]
    if len(preds) > len(ids):
        raise InputError(f"{len(preds)} chips of predictions against a split of {len(ids)}; predict on the same split")
    return [{"image_id": iid, "category_id": 1, "score": float(s),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for iid, (bx, sc) in zip(ids, preds, strict=False) for b, s in zip(bx, sc, strict=True)]


def predictions_from_json(coco: dict[str, Any], detections: Sequence[dict[str, Any]], n_chips: int | None = None) -> Predictions:
    """The inverse of :func:`detections_json`: per chip of ``coco`` (the first ``n_chips``), its
    (boxes x1, y1, x2, y2, scores), highest score first."""
    images = coco["images"][:n_chips] if n_chips is not None else coco["images"]
    index = {im["id"]: i for i, im in enumerate(images)}
    rows: list[list[list[float]]] = [[] for _ in images]
    for d in detections:
        if d["image_id"] in index:
            x, y, w, h = d["bbox"]
            rows[index[d["image_id"]]].append([x, y, x + w, y + h, d["score"]])
    out = []
    for r in rows:
        a = np.asarray(r, dtype=np.float64).reshape(-1, 5)
        a = a[np.argsort(-a[:, 4], kind="stable")]
        out.append((a[:, :4], a[:, 4]))
    return out


def score(chips: list[Chip], coco: dict[str, Any], preds: Predictions, *, name: str, backbone: str, out: str | Path,
          score_threshold: float = 0.5, source: str = "", extra: dict[str, Any] | None = None,
          overwrite: bool = True) -> dict[str, Any]:
    """Score a comparator's ``preds`` on ``chips`` with ``insar-slide evaluate``'s code and write
    its files to ``out``: metrics.json (one row, ``method`` = ``name``), table2.{md,csv},
    table3.md, pr_curve.png, and detections.json (the COCO results, to score again)."""
    if len(preds) != len(chips):
        raise InputError(f"{len(preds)} chips of predictions for {len(chips)} chips; predict on every chip of the split")
    m = evaluate_predictions(chips, coco, preds, score_threshold)
    rec, prec, sc = pr_curve(chips, preds)
    row = {"checkpoint": source, "method": name, "backbone": backbone, "score_threshold": score_threshold, **m,
           **best_f1(rec, prec, sc), **(extra or {})}
    t2 = pd.DataFrame([row])[["method", "backbone", "precision", "recall", "f1", "AP50", "AP"]].rename(
        columns={"AP50": "mAP50", "AP": "mAP50-95"})
    target = Path(out)
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "metrics.json").write_text(json.dumps([row], indent=2, default=float) + "\n")
        t2.to_csv(tmp / "table2.csv", index=False)
        (tmp / "table2.md").write_text(_markdown(t2))
        (tmp / "table3.md").write_text(_table3(m))
        (tmp / "detections.json").write_text(json.dumps(detections_json(coco, preds)))
        _plot_pr([(name, rec, prec)], tmp / "pr_curve.png")
    return row


def score_split(chips_dir: str | Path, split: str, preds: Predictions, **kw: Any) -> dict[str, Any]:
    """:func:`score` on a chip folder's split (all its chips, in the order of its COCO document)."""
    chips, coco = read_split(chips_dir, split)
    return score(chips, coco, preds, **kw)


def comparator(kind: str) -> tuple[str, str]:
    """(row name, backbone) of a comparator's CLI name; :class:`ConfigError` naming the choices."""
    if kind not in COMPARATORS:
        raise ConfigError(f"unknown comparator {kind!r}; choose one of {', '.join(COMPARATORS)}")
    return COMPARATORS[kind]
