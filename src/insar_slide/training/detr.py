"""DETR (Hugging Face transformers, ResNet-50 backbone; the optional ``compare`` extra) on this
project's chips: train, predict, and hand the detections back to ``insar-slide evaluate``'s
scoring (:mod:`.comparators`).

Nothing is downloaded: the model is built from a :class:`transformers.DetrConfig` with
transformers' own ResNet-50 (``ResNetConfig()``: depths 3-4-6-3, bottleneck; not timm),
``use_pretrained_backbone=False``, one class; ``HF_HUB_OFFLINE`` is set before transformers is
imported; a run is saved and reloaded from its own folder with ``save_pretrained`` /
``from_pretrained`` (safetensors). ``init_weights`` loads a local safetensors file
(DETR or ResNet-50 tensors; what fits by name and shape is loaded and the rest reported).

The input is the project's encoding itself (three float channels, no ImageNet normalisation),
as for the Faster R-CNN, at native scale. Random init departs from DETR's recipe where that
recipe assumes ImageNet weights (:func:`from_scratch`): the backbone's stem and first stage train
(frozen random filters would be noise) and its batch norms are ordinary trainable ones (frozen
ones at random init normalise nothing), as in the project's ResNet-34. The schedule is DETR's (AdamW, lr 1e-4,
backbone lr 1e-5 only with ``init_weights``, weight decay 1e-4, gradient clip 0.1); epoch order
and crops are those of the Faster R-CNN (:func:`~.data.batches`, seeded by epoch), so ``resume``
continues with the same order, crops, weights and optimizer state (dropout draws differ).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..model.encoding import InputEncoding
from .comparators import (
    Predictions,
    comparator,
    detr_target,
    from_normalised_cxcywh,
    read_detr_split,
    require_extra,
    write_detr_dataset,
)
from .data import Chip, batches, read_chip

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    require_extra("transformers")


def build_detr(*, num_queries: int = 100) -> Any:
    """A randomly initialised DETR with a ResNet-50 backbone and one class, nothing fetched."""
    _offline()
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone: dict[str, Any] = {"out_features": ["stage4"]}  # ResNetConfig's defaults are ResNet-50
    kw: dict[str, Any] = {"use_timm_backbone": False, "use_pretrained_backbone": False, "num_labels": 1,
                          "num_queries": num_queries, "backbone_config": ResNetConfig(**backbone)}
    cfg = DetrConfig(**kw)
    return DetrForObjectDetection(cfg)


def from_scratch(model: Any) -> Any:
    """Undo what transformers does for ImageNet weights, which a randomly initialised backbone
    does not have (again after every ``from_pretrained``): the frozen stem and first stage train,
    and its frozen batch norms (identity at random init: no normalisation at all) become
    ``nn.BatchNorm2d`` with the same statistics and affine terms, as in the project's ResNet-34."""
    _thaw_batch_norm(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _thaw_batch_norm(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if type(child).__name__ == "DetrFrozenBatchNorm2d":
            frozen = dict(child.named_buffers())
            bn = torch.nn.BatchNorm2d(int(frozen["running_mean"].numel()))
            with torch.no_grad():
                for k in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, k).copy_(frozen[k])
            setattr(module, name, bn)
        else:
            _thaw_batch_norm(child)


def load_init_weights(model: torch.nn.Module, path: str | Path) -> dict[str, int]:
    """Load the tensors of a local safetensors file into ``model`` where name and shape fit;
    returns the counts loaded and skipped."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such weights file; pass a local safetensors file (nothing is downloaded)")
    src = load_file(str(p))
    own = model.state_dict()
    fit = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fit, strict=False)
    return {"loaded": len(fit), "skipped": len(src) - len(fit), "model_tensors": len(own)}


def _stack(imgs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (3, h, w) images to one batch; ``pixel_mask`` 1 on real pixels."""
    h = max(i.shape[1] for i in imgs)
    w = max(i.shape[2] for i in imgs)
    x = torch.zeros(len(imgs), 3, h, w)
    mask = torch.zeros(len(imgs), h, w, dtype=torch.long)
    for k, im in enumerate(imgs):
        x[k, :, :im.shape[1], :im.shape[2]] = im
        mask[k, :im.shape[1], :im.shape[2]] = 1
    return x, mask


def _labels(imgs: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    out = []
    for im, t in zip(imgs, targets, strict=True):
        chip = Chip(Path(), t["boxes"].numpy().astype(np.float64))
        d = detr_target(chip, int(im.shape[2]), int(im.shape[1]))
        out.append({"class_labels": torch.from_numpy(d["class_labels"]), "boxes": torch.from_numpy(d["boxes"])})
    return out


def train_detr(chips_dir: str | Path, out: str | Path, *, epochs: int, batch: int = 4, lr: float = 1e-4,
               weight_decay: float = 1e-4, clip_grad: float = 0.1, crop_size: int | None = None,
               encoding: InputEncoding | None = None, max_chips: dict[str, int] | None = None, seed: int = 0,
               threads: int | None = None, init_weights: str | None = None, resume: bool = False,
               on_step: StepCallback | None = None) -> dict[str, Any]:
    """Train DETR on a chip folder; the run folder ``out`` gets ``dataset/coco_{train,val}.json``
    (:func:`~.comparators.write_detr_dataset`), ``last/`` (the model, ``save_pretrained``),
    ``optimizer.pt`` (tensors only), ``metrics.csv`` (epoch, loss, seconds) and
    ``comparator.json`` (the card ``evaluate-comparator`` reads). Returns the card."""
    name, backbone = comparator("detr")
    _offline()  # before anything is written: a missing extra is said first
    run = Path(out).resolve()
    card_path = run / "comparator.json"
    if threads:
        torch.set_num_threads(threads)
    if resume:
        if not (run / "last").is_dir() or not card_path.is_file():
            raise InputError(f"{run}: nothing to resume (no last/ and comparator.json); run without --resume to start")
        card = json.loads(card_path.read_text())
        card["epochs"] = epochs  # the same command after an interruption continues to the same target
    else:
        if card_path.is_file():
            raise InputError(f"{run} already holds a DETR run; pass --resume to continue it or choose another --out")
        enc0 = encoding or InputEncoding()
        write_detr_dataset(chips_dir, run / "dataset", encoding=enc0, max_chips=max_chips, overwrite=True)
        card = {"kind": "detr", "name": name, "backbone": backbone, "weights": str(run / "last"), "encoding": enc0.to_dict(),
                "chips": str(Path(chips_dir).resolve()), "epochs": epochs, "epochs_done": 0, "seconds": 0.0, "batch": batch,
                "lr": lr, "weight_decay": weight_decay, "clip_grad": clip_grad, "crop_size": crop_size, "seed": seed,
                "init_weights": init_weights}
    chips, enc = read_detr_split(run / "dataset" / "coco_train.json")
    if not chips or sum(len(c.boxes) for c in chips) == 0:
        raise InputError(f"{chips_dir}: the training split has no box; nothing to learn (check the chips' labels)")
    _offline()
    from transformers import DetrForObjectDetection

    torch.manual_seed(card["seed"])
    if resume:
        model = DetrForObjectDetection.from_pretrained(str(run / "last"), local_files_only=True)
    else:
        model = build_detr()
        if init_weights:
            card["init_weights_report"] = load_init_weights(model, init_weights)
    if not card["init_weights"]:  # with local weights, DETR's own recipe (frozen stem, stage 1, batch norms)
        model = from_scratch(model)
    bb = [p for n, p in model.named_parameters() if ".backbone." in n]
    rest = [p for n, p in model.named_parameters() if ".backbone." not in n]
    opt = torch.optim.AdamW([{"params": rest}, {"params": bb, "lr": card["lr"] / 10 if card["init_weights"] else card["lr"]}],
                            lr=card["lr"], weight_decay=card["weight_decay"])
    if resume and (run / "optimizer.pt").is_file():
        opt.load_state_dict(torch.load(run / "optimizer.pt", weights_only=True))
    model.train()
    for epoch in range(int(card["epochs_done"]) + 1, int(card["epochs"]) + 1):
        t0 = time.perf_counter()
        n_steps = -(-len(chips) // card["batch"])
        losses = []
        for step, (imgs, targets) in enumerate(batches(chips, enc, epoch=epoch, seed=card["seed"], batch_size=card["batch"],
                                                       crop_size=card["crop_size"]), start=1):
            x, mask = _stack(imgs)
            loss = model(pixel_values=x, pixel_mask=mask, labels=_labels(imgs, targets)).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), card["clip_grad"])
            opt.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step, n_steps, losses[-1])
        model.save_pretrained(str(run / "last"))
        torch.save(opt.state_dict(), run / "optimizer.pt")
        seconds = time.perf_counter() - t0
        new = not (run / "metrics.csv").is_file()
        with open(run / "metrics.csv", "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["epoch", "loss", "seconds"])
            w.writerow([epoch, f"{np.mean(losses):.4f}", f"{seconds:.1f}"])
        card.update(epochs_done=epoch, seconds=round(float(card["seconds"]) + seconds, 1))
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        log.info("DETR epoch %d: loss %.4f in %.1f s", epoch, np.mean(losses), seconds)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


@torch.no_grad()
def predict_detr(model_dir: str | Path, chips: list[Chip], *, encoding: InputEncoding, batch: int = 2) -> Predictions:
    """(boxes x1, y1, x2, y2 pixels, scores) per chip, in chip order: every query's landslide
    probability (softmax over landslide / no object) and box, highest score first."""
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise InputError(f"{d}: not a saved DETR (no config.json); train one with `insar-slide train-comparator detr`")
    _offline()
    from transformers import DetrForObjectDetection

    model = DetrForObjectDetection.from_pretrained(str(d), local_files_only=True).eval()
    out: Predictions = []
    for i in range(0, len(chips), batch):
        imgs = [encoding.encode(read_chip(c.path)) for c in chips[i:i + batch]]
        x, mask = _stack(imgs)
        res = model(pixel_values=x, pixel_mask=mask)
        prob = res.logits.softmax(-1)[..., 0].numpy().astype(np.float64)
        for k, im in enumerate(imgs):
            h, w = int(im.shape[1]), int(im.shape[2])
            boxes = from_normalised_cxcywh(res.pred_boxes[k].numpy(), w, h)
            o = np.argsort(-prob[k], kind="stable")
            out.append((boxes[o], prob[k][o]))
    return out
