"""The block exchange `/pyrgos/blocks/1.0.0` over Streams (DESIGN §8): serving and fetching.

The rules and message formats are in protocols/blockexchange.py; this module moves its messages
over streams, with a deadline on every read and write and bounded memory on both sides.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Final

import trio

from node.net._framed import DEFAULT_TIMEOUT, Framed, log_stream_end
from node.net._stream import Stream
from protocols.bats import ReadAuth
from protocols.blockexchange import (
    DEFAULT_WINDOW,
    MAX_ANSWER_FRAME,
    MAX_ENTRIES,
    MAX_QUEUED,
    MAX_REQUEST_FRAME,
    AuthFor,
    Fetched,
    Requester,
    Responder,
    Want,
    answer_for,
)
from protocols.cid import CID
from protocols.errors import Denied, NotFound, PyrgosError, Unavailable

log = logging.getLogger(__name__)

GetBlock = Callable[[CID, ReadAuth | None, bytes], Awaitable[bytes]]
ANSWER_BATCH_BYTES: Final = 256 * 1024  # block bytes a server looks up before it sends
ANSWER_BATCH_SECONDS: Final = 0.005  # nor does a slow lookup hold finished answers back longer
ANSWERING_TASKS: Final = 2
READY_RESULTS: Final = 4  # results a fetch holds for a slow consumer before it stops reading
# CBOR items per message, refused before decoding: a want is about 10 items (a cancel 2) and
# a request holds at most MAX_ENTRIES of them; an answer is a map of at most 3 entries.
REQUEST_ITEMS: Final = 16 * MAX_ENTRIES
ANSWER_ITEMS: Final = 16


async def serve_blocks(
    stream: Stream,
    peer_id: str,
    get_block: GetBlock,
    *,
    read_timeout: float = DEFAULT_TIMEOUT,
    max_queued: int = MAX_QUEUED,
) -> None:
    """Answer the wants `peer_id` sends on `stream` until it ends the stream, then close it.

    `get_block(cid, auth, requester)` is the node's checked read (NodeService.get_block), with
    the requester the Noise-authenticated peer id UTF-8 encoded. NotFound is answered DontHave,
    Denied is answered Denied; any other failure is logged and answered DontHave. Garbage, an
    oversized frame, a queue overflow or a stall end the stream with a logged error; nothing
    the peer does makes this raise.

    Answers go out in batches: a task looks up queued wants until their answers reach
    ANSWER_BATCH_BYTES, ANSWER_BATCH_SECONDS pass or the queue is empty, then sends them
    together. Per block that leaves a lookup and an encoding; the task switches, the send
    lock and the Yamux and Noise work are paid once per batch. Two tasks take turns, so one
    looks up while the other's batch is being written.
    """
    framed = Framed(stream, MAX_REQUEST_FRAME, read_timeout, max_items=REQUEST_ITEMS)
    responder = Responder(max_queued)
    requester = peer_id.encode()
    queued = trio.Event()
    reading = True
    failures: list[PyrgosError] = []

    def stop(exc: PyrgosError) -> None:
        failures.append(exc)
        nursery.cancel_scope.cancel()

    async def answer() -> None:
        nonlocal queued
        try:
            while True:
                want = responder.next_want()
                if want is None:
                    if not reading:
                        return
                    await queued.wait()
                    queued = trio.Event()
                    continue
                with framed.working():
                    answers, size = [], 0
                    until = trio.current_time() + ANSWER_BATCH_SECONDS
                    while want is not None:
                        cid, auth = want
                        outcome = await _outcome(get_block, cid, auth, requester)
                        answers.append(answer_for(cid, outcome))
                        size += len(outcome) if isinstance(outcome, bytes) else 0
                        full = size >= ANSWER_BATCH_BYTES or trio.current_time() >= until
                        want = None if full else responder.next_want()
                    await framed.send_many(answers)
        except PyrgosError as exc:  # the stream failed
            stop(exc)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(ANSWERING_TASKS):
                nursery.start_soon(answer)
            try:
                while (message := await framed.receive()) is not None:
                    responder.receive(message)
                    queued.set()
            except PyrgosError as exc:
                stop(exc)
            # End of stream: answer what is queued (the peer may only have closed its side).
            reading = False
            queued.set()
    finally:
        await framed.aclose()
    if failures:
        log_stream_end("blocks", peer_id, failures[0])


async def _outcome(
    get_block: GetBlock, cid: CID, auth: ReadAuth | None, requester: bytes
) -> bytes | PyrgosError:
    try:
        return await get_block(cid, auth, requester)
    except (NotFound, Denied) as exc:
        return exc
    except PyrgosError as exc:
        log.warning("block %s not served: %s", cid, exc.message)
        return exc
    except Exception:
        log.exception("internal error reading block %s", cid)
        return NotFound("internal error")


class BlockFetch:
    """A running fetch: iterate it for results (in the order they settle), `cancel` what is no
    longer needed. Every want not cancelled yields exactly one Fetched: the verified block, or
    the error (NotFound, Denied, Corrupted, Unavailable) once no source is left to try."""

    def __init__(self, requester: Requester, changed: trio.lowlevel.ParkingLot) -> None:
        self._requester = requester
        self._changed = changed

    def cancel(self, cid: CID) -> None:
        """Stop fetching `cid` (a cancel goes to the source holding it); no result follows."""
        self._requester.cancel(cid)
        self._changed.unpark_all()

    @property
    def strays(self) -> int:
        """Answers received for CIDs no longer wanted (cancelled while in flight)."""
        return self._requester.strays

    def __aiter__(self) -> BlockFetch:
        return self

    async def __anext__(self) -> Fetched:
        while True:
            result = self._requester.next_result()
            if result is not None:
                self._changed.unpark_all()  # room for readers that wait on a slow consumer
                return result
            if self._requester.finished:
                raise StopAsyncIteration
            await self._changed.park()


@contextlib.asynccontextmanager
async def open_block_fetch(
    streams: Sequence[Stream],
    wants: Iterable[Want],
    *,
    window: int = DEFAULT_WINDOW,
    authorize: AuthFor | None = None,
    read_timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[BlockFetch]:
    """Fetch `wants` from the sources `streams` (one stream per node), pipelined.

    Up to `window` wants are in flight at each source; each want goes to the source with the
    most room and, on DontHave, Denied or a source that fails (garbage, a corrupt block, a
    stall, a disconnect), to another source that has not refused it. A read auth is bound to
    the node that serves it: `authorize(i, cid)` gives the auth for source i (default: the
    want's own). `wants` is read lazily. Memory: per source one frame buffer (≤ 1 MiB + 9 KiB),
    plus READY_RESULTS results a slow consumer has not taken. The fetch owns the streams and
    closes them on exit, which also drops whatever is still in flight.
    """
    requester = Requester(wants, sources=len(streams), window=window, authorize=authorize)
    changed = trio.lowlevel.ParkingLot()
    framed = [
        Framed(stream, MAX_ANSWER_FRAME, read_timeout, max_items=ANSWER_ITEMS) for stream in streams
    ]

    async def run_source(index: int) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_wants, requester, index, framed[index], changed)
                nursery.start_soon(_read_answers, requester, index, framed[index], changed)
        except* PyrgosError as group:
            error = group.exceptions[0]
            assert isinstance(error, PyrgosError)
            log_stream_end("blocks", f"source {index}", error)
            requester.source_failed(index, error)
            changed.unpark_all()
        finally:
            await framed[index].aclose()

    body_error: Exception | None = None
    try:
        async with trio.open_nursery() as nursery:
            for index in range(len(streams)):
                nursery.start_soon(run_source, index)
            try:
                yield BlockFetch(requester, changed)
            except Exception as exc:  # the caller's own error: not to be wrapped in a group
                body_error = exc
            nursery.cancel_scope.cancel()
    finally:
        for each in framed:
            await each.aclose()
    if body_error is not None:
        raise body_error


async def _send_wants(
    requester: Requester, index: int, framed: Framed, changed: trio.lowlevel.ParkingLot
) -> None:
    while True:
        while not requester.has_outbound(index):
            await changed.park()
        for message in requester.outbound(index):
            await framed.send(message)


async def _read_answers(
    requester: Requester, index: int, framed: Framed, changed: trio.lowlevel.ParkingLot
) -> None:
    while True:
        while not requester.in_flight(index) or requester.ready >= READY_RESULTS:
            await changed.park()
        message = await framed.receive()
        if message is None:
            raise Unavailable("the source ended the stream with wants in flight")
        requester.receive(index, message)
        changed.unpark_all()


async def fetch_blocks(
    streams: Sequence[Stream],
    wants: Iterable[Want],
    *,
    window: int = DEFAULT_WINDOW,
    authorize: AuthFor | None = None,
    read_timeout: float = DEFAULT_TIMEOUT,
) -> dict[CID, bytes]:
    """Every wanted block, verified; raises the first want's error if any fails (the rest are
    dropped). Holds every block in memory: for large sets, iterate `open_block_fetch`."""
    blocks: dict[CID, bytes] = {}
    async with open_block_fetch(
        streams, wants, window=window, authorize=authorize, read_timeout=read_timeout
    ) as fetch:
        async for result in fetch:
            if result.error is not None:
                raise result.error
            assert result.data is not None
            blocks[result.cid] = result.data
    return blocks
