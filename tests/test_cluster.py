"""Which cluster a run starts and where its model tasks go (issue 19): the GPU selection logic,
tested on the CPU (nothing here needs a GPU)."""

from __future__ import annotations

import os

import pytest

from insar_slide.errors import InputError
from insar_slide.run.cluster import (
    IN_PROCESS_MAX_WINDOWS,
    PinGPU,
    embedded_layout,
    model_task_resources,
)
from insar_slide.run.config import ClusterConfig, RunConfig


def _cfg(**kw: object) -> RunConfig:
    return RunConfig.model_validate({"mosaic": "m.zarr", "out": "o.parquet", **kw})


def test_embedded_layout_one_worker_per_gpu_in_process_when_small_else_processes():
    big = IN_PROCESS_MAX_WINDOWS + 1
    assert embedded_layout(_cfg(), n_windows=big, cuda_devices=2, cores=16).kind == "cuda"
    assert embedded_layout(_cfg(), n_windows=big, cuda_devices=2, cores=16).workers == 2
    assert embedded_layout(_cfg(), n_windows=1, cuda_devices=1, cores=16).kind == "cuda"  # a GPU is worth it
    cpu = embedded_layout(_cfg(device="cpu"), n_windows=big, cuda_devices=2, cores=16)
    assert (cpu.kind, cpu.workers) == ("processes", 16)
    assert embedded_layout(_cfg(), n_windows=IN_PROCESS_MAX_WINDOWS, cuda_devices=0, cores=2).kind == "in_process"
    fixed = _cfg(cluster=ClusterConfig(workers=2))
    assert embedded_layout(fixed, n_windows=1, cuda_devices=0, cores=2).kind == "processes"
    two = _cfg(cluster=ClusterConfig(threads_per_worker=2))
    assert embedded_layout(two, n_windows=big, cuda_devices=0, cores=8).workers == 4
    assert embedded_layout(_cfg(cluster=ClusterConfig(address="tcp://h:8786")), n_windows=1, cuda_devices=4, cores=2).kind == "address"


def test_model_tasks_ask_for_a_gpu_only_where_the_cluster_has_one():
    mixed = {"tcp://a": {"resources": {"GPU": 1}}, "tcp://b": {"resources": {}}}
    cpus = {"tcp://b": {"resources": {}}, "tcp://c": {}}
    assert model_task_resources("auto", mixed) == {"GPU": 1}
    assert model_task_resources("cuda", mixed) == {"GPU": 1}
    assert model_task_resources("auto", cpus) is None
    assert model_task_resources("cpu", mixed) is None
    with pytest.raises(InputError, match="--resources GPU=1"):
        model_task_resources("cuda", cpus)


def test_pin_gpu_gives_each_embedded_worker_its_device(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    class W:
        name = 3

    PinGPU(2).setup(W())
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_the_gpu_benchmark_says_no_gpu_and_exits_0_without_one():
    import subprocess
    import sys

    import torch

    from .conftest import REPO

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the benchmark would measure it")
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "no GPU" in res.stdout
