"""The node's libp2p host: TCP, Noise only, Yamux only, one connection per peer.

No peer can stop it: every stream handler is guarded and runs under an idle deadline, and every
correction to py-libp2p 0.8.1 lives in this module (`_Swarm`, `_Upgrader`, `_BoundedReads`,
`_SecuredConn`, `Libp2pStream`), each naming the fault it answers so it can go once upstream is
fixed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import trio
from libp2p.abc import INetStream, IRawConnection, ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, PrivateKey, PublicKey
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import StreamHandlerFn, TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.host.basic_host import BasicHost
from libp2p.identity_utils import load_identity, save_identity
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.metrics.swarm import SwarmEvent
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.peer.peerstore import PeerStore
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.transport.tcp.tcp import TCP
from libp2p.transport.upgrader import TransportUpgrader
from multiaddr import Multiaddr

from node.net._stream import WRITE_UNIT, Handler, Stream
from protocols.errors import MalformedInput, PyrgosError, Unavailable

log = logging.getLogger(__name__)

# py-libp2p logs every peer that drops or misbehaves, often as multi-line blocks, and with no
# handler configured Python prints its warnings to stderr. The events that matter are logged
# here, one line each; LIBP2P_DEBUG (read by py-libp2p at import) still turns its own logs on.
if not logging.getLogger("libp2p").handlers:
    logging.getLogger("libp2p").addHandler(logging.NullHandler())

# py-libp2p's Yamux by default grants the sender more credit after every read, however small:
# a Yamux frame and a Noise seal per read, which at full speed is most of what a reader does.
# Off, credit goes back in batches of half the window, as go-yamux does, and bulk transfers
# run about a third faster. Its own knob, read at each read; an operator's setting wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

DEFAULT_IDLE_TIMEOUT: Final = 60.0  # seconds a stream may make no progress before it is reset
DEFAULT_DIAL_TIMEOUT: Final = 10.0  # seconds to connect to a peer and agree on a protocol
CLOSE_TIMEOUT: Final = 1.0  # a FIN or RST is one small frame; a peer that blocks it is dropped
SHUTDOWN_TIMEOUT: Final = 5.0
ADDR_TTL: Final = 600  # seconds the peerstore keeps addresses a caller handed us
# Waiting for Yamux send credit: short sleeps at first so a fast reader costs no latency, then
# capped so a stalled one costs ~20 wake-ups a second.
CREDIT_POLL_FIRST: Final = 0.0005
CREDIT_POLL_MAX: Final = 0.05
UNBOUNDED: Final = 1 << 62
MAX_RAW_READ: Final = 256 * 1024  # bytes one read asks the socket for
NOISE_LENGTH_BYTES: Final = 2  # each Noise transport message: a 2-byte length, then the body


# -- Faults in py-libp2p 0.8.1 and their corrections ------------------------------------------


class _Swarm(Swarm):
    """The stock Swarm, changed in three ways.

    1. Inbound slots leak. `Swarm._handle_inbound_connection` takes a slot of
       `_inbound_limiter` (max_connections - min_connections = 250) and holds it for as long as
       `_do_handle_inbound_connection` runs. That method upgrades the connection, which hands
       the connection's own tasks to the swarm's service manager, and then parks on
       `self.manager.wait_finished()`: it waits for the *swarm* to stop, not for the connection
       to close. So every accepted connection pins its slot (and trio's per-connection
       `_run_handler` task) until the node shuts down, and inbound connection 251 is refused,
       forever. Ours waits for the connection's own `event_closed`, so the slot is held
       exactly as long as the connection lives.
    2. A stream handler's exception kills the host: handlers run inside tasks of the swarm's
       service manager, and an exception there cancels the whole swarm. Every handler the host
       installs (protocol negotiation, identify, ping, ours) is wrapped so that nothing escapes.
    3. Not a fault but a policy we do not want: the stock auto-connector redials, every 10 s
       while the node has fewer than 50 connections, every peer in the peerstore that has an
       address. A pyrgos node connects to the nodes it needs, when it needs them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.auto_connector = _NoAutoConnect(self)

    async def _do_handle_inbound_connection(
        self, read_write_closer: ReadWriteCloser, maddr: Multiaddr, failure_event: SwarmEvent
    ) -> None:
        """Upgrade one inbound TCP connection, then wait for *it* to close (see fault 1)."""
        remote = self._build_remote_multiaddr(read_write_closer)
        if remote is not None and not await self.connection_gate.is_allowed(remote):
            with contextlib.suppress(Exception):
                await read_write_closer.close()
            return
        raw_conn = RawConnection(read_write_closer, False)
        try:
            muxed_conn = await self.upgrade_inbound_raw_conn(raw_conn, maddr)
        except Exception as exc:  # refused or failed upgrade: the peer's problem, not ours
            log.debug("inbound connection from %s not accepted: %s", remote, _describe(exc))
            with contextlib.suppress(Exception):
                await raw_conn.close()
            return
        closed = getattr(muxed_conn, "event_closed", None)  # Yamux, the only muxer we offer
        if isinstance(closed, trio.Event):
            await closed.wait()

    def set_stream_handler(self, stream_handler: StreamHandlerFn) -> None:
        """Install the host's per-stream entry point, guarded (see fault 2)."""

        async def guarded(net_stream: INetStream) -> None:
            try:
                await stream_handler(net_stream)
            except Exception as exc:
                log.debug("stream from %s dropped: %s", _remote_peer(net_stream), _describe(exc))
                await _reset_quietly(net_stream)

        super().set_stream_handler(guarded)


