"""A whole swarm in one trio process, on virtual time, over simulated links (DESIGN §12).

Each node is the real node: its LevelDB store, its `NodeService`, the tunnel and the block
exchange of node/net (`Libp2pNetwork`, `serve_node`) over `SimStream`s, and routing by its
PKI node records. Clients are the real client (node/client) talking to a node through
`SimTransport`, which carries the same bytes as the HTTP API to the same dispatch
(`answer_call`, `answer_block`). Only the sockets, libp2p's Noise and Yamux, and HTTP framing
are left out. Run it inside `simulate` (deterministic scheduling, randomness and threads) on a
`trio.testing.MockClock`, and one seed reproduces a run.

Fault hooks (each documented in docs/simulation.md): `set_link` (latency, jitter,
bandwidth, loss, resets), `partition`/`heal`, `crash`/`restart`, `corrupt_block`, `lie`.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from node.client import NodeApi
from node.daemon import follow_pki
from node.net import Handler, Libp2pNetwork, Stream, answer_block, answer_call, serve_node
from node.server import NodeService, NodeSettings, PkiLog
from node.store import Space, Store
from protocols import cbor, crypto
from protocols.bats import ReadAuth
from protocols.cid import CID
from protocols.crypto import SigningKey
from protocols.errors import PyrgosError, Unavailable
from protocols.peerid import peer_id_of
from protocols.pki import NodeRecord
from simulations.links import LinkSpec, Pipe, SimStream, Traffic, Wire

log = logging.getLogger(__name__)

EPOCH: Final = 1_767_225_600  # 2026-01-01T00:00:00Z: virtual time 0 on every node's clock
DIAL_TIMEOUT: Final = 10.0  # seconds a dial into a partition waits, as the host's does
GiB: Final = 1024**3
LIES: Final = ("blocks", "pointers", "pki")


def node_key(seed: int, index: int) -> SigningKey:
    """Node `index`'s key in the swarm of `seed`."""
    return SigningKey.from_seed(hashlib.sha256(f"pyrgos-sim node {seed} {index}".encode()).digest())


def address_of(node_id: str) -> str:
    """The address a simulated node lists in its node record."""
    return f"/dns4/{node_id[-12:].lower()}.sim/tcp/4001"


@dataclass
class SimNode:
    """One node of the swarm: its key and store survive a crash; its service does not."""

    index: int
    key: SigningKey
    path: Path
    pki_node: str
    node_id: str = ""
    service: NodeService | None = None
    network: Libp2pNetwork | None = None
    handlers: dict[str, Handler] = field(default_factory=dict)
    streams: list[SimStream] = field(default_factory=list)
    scope: trio.CancelScope | None = None
    nursery: trio.Nursery | None = None
    admin_token: str = ""
    lying: set[str] = field(default_factory=set)
    liar: Liar | None = None
    restarts: int = 0

    def __post_init__(self) -> None:
        self.node_id = peer_id_of(self.key.public)
        self.admin_token = f"sim-admin-{self.index}"

    @property
    def up(self) -> bool:
        return self.service is not None

    def require(self) -> NodeService:
        if self.service is None:
            raise Unavailable(f"node {self.node_id} is down")
        return self.service

    @property
    def answering(self) -> NodeService | Liar:
        """What answers calls: the service, or the liar wrapped around it."""
        service = self.require()
        return self.liar if self.lying and self.liar is not None else service


class SimHost:
    """A node's `Dialer`: streams to other simulated nodes, found at the addresses the PKI
    lists for them."""

    def __init__(self, net: SimNetwork, node: SimNode) -> None:
        self._net = net
        self._node = node

    async def open_stream(self, peer_id: str, addrs: Sequence[str], protocol: str) -> Stream:
        return await self._net.open_stream(self._node, peer_id, addrs, protocol)

    def is_connected(self, peer_id: str) -> bool:
        return (self._node.node_id, peer_id) in self._net.connected

    def set_handler(self, protocol: str, handler: Handler) -> None:
        self._node.handlers[protocol] = handler


