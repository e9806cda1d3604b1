"""The libp2p host: identity, streams, and one regression test per py-libp2p fault it corrects.

Every test binds 127.0.0.1 port 0 only and runs under trio.fail_after.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE as YAMUX_HEADER_SIZE
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from multiaddr import Multiaddr

from node.home import NodeConfig, NodeHome
from node.net import Host, Stream, open_host
from node.net._host import MAX_RAW_READ, Libp2pStream, _BoundedReads, _SecuredConn
from node.net._stream import WRITE_UNIT
from protocols.cid import encode_varint
from protocols.errors import MalformedInput, Unavailable

# The `varint` package that multiaddr uses compares bytes with str, which `python -b` reports.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Comparison between bytes and string:BytesWarning:varint"
)

LOOPBACK = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
ECHO = "/pyrgos-test/echo/1.0.0"
SINK = "/pyrgos-test/sink/1.0.0"
MiB = 1024 * 1024


async def echo(stream: Stream, peer: str) -> None:
    while data := await stream.receive_some(64 * 1024):
        await stream.send_all(data)


async def receive_exactly(stream: Stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, "the stream ended early"
        data += chunk
    return data


async def receive_to_end(stream: Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(MiB):
        data += chunk
    return data


async def ends_promptly(stream: Stream) -> None:
    """The peer gave up on the stream: we see its end or a reset (py-libp2p may show either)."""
    with trio.fail_after(5), suppress(trio.BrokenResourceError):
        await receive_to_end(stream)


async def round_trip(host: Host, server: Host, payload: bytes = b"ping") -> None:
    stream = await host.open_stream(server.peer_id, server.addrs, ECHO)
    await stream.send_all(payload)
    assert await receive_exactly(stream, len(payload)) == payload
    await stream.aclose()


@asynccontextmanager
async def hosts(tmp_path: Path, count: int, **options: Any) -> AsyncIterator[list[Host]]:
    """`count` hosts; the first listens and serves ECHO."""
    async with AsyncExitStack() as stack:
        running = [
            await stack.enter_async_context(
                open_host(tmp_path / f"host{i}.key", LOOPBACK if i == 0 else [], **options)
            )
            for i in range(count)
        ]
        running[0].set_handler(ECHO, echo)
        yield running


def inbound_slots_in_use(host: Host) -> int:
    return int(host._swarm._inbound_limiter.statistics().borrowed_tokens)


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll py-libp2p state that offers no event to wait on."""
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


# -- Identity and the basic API ---------------------------------------------------------------


async def test_key_is_created_private_and_reused(tmp_path: Path) -> None:
    with trio.fail_after(10):
        key_file = tmp_path / "home" / "node.key"
        async with open_host(key_file, LOOPBACK) as host:
            first = host.peer_id
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        async with open_host(key_file, LOOPBACK) as host:
            assert host.peer_id == first


async def test_uses_the_key_node_home_writes(tmp_path: Path) -> None:
    with trio.fail_after(10):
        home = NodeHome(tmp_path / "home")
        node_id = home.init(NodeConfig())
        async with open_host(home.key_file, LOOPBACK) as host:
            assert host.peer_id == node_id


async def test_unreadable_key_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(10):
        key_file = tmp_path / "node.key"
        key_file.write_bytes(b"not a key")
        with pytest.raises(MalformedInput):
            async with open_host(key_file, LOOPBACK):
                pass


