"""Faster R-CNN with a ResNet-34 body, optional FPN and CBAM (the paper's three variants).

- ``r34``: ResNet-34 up to layer4, one C5 feature map (stride 32).
- ``r34_fpn``: ResNet-34 + FPN on the four stages (P2–P5, plus P6 by max pooling).
- ``r34_fpn_cbam`` (default): as ``r34_fpn`` with CBAM after layer1 and after layer2.

The image transform keeps the native pixel scale (no resize: a 30 m pixel stays a 30 m pixel)
and does no mean/std normalisation — the :class:`InputEncoding` already scales rates.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import ConfigError, InputError
from .cbam import CBAM
from .encoding import InputEncoding

log = logging.getLogger(__name__)

VARIANTS = ("r34", "r34_fpn", "r34_fpn_cbam")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the network; stored in the checkpoint."""

    variant: str = "r34_fpn_cbam"
    tile_size: int = 512
    classes: tuple[str, ...] = ("background", "landslide")
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_detections_per_img: int = 100
    encoding: InputEncoding = field(default_factory=InputEncoding)
    #: batch norm in CBAM's spatial gate (see cbam.SpatialAttention); checkpoints written
    #: before it existed lack the key and load as False
    cbam_spatial_bn: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"model variant {self.variant!r} is unknown; choose one of {', '.join(VARIANTS)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoding"] = self.encoding.to_dict()
        d["classes"] = list(self.classes)
        d["anchor_sizes"] = list(self.anchor_sizes)
        d["aspect_ratios"] = list(self.aspect_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d.setdefault("cbam_spatial_bn", False)  # load_checkpoint looks at the weights first
        d["encoding"] = InputEncoding.from_dict(d["encoding"])
        for k in ("classes", "anchor_sizes", "aspect_ratios"):
            d[k] = tuple(d[k])
        return cls(**d)


def mostly_inside(boxes: torch.Tensor, regions: torch.Tensor, ioa: float = 0.5) -> torch.Tensor:
    """For each box (x1, y1, x2, y2), whether at least ``ioa`` of its area lies inside one of
    ``regions`` — COCO's test for a detection in an ``iscrowd`` region."""
    if regions.numel() == 0 or boxes.numel() == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    r = regions.to(boxes)
    iw = (torch.minimum(boxes[:, None, 2], r[None, :, 2]) - torch.maximum(boxes[:, None, 0], r[None, :, 0])).clamp(min=0)
    ih = (torch.minimum(boxes[:, None, 3], r[None, :, 3]) - torch.maximum(boxes[:, None, 1], r[None, :, 1])).clamp(min=0)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    return (iw * ih / area[:, None]).amax(dim=1) >= ioa


class IgnoreAwareRPN(RegionProposalNetwork):
    """torchvision's RPN, except that anchors lying mostly inside a target's ``ignore`` boxes
    (regions not labelled either way, see :mod:`insar_slide.training.chips`) are not sampled
    as background. Without ``ignore`` in the targets it is torchvision's RPN."""

    def assign_targets_to_anchors(self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
                                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        labels, matched = super().assign_targets_to_anchors(anchors, targets)
        for lab, anc, t in zip(labels, anchors, targets, strict=True):
            if "ignore" in t:
                lab[(lab == 0) & mostly_inside(anc, t["ignore"])] = -1.0
        return labels, matched


class IgnoreAwareRoIHeads(RoIHeads):
    """torchvision's box head, except that proposals lying mostly inside a target's ``ignore``
    boxes are not sampled as background (as :class:`IgnoreAwareRPN` does for anchors)."""

    _ignore: list[torch.Tensor | None] | None = None

    def select_training_samples(self, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None
                                ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        self._ignore = [t.get("ignore") for t in targets] if targets is not None else None
        try:
            return super().select_training_samples(proposals, targets)
        finally:
            self._ignore = None

    def assign_targets_to_proposals(self, proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor],
                                    gt_labels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        matched, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        for i, (lab, prop) in enumerate(zip(labels, proposals, strict=True)):
            ign = self._ignore[i] if self._ignore is not None else None
            if ign is not None:
                lab[(lab == 0) & mostly_inside(prop, ign)] = -1
        return matched, labels


class NativeScaleTransform(GeneralizedRCNNTransform):
    """Batches images without resizing them (torchvision would resize to 800 px)."""

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target


def _body(cbam: bool, spatial_bn: bool = True) -> nn.Sequential:
    r = torchvision.models.resnet34(weights=None)
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=r.conv1, bn1=r.bn1, relu=r.relu, maxpool=r.maxpool, layer1=r.layer1)
    if cbam:
        parts["cbam1"] = CBAM(64, spatial_bn=spatial_bn)
    parts["layer2"] = r.layer2
    if cbam:
        parts["cbam2"] = CBAM(128, spatial_bn=spatial_bn)
    parts["layer3"] = r.layer3
    parts["layer4"] = r.layer4
    return nn.Sequential(parts)


def build_model(config: ModelConfig | None = None) -> FasterRCNN:
    """A randomly initialised detector of ``config.variant`` (see :func:`load_pretrained`)."""
    cfg = config or ModelConfig()
    n_classes = len(cfg.classes)
    if cfg.variant == "r34":
        backbone: nn.Module = _body(cbam=False)
        backbone.out_channels = 512  # type: ignore[assignment]
        anchors = AnchorGenerator((tuple(cfg.anchor_sizes),), (tuple(cfg.aspect_ratios),))
        roi = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2)
    else:
        cbam = cfg.variant == "r34_fpn_cbam"
        body = _body(cbam=cbam, spatial_bn=cfg.cbam_spatial_bn)
        l1, l2 = ("cbam1", "cbam2") if cbam else ("layer1", "layer2")
        backbone = BackboneWithFPN(body, {l1: "0", l2: "1", "layer3": "2", "layer4": "3"},
                                   [64, 128, 256, 512], 256, extra_blocks=LastLevelMaxPool())
        anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
        roi = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    model = FasterRCNN(
        backbone, num_classes=n_classes, rpn_anchor_generator=anchors, box_roi_pool=roi,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image, box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_score_thresh=cfg.box_score_thresh, box_detections_per_img=cfg.box_detections_per_img,
    )
    model.transform = NativeScaleTransform(cfg.tile_size, cfg.tile_size, image_mean=[0.0] * 3, image_std=[1.0] * 3)
    # The same modules with ignore-aware sampling (no new state: weights and inference unchanged).
    model.rpn.__class__ = IgnoreAwareRPN
    model.roi_heads.__class__ = IgnoreAwareRoIHeads
    return model


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Initialise ``model`` from a local torchvision-format weights file (COCO or ImageNet), or
    from an insar-slide ``.safetensors`` checkpoint (a second training round).

    Loads every tensor whose name (bare, or under ``backbone.body.`` / ``backbone.``) and shape
    fit; returns ``{"loaded": [...], "shape_mismatch": [...], "unused": [...], "missing": [...]}``
    and logs a summary. The file is read with ``torch.load(weights_only=True)``, which refuses
    anything but tensors and plain containers.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such weights file (no weights are downloaded; pass a local torchvision .pth)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file  # never unpickles
        try:
            state = load_file(str(p))
        except Exception as exc:
            raise InputError(f"{p}: cannot read the safetensors weights ({exc}); the file is truncated or corrupt") from exc
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{p}: not a torchvision weights file loadable with weights_only=True ({exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "shape_mismatch": [], "unused": []}
    new = {}
    for key, tensor in state.items():
        for cand in (key, f"backbone.body.{key}", f"backbone.{key}"):
            if cand in own:
                if own[cand].shape == tensor.shape:
                    new[cand] = tensor.to(own[cand].dtype)
                    report["loaded"].append(cand)
                else:
                    report["shape_mismatch"].append(cand)
                break
        else:
            report["unused"].append(key)
    model.load_state_dict(new, strict=False)
    report["missing"] = sorted(set(own) - set(new))
    log.info("%s: loaded %d tensors, %d shape mismatches, %d unused, %d left at random init",
             p, len(report["loaded"]), len(report["shape_mismatch"]), len(report["unused"]), len(report["missing"]))
    return report


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode batch normalisation of the backbone into the convolution before it
    (in place; for inference only, never saved): conv → BN becomes one conv with a bias, so the
    forward pass skips the BN's pass over each feature map (4.8 % of a 512² window's time on an
    AVX2 CPU). Exact up to float rounding. The pairs are the ResNet's stem and blocks (and
    their downsample) and CBAM's spatial gate. A model in training mode is refused."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torchvision.models.resnet import BasicBlock

    from .cbam import SpatialAttention

    if model.training:
        raise ValueError("fold_batchnorm is for inference: call model.eval() first")

    def fold(parent: nn.Module, conv: str, bn: str) -> None:
        c, b = parent._modules.get(conv), parent._modules.get(bn)
        if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
            setattr(parent, conv, fuse_conv_bn_eval(c, b))
            setattr(parent, bn, nn.Identity())

    for m in list(model.modules()):
        if isinstance(m, BasicBlock):
            fold(m, "conv1", "bn1")
            fold(m, "conv2", "bn2")
        elif isinstance(m, SpatialAttention):
            fold(m, "conv", "bn")
        elif isinstance(m, (nn.Sequential, nn.ModuleDict)):
            # containers run their children in order (the body's stem, a block's downsample):
            # a convolution directly followed by a BN
            names = list(m._modules)
            for conv, bn in itertools.pairwise(names):
                fold(m, conv, bn)
    return model
