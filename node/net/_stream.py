"""The byte-stream interface every protocol handler uses, and the dialer that makes streams
(DESIGN §12).

A libp2p stream, a simulated link and trio.testing.memory_stream_pair() all satisfy it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

# The most one write to a libp2p stream carries as one Yamux frame sealed in one Noise message:
# 65,535 bytes less Noise's 16-byte tag and Yamux's 12-byte header. Writers that choose their
# sizes fill these: a write one byte longer costs a second frame, seal, socket write and read.
WRITE_UNIT: Final = 65_507


class Stream(Protocol):
    async def receive_some(self, max_bytes: int) -> bytes: ...  # b"" at end of stream
    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...
    async def aclose(self) -> None: ...


Handler = Callable[[Stream, str], Awaitable[None]]  # (stream, the remote peer's node id)


class Dialer(Protocol):
    """What the node's network needs of a transport: streams to a node id for a protocol, and
    a handler per protocol for the streams other nodes open. The libp2p `Host` is one; the
    simulated network in simulations/ is another (DESIGN §12)."""

    async def open_stream(self, peer_id: str, addrs: Sequence[str], protocol: str) -> Stream:
        """A new stream to `peer_id` speaking `protocol`, reached at one of `addrs` (full
        multiaddrs) unless already connected; Unavailable when it cannot be reached."""
        ...

    def is_connected(self, peer_id: str) -> bool: ...

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve `protocol`: `handler(stream, remote_peer_id)` runs once per inbound stream,
        with the peer id the transport authenticated."""
        ...
