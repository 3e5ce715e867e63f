"""The cluster side of ``run``: the Dask client (an address, or an embedded LocalCluster),
the worker plugin for storage options, and the run's faults turned into one-line errors
(a lost scheduler, Ctrl-C), each counting the windows saved so far."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import InputError, InsarSlideError
from ..storage import use_options
from .config import RunConfig
from .detect import unchanged


class WindowsFailed(InsarSlideError):
    exit_code = 1


class OutputError(InsarSlideError):
    """An output could not be written (disk full, read-only, no permission)."""


class Interrupted(InsarSlideError):
    """Ctrl-C (SIGINT): the finished windows are saved; the same command resumes."""

    exit_code = 130


class SchedulerLost(InsarSlideError):
    """The client lost its Dask scheduler mid-run."""


def _saved(state: dict[str, Any]) -> str:
    plan, s = state.get("plan"), state.get("settings")
    if plan is None or s is None:
        return "before any window ran"
    saved, _ = unchanged(plan.to_run(), s)
    return f"{len(saved)} of {len(plan.to_run())} windows saved in {s.store.root}"


@contextlib.contextmanager
def on_interrupt(state: dict[str, Any]) -> Iterator[None]:
    """Turn Ctrl-C into :class:`Interrupted`, and a lost scheduler (the client no longer
    running, whatever error surfaced first) into :class:`SchedulerLost`, each one line counting
    the windows saved so far."""
    import asyncio

    from distributed.client import FutureCancelledError
    from distributed.comm import CommClosedError

    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {_saved(state)}; rerun the same command to resume") from None
    except (CommClosedError, FutureCancelledError, asyncio.CancelledError, TimeoutError) as exc:
        raise lost_scheduler(state, exc) from exc


def lost_scheduler(state: dict[str, Any], exc: BaseException) -> SchedulerLost:
    return SchedulerLost(f"lost the Dask scheduler at {state.get('address') or '?'} ({type(exc).__name__}): "
                         f"{_saved(state)}; restart the scheduler (or remove cluster.address for an embedded "
                         "cluster) and rerun the same command to resume")


class StorageOptions(WorkerPlugin):
    """Installs a config's ``storage_options`` on every worker, also on one that joins later
    (a replacement for a lost worker): :func:`insar_slide.storage.use_options`."""

    name = "insar-slide-storage-options"

    def __init__(self, options: dict[str, Any], urls: list[str]) -> None:
        self.options, self.urls = dict(options), list(urls)

    def setup(self, worker: Any) -> None:
        use_options(self.options, *self.urls)


#: A run of at most this many windows (a valley, one scene) on an embedded cluster runs its
#: workers as threads of this process: starting worker processes (and importing torch in each)
#: costs 10–50 s, more than such a run's detection.
IN_PROCESS_MAX_WINDOWS = 4


#: Dask threads per embedded worker beyond its model threads: while one task holds the model
#: (one call at a time per worker, see run.detect), the next reads its window from Zarr.
READ_AHEAD_THREADS = 1


@dataclass(frozen=True)
class Layout:
    """The embedded cluster a run starts (or ``address``: the one it joins)."""

    kind: Literal["address", "in_process", "processes", "cuda"]
    workers: int
    threads_per_worker: int


def embedded_layout(cfg: RunConfig, *, n_windows: int, cuda_devices: int, cores: int) -> Layout:
    """Which cluster a run starts: the given ``cluster.address``; with CUDA devices (and a device
    setting that allows them) one worker per GPU, each pinned to its device; a run of at most
    :data:`IN_PROCESS_MAX_WINDOWS` windows in this process; else worker processes by cores."""
    c = cfg.cluster
    if c.address:
        return Layout("address", 0, c.threads_per_worker)
    if cuda_devices > 0 and cfg.device != "cpu":
        return Layout("cuda", c.workers or cuda_devices, 1)
    if n_windows <= IN_PROCESS_MAX_WINDOWS and c.workers is None:
        return Layout("in_process", 1, c.threads_per_worker)
    return Layout("processes", c.workers or max(1, cores // c.threads_per_worker), c.threads_per_worker)


class PinGPU(WorkerPlugin):
    """Pin each embedded GPU worker (named 0, 1, … by LocalCluster) to one device, before torch
    touches CUDA in it — what dask-cuda's LocalCUDACluster does, for machines without dask-cuda."""

    def __init__(self, n_devices: int) -> None:
        self.n_devices = n_devices

    def setup(self, worker: Any) -> None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(int(str(worker.name).rsplit("-", 1)[-1]) % self.n_devices)


