"""How a rate window (mm/yr, NaN = no data) becomes the network's input tensor.

The detector sees three channels, all in [-1, 1] or [0, 1] with no further normalisation:

1. ``rate``     — LOS rate / ``clip_mm_yr``, clipped to [-1, 1]; NaN → 0.
2. ``abs_rate`` — |rate| / ``clip_mm_yr``, clipped to [0, 1]; NaN → 0. A landslide may move
   toward or away from the satellite; this channel lets the first layers treat both alike.
3. ``valid``    — 1 where there is a measurement, 0 in holes, so a hole is never mistaken
   for stable ground.

Three channels also let a COCO/ImageNet ``conv1`` be loaded unchanged. The encoding is stored
in every checkpoint and checked on load, so training and inference can never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

CHANNELS = ("rate", "abs_rate", "valid")


@dataclass(frozen=True)
class InputEncoding:
    clip_mm_yr: float = 60.0
    channels: tuple[str, ...] = CHANNELS
    version: int = 1

    def encode(self, rate: np.ndarray) -> torch.Tensor:
        """``rate`` (rows, cols) float mm/yr → float32 tensor (3, rows, cols)."""
        r = np.asarray(rate, dtype=np.float32)
        valid = np.isfinite(r)
        scaled = np.clip(np.where(valid, r, 0.0) / np.float32(self.clip_mm_yr), -1.0, 1.0)
        out = np.stack([scaled, np.abs(scaled), valid.astype(np.float32)])
        return torch.from_numpy(out.astype(np.float32, copy=False))

    def resize(self, image: torch.Tensor, factor: tuple[float, float]) -> torch.Tensor:
        """An encoded window (3, rows, cols) resampled by ``factor`` = (rows, cols) (> 1
        upsamples) to ``round(rows·fy) × round(cols·fx)``, NaN-aware: the rate is the bilinear
        (antialiased when shrinking) average of the *valid* pixels around each new one (the
        interpolated ``rate·valid`` over the interpolated ``valid``; ``abs_rate`` its absolute
        value, as in :meth:`encode`), and a new pixel is valid where at least half of that
        weight is, so holes neither grow nor leak zeros into the rates. Used to show the model
        a mosaic at its training pixel (``run``'s ``inference.match_pixel``)."""
        if tuple(factor) == (1.0, 1.0):
            return image
        if self.channels != CHANNELS:
            raise ValueError(f"resize knows the channels {CHANNELS}, not {self.channels}")
        rows, cols = image.shape[-2:]
        size = (max(1, round(rows * factor[0])), max(1, round(cols * factor[1])))
        valid = image[2:3]
        both = torch.cat([image[:1] * valid, valid])[None]
        out = torch.nn.functional.interpolate(both, size=size, mode="bilinear", align_corners=False,
                                              antialias=min(factor) < 1)[0]
        w = out[1:2]
        keep = w >= 0.5
        rate = torch.where(keep, out[:1] / w.clamp_min(1e-6), torch.zeros_like(w)).clamp(-1.0, 1.0)
        return torch.cat([rate, rate.abs(), keep.to(image.dtype)])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputEncoding:
        return cls(clip_mm_yr=float(d["clip_mm_yr"]), channels=tuple(d["channels"]), version=int(d["version"]))
