"""What every CLI command shares: expected errors as one line each, with the error's exit code."""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any, TypeVar

import click

from .errors import InsarSlideError

F = TypeVar("F", bound=Callable[..., Any])

#: OSErrors that are the output disk's, not a bug: no space, over quota, read-only, no permission.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}



def _friendly(fn: F) -> F:
    """Turn expected errors into one line on stderr (one per problem) and the error's exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InsarSlideError as exc:
            for line in str(exc).splitlines() or [""]:  # a config with several problems: one line each
                click.echo(f"error: {line}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if exc.errno not in DISK_ERRORS:
                raise
            click.echo(f"error: cannot write {exc.filename or 'an output'}: {exc.strerror}; free space or choose a "
                       "writable location, then rerun the same command (finished work is kept)", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted; rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def quiet_dask_logs() -> None:
    """Without -v, Dask's own INFO lines (an embedded scheduler runs in this process) are not
    news; a lost scheduler is reported in one line by ``run``, not also as the client's
    reconnect traceback; a worker stuck in storage retries when a run stops is killed at
    close. Set after ``distributed`` is imported: it configures its own loggers on import."""
    import distributed  # noqa: F401

    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        return
    for name in ("distributed", "distributed.scheduler", "distributed.core", "distributed.http"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    quiet_after_ctrl_c()


#: Set by Ctrl-C (SIGINT) in a command that runs a Dask cluster: from then on the cluster's
#: shutdown is expected, and what Dask and tornado log about it is not news.
STOPPING = threading.Event()


class _AfterCtrlC(logging.Filter):
    """Drops the records of Dask and tornado after Ctrl-C: the futures cancelled mid-gather
    (the scheduler's "Couldn't gather keys … forgotten"), and distributed 2026.8's ``sync()``
    whose ``cancel`` callback fails with a NameError on the loop thread when the interrupt
    comes before its future exists. The run's own one line says what was saved."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (STOPPING.is_set() and record.name.split(".")[0] in ("distributed", "tornado"))


def quiet_after_ctrl_c() -> None:
    """Mark Ctrl-C before it raises KeyboardInterrupt (the cluster's threads log while the main
    thread unwinds, so the mark must come first) and filter the root handlers with
    :class:`_AfterCtrlC`. Only in the main thread, and only over Python's default handler."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def on_sigint(signum: int, frame: Any) -> None:
        STOPPING.set()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _AfterCtrlC) for f in handler.filters):
            handler.addFilter(_AfterCtrlC())


#: What a stage's bar counts (Dask tasks where the library reports a computation's tasks).
UNITS = {"detect": "window", "plan": "batch", "reduce": "block", "simulate": "task", "ingest": "task",
         "hotspot": "task", "kmeans": "task", "scan": "window", "chips": "window", "evaluate": "chip"}


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Callable[[str, int, int], None] | None]:
    """A ``progress(stage, done, total)`` callback that draws one tqdm bar per stage (None when
    not ``enabled``); the bars close on exit."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}
    closed: set[str] = set()

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is not None and (stage in closed or total != bar.total or done < bar.n):
            bar.close()  # a new pass of this stage (another computation): a new bar
            bar = None
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit=UNITS.get(stage.split()[0], "step"))
            closed.discard(stage)
        bar.update(done - bar.n)
        if done >= total:  # finished: the bar ends here, before the lines printed after it
            bar.close()
            closed.add(stage)

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()


@contextlib.contextmanager
def epoch_bars() -> Iterator[Callable[[int, int, float], None]]:
    """A training loop's ``on_step(step, steps_in_epoch, loss)``: one progress bar per epoch
    with the running loss, closed when the epoch (or the block) ends. A run resumed inside an
    epoch starts its bar at the step it resumed from."""
    from tqdm import tqdm

    bar: list[tqdm] = []

    def on_step(step: int, n: int, loss: float) -> None:
        if step == 1 or not bar:  # a new epoch, or the first step after resuming inside one
            if bar:
                bar.pop().close()
            bar.append(tqdm(total=n, initial=step - 1, desc="epoch", unit="batch", leave=False))
        bar[-1].set_postfix(loss=f"{loss:.3f}")
        bar[-1].update(1)

    try:
        yield on_step
    finally:
        for b in bar:
            b.close()