class _NoAutoConnect(AutoConnector):
    """An auto-connector that never dials (see `_Swarm`, item 3)."""

    async def run_background_task(self, nursery: trio.Nursery) -> None:
        return

    async def maybe_connect(self) -> None:
        return


class _Upgrader(TransportUpgrader):
    """The stock upgrader, with every TCP connection read through `_BoundedReads` and every
    secured connection wrapped in `_SecuredConn`."""

    def __init__(self, *args: Any, stall_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stall_timeout = stall_timeout

    async def upgrade_security(
        self, raw_conn: IRawConnection, is_initiator: bool, peer_id: ID | None = None
    ) -> ISecureConn:
        bounded = _BoundedReads(raw_conn)
        secured = await super().upgrade_security(bounded, is_initiator, peer_id)
        return _SecuredConn(secured, self._stall_timeout, bounded)


class _PassThrough:
    """What the connection wrappers below hand to the connection they wrap, unchanged."""

    _inner: IRawConnection | ISecureConn

    async def close(self) -> None:
        await self._inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._inner.get_remote_address()

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self._inner.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self._inner.get_connection_type()


class _Held:
    """Bytes received and not yet read, handed out in slices (one copy each)."""

    def __init__(self) -> None:
        self._view = memoryview(b"")

    def __len__(self) -> int:
        return len(self._view)

    def hold(self, data: bytes) -> None:
        self._view = memoryview(data)

    def take(self, n: int) -> bytes:
        piece = bytes(self._view[:n])
        self._view = self._view[n:]
        return piece


class _BoundedReads(_PassThrough, IRawConnection):
    """A TCP connection whose reads ask the socket for at most MAX_RAW_READ bytes, and serve
    the small reads that follow from what one socket read brought.

    Fault: multistream-select reads a varint length from the peer, unchecked, and asks the
    socket for that many bytes in one read; trio allocates a receive buffer of that size,
    up to exabytes, before the peer sends anything more. A peer that opens with garbage made
    the node allocate (and with Python's debug allocator, fill) gigabytes per read. Nothing
    legitimate reads more at once: a Noise message is at most 65,537 bytes with its length.
    Not a fault but a cost: Noise reads each message as a 2-byte length and then a body, two
    socket reads per 64 KiB; one read of up to 256 KiB now serves several messages.
    """

    def __init__(self, inner: IRawConnection) -> None:
        self._inner = inner
        self.is_initiator = inner.is_initiator
        self._held = _Held()  # received, not yet read: Noise reads a length, then a body

    async def read(self, n: int | None = None) -> bytes:
        wanted = MAX_RAW_READ if n is None else min(n, MAX_RAW_READ)
        if not self._held:
            data = await self._inner.read(MAX_RAW_READ)  # one socket read serves several
            if len(data) <= wanted:
                return data
            self._held.hold(data)
        return self._held.take(wanted)

    async def read_exactly(self, n: int) -> bytes:
        """`n` bytes; IncompleteReadError (as py-libp2p raises it) if the peer closes first."""
        if len(self._held) >= n:  # the common case: one copy out of the socket read
            return self._held.take(n)
        data = bytearray()
        while len(data) < n:
            more = await self.read(n - len(data))
            if not more:
                raise IncompleteReadError(
                    f"connection closed: expected {n} bytes, received {len(data)}",
                    expected_bytes=n,
                    received_bytes=len(data),
                )
            data += more
        return bytes(data)

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)


