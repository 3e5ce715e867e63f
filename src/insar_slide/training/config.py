"""Typed configs for ``insar-slide chips``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..config import StrictModel, load_yaml, parse_config, resolve_path


class ChipSource(StrictModel):
    mosaic: str
    inventory: str = Field(description="truth GeoParquet, any vector file, or a folder of LabelImg VOC XML")
    voc_manifest: str | None = Field(None, description="with a VOC folder: the chips.csv that maps its images to the mosaic")
    tracks: tuple[str, ...] | None = Field(None, description="default: every track of the mosaic")
    scale: int = Field(1, ge=1, le=16, description="cut the chips from a block mean of the mosaic by this factor "
                       "(the coarse level of multi-scale inference: a 300-px slide becomes 150 px at 2)")
    min_box_px: float = Field(0.0, ge=0, description="labelled slides whose box is smaller than this (longer side, "
                              "px of the chip) become ignore regions: a coarse level is not asked for small slides")


class RiverFilter(StrictModel):
    wkt: str
    buffer_km: float = Field(50.0, gt=0)


class SplitConfig(StrictModel):
    val_fraction: float = Field(0.3, gt=0, le=1, description="1 puts every chip in validation (a held-out region)")
    block_px: int = Field(2048, ge=512, description="side of the spatial blocks kept whole in one split")
    seed: int = 0


class ChipsConfig(StrictModel):
    sources: tuple[ChipSource, ...]
    out: str
    size: int = Field(512, ge=32)
    min_abs_rate: float = Field(10.0, ge=0, description="keep windows whose max |rate| reaches this (mm/yr)")
    min_valid_fraction: float = Field(0.2, ge=0, le=1)
    river: RiverFilter | None = None
    label_min_abs_los: float = Field(10.0, ge=0, description="truth slides are labelled on a track when |peak LOS| reaches this")
    label_min_visible: float = Field(0.5, ge=0, le=1, description="…and this share of their pixels is measured")
    sliver_min_fraction: float = Field(0.3, gt=0, le=1)
    sliver_min_side_px: float = Field(4.0, ge=1)
    rotations: tuple[int, ...] = Field((0, 90, 180, 270), description="clockwise, applied after the split")
    split: SplitConfig = SplitConfig()
    overwrite: bool = False


def load_chips_config(path: str | Path) -> ChipsConfig:
    p = Path(path)
    cfg = parse_config(ChipsConfig, load_yaml(p), source=str(p))
    base = p.parent
    sources = tuple(s.model_copy(update={"mosaic": resolve_path(s.mosaic, base), "inventory": resolve_path(s.inventory, base),
                                         "voc_manifest": resolve_path(s.voc_manifest, base)}) for s in cfg.sources)
    river = cfg.river.model_copy(update={"wkt": resolve_path(cfg.river.wkt, base)}) if cfg.river else None
    return cfg.model_copy(update={"sources": sources, "river": river, "out": resolve_path(cfg.out, base)})
