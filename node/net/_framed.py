"""CBOR frames over a Stream, with a size cap and a deadline on every read and write.

Whatever the peer does (garbage, an oversized frame, a stall, a reset) surfaces as a typed
PyrgosError; after one the stream is out of step and the caller must close it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

import trio

from node.net._budget import ByteBudget
from node.net._stream import WRITE_UNIT, Stream
from protocols import cbor
from protocols.cbor import CBORValue
from protocols.errors import PyrgosError, Unavailable
from protocols.frames import FrameDecoder, frame_parts

log = logging.getLogger(__name__)

RECEIVE_BYTES: Final = 64 * 1024  # per read: with the frame cap, bounds what one stream holds
DEFAULT_TIMEOUT: Final = 30.0  # seconds a peer may take to deliver a frame or accept one
CLOSE_TIMEOUT: Final = 1.0
COALESCE_BYTES: Final = 256 * 1024  # small frames queued together go out in one write up to this


class Stalled(Unavailable):
    """A peer that stopped part-way through a frame, or stopped taking what we send."""


class Framed:
    """Sends and receives whole CBOR messages over `stream`.

    Deadlines, so that a stalled peer wedges neither a reader nor a writer:
    - a frame must arrive whole within `read_timeout` seconds of its first byte (a slow drip
      does not extend it), else Stalled;
    - between frames the stream may be idle for `idle_timeout` seconds (default: read_timeout;
      math.inf: no limit), counted from the later of the call to `receive` and our last send
      (not while a send is under way, nor while we are `working` on the peer's requests: a
      stream that waits for us is not idle), else Unavailable;
    - `send` must hand its frame to the stream within `write_timeout` (default: read_timeout),
      else Stalled.
    Sends from several tasks are serialised; one task at a time may receive.
    """

    def __init__(
        self,
        stream: Stream,
        max_frame: int,
        read_timeout: float = DEFAULT_TIMEOUT,
        *,
        idle_timeout: float | None = None,
        write_timeout: float | None = None,
        max_items: int = cbor.DEFAULT_MAX_ITEMS,
        budget: ByteBudget | None = None,
    ) -> None:
        self.stream = stream
        self.read_timeout = read_timeout
        self.idle_timeout = read_timeout if idle_timeout is None else idle_timeout
        self.write_timeout = read_timeout if write_timeout is None else write_timeout
        self._decoder = FrameDecoder(max_frame, max_items=max_items)
        self._ready: deque[CBORValue] = deque()
        self._send_lock = trio.Lock()
        self._outbox: deque[list[bytes]] = deque()  # frames (in pieces) awaiting a write
        self._queued = 0  # frames ever handed to `send`
        self._written = 0  # frames ever written (in order)
        self._frame_started: float | None = None  # when the first byte of a partial frame came
        self._idle_scope: trio.CancelScope | None = None  # a receive waiting between frames
        self._sending = False
        self._working = 0  # requests of the peer we are still answering
        self._eof = False
        self._failure: PyrgosError | None = None
        # Large frames are held against `budget` from their first bytes: the frame being
        # read, then the message it became until the caller takes the charge (`take_held`).
        self._budget = budget
        self._held_frame = 0  # taken for the large frame being read
        self._held_ready = 0  # taken for the next message `receive` returns
        self._held_last = 0  # taken for the message `receive` returned last

    async def send(self, value: CBORValue) -> None:
        """Send one message. Stalled if the peer will not take it in time, Unavailable if the
        stream is gone. A value CBOR cannot carry raises before anything is sent.

        Frames that tasks hand in while another send is under way go out together in the next
        write: each write costs the stream a Yamux frame and a Noise seal, so many small
        answers cost little more than one. A block inside a message goes out as a write of
        its own, straight from where it lies: copying a megabyte costs more than a write.
        """
        await self.send_many([value])

    async def send_many(self, values: Sequence[CBORValue]) -> None:
        """Send several messages in order, joined into as few writes as `send` would make."""
        frames = [frame_parts(value) for value in values]
        if not frames:
            return
        self._outbox.extend(frames)
        self._queued += len(frames)
        mine = self._queued
        async with self._send_lock:
            self._check()
            self._sending = True
            self._extend_idle()  # while a frame goes out, its own deadline is the one that runs
            try:
                with trio.fail_after(self.write_timeout):
                    while self._written < mine:  # earlier holders may have written ours
                        await self._write_queued()
            except trio.TooSlowError:
                raise self._fail(
                    Stalled(f"the peer did not accept a frame within {self.write_timeout} s")
                ) from None
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._fail(Unavailable("the stream was closed or reset")) from exc
            except BaseException:
                # Cancelled mid-frame: the peer may hold half a frame, so nothing may follow.
                self._fail(Unavailable("a send on this stream was interrupted"))
                raise
            finally:
                self._sending = False
            self._extend_idle()

    async def _write_queued(self) -> None:
        """Write the frames queued now (see `write_in_units`)."""
        count = len(self._outbox)
        await write_in_units(self.stream, (self._outbox.popleft() for _ in range(count)))
        self._written += count

    async def receive(self) -> CBORValue | None:
        """The next message; None when the peer ended the stream cleanly between frames.

        Raises Stalled or Unavailable past a deadline (see the class) or when the stream is
        reset, TooLarge for a frame over the cap, MalformedInput for anything that is not a
        canonical CBOR frame (including a stream that ends inside one).
        """
        if self._ready:
            return self._pop()
        self._check()
        if self._eof:
            return None
        try:
            with trio.CancelScope() as scope:
                self._set_deadline(scope)
                while not self._ready:
                    # Inside a large frame, ask for all of it: fewer, bigger reads.
                    wanted = max(RECEIVE_BYTES, self._decoder.missing)
                    data = await self.stream.receive_some(wanted)
                    if not data:
                        self._decoder.end()
                        self._eof = True
                        return None
                    messages = self._decoder.feed(data)
                    self._ready.extend(messages)
                    if self._budget is not None:
                        self._charge(self._budget, bool(messages))
                    if not self._decoder.in_frame:
                        self._frame_started = None
                    elif messages or self._frame_started is None:
                        self._frame_started = trio.current_time()
                    elif not messages:
                        continue  # more of the same frame: its deadline stands
                    self._set_deadline(scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._fail(Unavailable("the stream was closed or reset")) from exc
        except PyrgosError as exc:
            raise self._fail(exc) from None
        finally:
            self._idle_scope = None
        if scope.cancelled_caught:
            if self._frame_started is not None:
                stalled = f"the peer stalled inside a frame for {self.read_timeout} s"
                raise self._fail(Stalled(stalled))
            raise self._fail(Unavailable(f"the peer sent nothing for {self.idle_timeout} s"))
        return self._pop()

    def _pop(self) -> CBORValue:
        self._held_last, self._held_ready = self._held_ready, 0
        return self._ready.popleft()

    def _charge(self, budget: ByteBudget, completed: bool) -> None:
        """After a feed: the large frame held so far is the first message it completed (the
        frame in progress always completes first), and a large frame it began is taken
        whole (its declared length) before the rest of it is read."""
        if completed and self._held_frame:
            self._held_ready, self._held_frame = self._held_frame, 0
        if self._decoder.missing and not self._held_frame:
            size = self._decoder.missing + self._decoder.buffered
            budget.take(size)
            self._held_frame = size

    def take_held(self) -> int:
        """The budget held for the message `receive` returned last, now the caller's to give
        back once done with it (0 for a small frame)."""
        held, self._held_last = self._held_last, 0
        return held

    def _set_deadline(self, scope: trio.CancelScope) -> None:
        if self._frame_started is not None:
            self._idle_scope = None
            scope.deadline = self._frame_started + self.read_timeout
        else:
            self._idle_scope = scope
            self._extend_idle()

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Mark the stream busy while we answer the peer: the idle deadline waits."""
        self._working += 1
        self._extend_idle()
        try:
            yield
        finally:
            self._working -= 1
            self._extend_idle()

    def _extend_idle(self) -> None:
        if self._idle_scope is not None:
            idle = math.inf if self._sending or self._working else self.idle_timeout
            self._idle_scope.deadline = trio.current_time() + idle

    async def aclose(self) -> None:
        """Close the stream (idempotent; never raises for a stream already broken)."""
        self._fail(Unavailable("the stream is closed"))
        # Closing is best effort: a reset stream may raise, a wedged one may not return.
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(CLOSE_TIMEOUT),
            contextlib.suppress(Exception),
        ):
            await self.stream.aclose()

    def _check(self) -> None:
        if self._failure is not None:  # a fresh error each time: no traceback piles up
            raise type(self._failure)(self._failure.message)

    def _fail(self, error: PyrgosError) -> PyrgosError:
        if self._failure is None:
            self._failure = error
            if self._budget is not None:  # what no caller took is given back now
                self._budget.give(self._held_frame + self._held_ready + self._held_last)
                self._held_frame = self._held_ready = self._held_last = 0
        return error