class SimNetwork:
    """Nodes by id, the links between them and the faults in force.

    `seed` derives every node key and every random choice the network makes (jitter, loss);
    run it within `simulate(seed)` so that the nodes' and clients' randomness is the seed's
    too. `root` is a directory for the nodes' stores.
    """

    def __init__(
        self,
        root: Path,
        seed: int,
        nursery: trio.Nursery,
        *,
        link: LinkSpec | None = None,
        client_link: LinkSpec | None = None,
        default_quota: int = GiB,
    ) -> None:
        self.root = root
        self.seed = seed
        self.rng = random.Random(seed)
        self.traffic = Traffic()
        self.nodes: dict[str, SimNode] = {}
        self.order: list[SimNode] = []
        self.connected: set[tuple[str, str]] = set()
        self._nursery = nursery
        self._default = link or LinkSpec()
        self._client_default = client_link or LinkSpec(latency=0.002)
        self._specs: dict[tuple[str, str], LinkSpec] = {}
        self._wires: dict[tuple[str, str], Wire] = {}
        self._partitions: list[tuple[frozenset[str], frozenset[str]]] = []
        self.default_quota = default_quota

    def clock(self) -> float:
        """Seconds since the epoch on the virtual clock: every node's and client's clock."""
        return EPOCH + trio.current_time()

    # -- building ------------------------------------------------------------------------------

    async def add_nodes(self, count: int) -> list[SimNode]:
        """Start `count` nodes at once, as a swarm's processes start; the first node of the
        swarm is its PKI node, which starts before the others."""
        added = []
        for _ in range(count):
            index = len(self.order)
            key = node_key(self.seed, index)
            pki_node = self.order[0].node_id if self.order else peer_id_of(key.public)
            node = SimNode(index, key, self.root / f"node{index}", pki_node)
            self.nodes[node.node_id] = node
            self.order.append(node)
            added.append(node)
        rest = added
        if added and added[0].pki_node == added[0].node_id:
            await self._start(added[0])
            rest = added[1:]
        async with trio.open_nursery() as nursery:
            for node in rest:
                nursery.start_soon(self._start, node)
        return added

    async def _start(self, node: SimNode) -> None:
        store = Store(node.path)
        is_root = node.pki_node == node.node_id
        service = NodeService(
            store,
            NodeSettings(
                node_id=node.node_id,
                test_mode=True,
                default_quota=self.default_quota,
                addrs=(f"{address_of(node.node_id)}/p2p/{node.node_id}",),
                max_daily_signups=1 << 30,
                max_source_signups=1 << 30,
                max_daily_nodes=1 << 30,
                admin_token=node.admin_token,
            ),
            pki=PkiLog(store, node.pki_node, node.key if is_root else None),
            clock=self.clock,
            random=crypto.random_bytes,
        )

        def addresses(peer: str) -> list[str]:
            if peer == node.pki_node:  # configured, as `node init --pki` does
                return [f"{address_of(peer)}/p2p/{peer}"]
            return service.addresses_of(peer)

        host = SimHost(self, node)
        network = Libp2pNetwork(host, addresses, refresh=service.sync_pki)
        service.network = network
        node.service, node.network = service, network
        node.liar = Liar(service, node.lying)
        serve_node(host, _Answering(node))
        node.scope = trio.CancelScope()
        ready = trio.Event()
        self._nursery.start_soon(self._run_node, node, ready)
        await ready.wait()
        last = None if service.pki is None else service.pki.node_record(node.node_id)
        seq = max(int(self.clock()), 0 if last is None else last.seq + 1)
        record = NodeRecord.create(node.key, [address_of(node.node_id)], seq)
        await service.publish(record)

    async def _run_node(self, node: SimNode, ready: trio.Event) -> None:
        """The node's tasks (its inbound streams, its PKI pulls, its mirroring) live here
        until a crash, as `run_node` starts them."""
        assert node.scope is not None
        assert node.service is not None
        with node.scope:
            async with trio.open_nursery() as nursery:
                node.nursery = nursery
                if node.pki_node != node.node_id:
                    nursery.start_soon(follow_pki, node.service, random.Random(self.rng.random()))
                nursery.start_soon(node.service.mirrors.run)  # the users it mirrors, if any
                ready.set()
                await trio.sleep_forever()

    # -- links -----------------------------------------------------------------------------

    def set_link(self, a: str, b: str, spec: LinkSpec, *, both: bool = True) -> None:
        """Set the link from node `a` to node `b` (and back, unless `both` is False); a
        client's link to its node is (client name, node id)."""
        for key in [(a, b), (b, a)] if both else [(a, b)]:
            self._specs[key] = spec
            if key in self._wires:
                self._wires[key].spec = spec

    def set_default_links(self, spec: LinkSpec, client: LinkSpec | None = None) -> None:
        """Change every link not set by `set_link` (between nodes; `client`: clients' too)."""
        self._default = spec
        self._client_default = client or self._client_default
        clients = {
            key for key in self._wires if key[0] not in self.nodes or key[1] not in self.nodes
        }
        for key, wire in self._wires.items():
            if key not in self._specs:
                wire.spec = self._client_default if key in clients else self._default

    def _wire(self, src: str, dst: str, client: bool = False) -> Wire:
        wire = self._wires.get((src, dst))
        if wire is None:
            default = self._client_default if client else self._default
            wire = self._wires[(src, dst)] = Wire(self._specs.get((src, dst), default))
            wire.held = self.partitioned(src, dst)
        return wire

    def partition(self, side: Sequence[str], other: Sequence[str] | None = None) -> None:
        """Cut `side` off from `other` (default: every other node and client): streams
        between them hold their bytes, dials into the partition time out."""
        ids = frozenset(side)
        rest = frozenset(other) if other is not None else frozenset(self.nodes) - ids
        self._partitions.append((ids, rest))
        for (src, dst), wire in self._wires.items():
            wire.held = self.partitioned(src, dst)

    def heal(self) -> None:
        """End every partition: held bytes flow again."""
        self._partitions.clear()
        for wire in self._wires.values():
            if wire.held:
                wire.held = False
                wire.healed.set()
                wire.healed = trio.Event()

    def partitioned(self, a: str, b: str) -> bool:
        for side, other in self._partitions:
            if (a in side and b not in side and (b in other or b not in self.nodes)) or (
                b in side and a not in side and (a in other or a not in self.nodes)
            ):
                return True
        return False

    async def open_stream(
        self, src: SimNode, peer_id: str, addrs: Sequence[str], protocol: str
    ) -> Stream:
        """A stream from `src` to `peer_id`, as the libp2p host opens one: a first
        connection costs two round trips, a stream one; a node that is down refuses at
        once, one behind a partition lets the dial time out."""
        target = self.nodes.get(peer_id)
        known = (src.node_id, peer_id) in self.connected
        if target is None or not (known or f"{address_of(peer_id)}/p2p/{peer_id}" in addrs):
            await trio.lowlevel.checkpoint()
            raise Unavailable(f"cannot reach node {peer_id}: no address of it answers")
        there, back = self._wire(src.node_id, peer_id), self._wire(peer_id, src.node_id)
        rtt = there.spec.latency + back.spec.latency
        if there.held or back.held:
            await trio.sleep(DIAL_TIMEOUT)
            raise Unavailable(f"node {peer_id} did not answer {protocol} within {DIAL_TIMEOUT:g} s")
        await trio.sleep(rtt if known else 2 * rtt)
        handler = target.handlers.get(protocol)
        if not target.up or target.nursery is None or handler is None:
            self.connected.discard((src.node_id, peer_id))
            raise Unavailable(f"cannot reach node {peer_id}: connection refused")
        self.connected.add((src.node_id, peer_id))
        self.connected.add((peer_id, src.node_id))
        out, inbound = Pipe(there, self.traffic, self.rng), Pipe(back, self.traffic, self.rng)
        mine, theirs = SimStream(out, inbound), SimStream(inbound, out)
        self.traffic.streams += 1
        src.streams.append(mine)
        target.streams.append(theirs)
        target.nursery.start_soon(_serve_stream, handler, theirs, src.node_id, protocol)
        return mine

    # -- faults ----------------------------------------------------------------------------

    async def crash(self, node: SimNode) -> None:
        """Stop `node` as a killed process stops: its tasks end, its streams break, its
        store closes with what it wrote (LevelDB's log survives a process crash)."""
        if node.scope is None or node.service is None:
            return
        node.scope.cancel()
        for stream in node.streams:
            stream.reset(f"node {node.node_id} crashed")
        node.streams.clear()
        for pair in [pair for pair in self.connected if node.node_id in pair]:
            self.connected.discard(pair)
        service = node.service
        node.service = node.network = node.nursery = node.scope = None
        await trio.lowlevel.checkpoint()
        service.store.close()

    async def restart(self, node: SimNode) -> None:
        """Start a crashed node again on the same store, key and addresses."""
        if node.up:
            return
        node.restarts += 1
        await self._start(node)

    def corrupt_block(self, node: SimNode, cid: CID) -> bool:
        """Flip a byte of `cid`'s stored copy on `node` (LevelDB's own checksums stay valid:
        the damage is found only by a hash check). False when the node holds no such block."""
        store = node.require().store
        key = store.block_key(cid.raw)
        data = store.get_block(cid.raw)
        if key is None or not data:
            return False
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0x01
        store.put(Space.BLOCKS, key, bytes(damaged))
        return True

    def lie(self, node: SimNode, *kinds: str) -> None:
        """Make `node` lie to every caller, node or client: "blocks" (a wrong byte in every
        block it serves), "pointers" (the first version of each pointer it ever served,
        forever), "pki" (a forged entry in each PKI page it serves). No kinds: honest again."""
        unknown = set(kinds) - set(LIES)
        if unknown:
            raise ValueError(f"unknown lies {sorted(unknown)}; known: {LIES}")
        node.lying.clear()
        node.lying.update(kinds)

    # -- clients ---------------------------------------------------------------------------

    async def admin(self, node: SimNode, method: str, **args: Any) -> Any:
        """A maintenance call (`admin.*`) to `node` with its admin token, as its operator's
        CLI makes it."""
        api = self.client(f"admin-{node.index}", node)
        return await api.call(method, {"token": node.admin_token, **args})

    def client(self, name: str, node: SimNode) -> NodeApi:
        """A client named `name` whose API is `node`, over a link of its own."""
        transport = SimTransport(self, name, node)
        return NodeApi(f"sim://{node.node_id}", transport=transport, clock=self.clock)

    async def aclose(self) -> None:
        """Stop every node and close its store."""
        for node in self.order:
            await self.crash(node)


