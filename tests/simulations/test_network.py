"""The simulated network: its links, and each fault hook, over real nodes and clients."""

from __future__ import annotations

import io
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from node.client import FileSystem, Session, signup
from node.net import RPC_PROTOCOL
from protocols import crypto
from protocols.cid import CID
from protocols.errors import Corrupted, Unavailable
from simulations.determinism import deterministic
from simulations.links import LinkSpec, Pipe, SimStream, Traffic, Wire
from simulations.network import SimNetwork, open_network

PASSWORD = "correct horse battery"
Body = Callable[[SimNetwork], Awaitable[None]]


@pytest.fixture(autouse=True)
def test_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRGOS_INSECURE_TEST_KDF", "1")


def simulate(tmp_path: Path, nodes: int, body: Body, seed: int = 1) -> None:
    """Run `body` on a swarm of `nodes` on virtual time, deterministically."""

    async def main() -> None:
        with trio.fail_after(3600):  # virtual seconds
            async with open_network(tmp_path, seed, nodes) as net:
                await body(net)

    with deterministic(seed):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def stream_pair(spec: LinkSpec) -> tuple[SimStream, SimStream, Traffic]:
    traffic = Traffic()
    rng = random.Random(0)
    there, back = Pipe(Wire(spec), traffic, rng), Pipe(Wire(spec), traffic, rng)
    return SimStream(there, back), SimStream(back, there), traffic


async def user(net: SimNetwork, name: str, node: int) -> tuple[Session, FileSystem]:
    session = await signup(net.client(f"client-{name}", net.order[node]), name, PASSWORD)
    return session, FileSystem(session)


# -- links ----------------------------------------------------------------------------------


def test_a_link_delivers_in_order_after_its_latency_and_bandwidth() -> None:
    async def main() -> None:
        a, b, traffic = stream_pair(LinkSpec(latency=0.05, jitter=0.04, bandwidth=1000.0))
        await a.send_all(b"x" * 500)  # half a second on the wire
        await a.send_all(b"y" * 10)
        await a.aclose()
        got, arrivals = b"", []
        while data := await b.receive_some(300):
            got += data
            arrivals.append(trio.current_time())
        assert got == b"x" * 500 + b"y" * 10
        assert arrivals[0] >= 0.55
        assert arrivals == sorted(arrivals)
        assert (traffic.bytes, traffic.writes) == (510, 2)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_loss_stalls_a_stream_and_resets_break_it() -> None:
    async def main() -> None:
        a, b, traffic = stream_pair(LinkSpec(latency=0.01, loss=1.0))
        await a.send_all(b"late")
        assert await b.receive_some(10) == b"late"
        assert trio.current_time() >= 0.2  # a retransmission timeout
        assert traffic.stalls == 1
        c, d, traffic = stream_pair(LinkSpec(reset=1.0))
        with pytest.raises(trio.BrokenResourceError):
            await c.send_all(b"never")
        with pytest.raises(trio.BrokenResourceError):
            await d.receive_some(10)
        assert traffic.resets == 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_held_wire_delivers_after_the_heal_and_a_reset_reaches_its_reader() -> None:
    async def main() -> None:
        wire = Wire(LinkSpec(latency=0.01))
        traffic, rng = Traffic(), random.Random(0)
        there, back = Pipe(wire, traffic, rng), Pipe(Wire(LinkSpec()), traffic, rng)
        a, b = SimStream(there, back), SimStream(back, there)
        wire.held = True
        await a.send_all(b"held")
        with trio.move_on_after(30):
            await b.receive_some(10)
            raise AssertionError("a held wire delivered")
        wire.held = False
        wire.healed.set()
        assert await b.receive_some(10) == b"held"
        wire.held = True
        wire.healed = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_expect_reset, b)
            await trio.sleep(5)
            a.reset("crash")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def _expect_reset(stream: SimStream) -> None:
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some(10)


# -- the swarm ----------------------------------------------------------------------------------


def test_users_on_different_nodes_reach_each_other_over_the_real_protocols(
    tmp_path: Path,
) -> None:
    async def body(net: SimNetwork) -> None:
        alice, fs = await user(net, "alice", 1)
        await fs.write_file("/alice/f", io.BytesIO(b"hello" * 2000))
        # Alice's data read through another node: relayed over the simulated RPC.
        elsewhere = await signup(net.client("alice-2", net.order[2]), "bob", PASSWORD)
        assert elsewhere.home_node == net.order[2].node_id.encode()
        assert net.traffic.streams > 0
        assert await fs.read_bytes("/alice/f", 1 << 20) == b"hello" * 2000
        forwarded = sum(node.require().stats["forwarded"] for node in net.order)
        assert forwarded == 0  # each client talked to its own home
        # A home call sent to another node is forwarded over the tunnel.
        via = FileSystem(alice)
        via.api = net.client("alice-3", net.order[3])
        via.api.session = alice.api.session
        assert await via.read_bytes("/alice/f", 1 << 20) == b"hello" * 2000
        assert net.order[3].require().stats["forwarded"] > 0

    simulate(tmp_path, 4, body)