class _SecuredConn(_PassThrough, ISecureConn):
    """A Noise connection whose writes are never torn and never wedge, and whose reads take
    each Noise message straight from the socket's bytes.

    Fault: Noise advances its nonce when it encrypts a frame, before the first checkpoint of
    the socket write. A write cancelled there (any deadline, any reset racing a send) burns a
    nonce, or leaves half a frame on the wire, and every later frame on the connection fails
    to decrypt. And a peer that stops reading its socket blocks the write, and with it Yamux's
    connection-wide write lock, forever. Here each write is shielded from cancellation but
    bounded: after `stall_timeout` seconds without completing, the connection is closed and the
    writer gets ConnectionClosedError, which every stream on it then sees.

    Not a fault but a cost: py-libp2p reads a message through five layers of coroutines and
    copies each byte four times (into a BytesIO, out of it, into read_exactly's bytearray, out
    of that) before Yamux copies it twice more; at full speed that is most of what a receiving
    node does. Given the Noise connection's raw side (`raw`), reads here take the length and
    the body from the socket read that holds them, decrypt with the session's own state (the
    same nonces), and hand out the message, or slices of it, with one copy.
    """

    _inner: ISecureConn

    def __init__(
        self, inner: ISecureConn, stall_timeout: float, raw: _BoundedReads | None = None
    ) -> None:
        self._inner = inner
        self._stall_timeout = stall_timeout
        self.is_initiator = inner.is_initiator
        noise = getattr(inner, "conn", None)  # SecureSession's Noise message reader
        self._decrypt: Callable[[bytes], bytes] | None = getattr(noise, "decrypt", None)
        self._raw = raw if self._decrypt is not None else None
        self._held = _Held()  # the rest of the last message, not yet read

    async def write(self, data: bytes) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._stall_timeout) as stall:
                await self._inner.write(data)
            if stall.cancelled_caught:
                with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(Exception):
                    await self._inner.close()
                raise ConnectionClosedError(
                    f"the peer took no data for {self._stall_timeout:g} s; connection closed"
                )

    async def read(self, n: int | None = None) -> bytes:
        """Up to `n` bytes (None: the rest of a message), as SecureSession.read gives them."""
        if self._raw is None or self._decrypt is None:
            return await self._inner.read(n)
        if not self._held:
            size = int.from_bytes(await self._raw.read_exactly(NOISE_LENGTH_BYTES), "big")
            message = self._decrypt(await self._raw.read_exactly(size))
            if n is None or len(message) <= n:
                return message
            self._held.hold(message)
        return self._held.take(len(self._held) if n is None else n)

    def get_local_peer(self) -> ID:
        return self._inner.get_local_peer()

    def get_local_private_key(self) -> PrivateKey:
        return self._inner.get_local_private_key()

    def get_remote_peer(self) -> ID:
        return self._inner.get_remote_peer()

    def get_remote_public_key(self) -> PublicKey:
        return self._inner.get_remote_public_key()

    def __getattr__(self, name: str) -> Any:
        # Optional attributes the swarm probes with getattr (negotiated protocol and the like).
        return getattr(self._inner, name)