class SimTransport:
    """A client's `Transport` to its node over a simulated link: the request's bytes go out,
    the node answers them as its HTTP API would, the answer's bytes come back."""

    def __init__(self, net: SimNetwork, name: str, node: SimNode) -> None:
        self._net = net
        self._name = name
        self._node = node

    async def _cross(self, src: str, dst: str, size: int) -> None:
        wire = self._net._wire(src, dst, client=True)
        if wire.held:
            await trio.sleep(DIAL_TIMEOUT)
            raise Unavailable(f"cannot reach the node at sim://{self._node.node_id} (timeout)")
        spec, now = wire.spec, trio.current_time()
        start = max(now, wire.busy_until)
        wire.busy_until = start + size / spec.bandwidth
        delay = wire.busy_until - now + spec.latency
        if spec.jitter:
            delay += self._net.rng.random() * spec.jitter
        if spec.loss and self._net.rng.random() < spec.loss:
            self._net.traffic.stalls += 1
            delay += spec.rto()
        self._net.traffic.bytes += size
        self._net.traffic.writes += 1
        await trio.sleep(delay)

    async def _there_and_back(self, size: int, answer: Callable[[], Any]) -> tuple[int, bytes]:
        node = self._node.node_id
        await self._cross(self._name, node, size)
        if not self._node.up:
            raise Unavailable(f"cannot reach the node at sim://{node} (connection refused)")
        incarnation = self._node.restarts
        status, body = await answer()
        if not self._node.up or self._node.restarts != incarnation:
            # The node crashed while it answered: the connection was reset, whatever it did.
            raise Unavailable(f"the node at sim://{node} reset the connection")
        await self._cross(node, self._name, len(body))
        return status, body

    async def post_call(self, method: str, body: list[bytes]) -> tuple[int, bytes]:
        data = b"".join(body)

        async def answer() -> tuple[int, bytes]:
            return await answer_call(self._node.answering, method, data, self._name)

        return await self._there_and_back(len(data) + 200, answer)  # with an HTTP head

    async def get_block(self, cid: str, params: dict[str, str]) -> tuple[int, bytes]:
        async def answer() -> tuple[int, bytes]:
            return await answer_block(self._node.answering, cid, params)

        return await self._there_and_back(200 + sum(map(len, params.values())), answer)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _Answering:
    """What a node's `serve_node` answers with: whatever `SimNode.answering` is now."""

    def __init__(self, node: SimNode) -> None:
        self._node = node

    async def call(self, method: str, args: Any, requester: bytes = b"") -> Any:
        return await self._node.answering.call(method, args, requester)

    async def get_block(self, cid: CID, auth: ReadAuth | None, requester: bytes) -> bytes:
        return await self._node.answering.get_block(cid, auth, requester)


