"""Blocking work off the event loop: in a worker thread in a running node, inline in a
simulation, where a thread would let virtual time run on (and finish in any order) while it
works (DESIGN §12)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import TypeVar

import trio

T = TypeVar("T")

_INLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("pyrgos_inline", default=False)


async def run_sync(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in a worker thread (trio.to_thread.run_sync), or inline after a checkpoint
    inside `inline_threads()`."""
    if _INLINE.get():
        await trio.lowlevel.checkpoint()
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args)


@contextlib.contextmanager
def inline_threads() -> Iterator[None]:
    """Run blocking work inline for the tasks of this context (and those they start): a
    simulation on a mock clock stays deterministic; a node would only serve more slowly."""
    token = _INLINE.set(True)
    try:
        yield
    finally:
        _INLINE.reset(token)
