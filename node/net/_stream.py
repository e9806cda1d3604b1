"""The byte-stream interface every protocol handler uses (DESIGN §12).

A libp2p stream, a simulated link and trio.testing.memory_stream_pair() all satisfy it.
"""

from __future__ import annotations

from typing import Final, Protocol

# The most one write to a libp2p stream carries as one Yamux frame sealed in one Noise message:
# 65,535 bytes less Noise's 16-byte tag and Yamux's 12-byte header. Writers that choose their
# sizes fill these: a write one byte longer costs a second frame, seal, socket write and read.
WRITE_UNIT: Final = 65_507


class Stream(Protocol):
    async def receive_some(self, max_bytes: int) -> bytes: ...  # b"" at end of stream
    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...
    async def aclose(self) -> None: ...