class Liar:
    """A node's service with the lies of `kinds` (see `SimNetwork.lie`) told in its answers."""

    def __init__(self, service: NodeService, kinds: set[str]) -> None:
        self._service = service
        self._kinds = kinds
        self._first_pointers: dict[bytes, Any] = {}
        self.told = 0

    async def call(
        self, method: str, args: Any, requester: bytes = b"", *, source: str | None = None
    ) -> Any:
        result = await self._service.call(method, args, requester, source=source)
        if method == "pointer.get" and "pointers" in self._kinds:
            key = cbor.encode(args)
            first = self._first_pointers.setdefault(key, result)
            if first is not result:
                self.told += 1
            return first
        if method == "pki.entries" and "pki" in self._kinds and isinstance(result, dict):
            entries = list(result.get("entries") or [])
            if entries and isinstance(entries[0], bytes):
                forged = bytearray(entries[0])
                forged[-1] ^= 0x01
                entries[0] = bytes(forged)
                self.told += 1
                return {**result, "entries": entries}
        return result

    async def get_block(
        self, cid: CID, auth: ReadAuth | None, requester: bytes, owner: CID | None = None
    ) -> bytes:
        data = await self._service.get_block(cid, auth, requester, owner)
        if "blocks" in self._kinds and data:
            self.told += 1
            wrong = bytearray(data)
            wrong[0] ^= 0x01
            return bytes(wrong)
        return data


async def _serve_stream(handler: Handler, stream: SimStream, peer: str, protocol: str) -> None:
    """Run one inbound stream's handler as the host does: guarded, closed at the end."""
    try:
        await handler(stream, peer)
    except (PyrgosError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.info("%s from %s: handler failed: %r", protocol, peer, exc)
    finally:
        await stream.aclose()


@asynccontextmanager
async def open_network(
    root: Path, seed: int, nodes: int, **options: Any
) -> AsyncIterator[SimNetwork]:
    """A running swarm of `nodes` nodes (the first its PKI node), stopped on exit."""
    async with trio.open_nursery() as nursery:
        net = SimNetwork(root, seed, nursery, **options)
        try:
            await net.add_nodes(nodes)
            yield net
        finally:
            with trio.CancelScope(shield=True):
                await net.aclose()
            nursery.cancel_scope.cancel()
