"""The training and model commands of the CLI: chips, train, evaluate, pseudo-label,
import-weights, export-model (added to :data:`insar_slide.cli.main`)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .cli_common import _friendly, epoch_bars, progress_bars


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_friendly
def chips(config: str, no_progress: bool) -> None:
    """Cut training chips (512 px, filtered, split by blocks, rotated) with VOC and COCO labels."""
    from .training.chips import make_chips
    from .training.config import load_chips_config

    cfg = load_chips_config(config)
    t0 = time.perf_counter()
    with progress_bars(not no_progress) as progress:
        s = make_chips(cfg, progress)
    click.echo(f"wrote {s['chips']} chips from {s['windows']} windows to {cfg.out} in {time.perf_counter() - t0:.1f} s: "
               f"train {s['train']} chips / {s['boxes_train']} boxes, val {s['val']} chips / {s['boxes_val']} boxes")


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue the run in the config's out folder after its last epoch.")
@_friendly
def train_cmd(config: str, resume: bool) -> None:
    """Train the detector on a chip set (configs/train_paper.yaml, configs/train_cpu.yaml)."""
    from .training.train import load_train_config, train

    cfg = load_train_config(config)
    with epoch_bars() as on_step:
        row = train(cfg, resume=resume, on_step=on_step)
    click.echo(f"trained to epoch {row['epoch']}: loss {row['loss']:.3f}, val AP50 {row['AP50']:.3f}, "
               f"F1 {row['f1']:.3f}; run folder {cfg.out}")


@click.command("evaluate")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--chips", "chips_dir", required=True, multiple=True, type=click.Path(file_okay=False),
              help="Chip folder (from `insar-slide chips`); repeat it to pool several, e.g. every validation set.")
@click.option("--split", default="val", show_default=True, type=click.Choice(["train", "val"]))
@click.option("--out", required=True, type=click.Path(), help="Output folder for tables and the PR curve.")
@click.option("--score-threshold", type=float, help="For P/R/F1 (default: the one the model was trained with).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_friendly
def evaluate_cmd(checkpoints: tuple[str, ...], chips_dir: tuple[str, ...], split: str, out: str, score_threshold: float | None, device: str,
                 no_progress: bool) -> None:
    """COCO metrics, P/R/F1 at IoU 0.5, a PR curve, and Table 2 (ablation) for several checkpoints."""
    from .training.evaluate import evaluate

    with progress_bars(not no_progress) as progress:
        df = evaluate(list(checkpoints), list(chips_dir), out=out, split=split, device=device, score_threshold=score_threshold,
                      progress=progress)
    click.echo((Path(out) / "table2.md").read_text())
    for r in df.to_dict("records"):
        click.echo(f"{r['checkpoint']}: best F1 on this split {r['best_f1']:.3f} at score ≥ {r['best_f1_threshold']:.3f} "
                   f"(P {r['best_f1_precision']:.3f}, R {r['best_f1_recall']:.3f})")
    click.echo(f"wrote {out}/metrics.json, table2.md/.csv, table3.md, pr_curve.png ({len(df)} checkpoint(s))")


@click.command("pseudo-label")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--chips", "chips_dir", required=True, type=click.Path(file_okay=False))
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "val"]))
@click.option("--out", required=True, type=click.Path(), help="Output folder (voc/ + COCO JSON).")
@click.option("--score-threshold", default=0.8, show_default=True, type=float)
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option("--overwrite", is_flag=True)
@_friendly
def pseudo_label_cmd(checkpoint: str, chips_dir: str, split: str, out: str, score_threshold: float, device: str, overwrite: bool) -> None:
    """Label chips with a trained model's boxes (VOC for LabelImg review, COCO for training)."""
    from .training.evaluate import pseudo_label

    s = pseudo_label(checkpoint, chips_dir, out, split=split, score_threshold=score_threshold, device=device, overwrite=overwrite)
    click.echo(f"labelled {s['chips']} chips with {s['boxes']} boxes (score >= {s['score_threshold']}) in {out}")


@click.command("import-weights")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The insar-slide checkpoint to write.")
@click.option("--variant", type=click.Choice(["r34", "r34_fpn", "r34_fpn_cbam"]), default="r34_fpn_cbam", show_default=True,
              help="The architecture the weights were trained as.")
@click.option("--clip-mm-yr", type=float, default=60.0, show_default=True, help="The input encoding's clip (mm/yr).")
@click.option("--tile-size", type=int, default=512, show_default=True)
@click.option("--score-threshold", type=float, default=0.5, show_default=True, help="The operating threshold to record.")
@click.option("--pixel-size", type=float, default=30.0, show_default=True, help="The training pixel (m) to record.")
@_friendly
def import_weights_cmd(source: str, out: str, variant: str, clip_mm_yr: float, tile_size: int, score_threshold: float,
                       pixel_size: float) -> None:
    """Turn a state dict (torch.save .pth, read tensors-only; or bare safetensors) into a checkpoint."""
    from .model import InputEncoding, ModelConfig
    from .model.checkpoint import import_weights

    cfg = ModelConfig(variant=variant, tile_size=tile_size, encoding=InputEncoding(clip_mm_yr=clip_mm_yr))
    path = import_weights(source, out, cfg, score_threshold=score_threshold, pixel_size_m=pixel_size)
    click.echo(f"wrote {path} ({variant}, clip {clip_mm_yr:g} mm/yr, threshold {score_threshold:g}, pixel {pixel_size:g} m)")


@click.command("export-model")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="e.g. models/insar_slide_r34_fpn_cbam.safetensors")
@click.option("--eval", "eval_json", type=click.Path(dir_okay=False), help="metrics.json of `insar-slide evaluate` on held-out chips.")
@click.option("--command", default="", help="The command that rebuilds it (recorded in the card).")
@click.option("--note", default="")
@click.option("--score-threshold", type=float, help="Operating threshold `run` uses by default (pick it on the validation split).")
@_friendly
def export_model_cmd(checkpoint: str, out: str, eval_json: str | None, command: str, note: str, score_threshold: float | None) -> None:
    """Export a checkpoint as an fp16 reference model with its JSON card."""
    from .training.export import export_model

    card = export_model(checkpoint, out, eval_json=eval_json, command=command, note=note, score_threshold=score_threshold)
    click.echo(f"wrote {out} ({card['size_mb']} MB) and {Path(out).with_suffix('.json')}")


TRAINING_COMMANDS = [chips, train_cmd, evaluate_cmd, pseudo_label_cmd, import_weights_cmd, export_model_cmd]