async def write_in_units(stream: Stream, frames: Iterable[Sequence[bytes]]) -> None:
    """Write `frames`, each pieces that alternate small bytes and blocks (as `frame_parts`
    splits a frame), in whole WRITE_UNITs where it costs only short copies.

    Small pieces are joined (up to COALESCE_BYTES a write). A block goes out from where it
    lies, except that its first bytes complete the unit the small bytes before it began and its
    last partial unit is joined to the small bytes after it: a run of block answers then costs
    the stream as many Yamux frames and Noise seals as a raw transfer.
    """
    pending: list[bytes] = []
    size = 0
    for frame in frames:
        for index, piece in enumerate(frame):
            if index % 2 == 0:  # small bytes
                pending.append(piece)
                size += len(piece)
                if size >= COALESCE_BYTES:
                    await stream.send_all(b"".join(pending))
                    pending, size = [], 0
                continue
            lead = min(-size % WRITE_UNIT, len(piece))
            if size + lead:
                await stream.send_all(b"".join([*pending, piece[:lead]]))
            whole = lead + (len(piece) - lead) // WRITE_UNIT * WRITE_UNIT
            if whole > lead:
                await stream.send_all(memoryview(piece)[lead:whole])
            pending = [piece[whole:]]
            size = len(pending[0])
    if size:
        await stream.send_all(pending[0] if len(pending) == 1 else b"".join(pending))


def log_stream_end(protocol: str, peer: str, error: PyrgosError) -> None:
    """A peer that went quiet or away is news; one that broke the protocol is an error."""
    if type(error) is Unavailable:
        log.info("%s stream with %s ended: %s", protocol, peer, error.message)
    else:
        log.error("%s stream with %s closed: %s (%s)", protocol, peer, error.message, error.code)
