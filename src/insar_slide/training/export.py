"""Export a trained checkpoint as the shipped reference model: fp16 safetensors + JSON card."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..model.checkpoint import (
    load_checkpoint,
    resolve_score_threshold,
    save_checkpoint,
    training_pixel_m,
)
from ..version import __version__

MAX_MB = 80.0


def export_model(src: str | Path, out: str | Path, *, eval_json: str | Path | None = None, command: str = "",
                 note: str = "", score_threshold: float | None = None) -> dict[str, Any]:
    """Write ``out`` (fp16) and its card ``out.json``: data, config, command, metrics, date.

    ``score_threshold``: the operating point ``run`` uses by default (choose it on the
    validation split, not on held-out data); default: the training config's."""
    model, cfg, meta = load_checkpoint(src)
    chips = Path(meta.get("training_config", {}).get("chips", ""))
    manifest = json.loads((chips / "manifest.json").read_text()) if (chips / "manifest.json").is_file() else {}
    heldout = json.loads(Path(eval_json).read_text())[0] if eval_json else {}
    card = {
        "name": Path(out).stem,
        "created": time.strftime("%Y-%m-%d"),
        "code_version": __version__,
        "command": command,
        "note": note,
        "epoch": meta.get("epoch"),
        "score_threshold": resolve_score_threshold(score_threshold, meta, use_model_value=False),
        "pixel_size_m": training_pixel_m(meta),  # run resamples other pixels to it (inference.match_pixel)
        "training_config": meta.get("training_config"),
        "data": {"chip_manifest": {k: manifest.get(k) for k in ("chips", "windows", "train", "val", "boxes_train", "boxes_val")},
                 "sources": [s.get("mosaic") for s in manifest.get("config", {}).get("sources", [])],
                 "fingerprint": meta.get("data_fingerprint")},
        "metrics_validation_split": meta.get("metrics"),
        "metrics_heldout": {k: v for k, v in heldout.items() if k != "checkpoint"},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    path = save_checkpoint(model, cfg, out, extra=card, half=True)
    mb = path.stat().st_size / 2**20
    if mb > MAX_MB:
        path.unlink()
        path.with_suffix(".json").unlink(missing_ok=True)
        raise InputError(f"{out}: {mb:.1f} MB is over the {MAX_MB:.0f} MB budget for a committed model")
    card["size_mb"] = round(mb, 1)
    return card
