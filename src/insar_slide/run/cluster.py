"""The cluster side of ``run``: the Dask client (an address, or an embedded LocalCluster),
the worker plugin for storage options, and the run's faults turned into one-line errors
(a lost scheduler, Ctrl-C), each counting the windows saved so far."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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
    if plan is None:
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


@contextlib.contextmanager
def cluster_client(cfg: RunConfig, *, in_process: bool = False) -> Iterator[Any]:
    """A ``distributed.Client``: to ``cluster.address``, or to an embedded ``LocalCluster`` — of
    worker processes, or with ``in_process`` (and no ``cluster.workers`` set) one worker of
    threads in this process."""
    from distributed import Client, LocalCluster

    c = cfg.cluster
    if c.address:
        try:
            client = Client(c.address, timeout="20s")
        except OSError as exc:
            raise InputError(f"cluster.address {c.address}: no Dask scheduler answers there ({exc}); "
                             "start one with `dask scheduler`, or remove cluster.address to use an embedded cluster") from exc
        with client:
            yield client
        return
    import os
    cores = os.cpu_count() or 1
    # dashboards on a free port: the scheduler's HTTP server starts even when the link is not
    # printed, and a second run on this machine must not collide with the first's 8787
    if in_process and c.workers is None:
        cluster = LocalCluster(n_workers=1, threads_per_worker=c.threads_per_worker, processes=False,
                               dashboard_address=":0", silence_logs=logging.CRITICAL)
        with cluster, Client(cluster) as client:
            yield client
        return
    workers = c.workers or max(1, cores // c.threads_per_worker)
    with _workers_ignore_sigint():  # only while the workers start: this process keeps its Ctrl-C
        cluster = LocalCluster(n_workers=workers, threads_per_worker=c.threads_per_worker, processes=True,
                               memory_limit=c.memory_limit, dashboard_address=":0",
                               silence_logs=logging.CRITICAL)  # a failed task is reported by the run itself
    with cluster, Client(cluster) as client:
        yield client


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
