"""Training the detector on a chip set (``insar-slide train train.yaml``).

Each epoch: a pass over the training chips (optionally random crops, for CPU budgets), a
checkpoint (``last.safetensors`` + ``train_state.safetensors`` for ``--resume``), validation
metrics (COCO via faster-coco-eval, P/R/F1 at IoU 0.5), a row in ``metrics.csv``; the best
epoch by validation AP50 is kept as ``best.safetensors``; ``loss.png`` at the end. Within an
epoch, every ``checkpoint_every_steps`` steps the weights, momentum, running losses and the torch
random state go to ``partial.safetensors`` (one atomic file), so that an interrupted epoch is
not lost. Data order and crops are seeded per epoch, so a resumed run continues exactly where
it stopped: it replays the epoch's data order up to the stored step and carries on.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from pydantic import Field, model_validator
from rasterio.errors import NotGeoreferencedWarning
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path
from ..config import StrictModel, load_yaml, parse_config, resolve_path
from ..errors import InputError
from ..grid import Grid
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..model.detector import ModelConfig, build_model, load_pretrained
from ..model.device import pick_device
from ..model.encoding import InputEncoding
from .data import Chip, batches, epoch_items, read_chip, read_split
from .metrics import coco_metrics, prf1
from .mining import HardNegatives, load_or_mine, mine

log = logging.getLogger(__name__)


class ModelSection(StrictModel):
    variant: Literal["r34", "r34_fpn", "r34_fpn_cbam"] = "r34_fpn_cbam"
    clip_mm_yr: float = Field(60.0, gt=0)
    rpn_pre_nms_top_n_train: int = Field(2000, ge=1)
    rpn_post_nms_top_n_train: int = Field(2000, ge=1)
    rpn_pre_nms_top_n_test: int = Field(1000, ge=1)
    rpn_post_nms_top_n_test: int = Field(1000, ge=1)
    rpn_batch_size_per_image: int = Field(256, ge=1)
    box_batch_size_per_image: int = Field(512, ge=1)
    anchor_sizes: tuple[int, ...] = Field(ModelConfig.anchor_sizes, min_length=1,
                                          description="anchor side in px per feature level (FPN: P2-P6, five)")

    @model_validator(mode="after")
    def _anchors_fit_the_levels(self) -> ModelSection:
        if self.variant != "r34" and len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes: the FPN variants have five feature levels (P2-P6) and need five "
                             f"sizes, one per level, e.g. [8, 16, 32, 64, 128]; got {list(self.anchor_sizes)}")
        if any(a < 2 for a in self.anchor_sizes):
            raise ValueError(f"anchor_sizes: sizes are pixels and must be at least 2; got {list(self.anchor_sizes)}")
        return self


class TrainConfig(StrictModel):
    chips: str = Field(description="a folder written by `insar-slide chips`")
    out: str = Field(description="run folder: checkpoints, metrics.csv, loss.png")
    model: ModelSection = ModelSection()
    init_weights: str | None = Field(None, description="local torchvision-format .pth (COCO or ImageNet), or an insar-slide .safetensors checkpoint")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    lr_decay_start_epoch: int = Field(15, ge=1, description="1-based epoch from which the lr decays")
    lr_decay_every: int = Field(2, ge=1)
    lr_decay_gamma: float = Field(0.4, gt=0, le=1)
    warmup_steps: int = Field(0, ge=0, description="linear lr warm-up over the first steps")
    crop_size: int | None = Field(None, ge=32, description="train on random crops of this size (CPU budgets)")
    max_train_chips: int | None = Field(None, ge=1)
    max_val_chips: int | None = Field(None, ge=1)
    score_threshold: float = Field(0.5, gt=0, lt=1, description="for precision / recall / F1")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    hard_negatives: HardNegatives | None = Field(None, description="mine the starting model's confident false alarms on "
                                                  "the training chips and oversample them (training/mining.py)")
    ignore_regions: bool = Field(False, description="anchors and proposals inside the chips' ignore regions (slides "
                                 "not labelled, slides the chip or crop edge cuts off) are not sampled as background")
    checkpoint_every_steps: int | None = Field(25, ge=1, description="within an epoch, store the state for --resume every "
                                               "this many steps (partial.safetensors); null: at epoch ends only")


def load_train_config(path: str | Path) -> TrainConfig:
    p = Path(path)
    cfg = parse_config(TrainConfig, load_yaml(p), source=str(p))
    base = p.parent
    return cfg.model_copy(update={"chips": resolve_path(cfg.chips, base), "out": resolve_path(cfg.out, base),
                                  "init_weights": resolve_path(cfg.init_weights, base)})


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """The paper's schedule: × gamma every ``every`` epochs from ``start`` (1-based epochs)."""
    if epoch < cfg.lr_decay_start_epoch:
        return 1.0
    return cfg.lr_decay_gamma ** ((epoch - cfg.lr_decay_start_epoch) // cfg.lr_decay_every + 1)


# ---------------------------------------------------------------------------- evaluation

@torch.no_grad()
def predict_chips(model: torch.nn.Module, chips: list[Chip], encoding: InputEncoding, device: torch.device,
                  batch_size: int = 2, step: Callable[[int, int], None] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes, scores) per chip, in chip order; ``step(done, total)`` hears the chips done."""
    model.eval()
    out = []
    for i in range(0, len(chips), batch_size):
        if step is not None:
            step(i, len(chips))
        imgs = [encoding.encode(read_chip(c.path)).to(device) for c in chips[i:i + batch_size]]
        for det in model(imgs):
            out.append((det["boxes"].cpu().numpy().astype(np.float64), det["scores"].cpu().numpy().astype(np.float64)))
    if step is not None:
        step(len(chips), len(chips))
    return out


def evaluate_predictions(chips: list[Chip], coco: dict[str, Any], preds: list[tuple[np.ndarray, np.ndarray]],
                         score_threshold: float) -> dict[str, float]:
    ids = [im["id"] for im in coco["images"]][:len(chips)]
    wanted = set(ids)
    gt = {**coco, "images": coco["images"][:len(chips)],
          "annotations": [a for a in coco["annotations"] if a["image_id"] in wanted]}
    dets = [{"image_id": iid, "category_id": 1, "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
             "score": float(s)} for iid, (bx, sc) in zip(ids, preds, strict=True) for b, s in zip(bx, sc, strict=True)]
    m = coco_metrics(gt, dets)
    m.update(prf1([(c.boxes, bx, sc, c.ignore) for c, (bx, sc) in zip(chips, preds, strict=True)], score_threshold=score_threshold))
    return m


# ---------------------------------------------------------------------------- the loop

StepCallback = Callable[[int, int, float], None]

METRIC_COLUMNS = ["epoch", "lr", "loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg",
                  "AP", "AP50", "AP75", "precision", "recall", "f1", "seconds"]


def train(cfg: TrainConfig, *, resume: bool = False, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Train per ``cfg``; returns the last epoch's metrics row. ``on_step(step, n_steps, loss)``."""
    out = Path(cfg.out)
    train_chips, _ = read_split(cfg.chips, "train")
    val_chips, val_coco = read_split(cfg.chips, "val")
    if not train_chips:
        raise InputError(f"{cfg.chips}: the training split is empty")
    if sum(len(c.boxes) for c in train_chips) == 0:
        raise InputError(f"{cfg.chips}: no training chip has a box; nothing to learn (check the inventory and label filters)")
    if cfg.max_train_chips:
        train_chips = train_chips[:cfg.max_train_chips]
    if cfg.max_val_chips:
        val_chips = val_chips[:cfg.max_val_chips]
    sample = read_chip(train_chips[0].path)
    if not np.isfinite(sample).any():
        raise InputError(f"{train_chips[0].path}: an all-NaN chip; re-cut the chips (min_valid_fraction)")
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    m = cfg.model
    mcfg = ModelConfig(variant=m.variant, tile_size=int(sample.shape[0]), encoding=InputEncoding(clip_mm_yr=m.clip_mm_yr),
                       rpn_pre_nms_top_n_train=m.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=m.rpn_post_nms_top_n_train,
                       rpn_pre_nms_top_n_test=m.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=m.rpn_post_nms_top_n_test,
                       rpn_batch_size_per_image=m.rpn_batch_size_per_image, box_batch_size_per_image=m.box_batch_size_per_image,
                       anchor_sizes=tuple(m.anchor_sizes))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    start = 1
    if resume and (out / "last.safetensors").is_file():
        model, _, meta = load_checkpoint(out / "last.safetensors", expect=mcfg, device=device)
        start = int(meta["epoch"]) + 1
        if start > cfg.epochs:
            log.info("%s is already trained to epoch %d of %d; nothing to do", out, start - 1, cfg.epochs)
            return dict(meta.get("metrics") or {"epoch": start - 1})
        log.info("resuming %s after epoch %d", out, start - 1)
    else:
        if not resume and ((out / "last.safetensors").exists() or (out / PARTIAL).exists()):
            raise InputError(f"{out} already holds a training run; pass --resume to continue it, or choose another out")
        model = build_model(mcfg).to(device)
        if cfg.init_weights:
            load_pretrained(model, cfg.init_weights)
    out.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if start > 1:
        state = load_file(str(out / "train_state.safetensors"))
        for i, p in enumerate(params):
            if f"momentum.{i}" in state:
                opt.state[p]["momentum_buffer"] = state[f"momentum.{i}"].to(device)
    hn = cfg.hard_negatives
    if hn is not None:
        tag = f"{out.name} after epoch {start - 1}" if start > 1 else (Path(cfg.init_weights).name if cfg.init_weights else "random init")
        hard = load_or_mine(out, tag, lambda: mine(lambda cs: predict_chips(model, list(cs), mcfg.encoding, device),
                                                   train_chips, Path(cfg.chips), hn))
        train_chips = [replace(c, hard=hard.get(c.path.stem, c.hard)) for c in train_chips]
    oversample, focus = (hn.oversample, hn.focus) if hn is not None else (1, 0.0)
    steps_per_epoch = math.ceil(len(epoch_items(train_chips, oversample)) / cfg.batch_size)
    partial = _load_partial(out, start, model, opt, params, device) if resume else None
    row: dict[str, Any] = {}
    for epoch in range(start, cfg.epochs + 1):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        n = skip = 0
        if partial is not None:
            skip, n, sums, seconds = partial.step, partial.step, dict(partial.sums), partial.seconds
            torch.set_rng_state(partial.rng)
            t0 -= seconds
            log.info("resuming %s in epoch %d after step %d of %d", out, epoch, skip, steps_per_epoch)
            partial = None
        for step, (imgs, targets) in enumerate(batches(
                train_chips, mcfg.encoding, epoch=epoch, seed=cfg.seed, batch_size=cfg.batch_size, crop_size=cfg.crop_size,
                ignore_regions=cfg.ignore_regions, oversample=oversample, focus=focus)):
            if step < skip:  # replayed, not trained: the crops draw from the epoch's generator in order
                continue
            global_step = (epoch - 1) * steps_per_epoch + step
            warm = min(1.0, (global_step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(epoch, cfg) * warm
            losses = model([i.to(device) for i in imgs], [{k: v.to(device) for k, v in t.items()} for t in targets])
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise InputError(f"training diverged at epoch {epoch}, step {step} (loss {float(loss)}); lower lr or add warmup_steps")
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += 1
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            every = cfg.checkpoint_every_steps
            if every and n % every == 0 and n < steps_per_epoch:
                _save_partial(out, model, opt, params, epoch, n, sums, time.perf_counter() - t0)
            if on_step:
                on_step(step + 1, steps_per_epoch, sums["loss"] / n)
        preds = predict_chips(model, val_chips, mcfg.encoding, device) if val_chips else []
        metrics = evaluate_predictions(val_chips, val_coco, preds, cfg.score_threshold) if val_chips else {}
        row = {"epoch": epoch, "lr": cfg.lr * lr_factor(epoch, cfg), **{k: v / max(n, 1) for k, v in sums.items()},
               **{k: metrics.get(k, float("nan")) for k in ("AP", "AP50", "AP75", "precision", "recall", "f1")},
               "seconds": time.perf_counter() - t0}
        _save_epoch(out, model, mcfg, opt, params, cfg, epoch, row)
        (out / PARTIAL).unlink(missing_ok=True)
    _plot_losses(out)
    return row


PARTIAL = "partial.safetensors"


@dataclass(frozen=True)
class _Partial:
    step: int
    sums: dict[str, float]
    seconds: float
    rng: torch.Tensor


def _save_partial(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                  epoch: int, step: int, sums: dict[str, float], seconds: float) -> None:
    """The state of an epoch after ``step`` steps, in one atomic file (weights, momentum, torch RNG)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"momentum.{i}": opt.state[p]["momentum_buffer"].detach().cpu().contiguous()
                    for i, p in enumerate(params) if "momentum_buffer" in opt.state.get(p, {})})
    tensors["rng"] = torch.get_rng_state()
    meta = {"epoch": epoch, "step": step, "sums": sums, "seconds": seconds}
    with atomic_path(out / PARTIAL, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={"insar_slide_partial": json.dumps(meta)})


def _load_partial(out: Path, epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                  params: list[torch.nn.Parameter], device: torch.device) -> _Partial | None:
    """Load the stored state of ``epoch`` into ``model`` and ``opt``; None when there is none
    for that epoch (a partial state of an earlier epoch is stale: its epoch was finished)."""
    path = out / PARTIAL
    if not path.is_file():
        return None
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["insar_slide_partial"])
    except Exception as exc:
        raise InputError(f"{path}: cannot read the stored state of the interrupted epoch ({exc}); delete the file "
                         "to resume from the last finished epoch instead") from exc
    if int(meta["epoch"]) != epoch:
        return None
    state = load_file(str(path))
    model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    for i, p in enumerate(params):
        if f"momentum.{i}" in state:
            opt.state[p]["momentum_buffer"] = state[f"momentum.{i}"].to(device)
    return _Partial(step=int(meta["step"]), sums={k: float(v) for k, v in meta["sums"].items()},
                    seconds=float(meta["seconds"]), rng=state["rng"])


def _save_epoch(out: Path, model: torch.nn.Module, mcfg: ModelConfig, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                cfg: TrainConfig, epoch: int, row: dict[str, Any]) -> None:
    extra = {"epoch": epoch, "metrics": row, "training_config": cfg.model_dump(mode="json"),
             "data_fingerprint": _fingerprint(Path(cfg.chips))}
    pixel = chips_pixel_size_m(Path(cfg.chips))
    if pixel is not None:
        extra["pixel_size_m"] = pixel
    state = {f"momentum.{i}": opt.state[p]["momentum_buffer"].detach().cpu().contiguous()
             for i, p in enumerate(params) if "momentum_buffer" in opt.state.get(p, {})}
    with atomic_path(out / "train_state.safetensors", overwrite=True) as tmp:
        save_file(state, str(tmp), metadata={"epoch": str(epoch)})
    save_checkpoint(model, mcfg, out / "last.safetensors", extra=extra)
    best_file = out / "best.json"
    best = json.loads(best_file.read_text())["metrics"].get("AP50", -1) if best_file.is_file() else -1
    ap50 = row.get("AP50", float("nan"))
    if not best_file.is_file() or (not math.isnan(ap50) and ap50 > best):
        save_checkpoint(model, mcfg, out / "best.safetensors", extra=extra)
    csv_path = out / "metrics.csv"
    rows = list(csv.DictReader(csv_path.open())) if csv_path.is_file() else []
    rows = [r for r in rows if int(r["epoch"]) < epoch] + [{k: row.get(k, "") for k in METRIC_COLUMNS}]
    with atomic_path(csv_path, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def chips_pixel_size_m(chips: Path) -> float | None:
    """The pixel size (m, mean of both axes) of the first georeferenced training chip; None
    when none is (rotated chips carry no transform)."""
    images = json.loads((chips / "coco_train.json").read_text()).get("images", [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for im in images:
            with rasterio.open(chips / im["file_name"]) as src:
                if src.crs is None:
                    continue
                dx, dy = Grid.from_transform(src.crs.to_string(), src.transform, src.height, src.width).pixel_size_m()
                return round((dx + dy) / 2, 3)
    return None


def _fingerprint(chips: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    for name in ("coco_train.json", "coco_val.json"):
        p = chips / name
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _plot_losses(out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    ep = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for k in ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        ax.plot(ep, [float(r[k]) if r[k] else np.nan for r in rows], label=k, marker="o" if k == "loss" else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    if any(r["AP50"] for r in rows):
        ax2 = ax.twinx()
        ax2.plot(ep, [float(r["AP50"]) if r["AP50"] else np.nan for r in rows], color="black", ls="--", label="val AP50")
        ax2.set_ylabel("validation AP50")
        ax2.set_ylim(0, 1)
    with atomic_path(out / "loss.png", overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
