"""How every robustlab command fails: one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import errno
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

import click

from robustlab.allocator import fix_mmap_threshold
from robustlab.errors import CacheNotWritten, RobustlabError

__all__ = ["OneLineErrors"]


class OneLineErrors(click.Group):
    """A click group whose every failure is one line on stderr and a non-zero exit, never a traceback.

    Exit codes: 0 success; 1 a check failed (a regression against a baseline); 2 bad input or a
    clear error (unknown name, missing data, unavailable weights, a file that cannot be read or
    written...); 130 interrupted (Ctrl-C or SIGTERM).
    """

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        fix_mmap_threshold()  # before the first tensor: peak memory flat in the number of batches
        kwargs["standalone_mode"] = False
        try:
            with warnings.catch_warnings(), _terminate_as_interrupt():
                warnings.showwarning = _show_note
                code = super().main(*args, **kwargs)
        except click.ClickException as error:
            _fail(error.format_message(), error.exit_code)
        except RobustlabError as error:
            _fail(str(error), 2)
        except OSError as error:  # a file robustlab reads or writes that no handler closer to it expected
            _fail(_file_error(error), 2)
        except (KeyboardInterrupt, click.exceptions.Abort):
            _fail("interrupted", 130)
        sys.exit(code if isinstance(code, int) else 0)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI cancel, ``timeout``, ``docker stop``) unwinds like Ctrl-C: stores closed, "interrupted"."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_FIXES = {
    errno.ENOSPC: "free space on its disk and run again",
    errno.EDQUOT: "free space within your quota and run again",
    errno.EACCES: "make it accessible or choose another place",
    errno.EPERM: "make it accessible or choose another place",
    errno.EROFS: "choose a writable place",
}


def _file_error(error: OSError) -> str:
    """One line for a failed read or write: the file, the reason, what to do."""
    where = f" {error.filename}" if error.filename is not None else ""
    fix = _FIXES.get(error.errno or 0, "check the file and its disk, and run again")
    return f"cannot use{where}: {error.strerror or error}; {fix}"


_show_warning = warnings.showwarning


def _show_note(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """robustlab's own warnings (a cache that could not be written) are a ``note:`` line, not a Python warning."""
    if issubclass(category, CacheNotWritten):
        click.echo(f"robustlab: note: {' '.join(str(message).split())}", err=True)
    else:
        _show_warning(message, category, *args, **kwargs)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"robustlab: error: {' '.join(message.split())}", err=True)
    sys.exit(code)
