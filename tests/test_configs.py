"""Every YAML under configs/ parses with the loader the CLI uses for its kind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from insar_slide.run.config import RunConfig, load_run_config
from insar_slide.sim.config import SimConfig, load_sim_config
from insar_slide.training.config import ChipsConfig, load_chips_config
from insar_slide.training.train import TrainConfig, load_train_config

from .conftest import REPO, need_real

CONFIGS = REPO / "configs"
PATHS = sorted([*CONFIGS.rglob("*.yaml"), *CONFIGS.rglob("*.yml")])

#: kind → (the loader of the CLI command that reads it, the type it returns)
LOADERS: dict[str, tuple[Callable[[Path], Any], type]] = {
    "run": (load_run_config, RunConfig),  # insar-slide run / plan / update / history / baseline
    "chips": (load_chips_config, ChipsConfig),  # insar-slide chips
    "train": (load_train_config, TrainConfig),  # insar-slide train
    "sim": (load_sim_config, SimConfig),  # insar-slide simulate
}


def kind(data: dict[str, Any]) -> str:
    """Which command reads a config, from its required top-level keys (a simulation has none)."""
    if "mosaic" in data:
        return "run"
    if "sources" in data:
        return "chips"
    if "chips" in data:
        return "train"
    return "sim"


def test_there_are_configs_of_every_kind():
    assert {kind(yaml.safe_load(p.read_text()) or {}) for p in PATHS} == set(LOADERS)


@pytest.mark.parametrize("path", PATHS, ids=[str(p.relative_to(CONFIGS)) for p in PATHS])
def test_every_config_parses_with_its_loader(path: Path):
    text = path.read_text()
    if "data/real/" in text:  # the real river line or SAR.csv track geometry
        need_real()
    load, expected = LOADERS[kind(yaml.safe_load(text) or {})]
    cfg = load(path)
    assert isinstance(cfg, expected)
    if isinstance(cfg, RunConfig | ChipsConfig | TrainConfig):  # relative paths are resolved against the file
        assert Path(cfg.out).is_absolute()