class Libp2pStream:
    """A py-libp2p stream seen through the `Stream` interface, with trio's semantics.

    receive_some returns b"" at the end of the stream (py-libp2p often reports a remote reset
    as an end too: protocols frame their messages). A reset, a broken connection or a peer
    that makes no progress for `idle_timeout` seconds raises trio.BrokenResourceError (a
    stalled read or write is reset, never left hanging); calls after aclose() raise
    trio.ClosedResourceError. Faults corrected here: a reader blocked in py-libp2p's read() is
    not woken when another task resets the stream (here reset() and aclose() wake it); a Yamux
    writer whose reader stalls fails after a fixed 5 s (here each write is cut to the send
    credit the peer has granted, so the only deadline is ours). A send or receive interrupted
    by cancellation may have lost bytes in py-libp2p, so it leaves the stream broken and reset.
    """

    def __init__(self, net_stream: INetStream, idle_timeout: float) -> None:
        self._raw = net_stream
        self._idle = idle_timeout
        self._closed = False
        self._broken: str | None = None
        self._eof = False
        self._receiving: trio.CancelScope | None = None
        self._sending: trio.CancelScope | None = None
        self._keepalive: trio.CancelScope | None = None

    @property
    def remote_peer(self) -> str:
        """The peer's id, as Noise authenticated it."""
        return self._raw.muxed_conn.peer_id.to_base58()

    async def receive_some(self, max_bytes: int) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving is not None:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._check()
        if self._eof:
            await trio.lowlevel.checkpoint()
            return b""
        scope = trio.CancelScope(deadline=trio.current_time() + self._idle)
        self._receiving = scope
        data = b""
        try:
            with scope:
                try:
                    data = await self._raw.read(max_bytes)
                except StreamEOF:
                    self._eof = True
        except Exception as exc:
            await self._break("the stream was reset or its connection lost")
            raise trio.BrokenResourceError(self._broken) from exc
        except BaseException:
            await self._break("a receive was interrupted")
            raise
        finally:
            self._receiving = None
        if scope.cancelled_caught:
            await self._after_cancel("the peer sent nothing")
        if not data:
            self._eof = True
            return b""
        self._progress()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending is not None:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._check()
        view = memoryview(data)
        if not view:
            await trio.lowlevel.checkpoint()
            return
        scope = trio.CancelScope()
        self._sending = scope
        try:
            with scope:
                offset = 0
                while offset < len(view):
                    scope.deadline = trio.current_time() + self._idle
                    credit = await self._send_credit()
                    # No copy here: Yamux only slices the view and prefixes its header. A
                    # frame of at most WRITE_UNIT is sealed whole: Yamux's own 65,536-byte
                    # frames overflow a Noise message and each cost a second, tiny one.
                    chunk = view[offset : offset + min(credit, WRITE_UNIT)]
                    await self._raw.write(chunk)  # type: ignore[arg-type]
                    offset += len(chunk)
                    self._progress()
        except Exception as exc:
            await self._break("the stream was reset or its connection lost")
            raise trio.BrokenResourceError(self._broken) from exc
        except BaseException:
            await self._break("a send was interrupted")
            raise
        finally:
            self._sending = None
        if scope.cancelled_caught:
            await self._after_cancel("the peer took no data")

    async def aclose(self) -> None:
        """Close gracefully (the peer reads to the end, then b""); idempotent."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._wake_waiters()
        if self._broken is None:
            closed = False
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(CLOSE_TIMEOUT),
                contextlib.suppress(Exception),
            ):
                await self._raw.close()
                closed = True
            if not closed:  # the FIN failed or could not be sent in time
                await self._break("the stream could not be closed cleanly")

    async def reset(self) -> None:
        """Abort both directions at once; the peer sees a reset."""
        await self._break("the stream was reset locally")

    def keep_alive(self, scope: trio.CancelScope) -> None:
        """Cancel `scope` once the stream has made no progress for the idle timeout."""
        self._keepalive = scope
        scope.deadline = trio.current_time() + self._idle

    def _progress(self) -> None:
        if self._keepalive is not None:
            self._keepalive.deadline = trio.current_time() + self._idle

    async def _send_credit(self) -> int:
        """Bytes Yamux will send without waiting; waits (under our deadline) for some."""
        muxed = getattr(self._raw, "muxed_stream", None)
        if not isinstance(muxed, YamuxStream):
            return UNBOUNDED  # not Yamux: nothing to work around
        delay = CREDIT_POLL_FIRST
        while muxed.send_window <= 0 and not (muxed.closed or muxed.send_closed):
            await trio.sleep(delay)
            delay = min(delay * 2, CREDIT_POLL_MAX)
        # A closed stream gets one byte of "credit" so that write() raises its own error.
        return max(muxed.send_window, 1)

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    async def _after_cancel(self, stalled: str) -> None:
        """Our own scope was cancelled: by aclose(), by a reset, or by the idle deadline."""
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        if self._broken is None:
            await self._break(f"{stalled} for {self._idle:g} s; the stream was reset")
        raise trio.BrokenResourceError(self._broken)

    def _wake_waiters(self) -> None:
        for scope in (self._receiving, self._sending):
            if scope is not None:
                scope.cancel()

    async def _break(self, reason: str) -> None:
        if self._broken is not None:
            return
        self._broken = reason
        self._wake_waiters()
        await _reset_quietly(self._raw)


# -- The host ---------------------------------------------------------------------------------


class Host:
    """A running libp2p host. Made by `open_host`; valid inside its `async with` block."""

    def __init__(
        self, basic_host: BasicHost, swarm: _Swarm, *, idle_timeout: float, dial_timeout: float
    ) -> None:
        self._host = basic_host
        self._swarm = swarm
        self._idle = idle_timeout
        self._dial_timeout = dial_timeout
        self._dials: dict[ID, trio.Event] = {}
        self.peer_id: str = basic_host.get_id().to_base58()

    @property
    def addrs(self) -> list[str]:
        """Where peers can dial us: full multiaddrs ending in /p2p/<peer id>."""
        return [str(addr) for addr in self._host.get_addrs()]

    def set_handler(
        self, protocol: str, handler: Handler, *, idle_timeout: float | None = None
    ) -> None:
        """Serve `protocol`: `handler(stream, remote_peer_id)` runs once per inbound stream.

        It runs guarded: an exception is logged in one line and the stream reset; a stream with
        no progress for `idle_timeout` seconds (default: the host's) is cancelled and reset; a
        handler that returns has its stream closed. Nothing it does reaches the host.
        """
        idle = self._idle if idle_timeout is None else idle_timeout

        async def serve(net_stream: INetStream) -> None:
            await self._serve(protocol, handler, idle, net_stream)

        self._host.set_stream_handler(TProtocol(protocol), serve)

    async def open_stream(self, peer_id: str, addrs: Sequence[str], protocol: str) -> Stream:
        """A new stream to `peer_id` speaking `protocol`, dialling `addrs` if not connected.

        `addrs` are full multiaddrs (`/ip4/…/tcp/…/p2p/<peer_id>`), tried in order. Raises
        Unavailable when the peer cannot be reached or does not speak `protocol` within the
        dial timeout, MalformedInput for a bad peer id or address.
        """
        pid = _parse_peer_id(peer_id)
        maddrs = [_dial_addr(addr, pid) for addr in addrs]
        with trio.move_on_after(self._dial_timeout):
            await self._connect(pid, maddrs)
            try:
                net_stream = await self._host.new_stream(pid, [TProtocol(protocol)])
            except Exception as exc:
                raise Unavailable(
                    f"node {peer_id} did not open {protocol}: {_describe(exc)}"
                ) from exc
            return Libp2pStream(net_stream, self._idle)
        raise Unavailable(
            f"node {peer_id} did not answer {protocol} within {self._dial_timeout:g} s"
        )

    async def connect(self, addr: str) -> None:
        """Connect to the node at a full multiaddr (`/ip4/…/tcp/…/p2p/ID`)."""
        info = _peer_info(addr)
        maddr = _dial_addr(addr, info.peer_id)
        with trio.move_on_after(self._dial_timeout):
            await self._connect(info.peer_id, [maddr])
            return
        raise Unavailable(f"{addr} did not answer within {self._dial_timeout:g} s")

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to `peer_id` (no error if there is none)."""
        pid = _parse_peer_id(peer_id)
        with trio.move_on_after(self._dial_timeout):
            await self._host.disconnect(pid)

    def is_connected(self, peer_id: str) -> bool:
        return bool(self._swarm.get_connections(_parse_peer_id(peer_id)))

    async def _connect(self, pid: ID, maddrs: list[Multiaddr]) -> None:
        """Connect to `pid` unless connected, trying `maddrs` in order; one dial per peer.

        Not the stock `connect`/`dial_peer`: they try a single TCP address per peer (the first
        the peerstore holds, stale or not) and then refuse the peer for 60 s, so a node that
        restarted or moved would stay unreachable. The given addresses replace the stored ones.
        """
        while (pending := self._dials.get(pid)) is not None:
            await pending.wait()
        if self._swarm.get_connections(pid):
            return
        if not maddrs:
            raise Unavailable(f"no address to dial node {pid.to_base58()}")
        done = self._dials[pid] = trio.Event()
        try:
            peerstore = self._host.get_peerstore()
            peerstore.clear_addrs(pid)
            peerstore.add_addrs(pid, maddrs, ADDR_TTL)
            failures: list[str] = []
            for maddr in maddrs:
                try:
                    await self._swarm.dial_addr(maddr, pid)
                    return
                except Exception as exc:
                    failures.append(f"{maddr}: {_describe(exc)}")
            raise Unavailable(f"cannot reach node {pid.to_base58()}: {'; '.join(failures)}")
        finally:
            del self._dials[pid]
            done.set()

    async def _serve(
        self, protocol: str, handler: Handler, idle: float, net_stream: INetStream
    ) -> None:
        stream = Libp2pStream(net_stream, idle)
        peer = stream.remote_peer
        clean = False
        try:
            with trio.CancelScope() as deadline:
                stream.keep_alive(deadline)
                await handler(stream, peer)
            if deadline.cancelled_caught:
                log.info("%s from %s: no progress for %g s; stream reset", protocol, peer, idle)
            else:
                clean = True
        except Exception as exc:
            # What a peer can cause (bad input, a broken stream) is news; anything else is a bug.
            expected = isinstance(exc, PyrgosError | trio.BrokenResourceError)
            level = logging.INFO if expected else logging.WARNING
            log.log(level, "%s from %s: handler failed: %s", protocol, peer, _describe(exc))
            log.debug("%s handler traceback", protocol, exc_info=exc)
        finally:
            if clean:
                await stream.aclose()
            else:
                await stream.reset()


@contextlib.asynccontextmanager
async def open_host(
    key_file: Path,
    listen: Sequence[Multiaddr],
    *,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    dial_timeout: float = DEFAULT_DIAL_TIMEOUT,
) -> AsyncIterator[Host]:
    """Run a libp2p host with the node key at `key_file` (created, mode 0600, if missing).

    It listens on `listen` (may be empty: dial only) until the block exits; Unavailable if it
    cannot. `idle_timeout` bounds how long any stream may make no progress (handlers, reads and
    writes alike); `dial_timeout` bounds connecting and protocol negotiation in
    `open_stream`/`connect`. An exception raised in the block comes out as itself, not inside
    the exception groups of py-libp2p's nurseries.
    """
    if not (0 < idle_timeout < math.inf and 0 < dial_timeout < math.inf):
        raise ValueError("timeouts must be positive and finite")
    basic_host, swarm = _build_host(_load_or_create_key(key_file), idle_timeout)
    listening = True
    raised: BaseException | None = None
    try:
        async with basic_host.run(listen_addrs=list(listen)):
            try:
                listening = not listen or bool(basic_host.get_addrs())
                if listening:
                    yield Host(
                        basic_host, swarm, idle_timeout=idle_timeout, dial_timeout=dial_timeout
                    )
            except BaseException as exc:
                raised = exc
                raise
            finally:
                # Stock shutdown closes the listeners from a cancelled scope, so the listening
                # socket leaks; close everything here, before the service is cancelled.
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(SHUTDOWN_TIMEOUT),
                    contextlib.suppress(Exception),
                ):
                    await basic_host.close()
    except BaseExceptionGroup as group:
        if raised is not None and group.split(lambda exc: exc is raised)[1] is None:
            raise raised from None
        raise
    if not listening:
        raise Unavailable(f"cannot listen on {', '.join(str(addr) for addr in listen)}")


