"""YOLOv5 and YOLOv12 (ultralytics, AGPL-3.0, the optional ``compare`` extra) on this project's
chips: train from the model YAML with random weights, predict, and hand the detections back to
``insar-slide evaluate``'s scoring (:mod:`.comparators`).

Offline by construction: the model is built from ultralytics' own YAML (``yolov5s.yaml`` →
``cfg/models/v5/yolov5.yaml`` at scale s; ``yolo12s.yaml`` likewise), ``pretrained=False``, AMP
off (its check downloads a model, and only runs on CUDA). Before ultralytics is first imported,
:func:`offline_ultralytics` points its settings directory at the run folder, sets
``YOLO_OFFLINE`` (no connectivity probe, no telemetry), turns off automatic pip installs and
requirement checks, and leaves a local font under the name ultralytics looks for (matplotlib's
DejaVu Sans as ``Arial.ttf``), since its dataset check otherwise tries to download Arial.
The environment is process-wide: this is for the CLI's own process.

Training arguments that would change the encoding's meaning are off: HSV colour jitter (the
channels are rate, |rate| and valid, not colours) and scale jitter (a 30 m pixel stays 30 m, as
for the Faster R-CNN); flips, translation and mosaic stay at ultralytics' defaults.
Checkpoints are ultralytics' own ``.pt`` files (pickles, loaded by ultralytics): run them only
from a run folder you made.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..model.encoding import InputEncoding
from .comparators import Predictions, comparator, encode_uint8, require_extra, write_yolo_dataset
from .data import Chip, read_chip

log = logging.getLogger(__name__)

#: CLI name → the model YAML ultralytics builds (scale s of each family, as in the paper's table).
MODEL_YAML = {"yolov5": "yolov5s.yaml", "yolov12": "yolo12s.yaml"}
#: Training arguments fixed here (the module docstring says why).
FIXED_ARGS: dict[str, Any] = {"pretrained": False, "amp": False, "plots": False, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0,
                              "scale": 0.0, "exist_ok": True, "verbose": False, "deterministic": True}


def offline_ultralytics(config_dir: Path) -> None:
    """Keep ultralytics offline and its settings in ``config_dir`` (call before importing it)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    font = config_dir / "Arial.ttf"
    if not font.exists():
        from matplotlib import font_manager

        shutil.copyfile(font_manager.findfont("DejaVu Sans"), font)
    for k, v in {"YOLO_CONFIG_DIR": str(config_dir), "YOLO_OFFLINE": "true", "YOLO_AUTOINSTALL": "false",
                 "ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS": "true", "YOLO_VERBOSE": "false"}.items():
        os.environ.setdefault(k, v)
    require_extra("ultralytics")
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False, "datasets_dir": str(config_dir), "runs_dir": str(config_dir / "runs"),
                     "weights_dir": str(config_dir / "weights"), "clearml": False, "comet": False, "dvc": False,
                     "mlflow": False, "raytune": False, "tensorboard": False, "wandb": False})


def _yolo(model: str, out: Path) -> Any:
    offline_ultralytics(out / ".ultralytics")
    from ultralytics import YOLO

    return YOLO(model, task="detect")