async def test_a_port_in_use_is_unavailable(tmp_path: Path) -> None:
    with trio.fail_after(10), trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(Unavailable, match=str(port)):
            async with open_host(tmp_path / "k", [Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")]):
                pass


async def test_errors_in_the_block_come_out_unwrapped(tmp_path: Path) -> None:
    with trio.fail_after(10):
        for error in (KeyError("x"), Unavailable("y")):
            with pytest.raises(type(error)) as caught:
                async with open_host(tmp_path / "k", LOOPBACK):
                    raise error
            assert caught.value is error
        with trio.move_on_after(0.2) as outer:
            async with open_host(tmp_path / "k", LOOPBACK):
                await trio.sleep_forever()
        assert outer.cancelled_caught


async def test_addrs_are_full_multiaddrs(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_host(tmp_path / "k", LOOPBACK) as host:
            [addr] = host.addrs
            assert addr.startswith("/ip4/127.0.0.1/tcp/")
            assert addr.endswith(f"/p2p/{host.peer_id}")
            assert not addr.startswith("/ip4/127.0.0.1/tcp/0/")


async def count_upload(stream: Stream, peer: str) -> None:
    """Reads an 8-byte size and that many bytes, answers with the sha256 and the peer's id."""
    size = int.from_bytes(await receive_exactly(stream, 8), "big")
    digest = hashlib.sha256()
    while size:
        data = await stream.receive_some(min(size, MiB))
        assert data
        digest.update(data)
        size -= len(data)
    await stream.send_all(digest.digest() + peer.encode())
    # Returning closes the stream: the client reads to b"".


async def test_streams_carry_bytes_both_ways_and_end_cleanly(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with hosts(tmp_path, 2) as (server, client):
            server.set_handler(SINK, count_upload)
            stream = await client.open_stream(server.peer_id, server.addrs, SINK)
            payload = os.urandom(3 * MiB + 17)
            await stream.send_all(len(payload).to_bytes(8, "big") + payload)
            reply = await receive_to_end(stream)
            assert reply == hashlib.sha256(payload).digest() + client.peer_id.encode()
            assert await stream.receive_some(1000) == b""  # stays at the end
            await stream.aclose()
            await stream.aclose()  # idempotent
            with pytest.raises(trio.ClosedResourceError):
                await stream.receive_some(1)
            with pytest.raises(trio.ClosedResourceError):
                await stream.send_all(b"x")
            await round_trip(client, server)  # streams come and go on one connection
            assert client.is_connected(server.peer_id)


async def test_big_transfers_seal_and_read_one_yamux_frame_per_noise_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Yamux's own frames carry up to 65,536 bytes, which Noise seals as a full message and a
    # 17-byte one: twice the seals, socket writes and reads. Sends are cut to fit one each,
    # and reads take each message from the socket read without SecureSession's buffering.
    frames: list[int] = []
    write = _SecuredConn.write

    async def recorded(self: _SecuredConn, data: bytes) -> None:
        frames.append(len(data))
        await write(self, data)

    async def bypassed(self: SecureSession, n: int | None = None) -> bytes:
        raise AssertionError("reads go through _SecuredConn's own message reader")

    monkeypatch.setattr(_SecuredConn, "write", recorded)
    monkeypatch.setattr(SecureSession, "read", bypassed)
    with trio.fail_after(20):
        async with hosts(tmp_path, 2) as (server, client):
            server.set_handler(SINK, count_upload)
            stream = await client.open_stream(server.peer_id, server.addrs, SINK)
            payload = os.urandom(2 * MiB)
            frames.clear()
            await stream.send_all(len(payload).to_bytes(8, "big") + payload)
            reply = await receive_to_end(stream)
            assert reply[:32] == hashlib.sha256(payload).digest()
            await stream.aclose()
    assert WRITE_UNIT + YAMUX_HEADER_SIZE == MAX_PLAINTEXT_LENGTH
    assert max(frames) == MAX_PLAINTEXT_LENGTH  # full, and never a byte over


async def test_connect_by_full_multiaddr(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with hosts(tmp_path, 2) as (server, client):
            await client.connect(server.addrs[0])
            assert client.is_connected(server.peer_id)
            await client.disconnect(server.peer_id)
            assert not client.is_connected(server.peer_id)


async def test_unreachable_peer_is_unavailable_within_the_dial_timeout(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with hosts(tmp_path, 2, dial_timeout=2.0) as (server, client):
            with trio.socket.socket() as sock:  # a port that listens but never answers
                await sock.bind(("127.0.0.1", 0))
                sock.listen(8)
                port = sock.getsockname()[1]
                dead = f"/ip4/127.0.0.1/tcp/{port}/p2p/{server.peer_id}"
                start = trio.current_time()
                with pytest.raises(Unavailable, match=server.peer_id):
                    await client.open_stream(server.peer_id, [dead], ECHO)
                assert trio.current_time() - start < 3.5
                with pytest.raises(Unavailable):
                    await client.connect(dead)
            await round_trip(client, server)


async def test_unknown_protocol_is_unavailable(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with hosts(tmp_path, 2) as (server, client):
            with pytest.raises(Unavailable, match="/no/such/protocol"):
                await client.open_stream(server.peer_id, server.addrs, "/no/such/protocol")
            await round_trip(client, server)


async def test_bad_ids_and_addresses_are_malformed(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with hosts(tmp_path, 3) as (server, client, other):
            for bad_id in ("not-a-peer-id", "", "abc", server.peer_id[:-1]):
                with pytest.raises(MalformedInput):
                    await client.open_stream(bad_id, server.addrs, ECHO)
            with pytest.raises(MalformedInput):
                await client.open_stream(server.peer_id, ["/ip4/127.0.0.1/tcp/1"], ECHO)
            with pytest.raises(MalformedInput):  # an address that names another node
                await client.open_stream(other.peer_id, server.addrs, ECHO)
            with pytest.raises(MalformedInput):
                await client.connect("garbage")


async def test_redial_at_once_after_a_failed_dial(tmp_path: Path) -> None:
    """A node that restarts is reachable again at once.

    Stock py-libp2p refuses every dial to a peer for 60 s after one failed (and the test above
    shows the other stock failing: only the first stored address is ever tried).
    """
    with trio.fail_after(30):
        async with open_host(tmp_path / "client", []) as client:
            async with open_host(tmp_path / "server", LOOPBACK) as server:
                addrs = server.addrs
                peer = server.peer_id
            with pytest.raises(Unavailable):
                await client.open_stream(peer, addrs, ECHO)
            port = Multiaddr(addrs[0]).value_for_protocol("tcp")
            listen = [Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")]
            async with open_host(tmp_path / "server", listen) as server:
                server.set_handler(ECHO, echo)
                await round_trip(client, server)


# -- Fault 1: the inbound limiter leaked a slot per connection ---------------------------------


async def test_inbound_slot_is_released_when_the_connection_closes(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with hosts(tmp_path, 2) as (server, client):
            await round_trip(client, server)
            assert inbound_slots_in_use(server) == 1
            await client.disconnect(server.peer_id)
            await wait_until(
                lambda: not inbound_slots_in_use(server) and not server.is_connected(client.peer_id)
            )


async def test_keeps_accepting_after_1000_inbound_connections(tmp_path: Path) -> None:
    """1,000 distinct peers connect, echo once and leave; stock py-libp2p refuses #251 on."""
    total, workers = 1000, 20
    with trio.fail_after(90):
        async with open_host(tmp_path / "server.key", LOOPBACK) as server:
            server.set_handler(ECHO, echo)
            served = 0

            async def churn(worker: int) -> None:
                nonlocal served
                for i in range(total // workers):
                    key = tmp_path / f"peer-{worker}-{i}.key"
                    async with open_host(key, []) as peer:
                        await round_trip(peer, server)
                    served += 1

            async with trio.open_nursery() as nursery:
                for worker in range(workers):
                    nursery.start_soon(churn, worker)
            assert served == total
            await wait_until(
                lambda: not inbound_slots_in_use(server) and not server._swarm.get_connections(),
                within=10,
            )
            async with open_host(tmp_path / "late.key", []) as late:
                await round_trip(late, server)


# -- Fault 2: the stock host accepts plaintext (and mplex) -------------------------------------


async def assert_refused(tmp_path: Path, security: str, muxer: str) -> None:
    """A stock py-libp2p peer offering only `security` and `muxer` cannot connect to us."""
    key_pair = create_new_key_pair()
    offers = {
        PLAINTEXT_PROTOCOL_ID: lambda: InsecureTransport(key_pair),
        NOISE_PROTOCOL_ID: lambda: NoiseTransport(
            key_pair, noise_privkey=create_new_x25519_key_pair().private_key
        ),
    }
    peer = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(security): offers[security]()},
        muxer_opt={TProtocol(muxer): {MPLEX_PROTOCOL_ID: Mplex, YAMUX_PROTOCOL_ID: Yamux}[muxer]},
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    async with open_host(tmp_path / "k", LOOPBACK) as server:
        server.set_handler(ECHO, echo)
        async with peer.run(listen_addrs=[]):
            with trio.fail_after(10), pytest.raises(Exception):  # noqa: B017,PT011 (any refusal)
                await peer.connect(info_from_p2p_addr(Multiaddr(server.addrs[0])))
        assert not server._swarm.get_connections()
        await wait_until(lambda: not inbound_slots_in_use(server))


async def test_plaintext_only_peer_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        await assert_refused(tmp_path, PLAINTEXT_PROTOCOL_ID, YAMUX_PROTOCOL_ID)


async def test_mplex_only_peer_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        await assert_refused(tmp_path, NOISE_PROTOCOL_ID, MPLEX_PROTOCOL_ID)


async def test_offers_noise_and_yamux_only(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_host(tmp_path / "k", LOOPBACK) as host:
            upgrader = host._swarm.upgrader
            assert list(upgrader.security_multistream.transports) == [NOISE_PROTOCOL_ID]
            assert list(upgrader.muxer_multistream.transports) == [YAMUX_PROTOCOL_ID]


# -- Fault 3: a handler's exception took the host down ----------------------------------------


async def test_handler_exception_is_logged_and_the_host_lives_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with hosts(tmp_path, 2) as (server, client):

            async def broken(stream: Stream, peer: str) -> None:
                await stream.receive_some(10)
                raise KeyError("a-secret-value")

            server.set_handler(SINK, broken)
            with caplog.at_level(logging.INFO, logger="node.net"):
                for _ in range(3):
                    stream = await client.open_stream(server.peer_id, server.addrs, SINK)
                    await stream.send_all(b"x")
                    await ends_promptly(stream)
                    await stream.aclose()
                    await round_trip(client, server)
            failures = [r for r in caplog.records if "handler failed" in r.getMessage()]
            assert len(failures) == 3
            for record in failures:
                assert record.levelno == logging.WARNING
                assert "KeyError" in record.getMessage()
                assert "a-secret-value" not in record.getMessage()
                assert "\n" not in record.getMessage()


async def test_handler_that_returns_without_closing_ends_the_stream(tmp_path: Path) -> None:
    """Stock py-libp2p leaves the peer's read hanging."""
    with trio.fail_after(20):
        async with hosts(tmp_path, 2) as (server, client):

            async def forgetful(stream: Stream, peer: str) -> None:
                await stream.send_all(b"bye")

            server.set_handler(SINK, forgetful)
            stream = await client.open_stream(server.peer_id, server.addrs, SINK)
            with trio.fail_after(5):
                assert await stream.receive_some(10) == b"bye"
                assert await stream.receive_some(10) == b""
            await stream.aclose()


async def test_garbage_connections_do_not_disturb_the_host(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with hosts(tmp_path, 2) as (server, client):
            port = int(Multiaddr(server.addrs[0]).value_for_protocol("tcp"))
            for garbage in (os.urandom(5000), b"\x13/multistream/1.0.0\n" + os.urandom(500)):
                raw = await trio.open_tcp_stream("127.0.0.1", port)
                # The host may hang up at any point of this: that is the point.
                with trio.move_on_after(0.5), suppress(trio.BrokenResourceError):
                    await raw.send_all(garbage)
                    await raw.receive_some(100)
                await raw.aclose()
            await round_trip(client, server)


async def test_a_huge_declared_length_does_not_size_a_read(tmp_path: Path) -> None:
    """Stock multistream asks the socket for a peer-declared length in one read (4 GiB here)."""
    with trio.fail_after(10):
        async with hosts(tmp_path, 2) as (server, client):
            port = int(Multiaddr(server.addrs[0]).value_for_protocol("tcp"))
            async with await trio.open_tcp_stream("127.0.0.1", port) as raw:
                header = b"\x13/multistream/1.0.0\n"
                await raw.send_all(header + encode_varint(1 << 32) + b"x" * 100)
                with trio.fail_after(2):  # the host is not busy allocating: it answers at once
                    await round_trip(client, server)


class RecordingConnection:
    """A connection that delivers `data` in reads of whatever size it is asked for."""

    is_initiator = False

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[int | None] = []

    async def read(self, n: int | None = None) -> bytes:
        self.asked.append(n)
        size = len(self.data) if n is None else n
        piece, self.data = self.data[:size], self.data[size:]
        return piece


async def test_raw_reads_are_bounded_and_serve_small_reads_from_one_socket_read() -> None:
    data = os.urandom(4 * MAX_RAW_READ)
    inner = RecordingConnection(data)
    bounded = _BoundedReads(inner)  # type: ignore[arg-type]
    got = b""
    for n in (2, 65535, 1 << 62, None, 2, MAX_RAW_READ, MAX_RAW_READ):
        piece = await bounded.read(n)
        assert 0 < len(piece) <= (MAX_RAW_READ if n is None else min(n, MAX_RAW_READ))
        got += piece
    assert data.startswith(got)
    assert inner.asked == [MAX_RAW_READ] * len(inner.asked)  # never a peer-chosen size
    assert len(inner.asked) <= 4  # a 2-byte length and its body come from one socket read


async def test_exact_raw_reads_end_as_py_libp2p_reports_a_closed_peer() -> None:
    bounded = _BoundedReads(RecordingConnection(b"\x00\x05abc"))  # type: ignore[arg-type]
    assert await bounded.read_exactly(2) == b"\x00\x05"
    with pytest.raises(IncompleteReadError) as cut:
        await bounded.read_exactly(5)  # the peer closed three bytes in
    assert (cut.value.expected_bytes, cut.value.received_bytes) == (5, 3)
    with pytest.raises(IncompleteReadError) as clean:
        await bounded.read_exactly(2)
    assert clean.value.is_clean_close  # closed between messages: Yamux ends quietly


class Unsealed:
    """The part of a SecureSession that _SecuredConn reads through: its Noise decryption,
    here the identity, counting the messages it opens."""

    is_initiator = False

    def __init__(self) -> None:
        self.opened: list[int] = []
        self.conn = self

    def decrypt(self, data: bytes) -> bytes:
        self.opened.append(len(data))
        return data


async def test_secured_reads_hand_out_each_message_whole_or_in_slices() -> None:
    messages = [os.urandom(12 + 65_507), b"short", os.urandom(40)]
    wire = b"".join(len(m).to_bytes(2, "big") + m for m in messages)
    inner = Unsealed()
    conn = _SecuredConn(
        inner,  # type: ignore[arg-type]
        stall_timeout=5,
        raw=_BoundedReads(RecordingConnection(wire)),  # type: ignore[arg-type]
    )
    header = await conn.read(12)  # Yamux: a header, then the body from the same message
    body = await conn.read(65_507)
    assert header + body == messages[0]
    assert await conn.read(100) == b"short"  # a whole message when it fits
    assert await conn.read(None) == messages[2]
    assert inner.opened == [len(m) for m in messages]  # each message decrypted once
    with pytest.raises(IncompleteReadError):
        await conn.read(12)


async def test_idle_handler_is_cancelled_and_its_stream_reset(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with hosts(tmp_path, 2) as (server, client):
            finished = trio.Event()

            async def waits_forever(stream: Stream, peer: str) -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    finished.set()

            server.set_handler(SINK, waits_forever, idle_timeout=0.5)
            stream = await client.open_stream(server.peer_id, server.addrs, SINK)
            with trio.fail_after(3):
                await finished.wait()
            await ends_promptly(stream)
            await stream.aclose()
            await round_trip(client, server)


# -- Fault 4: stalled readers and writers -----------------------------------------------------


async def stalled_sink(stream: Stream, peer: str) -> None:
    await trio.sleep_forever()  # never reads


async def test_writer_to_a_stalled_reader_fails_within_our_deadline(tmp_path: Path) -> None:
    """Stock Yamux fails the writer after a fixed 5 s; ours after the idle timeout we chose."""
    with trio.fail_after(30):
        async with hosts(tmp_path, 2, idle_timeout=1.0) as (server, client):
            server.set_handler(SINK, stalled_sink, idle_timeout=30)
            stream = await client.open_stream(server.peer_id, server.addrs, SINK)
            start = trio.current_time()
            with pytest.raises(trio.BrokenResourceError, match="took no data"):
                await stream.send_all(bytes(32 * MiB))
            assert trio.current_time() - start < 3.0
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"more")
            await stream.aclose()
            await round_trip(client, server)  # the connection is still good


async def test_writer_waits_out_a_reader_pausing_within_the_deadline(tmp_path: Path) -> None:
    """Stock Yamux resets a writer whose reader pauses for 5 s, whatever the caller wants."""
    with trio.fail_after(40):
        async with hosts(tmp_path, 2, idle_timeout=15.0) as (server, client):

            async def slow_sink(stream: Stream, peer: str) -> None:
                await trio.sleep(6)
                await count_upload(stream, peer)

            server.set_handler(SINK, slow_sink)
            stream = await client.open_stream(server.peer_id, server.addrs, SINK)
            payload = os.urandom(12 * MiB)
            start = trio.current_time()
            await stream.send_all(len(payload).to_bytes(8, "big") + payload)
            reply = await receive_to_end(stream)
            assert trio.current_time() - start > 5.5  # the writer really did wait
            assert reply == hashlib.sha256(payload).digest() + client.peer_id.encode()
            await stream.aclose()


async def blocked_reader_error(stream: Stream, close: Callable[[], Any]) -> type[Exception]:
    """What a task blocked in receive_some gets when another task runs `close`."""
    outcome: list[type[Exception]] = []

    async def read() -> None:
        try:
            await stream.receive_some(10)
        except Exception as exc:
            outcome.append(type(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.sleep(0.2)
        await close()
    [error] = outcome
    return error


async def test_reset_or_close_wakes_a_reader_blocked_on_the_same_stream(tmp_path: Path) -> None:
    """Stock py-libp2p leaves the reader blocked forever."""
    with trio.fail_after(20):
        async with hosts(tmp_path, 2) as (server, client):
            server.set_handler(SINK, stalled_sink)
            stream = await client.open_stream(server.peer_id, server.addrs, SINK)
            assert isinstance(stream, Libp2pStream)
            assert await blocked_reader_error(stream, stream.reset) is trio.BrokenResourceError
            stream = await client.open_stream(server.peer_id, server.addrs, SINK)
            assert await blocked_reader_error(stream, stream.aclose) is trio.ClosedResourceError
            await round_trip(client, server)


async def test_stalled_transport_write_is_bounded_and_closes_the_connection() -> None:
    """A peer that stops reading its socket wedged the stock writer (and Yamux) forever."""

    class Wedged:
        is_initiator = True
        closed = False

        async def write(self, data: bytes) -> None:
            await trio.sleep_forever()

        async def close(self) -> None:
            self.closed = True

    with trio.fail_after(10):
        inner = Wedged()
        conn = _SecuredConn(inner, stall_timeout=0.5)  # type: ignore[arg-type]
        start = trio.current_time()
        with pytest.raises(ConnectionClosedError):
            await conn.write(b"frame")
        assert 0.5 <= trio.current_time() - start < 2.0
        assert inner.closed


async def test_cancelled_transport_write_still_writes_the_whole_frame() -> None:
    """Stock Noise burns a nonce (or leaves half a frame) when a write is cancelled."""

    class Slow:
        is_initiator = True
        written = b""

        async def write(self, data: bytes) -> None:
            await trio.sleep(0.3)
            self.written += data

        async def close(self) -> None:
            pass

    with trio.fail_after(10):
        inner = Slow()
        conn = _SecuredConn(inner, stall_timeout=5)  # type: ignore[arg-type]
        with trio.move_on_after(0.05):
            await conn.write(b"whole frame")
        assert inner.written == b"whole frame"
