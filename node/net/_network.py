"""The Network a running node uses: the tunnel and the block exchange over libp2p (or any
`Dialer`: the simulated network of simulations/ runs this same code).

Peers are found without a DHT: a node id resolves to the addresses its PKI node record lists
(or, for the PKI node itself, to the multiaddr this node was configured with).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, Protocol

import trio

from node.net._blocks import fetch_blocks, open_block_fetch, serve_blocks
from node.net._budget import ByteBudget
from node.net._rpc import RpcClient, serve_rpc
from node.net._stream import Dialer, Stream
from protocols.bats import ReadAuth
from protocols.cid import CID
from protocols.errors import PyrgosError, Unavailable

REFRESH_TIMEOUT: Final = 10  # seconds a PKI pull may take before a redial
# Wants in flight in a bulk fetch (a mirror's copy): a full window of 1 MiB fragments keeps a
# link of 100 ms round trip busy up to ~600 MiB/s; the server holds at most MAX_QUEUED of them.
FETCH_WINDOW: Final = 64
RPC_PROTOCOL: Final = "/pyrgos/rpc/1.0.0"
BLOCKS_PROTOCOL: Final = "/pyrgos/blocks/1.0.0"
# Bytes of large calls (puts relayed from other nodes) held at once from every peer: as much as
# the HTTP API lets its clients' bodies hold (docs/security.md).
RPC_BUFFERED_BYTES: Final = 64 * 1024 * 1024

Addresses = Callable[[str], Sequence[str]]  # node id -> its full multiaddrs


class Libp2pNetwork:
    """Calls and block fetches to other nodes; one pipelined RPC stream per peer, reopened
    when it breaks."""

    def __init__(
        self,
        host: Dialer,
        addresses: Addresses,
        refresh: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._host = host
        self._addresses = addresses
        self._refresh = refresh  # pulls new PKI entries: a peer may have moved
        self._clients: dict[str, RpcClient] = {}
        self._opening: dict[str, trio.Lock] = {}

    def _dial_addresses(self, node_id: str) -> Sequence[str]:
        addrs = self._addresses(node_id)
        if not addrs and not self._host.is_connected(node_id):
            raise Unavailable(f"no address is known for node {node_id}")
        return addrs

    async def _open(self, node_id: str, protocol: str) -> Stream:
        """A stream to `node_id`; if dialing fails, pull the PKI once (the peer may have moved
        to new addresses) and dial again. The pull is the node's own `sync_pki`, which does not
        re-enter itself when the failed dial was its own call to the PKI node."""
        try:
            return await self._host.open_stream(node_id, self._dial_addresses(node_id), protocol)
        except Unavailable:
            if self._refresh is None:
                raise
            # If the PKI node is away too, dial the addresses already known.
            with trio.move_on_after(REFRESH_TIMEOUT), contextlib.suppress(PyrgosError):
                await self._refresh()
            return await self._host.open_stream(node_id, self._dial_addresses(node_id), protocol)

    async def _client(self, node_id: str) -> RpcClient:
        lock = self._opening.setdefault(node_id, trio.Lock())
        if lock.statistics().owner is trio.lowlevel.current_task():
            # A dial to this node failed and the PKI pull it started calls the same node
            # (the PKI node itself is down): that dial has just failed.
            raise Unavailable(f"node {node_id} cannot be reached")
        async with lock:
            client = self._clients.get(node_id)
            if client is None:
                client = self._clients[node_id] = RpcClient(await self._open(node_id, RPC_PROTOCOL))
            return client

    async def call(self, node_id: str, method: str, args: dict[str, Any]) -> Any:
        for attempt in range(2):
            client = await self._client(node_id)
            try:
                return await client.call(method, args)
            except Unavailable:
                # The stream broke (a restart, a reset): forget it; one fresh try.
                if self._clients.get(node_id) is client:
                    del self._clients[node_id]
                await client.aclose()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def fetch_block(self, node_id: str, cid: CID, auth: ReadAuth | None) -> bytes:
        stream = await self._open(node_id, BLOCKS_PROTOCOL)
        try:
            return (await fetch_blocks([stream], [(cid, auth)]))[cid]
        finally:
            await stream.aclose()

    async def fetch_many(
        self,
        node_id: str,
        wants: Iterable[tuple[CID, ReadAuth | None]],
        receive: Callable[[CID, bytes], Awaitable[None]],
    ) -> None:
        """Pipelined over one block-exchange stream (`open_block_fetch`): blocks go to
        `receive` as they arrive, so memory holds a window of them, not the set."""
        stream = await self._open(node_id, BLOCKS_PROTOCOL)
        async with open_block_fetch([stream], wants, window=FETCH_WINDOW) as fetch:
            async for result in fetch:
                if result.error is not None:
                    raise result.error
                assert result.data is not None
                await receive(result.cid, result.data)

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            await client.aclose()
        self._clients.clear()


class Served(Protocol):
    """What `serve_node` answers with: a NodeService, or a stand-in that wraps one."""

    async def call(self, method: str, args: Any, requester: bytes = b"") -> Any: ...

    async def get_block(self, cid: CID, auth: ReadAuth | None, requester: bytes) -> bytes: ...


def serve_node(host: Dialer, service: Served) -> None:
    """Answer other nodes: the method table on the tunnel, blocks on the exchange; the peer id
    that Noise authenticated is the requester every rule sees."""

    calls = ByteBudget(RPC_BUFFERED_BYTES, "large calls")  # shared by every peer's streams

    async def rpc(stream: Any, peer_id: str) -> None:
        await serve_rpc(stream, peer_id, service.call, budget=calls)

    async def blocks(stream: Any, peer_id: str) -> None:
        await serve_blocks(stream, peer_id, service.get_block)

    host.set_handler(RPC_PROTOCOL, rpc)
    host.set_handler(BLOCKS_PROTOCOL, blocks)
