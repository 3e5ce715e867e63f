from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from insar_slide.model import ModelConfig, build_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INSAR_SLIDE_SHARED", REPO.parent / "shared"))
REAL = SHARED / "data" / "real"
KIRISHIMA = REAL / "kirishima_alos2_mintpy" / "velocity.h5"
CADIA = REAL / "cadia_s1_mintpy" / "geo_velocity.h5"
CAMPI = REAL / "campi_flegrei_licsbas" / "raw" / "vel"
JINSHA_WKT = REAL / "jinsha_river" / "JinshaRiver.wkt"

warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")


def need_real() -> None:
    if not KIRISHIMA.exists():
        msg = f"{REAL} is missing: clone the repository beside shared/ or set INSAR_SLIDE_SHARED"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI has shared/ beside the clone: a silent skip would hide a broken setup
        pytest.skip(msg)


@pytest.fixture
def real() -> Path:
    need_real()
    return REAL


def write_tif(path: Path, data: np.ndarray, *, transform: Affine | None = None, crs: str | None = "EPSG:32647",
              nodata: float | None = None) -> Path:
    transform = transform or Affine(30.0, 0, 500_000.0, 0, -30.0, 3_000_000.0)
    profile = {"driver": "GTiff", "height": data.shape[0], "width": data.shape[1], "count": 1,
               "dtype": "float32", "transform": transform}
    if crs:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype("float32"), 1)
    return path


@pytest.fixture
def rates() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(0, 3, (300, 400)) + np.linspace(-20, 20, 400)[None, :]).astype("float32")


# Execution tests need a real model, not a good one: the FPN variant without CBAM and with few
# proposals runs a window in a fraction of the default model's time; untrained, its scores
# are pushed toward "landslide" so that it reports plenty of boxes.
FAST = ModelConfig(variant="r34_fpn", rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_detections_per_img=40)


def eager_model():  # type: ignore[no-untyped-def]
    """An untrained model that calls (almost) every proposal a landslide: plenty of boxes to merge."""
    import torch

    model = build_model(FAST)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(0.01)
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-2.0, 2.0]))
    return model


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A checkpoint of :func:`eager_model`, shared by the run and update tests."""
    import torch

    from insar_slide.model import save_checkpoint
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "eager.safetensors"
    save_checkpoint(eager_model(), FAST, path, extra={"training_config": {"score_threshold": 0.5}})
    return path


@contextlib.contextmanager
def dask_processes(tmp: Path, workers: int = 2, *, procs_out: list[subprocess.Popen[bytes]] | None = None,
                   nanny: bool = True) -> Iterator[str]:
    """``dask scheduler`` and ``workers`` × ``dask worker`` (1 thread) as real processes on
    127.0.0.1; yields the scheduler address once every worker has joined. ``procs_out`` receives
    the processes (scheduler first) for tests that kill one; ``nanny=False`` starts the workers
    without a nanny, so that a SIGKILLed worker process is the worker's death."""
    sched_file = tmp / "scheduler.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for k in range(workers):
            procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nthreads", "1",
                                           "--no-dashboard", "--name", f"w{k}", *([] if nanny else ["--no-nanny"])],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        from distributed import Client
        with Client(address, timeout="30s") as c:
            c.wait_for_workers(workers, timeout=60)
        if procs_out is not None:
            procs_out += procs
        yield address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a worker stuck closing must not fail the test it served
                p.kill()
                p.wait()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """An S3-compatible server (moto's server mode) on 127.0.0.1, started for the session; the
    standard AWS variables point every process started after this (Dask workers) at it."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"moto server did not start; see {log}")
        env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield url
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def new_bucket(name: str) -> str:
    """Create bucket ``name`` on the server the AWS variables point at; its URL."""
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}"
