"""Training data: chips and their boxes from a chip folder, random crops that keep the sliver
rule, and the seeded order of an epoch (with mined hard negatives seen more often)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from ..errors import InputError
from ..model.encoding import InputEncoding


@dataclass(frozen=True)
class Chip:
    path: Path
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (k, 4) regions not scored (COCO iscrowd)
    hard: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (h, 4) mined hard negatives (training/mining.py)


def read_split(folder: str | Path, split: str) -> tuple[list[Chip], dict[str, Any]]:
    f = Path(folder)
    coco_path = f / f"coco_{split}.json"
    if not coco_path.is_file():
        raise InputError(f"{f}: no coco_{split}.json; pass a folder written by `insar-slide chips`")
    coco = json.loads(coco_path.read_text())
    by_img: dict[int, tuple[list[list[float]], list[list[float]]]] = {im["id"]: ([], []) for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        by_img[a["image_id"]][1 if a.get("iscrowd") else 0].append([x, y, x + w, y + h])
    chips = []
    for im in coco["images"]:
        b, ig = (np.asarray(v, dtype=np.float64).reshape(-1, 4) for v in by_img[im["id"]])
        for bb in (b, ig):
            if len(bb) and ((bb[:, 0] < 0) | (bb[:, 1] < 0) | (bb[:, 2] > im["width"]) | (bb[:, 3] > im["height"])).any():
                raise InputError(f"{coco_path}: a box of {im['file_name']} lies outside its {im['width']} x {im['height']} chip")
        chips.append(Chip(f / im["file_name"], b, ig))
    return chips, coco


def read_splits(folders: str | Path | Sequence[str | Path], split: str) -> tuple[list[Chip], dict[str, Any]]:
    """:func:`read_split` of one folder, or of several pooled into one set: their COCO image and
    annotation ids renumbered, so that metrics and the best-F1 threshold are those of the union
    (an operating threshold chosen on every validation set at once)."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    if len(folders) == 1:
        return read_split(folders[0], split)
    chips: list[Chip] = []
    pooled: dict[str, Any] = {"images": [], "annotations": []}
    for folder in folders:
        c, coco = read_split(folder, split)
        img0 = 1 + max((im["id"] for im in pooled["images"]), default=0)
        ann0 = 1 + max((a["id"] for a in pooled["annotations"]), default=0)
        new_id = {im["id"]: img0 + k for k, im in enumerate(coco["images"])}
        pooled["images"] += [{**im, "id": new_id[im["id"]]} for im in coco["images"]]
        pooled["annotations"] += [{**a, "id": ann0 + k, "image_id": new_id[a["image_id"]]}
                                  for k, a in enumerate(coco["annotations"])]
        pooled.update({k: v for k, v in coco.items() if k not in ("images", "annotations")})
        chips += c
    return chips, pooled


def read_chip(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # rotated chips are off the map
        with rasterio.open(path) as src:
            return src.read(1).astype("float32")


def random_crop(rate: np.ndarray, boxes: np.ndarray, *, size: int, rng: np.random.Generator,
                ignore: np.ndarray | None = None, hard: np.ndarray | None = None,
                focus: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random ``size`` crop, its boxes (the sliver rule of the chips: ≥ 30 % of the box and
    ≥ 4 px a side inside) and its ignore regions (``ignore`` and the boxes that rule drops).
    With ``hard`` boxes (mined false alarms), the crop is centred near one of them with
    probability ``focus``."""
    h, w = rate.shape
    ign = np.zeros((0, 4)) if ignore is None else np.asarray(ignore, dtype=np.float64).reshape(-1, 4)
    if size >= h and size >= w:
        return rate, boxes, ign
    # Half of the other crops are centred near an object, so small crops still see slides.
    target = None
    if hard is not None and len(hard) and rng.random() < focus:
        target = hard[rng.integers(len(hard))]
    elif len(boxes) and rng.random() < 0.5:
        target = boxes[rng.integers(len(boxes))]
    if target is not None:
        b = target
        cy, cx = (b[1] + b[3]) / 2, (b[0] + b[2]) / 2
        r0 = int(np.clip(cy - size / 2 + rng.integers(-size // 4, size // 4 + 1), 0, h - size))
        c0 = int(np.clip(cx - size / 2 + rng.integers(-size // 4, size // 4 + 1), 0, w - size))
    else:
        r0, c0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    out = rate[r0:r0 + size, c0:c0 + size]
    shift = np.array([c0, r0, c0, r0], dtype=np.float64)
    ig = np.clip(ign - shift, 0, size)
    ig = ig[(ig[:, 2] > ig[:, 0]) & (ig[:, 3] > ig[:, 1])]
    if not len(boxes):
        return out, boxes, ig
    b = boxes - shift
    clipped = np.clip(b, 0, size)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    carea = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (carea >= 0.3 * area) & (clipped[:, 2] - clipped[:, 0] >= 4) & (clipped[:, 3] - clipped[:, 1] >= 4)
    return out, clipped[keep], np.concatenate([ig, clipped[~keep & (carea > 0)]])


def epoch_items(chips: list[Chip], oversample: int = 1) -> np.ndarray:
    """The chip indices of one epoch: each once, a chip with hard negatives ``oversample`` times."""
    hard = [i for i, c in enumerate(chips) if len(c.hard)]
    return np.asarray(list(range(len(chips))) + hard * (oversample - 1), dtype=np.int64)


def batches(chips: list[Chip], encoding: InputEncoding, *, epoch: int, seed: int, batch_size: int,
            crop_size: int | None = None, ignore_regions: bool = False, oversample: int = 1,
            focus: float = 0.0) -> Iterator[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]]:
    """One epoch of (images, targets) batches in a seeded order (:func:`epoch_items`), each chip
    cropped by :func:`random_crop` when ``crop_size`` is set."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(epoch_items(chips, oversample))
    for i in range(0, len(order), batch_size):
        imgs, targets = [], []
        for j in order[i:i + batch_size]:
            c = chips[j]
            rate, boxes, ignore = read_chip(c.path), c.boxes, c.ignore
            if crop_size:
                rate, boxes, ignore = random_crop(rate, boxes, size=crop_size, rng=rng, ignore=ignore,
                                                  hard=c.hard, focus=focus)
            imgs.append(encoding.encode(rate))
            target = {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                      "labels": torch.ones(len(boxes), dtype=torch.int64)}
            if ignore_regions:
                target["ignore"] = torch.as_tensor(ignore, dtype=torch.float32).reshape(-1, 4)
            targets.append(target)
        yield imgs, targets


