"""Stream doubles for protocol tests: a recorder of what crossed a stream, raw frame I/O."""

from __future__ import annotations

import trio

from node.net._stream import Stream


async def drip(stream: Stream, data: bytes, every: float) -> None:
    """Send `data` one byte at a time, `every` seconds apart: a slow-loris peer."""
    for byte in data:
        await stream.send_all(bytes([byte]))
        await trio.sleep(every)


class Recorder:
    """A Stream that passes everything through and counts it."""

    def __init__(self, inner: Stream) -> None:
        self.inner = inner
        self.sends = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    async def receive_some(self, max_bytes: int) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.bytes_received += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends += 1
        self.bytes_sent += len(data)
        await self.inner.send_all(data)

    async def aclose(self) -> None:
        await self.inner.aclose()