def test_a_partition_holds_calls_until_it_heals(tmp_path: Path) -> None:
    async def body(net: SimNetwork) -> None:
        _, fs = await user(net, "alice", 1)
        net.partition([net.order[1].node_id])
        with pytest.raises(Unavailable):
            await fs.mkdir("/alice/cut")
        net.heal()
        assert not await _exists(fs, "/alice/cut")
        await fs.mkdir("/alice/cut")
        assert await _exists(fs, "/alice/cut")
        # Node to node: a call across the partition times out, then works once healed.
        other = net.order[2].require().network
        assert other is not None
        net.partition([net.order[1].node_id], [net.order[2].node_id])
        with pytest.raises(Unavailable):
            await other.call(net.order[1].node_id, "node.info", {})
        net.heal()
        info = await other.call(net.order[1].node_id, "node.info", {})
        assert info["node"] == net.order[1].node_id

    simulate(tmp_path, 3, body)


def test_a_crashed_node_restarts_with_what_it_stored(tmp_path: Path) -> None:
    async def body(net: SimNetwork) -> None:
        alice, fs = await user(net, "alice", 1)
        await fs.write_file("/alice/kept", io.BytesIO(b"kept"))
        await net.crash(net.order[1])
        with pytest.raises(Unavailable):
            await fs.read_bytes("/alice/kept", 100)
        await net.restart(net.order[1])
        assert net.order[1].restarts == 1
        again = FileSystem(alice)
        assert await again.read_bytes("/alice/kept", 100) == b"kept"
        await again.write_file("/alice/after", io.BytesIO(b"after"))

    simulate(tmp_path, 2, body)


def test_a_corrupted_block_and_a_lying_node_are_caught(tmp_path: Path) -> None:
    async def body(net: SimNetwork) -> None:
        home = net.order[1]
        alice, fs = await user(net, "alice", 1)
        await fs.write_file("/alice/f", io.BytesIO(crypto.random_bytes(6000)))
        store = home.require().store
        cids = [CID.from_bytes(raw) for raw in store.block_cids()]
        assert all(net.corrupt_block(home, cid) for cid in cids)
        with pytest.raises(Corrupted):
            await FileSystem(alice).read_bytes("/alice/f", 1 << 20)

    simulate(tmp_path, 2, body)


def test_lies_are_refused(tmp_path: Path) -> None:
    async def body(net: SimNetwork) -> None:
        root, mirror = net.order[0], net.order[1]
        alice, fs = await user(net, "alice", 1)
        await fs.write_file("/alice/f", io.BytesIO(b"true"))
        net.lie(mirror, "blocks")
        with pytest.raises(Corrupted):
            await FileSystem(alice).read_bytes("/alice/f", 100)
        net.lie(mirror)
        assert await FileSystem(fs.session).read_bytes("/alice/f", 100) == b"true"  # type: ignore[arg-type]
        # A PKI node that forges an entry of a page: the mirror refuses the page, keeps its log.
        before = mirror.require().pki
        assert before is not None
        seq = before.seq()
        net.lie(root, "pki")
        await signup(net.client("client-bob", root), "bob", PASSWORD)
        result = await mirror.require().sync_pki()
        assert result is not None
        assert result.refusal is not None
        assert before.seq() == seq
        assert mirror.require().home_of_username("bob") is None
        net.lie(root)
        await mirror.require().sync_pki()
        assert mirror.require().home_of_username("bob") == root.node_id
        with pytest.raises(ValueError, match="unknown lies"):
            net.lie(root, "everything")

    simulate(tmp_path, 2, body)


def test_a_relay_that_serves_stale_pointers_shows_an_old_version(tmp_path: Path) -> None:
    """The limit docs/security.md states: a node may serve stale data, and a client that has
    not seen the newer pointer cannot tell."""

    async def body(net: SimNetwork) -> None:
        relay = net.order[2]
        alice, fs = await user(net, "alice", 1)
        await fs.write_file("/alice/f", io.BytesIO(b"first"))
        reader = FileSystem(alice)
        reader.api = net.client("alice-via-relay", relay)
        reader.api.session = alice.api.session
        net.lie(relay, "pointers")
        assert await reader.read_bytes("/alice/f", 100) == b"first"
        await fs.write_file("/alice/f", io.BytesIO(b"second"))
        stale = FileSystem(alice)
        stale.api = reader.api
        assert await stale.read_bytes("/alice/f", 100) == b"first"
        assert relay.liar is not None
        assert relay.liar.told > 0
        net.lie(relay)
        fresh = FileSystem(alice)
        fresh.api = reader.api
        assert await fresh.read_bytes("/alice/f", 100) == b"second"

    simulate(tmp_path, 3, body)


def test_the_dialer_finds_nodes_only_at_their_pki_addresses(tmp_path: Path) -> None:
    async def body(net: SimNetwork) -> None:
        a, b = net.order[1], net.order[2]
        with pytest.raises(Unavailable, match="no address"):
            await net.open_stream(a, b.node_id, ["/dns4/elsewhere/tcp/1/p2p/x"], RPC_PROTOCOL)
        stream = await net.open_stream(a, b.node_id, b.require().settings.addrs, RPC_PROTOCOL)
        await stream.aclose()

    simulate(tmp_path, 3, body)


async def _exists(fs: FileSystem, path: str) -> bool:
    parent, name = path.rsplit("/", 1)
    return name in [item.name for item in await fs.listdir(parent)]
