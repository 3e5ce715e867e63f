"""The improved Faster R-CNN of Zhang, Luo & Li (2025): model, input encoding, checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .detector import VARIANTS, ModelConfig, build_model
from .encoding import InputEncoding

__all__ = ["VARIANTS", "InputEncoding", "ModelConfig", "build_model", "load_checkpoint", "save_checkpoint"]
