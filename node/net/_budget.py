"""Bytes a node holds for its callers at once, across all requests of one transport: what
does not fit is refused at once, never queued, so a crowd of slow senders cannot grow memory."""

from __future__ import annotations

from protocols.errors import Unavailable


class ByteBudget:
    """At most `total` bytes taken at once; `take` refuses (Unavailable) past it."""

    def __init__(self, total: int, held_what: str) -> None:
        self.total = total
        self.held = 0
        self._held_what = held_what  # what the refusal says the node holds too much of

    def take(self, size: int) -> None:
        if self.held + size > self.total:
            raise Unavailable(f"the node is holding too many {self._held_what}; try again soon")
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