def _build_host(key_pair: KeyPair, idle_timeout: float) -> tuple[BasicHost, _Swarm]:
    """A BasicHost over `_Swarm`: TCP only, Noise only, Yamux only, one connection per peer."""
    peer_id = ID.from_pubkey(key_pair.public_key)
    peerstore = PeerStore()
    peerstore.add_key_pair(peer_id, key_pair)
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    upgrader = _Upgrader(
        secure_transports_by_protocol={NOISE_PROTOCOL_ID: noise},
        muxer_transports_by_protocol={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        stall_timeout=idle_timeout,
    )
    swarm = _Swarm(
        peer_id,
        peerstore,
        upgrader,
        transports=[TCP()],
        # One connection per peer: the stock default of 3 makes every dial wait a fixed 250 ms.
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    return BasicHost(network=swarm), swarm


def _load_or_create_key(key_file: Path) -> KeyPair:
    """The node key (the format node.home writes), created with mode 0600 if missing."""
    if key_file.exists():
        try:
            return load_identity(key_file)
        except ValueError as exc:
            raise MalformedInput(f"{key_file} is not a libp2p private key") from exc
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pair = create_new_key_pair()
    save_identity(key_pair, key_file)
    key_file.chmod(0o600)
    return key_pair


def _parse_peer_id(text: str) -> ID:
    """A node id: the base58 of a multihash (identity or sha2-256) of its public key."""
    try:
        pid = ID.from_base58(text)
        raw = pid.to_bytes()
        ok = pid.to_base58() == text and len(raw) > 2 and raw[0] in (0x00, 0x12)
        ok = ok and raw[1] == len(raw) - 2
    except Exception:
        ok = False
    if not ok:
        raise MalformedInput(f"not a node id: {text!r}")
    return pid


def _peer_info(addr: str) -> PeerInfo:
    try:
        return info_from_p2p_addr(Multiaddr(addr))
    except Exception as exc:
        raise MalformedInput(
            f"not a full multiaddr: {addr!r} (example: /ip4/192.0.2.1/tcp/4001/p2p/12D3KooW…)"
        ) from exc


def _dial_addr(addr: str, pid: ID) -> Multiaddr:
    info = _peer_info(addr)
    if info.peer_id != pid:
        raise MalformedInput(f"{addr} is not an address of node {pid.to_base58()}")
    if not info.addrs:
        raise MalformedInput(f"{addr} has no transport address before /p2p")
    return info.addrs[0]


def _remote_peer(net_stream: INetStream) -> str:
    """The peer's id for a log line (never for a decision: it may be a placeholder)."""
    try:
        return str(net_stream.muxed_conn.peer_id.to_base58())
    except Exception:
        return "an unknown peer"


async def _reset_quietly(net_stream: INetStream) -> None:
    """Reset, bounded and shielded: cleanup must finish even in a cancelled scope."""
    with (
        trio.CancelScope(shield=True),
        trio.move_on_after(CLOSE_TIMEOUT),
        contextlib.suppress(Exception),
    ):
        await net_stream.reset()


def _describe(exc: BaseException) -> str:
    """One line about an error, safe for logs.

    The messages of our errors and of network errors (which name addresses and protocols) are
    kept; of anything else, only the type: a handler's KeyError may quote user data.
    """
    if isinstance(exc, PyrgosError):
        return f"{type(exc).__name__}: {exc.message}"
    if isinstance(exc, BaseLibp2pError | trio.BrokenResourceError | trio.ClosedResourceError):
        first_line = str(exc).strip().split("\n", 1)[0][:200]
        return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return type(exc).__name__
