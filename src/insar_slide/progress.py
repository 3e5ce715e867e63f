"""Progress reporting: library code calls ``progress(stage, done, total)``; the CLI draws it
(:func:`insar_slide.cli_common.progress_bars`). Nothing here prints."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

Progress = Callable[[str, int, int], None]


@contextlib.contextmanager
def dask_tasks(progress: Progress | None, stage: str) -> Iterator[None]:
    """Report the Dask tasks of every computation on the local (threaded) scheduler inside the
    block as ``stage``: done and total tasks, as Dask's own ``ProgressBar`` counts them."""
    if progress is None:
        yield
        return
    from dask.callbacks import Callback

    def report(state: dict[str, Any]) -> None:
        done = len(state["finished"])
        progress(stage, done, done + sum(len(state[k]) for k in ("ready", "waiting", "running")))

    def start_state(dsk: Any, state: dict[str, Any]) -> None:
        report(state)

    def posttask(key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        report(state)

    def finish(dsk: Any, state: dict[str, Any], errored: bool) -> None:
        if not errored:
            report(state)

    with Callback(start_state=start_state, posttask=posttask, finish=finish):
        yield


def steps_of(progress: Progress | None, stage: str) -> Callable[[int, int], None]:
    """``step(done, total)`` reporting as ``stage`` (a no-op without ``progress``)."""
    if progress is None:
        return lambda done, total: None
    return lambda done, total: progress(stage, done, total)
