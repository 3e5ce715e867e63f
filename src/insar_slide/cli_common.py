"""What every CLI command shares: expected errors as one line each, with the error's exit code."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
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