def train_yolo(kind: str, chips_dir: str | Path, out: str | Path, *, epochs: int, batch: int = 4, imgsz: int | None = None,
               encoding: InputEncoding | None = None, max_chips: dict[str, int] | None = None, seed: int = 0,
               workers: int = 2, device: str = "cpu", resume: bool = False, val: bool = True,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``kind`` (``yolov5`` or ``yolov12``) on a chip folder; the run folder ``out`` gets
    ``dataset/`` (:func:`~.comparators.write_yolo_dataset`), ``train/`` (ultralytics' run:
    ``weights/{last,best}.pt``, ``results.csv``) and ``comparator.json`` (what
    :func:`predict_yolo` and ``evaluate-comparator`` read). ``overrides`` are further ultralytics
    training arguments (e.g. ``{"nbs": 4}``: its nominal batch of 64 accumulates gradients over
    64 / ``batch`` batches). Returns that card."""
    name, backbone = comparator(kind)
    if kind not in MODEL_YAML:
        raise InputError(f"{kind} is not a YOLO comparator; choose one of {', '.join(MODEL_YAML)}")
    require_extra("ultralytics")  # before anything is written
    run = Path(out).resolve()
    enc = encoding or InputEncoding()
    last = run / "train" / "weights" / "last.pt"
    if resume:
        import yaml

        if (run / "dataset" / "data.yaml").is_file():  # the encoding the run was started with
            enc = InputEncoding.from_dict(yaml.safe_load((run / "dataset" / "data.yaml").read_text())["insar_slide"]["encoding"])
        if not last.is_file():
            raise InputError(f"{run}: nothing to resume (no train/weights/last.pt); run without --resume to start")
        done = _epochs_done(run)
        if done >= epochs:
            log.info("%s: %d of %d epochs already done; nothing to resume", run, done, epochs)
        else:
            started = int(yaml.safe_load((run / "train" / "args.yaml").read_text())["epochs"])
            if done >= started:
                raise InputError(f"{run} finished the {started} epochs it was started with, and ultralytics resumes only "
                                 f"to those; start a new run (another --out) with --epochs {epochs}")
            _yolo(str(last), run).train(resume=True)
    else:
        if last.is_file():
            raise InputError(f"{run} already holds a YOLO run; pass --resume to continue it or choose another --out")
        dataset = run / "dataset"
        if not (dataset / "data.yaml").is_file():
            splits = write_yolo_dataset(chips_dir, dataset, encoding=enc, max_chips=max_chips)
            log.info("wrote the YOLO dataset: %s", splits)
        tile = imgsz or _tile_of(dataset)
        model = _yolo(MODEL_YAML[kind], run)
        model.train(data=str(dataset / "data.yaml"), epochs=epochs, imgsz=tile, batch=batch, device=device, workers=workers,
                    project=str(run), name="train", seed=seed, val=val, **{**(overrides or {}), **FIXED_ARGS})
    weights = run / "train" / "weights"
    best = weights / "best.pt" if (weights / "best.pt").is_file() else last
    card = {"kind": kind, "name": name, "backbone": backbone, "model_yaml": MODEL_YAML[kind], "weights": str(best),
            "last": str(last), "encoding": enc.to_dict(), "chips": str(Path(chips_dir).resolve()), "epochs": epochs,
            "epochs_done": _epochs_done(run), "seconds": _train_seconds(run), "fixed_args": FIXED_ARGS,
            "overrides": overrides or {}, "licence": "ultralytics: AGPL-3.0"}
    (run / "comparator.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _epochs_done(run: Path) -> int:
    """Epochs ultralytics finished in a run folder: the last epoch of ``train/results.csv`` (after
    an interruption and ``resume``, an epoch whose row was written but not its checkpoint is redone
    and appears twice)."""
    p = run / "train" / "results.csv"
    rows = p.read_text().strip().splitlines()[1:] if p.is_file() else []
    return int(float(rows[-1].split(",")[0])) if rows else 0


def _train_seconds(run: Path) -> float:
    """Training wall time over all sessions of a run: ultralytics' ``time`` column counts from the
    start of each session (it falls back when a resumed session begins)."""
    p = run / "train" / "results.csv"
    rows = p.read_text().strip().splitlines()[1:] if p.is_file() else []
    times = [float(r.split(",")[1]) for r in rows]
    total = sum(a for a, b in zip(times, [*times[1:], 0.0], strict=True) if b < a)
    return round(total, 1)


def _tile_of(dataset: Path) -> int:
    from PIL import Image

    first = next((dataset / "images" / "train").glob("*.png"), None)
    if first is None:
        raise InputError(f"{dataset}: the training split has no chip; cut chips with `insar-slide chips`")
    with Image.open(first) as im:
        return int(max(im.size))


def predict_yolo(weights: str | Path, chips: list[Chip], *, encoding: InputEncoding, imgsz: int | None = None,
                 batch: int = 4, device: str = "cpu") -> Predictions:
    """(boxes x1, y1, x2, y2 pixels, scores) per chip, in chip order, from a YOLO checkpoint; the
    chips are encoded as in training (:func:`~.comparators.encode_uint8`) and handed to
    ultralytics as BGR arrays (its convention for arrays), all detections above 0.001 kept."""
    w = Path(weights)
    if not w.is_file():
        raise InputError(f"{w}: no such YOLO checkpoint; train one with `insar-slide train-comparator`")
    model = _yolo(str(w), w.resolve().parent.parent.parent)
    out: Predictions = []
    for i in range(0, len(chips), batch):
        imgs = [np.ascontiguousarray(encode_uint8(read_chip(c.path), encoding)[..., ::-1]) for c in chips[i:i + batch]]
        size = imgsz or max(max(im.shape[:2]) for im in imgs)
        for r in model.predict(imgs, imgsz=size, conf=0.001, iou=0.7, max_det=100, device=device, verbose=False):
            out.append((r.boxes.xyxy.cpu().numpy().astype(np.float64), r.boxes.conf.cpu().numpy().astype(np.float64)))
    return out
