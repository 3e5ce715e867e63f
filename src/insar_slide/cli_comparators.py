"""The Table 2 comparator commands (``train-comparator``, ``evaluate-comparator``; issue 22),
added to the main group by :mod:`.cli`. They need the optional extra: ``pip install -e '.[compare]'``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from .cli_common import _friendly, epoch_bars


def _quiet_hub() -> None:
    """No transformers / huggingface_hub bars while saving or loading a DETR (set before they are imported)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@click.command("train-comparator")
@click.argument("kind", type=click.Choice(["yolov5", "yolov12", "detr"]))
@click.argument("chips_dir", metavar="CHIPS", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (dataset, checkpoints, comparator.json).")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch", type=int, default=4, show_default=True)
@click.option("--max-train-chips", type=int, help="The first n training chips (as max_train_chips of a train config).")
@click.option("--max-val-chips", type=int, help="The first n validation chips.")
@click.option("--clip-mm-yr", type=float, default=60.0, show_default=True, help="The input encoding's clip (mm/yr).")
@click.option("--crop-size", type=int, help="DETR only: random crops of this size, as crop_size of a train config.")
@click.option("--init-weights", type=click.Path(dir_okay=False, exists=True), help="DETR only: a local safetensors file.")
@click.option("--nbs", type=int, help="YOLO only: ultralytics' nominal batch (default 64: gradients accumulate over 64 / batch batches).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, help="Torch threads (default: torch's).")
@click.option("--resume", is_flag=True, help="Continue the run in --out after its last finished epoch.")
@_friendly
def train_comparator_cmd(kind: str, chips_dir: str, out: str, epochs: int, batch: int, max_train_chips: int | None,
                         max_val_chips: int | None, clip_mm_yr: float, crop_size: int | None, init_weights: str | None,
                         nbs: int | None, seed: int, threads: int | None, resume: bool) -> None:
    """Train a Table 2 comparator (YOLOv5, YOLOv12: ultralytics, AGPL-3.0; DETR: transformers) on a chip set."""
    from .errors import ConfigError
    from .model.encoding import InputEncoding

    _quiet_hub()
    enc = InputEncoding(clip_mm_yr=clip_mm_yr)
    limits = {k: v for k, v in (("train", max_train_chips), ("val", max_val_chips)) if v}
    t0 = time.perf_counter()
    if kind == "detr":
        if nbs:
            raise ConfigError("--nbs is for the YOLO comparators only; drop it for detr")
        from .training.detr import train_detr

        with epoch_bars() as on_step:
            card = train_detr(chips_dir, out, epochs=epochs, batch=batch, crop_size=crop_size, encoding=enc,
                              max_chips=limits, seed=seed, threads=threads, init_weights=init_weights, resume=resume,
                              on_step=on_step)
    else:
        if crop_size or init_weights:
            raise ConfigError("--crop-size and --init-weights are for detr only; drop them for the YOLO comparators")
        if threads:
            import torch

            torch.set_num_threads(threads)
        from .training.yolo import train_yolo

        card = train_yolo(kind, chips_dir, out, epochs=epochs, batch=batch, encoding=enc, max_chips=limits, seed=seed,
                          resume=resume, overrides={"nbs": nbs} if nbs else None)
    click.echo(f"trained {card['name']} ({card['backbone']}) for {card.get('epochs_done', card['epochs'])} epoch(s) "
               f"in {time.perf_counter() - t0:.0f} s; run folder {out} (checkpoint {card['weights']})")


@click.command("evaluate-comparator")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option("--chips", "chips_dir", required=True, type=click.Path(file_okay=False), help="Chip folder (from `insar-slide chips`).")
@click.option("--split", default="val", show_default=True, type=click.Choice(["train", "val"]))
@click.option("--out", required=True, type=click.Path(), help="Output folder (as `insar-slide evaluate` writes it).")
@click.option("--score-threshold", type=float, default=0.5, show_default=True, help="For P/R/F1.")
@click.option("--device", default="cpu", show_default=True, help="cpu, or a CUDA device for YOLO (0, cuda:0).")
@_friendly
def evaluate_comparator_cmd(run: str, chips_dir: str, split: str, out: str, score_threshold: float, device: str) -> None:
    """Score a comparator's run folder with `insar-slide evaluate`'s code (COCO, P/R/F1, ignore regions)."""
    from .training.comparator_eval import evaluate_run

    _quiet_hub()
    row = evaluate_run(run, chips_dir, out=out, split=split, score_threshold=score_threshold, device=device)
    click.echo((Path(out) / "table2.md").read_text())
    click.echo(f"{row['method']}: best F1 on this split {row['best_f1']:.3f} at score ≥ {row['best_f1_threshold']:.3f}; "
               f"predicted in {row['predict_seconds']} s; wrote {out}/metrics.json, table2.md/.csv, table3.md, "
               "pr_curve.png, detections.json")


COMPARATOR_COMMANDS = [train_comparator_cmd, evaluate_comparator_cmd]
