"""Simulated links: byte streams between in-process nodes on trio's clock (DESIGN §12).

A stream is two pipes, one per direction. A write is due at the far end after the link's
bandwidth has carried it (writes on one link queue behind each other), its latency, and a
jitter; a stream delivers in order, as TCP does. Loss shows as what TCP makes of it: a write
that stalls for a retransmission timeout, or, rarely, a stream reset. A partition holds every
byte between its sides until it heals; a crashed node's streams break.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Final

import trio

WINDOW: Final = 256 * 1024  # bytes a writer may have in flight before it waits (a TCP buffer)
MIN_RTO: Final = 0.2  # seconds: a lost segment costs at least this (TCP's minimum RTO)
HELD_POLL: Final = 1.0  # virtual seconds between a held reader's looks at its stream


@dataclass(frozen=True)
class LinkSpec:
    """One direction of a link between two nodes (or a client and its node)."""

    latency: float = 0.005  # seconds, one way
    jitter: float = 0.0  # extra one-way delay, uniform in [0, jitter)
    bandwidth: float = 12.5e6  # bytes a second (100 Mbit/s)
    loss: float = 0.0  # chance that a write stalls for a retransmission timeout
    reset: float = 0.0  # chance that a write resets its stream

    def rto(self) -> float:
        return max(MIN_RTO, 4 * self.latency)


@dataclass
class Traffic:
    """What moved over the simulated links."""

    bytes: int = 0
    writes: int = 0
    streams: int = 0
    stalls: int = 0
    resets: int = 0


class Wire:
    """The state one direction of a link shares between its streams: when it is next free
    (bandwidth), and whether a partition holds it."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self.busy_until = 0.0
        self.held = False
        self.healed = trio.Event()


class Pipe:
    """One direction of one stream."""

    def __init__(self, wire: Wire, traffic: Traffic, rng: random.Random) -> None:
        self._wire = wire
        self._traffic = traffic
        self._rng = rng
        self._chunks: deque[tuple[float, bytes]] = deque()
        self._queued = 0
        self._last_due = 0.0
        self._eof = False
        self.broken: str | None = None
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def break_(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
            self._chunks.clear()
            self._wake()

    def end(self) -> None:
        self._eof = True
        self._wake()

    async def send(self, data: bytes) -> None:
        if self.broken is not None:
            raise trio.BrokenResourceError(self.broken)
        if self._eof:
            raise trio.ClosedResourceError("this stream was closed")
        while self._queued >= WINDOW and self.broken is None:
            await self._changed.wait()
        if self.broken is not None:
            raise trio.BrokenResourceError(self.broken)
        spec, now = self._wire.spec, trio.current_time()
        if spec.reset and self._rng.random() < spec.reset:
            self._traffic.resets += 1
            self.break_("the stream was reset (simulated loss)")
            raise trio.BrokenResourceError(self.broken)
        start = max(now, self._wire.busy_until)
        self._wire.busy_until = start + len(data) / spec.bandwidth
        due = self._wire.busy_until + spec.latency
        if spec.jitter:
            due += self._rng.random() * spec.jitter
        if spec.loss and self._rng.random() < spec.loss:
            self._traffic.stalls += 1
            due += spec.rto()
        due = max(due, self._last_due)  # a stream delivers in order
        self._last_due = due
        self._chunks.append((due, data))
        self._queued += len(data)
        self._traffic.bytes += len(data)
        self._traffic.writes += 1
        self._wake()
        await trio.lowlevel.checkpoint()

    async def receive(self, max_bytes: int) -> bytes:
        while True:
            if self.broken is not None:
                raise trio.BrokenResourceError(self.broken)
            if self._wire.held:
                with trio.move_on_after(HELD_POLL):  # a reset must reach a held reader too
                    await self._wire.healed.wait()
                continue
            if self._chunks:
                due, data = self._chunks[0]
                if due <= trio.current_time():
                    if len(data) > max_bytes:
                        self._chunks[0] = (due, data[max_bytes:])
                        data = data[:max_bytes]
                    else:
                        self._chunks.popleft()
                    self._queued -= len(data)
                    self._wake()
                    return data
                with trio.move_on_at(due):
                    await self._changed.wait()
                continue
            if self._eof:
                await trio.lowlevel.checkpoint()
                return b""
            await self._changed.wait()


class SimStream:
    """One end of a simulated stream, with trio's semantics (the `Stream` interface)."""

    def __init__(self, outgoing: Pipe, incoming: Pipe) -> None:
        self._out = outgoing
        self._in = incoming
        self._closed = False
        self._receiving = False

    async def receive_some(self, max_bytes: int) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            return await self._in.receive(max_bytes)
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        await self._out.send(bytes(data))

    async def aclose(self) -> None:
        """Close our side: the peer reads to the end, then b""."""
        if not self._closed:
            self._closed = True
            self._out.end()
        await trio.lowlevel.checkpoint()

    def reset(self, reason: str) -> None:
        """Break both directions at once (a crash, a reset)."""
        self._out.break_(reason)
        self._in.break_(reason)