def model_task_resources(device: str, workers: dict[str, Any]) -> dict[str, float] | None:
    """The resources a model task asks for: a ``GPU`` where any worker of the cluster offers one
    (so that on a mixed cluster model tasks go to GPU workers and reading, planning and merging
    stay on CPU workers); none on the CPU. ``device: cuda`` on a cluster with no GPU worker
    is an error that names the fix (a task asking for an absent resource would wait forever)."""
    if device == "cpu":
        return None
    if any("GPU" in (w.get("resources") or {}) for w in workers.values()):
        return {"GPU": 1}
    if device == "cuda":
        raise InputError("device: cuda, but no worker of the cluster offers a GPU resource; start GPU workers with "
                         "`dask worker ADDRESS --resources GPU=1` (one per GPU, or dask-cuda's `dask cuda worker`), "
                         "or set device: auto")
    return None


@contextlib.contextmanager
def cluster_client(cfg: RunConfig, *, in_process: bool = False, n_windows: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: to ``cluster.address``, or to the embedded cluster of
    :func:`embedded_layout` (``in_process``: the run is small; ``n_windows`` says so too)."""
    import torch
    from distributed import Client, LocalCluster

    c = cfg.cluster
    cuda = torch.cuda.device_count() if cfg.device != "cpu" and not c.address else 0
    layout = embedded_layout(cfg, n_windows=0 if in_process else (n_windows if n_windows is not None else 1 << 30),
                             cuda_devices=cuda, cores=os.cpu_count() or 1)
    if layout.kind == "cuda":
        with _workers_ignore_sigint():
            cluster = _cuda_cluster(layout, cuda, c.memory_limit)
        with cluster, Client(cluster) as client:
            if not _has_dask_cuda():
                client.register_plugin(PinGPU(cuda))
            yield client
        return
    if c.address:
        try:
            client = Client(c.address, timeout="20s")
        except OSError as exc:
            raise InputError(f"cluster.address {c.address}: no Dask scheduler answers there ({exc}); "
                             "start one with `dask scheduler`, or remove cluster.address to use an embedded cluster") from exc
        with client:
            yield client
        return
    # dashboards on a free port: the scheduler's HTTP server starts even when the link is not
    # printed, and a second run on this machine must not collide with the first's 8787
    if layout.kind == "in_process":
        cluster = LocalCluster(n_workers=1, threads_per_worker=c.threads_per_worker + READ_AHEAD_THREADS, processes=False,
                               dashboard_address=":0", silence_logs=logging.CRITICAL)
        with cluster, Client(cluster) as client:
            yield client
        return
    with _workers_ignore_sigint():  # only while the workers start: this process keeps its Ctrl-C
        cluster = LocalCluster(n_workers=layout.workers, threads_per_worker=c.threads_per_worker + READ_AHEAD_THREADS,
                               processes=True,
                               memory_limit=c.memory_limit, dashboard_address=":0",
                               silence_logs=logging.CRITICAL)  # a failed task is reported by the run itself
    with cluster, Client(cluster) as client:
        yield client


def _has_dask_cuda() -> bool:
    import importlib.util
    return importlib.util.find_spec("dask_cuda") is not None


def _cuda_cluster(layout: Layout, n_devices: int, memory_limit: str) -> Any:
    """One worker per GPU with a ``GPU`` resource: dask-cuda's LocalCUDACluster when installed
    (``pip install -e '.[gpu]'``), else a LocalCluster whose workers :class:`PinGPU` pins."""
    if _has_dask_cuda():
        from dask_cuda import LocalCUDACluster
        return LocalCUDACluster(n_workers=min(layout.workers, n_devices), threads_per_worker=1, resources={"GPU": 1},
                                dashboard_address=":0", silence_logs=logging.CRITICAL)
    from distributed import LocalCluster
    return LocalCluster(n_workers=layout.workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                        resources={"GPU": 1}, dashboard_address=":0", silence_logs=logging.CRITICAL)


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start the embedded workers with SIGINT ignored (an ignored signal stays ignored across
    exec), so that Ctrl-C in a terminal — sent to the whole process group — reaches only this
    process, which stops the run cleanly, and not the workers, which would print tracebacks."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def client_map(client: Any) -> Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], list[Any]]:
    """``mapper(fn, args)`` → ``[fn(*a) for a in args]`` on the cluster (``client.map``)."""
    def run(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        if not args:
            return []
        return list(client.gather(client.map(fn, *zip(*args, strict=True), pure=False)))
    return run


def dashboard_serves(link: str, timeout: float = 2.0) -> bool:
    """Whether the Dask dashboard at ``link`` answers (it needs bokeh; a link that leads to an
    error page is not printed)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(link, timeout=timeout) as r:
            return 200 <= r.status < 400 and b"needs bokeh" not in r.read(65536)
    except (urllib.error.URLError, OSError, ValueError):
        return False
