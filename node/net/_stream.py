"""The byte-stream interface every protocol handler uses (DESIGN §12).

A libp2p stream, a simulated link and trio.testing.memory_stream_pair() all satisfy it.
"""

from __future__ import annotations

from typing import Protocol


class Stream(Protocol):
    async def receive_some(self, max_bytes: int) -> bytes: ...  # b"" at end of stream
    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...
    async def aclose(self) -> None: ...
