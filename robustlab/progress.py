"""Progress from inside long loops (Square's queries, APGD's and FAB's iterations) to whoever shows it.

One attack call on one batch can run for minutes, while the evaluator's bar moves only between
calls. The loops call :func:`advance` with what they are doing; a caller that shows progress installs
a callback with :func:`reporting`. Without one, :func:`advance` costs a context-variable lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["REFRESH_SECONDS", "advance", "on_bar", "reporting"]

Callback = Callable[[str, int, int], None]
_CALLBACK: ContextVar[Callback | None] = ContextVar("robustlab_progress", default=None)

REFRESH_SECONDS = 0.5
"""Least time between two redraws of a bar's postfix (a loop may advance thousands of times a second)."""


@contextmanager
def reporting(callback: Callback | None) -> Iterator[None]:
    """Send every :func:`advance` inside the block to ``callback(what, done, total)`` (``None``: nowhere)."""
    token = _CALLBACK.set(callback)
    try:
        yield
    finally:
        _CALLBACK.reset(token)


def advance(what: str, done: int, total: int) -> None:
    """Say that a long loop has done ``done`` of ``total`` steps of ``what`` (``square queries``...)."""
    callback = _CALLBACK.get()
    if callback is not None:
        callback(what, done, total)


def on_bar(bar: Any, prefix: str) -> Callback:
    """A callback that writes ``prefix: what done/total`` into a tqdm bar's postfix, redrawn at most every
    :data:`REFRESH_SECONDS`, so a bar that waits on one long call still moves."""
    shown = [float("-inf")]

    def show(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - shown[0] >= REFRESH_SECONDS:
            shown[0] = now
            bar.set_postfix_str(f"{prefix}: {what} {done}/{total}")

    return show
