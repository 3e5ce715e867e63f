"""Where the model runs: the ``device`` setting of the run and training configs."""

from __future__ import annotations

import torch

from ..errors import InputError


def pick_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; ``"cpu"`` / ``"cuda"``: that device
    (``"cuda"`` without one is an :class:`~insar_slide.errors.InputError`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device: cuda asked for, but no CUDA device is available; use device: auto or cpu")
    return torch.device(name)
