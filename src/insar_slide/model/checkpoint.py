"""Checkpoints (DESIGN.md contract 3): safetensors weights + JSON metadata, never pickle.

The metadata document (architecture, input encoding, tile size, classes, training config,
data fingerprint, metrics) is stored in the safetensors header under ``insar_slide`` and as a
``<name>.json`` card beside the file for people. Loading reads the header first and refuses
anything that is not a safetensors file — a ``torch.save`` zip or a raw pickle is never opened.

``pixel_size_m`` (written by ``train``) is the pixel of the chips the model learned from, in
metres; a checkpoint without it was trained on 30 m chips (:func:`training_pixel_m`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..atomic import atomic_path
from ..errors import InputError
from .detector import ModelConfig, build_model

META_KEY = "insar_slide"
FORMAT = "insar-slide-checkpoint/1"
_MAX_HEADER = 100 * 2**20
#: The training pixel of checkpoints written before ``pixel_size_m`` was recorded.
LEGACY_PIXEL_M = 30.0


def save_checkpoint(model: nn.Module, config: ModelConfig, path: str | Path, *, extra: dict[str, Any] | None = None,
                    half: bool = False, overwrite: bool = True) -> Path:
    """Write weights (fp16 if ``half``) and metadata atomically; also write the JSON card."""
    tensors = {k: (v.detach().to("cpu").contiguous()) for k, v in model.state_dict().items()}
    if half:
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
    meta = {"format": FORMAT, "model": config.to_dict(), **(extra or {})}
    target = Path(path)
    with atomic_path(target, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, default=str)})
    card = target.with_suffix(".json")
    with atomic_path(card, overwrite=True) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return target


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata, after checking that the file really is safetensors."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such checkpoint")
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(9)
    # A safetensors file is an 8-byte little-endian header length, then the JSON header; its
    # first byte is the length's low byte and may well be 0x80, so test for safetensors first.
    looks_safetensors = len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] + 8 <= size
    if not looks_safetensors and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise InputError(
            f"{p}: this is a pickle (torch.save) file, not a safetensors checkpoint; insar-slide never "
            "unpickles checkpoints because a pickle can run code. If it holds weights of an insar-slide "
            f"architecture, `insar-slide import-weights {p} --variant r34_fpn_cbam --out model.safetensors` "
            "reads only its tensors (torch's weights_only loader) and writes a checkpoint that loads"
        )
    if len(head) < 9:
        raise InputError(f"{p}: {size} bytes is too short for a checkpoint; the file is truncated")
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER or 8 + n > size or head[8:9] != b"{":
        raise InputError(f"{p}: not a safetensors checkpoint (bad header); the file is truncated or of another kind")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as exc:
        raise InputError(f"{p}: cannot read the checkpoint ({exc}); the file is truncated or corrupt") from exc
    if raw is None:
        raise InputError(f"{p}: a safetensors file without insar-slide metadata; it was not written by insar-slide. "
                         f"If it holds weights of an insar-slide architecture, `insar-slide import-weights {p} "
                         "--variant r34_fpn_cbam --out model.safetensors` adds the metadata")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise InputError(f"{p}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(path: str | Path, *, expect: ModelConfig | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """Build the model the checkpoint describes and load its weights (as float32).

    ``expect``: refuse a checkpoint of another variant, tile size or input encoding.
    """
    meta = read_metadata(path)
    model_meta = dict(meta["model"])
    if "cbam_spatial_bn" not in model_meta:  # written before the key existed: the weights tell
        with safe_open(str(path), framework="pt", device="cpu") as f:
            model_meta["cbam_spatial_bn"] = any(".spatial.bn." in k for k in f.keys())
    config = ModelConfig.from_dict(model_meta)
    if expect is not None:
        for name in ("variant", "tile_size", "encoding", "classes", "anchor_sizes", "aspect_ratios"):
            if getattr(expect, name) != getattr(config, name):
                raise InputError(f"{path}: checkpoint {name} is {getattr(config, name)!r}, but {getattr(expect, name)!r} "
                                 "was asked for; use a checkpoint trained with the same settings")
    model = build_model(config)
    own = model.state_dict()
    state = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for k in f.keys():
                state[k] = f.get_tensor(k)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the weights ({exc}); the file is truncated or corrupt") from exc
    check_fit(own, state, config, path)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    model.to(device).eval()
    return model, config, meta


def check_fit(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], config: ModelConfig, path: str | Path,
              hint: str = "") -> None:
    """Refuse ``state`` unless it has exactly the model's tensors, each of its shape."""
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    shape = {k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)}
    if missing or unexpected or shape:
        raise InputError(f"{path}: weights do not fit a {config.variant} model ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected, {len(shape)} of another shape, e.g. "
                         f"{sorted(missing | unexpected | shape)[:3]}){hint}")


def training_pixel_m(meta: dict[str, Any]) -> float:
    """The pixel size (m) of the chips a checkpoint was trained on (30 m when not recorded)."""
    value = meta.get("pixel_size_m")
    return float(value) if value else LEGACY_PIXEL_M


def resolve_score_threshold(config_value: float | None, model_metadata: dict[str, Any], *,
                            use_model_value: bool = True) -> float:
    """The score threshold to apply, first found of: ``config_value`` (the config key or CLI
    flag); the model's own operating point (``score_threshold`` in its metadata, written by
    ``export-model``); its training config's ``score_threshold``; 0.5.

    ``use_model_value=False`` skips the model's own value: ``export-model`` chooses a new
    operating point and defaults to the training config's.
    """
    if config_value is not None:
        return float(config_value)
    training = model_metadata.get("training_config", {}).get("score_threshold", 0.5)
    return float(model_metadata.get("score_threshold", training) if use_model_value else training)


def import_weights(src: str | Path, out: str | Path, config: ModelConfig, *, score_threshold: float = 0.5,
                   pixel_size_m: float = LEGACY_PIXEL_M) -> Path:
    """Weights from elsewhere (a ``torch.save`` state dict, read with torch's ``weights_only``
    loader, which restores tensors and never runs code; or a bare safetensors file) → an
    insar-slide checkpoint of ``config``'s architecture. Every tensor must fit: a state dict of
    another network is refused, naming the keys that do not."""
    p = Path(src)
    if not p.is_file():
        raise InputError(f"{p} does not exist; pass a .pth/.pt state dict or a .safetensors file")
    with open(p, "rb") as f:
        head = f.read(4)
    try:
        if head[:2] == b"PK" or head[:1] == b"\x80":
            obj = torch.load(p, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file
            obj = load_file(str(p))
    except Exception as exc:
        raise InputError(f"{p}: cannot read tensors from it ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                         "it must be a state dict of tensors (no pickled objects)") from exc
    for key in ("model", "state_dict", "model_state_dict"):  # common wrappers of training scripts
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{p}: not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel's prefix
    model = build_model(config)
    own = model.state_dict()
    check_fit(own, state, config, p, hint="; pick the --variant it was trained as")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return save_checkpoint(model, config, out, extra={"imported_from": p.name, "score_threshold": score_threshold,
                                                      "pixel_size_m": pixel_size_m})
