"""The tunnel `/pyrgos/rpc/1.0.0` over a Stream (DESIGN §8): a pipelined server and client.

Messages are those of protocols/rpc.py. The server answers up to `max_concurrent` calls at once,
in whatever order they finish; the client keeps any number of calls in flight on one stream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import trio

from node.net._budget import ByteBudget
from node.net._framed import DEFAULT_TIMEOUT, Framed, log_stream_end
from node.net._stream import Stream
from protocols import rpc
from protocols.cbor import CBORValue
from protocols.errors import MalformedInput, PyrgosError, TooLarge, Unavailable

log = logging.getLogger(__name__)

Dispatch = Callable[[str, dict[str, Any], bytes], Awaitable[Any]]
MAX_CONCURRENT_CALLS: Final = 8  # per stream; with the frame cap, bounds a stream's memory


async def serve_rpc(
    stream: Stream,
    peer_id: str,
    dispatch: Dispatch,
    *,
    read_timeout: float = DEFAULT_TIMEOUT,
    max_concurrent: int = MAX_CONCURRENT_CALLS,
    budget: ByteBudget | None = None,
) -> None:
    """Answer the calls `peer_id` sends on `stream` until it ends the stream, then close it.

    `peer_id` is the Noise-authenticated peer id (text); `dispatch` gets it UTF-8 encoded as the
    requester, the form a read auth binds. A PyrgosError from dispatch becomes an error reply
    with its code and message; any other exception is logged and answered 'internal' with no
    details. Garbage, an oversized frame, a stall or a request without an id end the stream
    with a logged error; nothing the peer does makes this raise. The stream closes after
    `read_timeout` seconds without a request. A large request is held against `budget`
    (shared by every stream of the node) from its first bytes until it is answered; one that
    does not fit ends its stream (Unavailable), so no crowd of peers can grow the node's memory.
    """
    framed = Framed(
        stream, rpc.MAX_FRAME, read_timeout, max_items=rpc.MAX_REQUEST_ITEMS, budget=budget
    )
    requester = peer_id.encode()
    slots = trio.Semaphore(max_concurrent)
    failures: list[PyrgosError] = []

    def stop(exc: PyrgosError) -> None:
        failures.append(exc)
        nursery.cancel_scope.cancel()

    async def answer(message: CBORValue, held: int) -> None:
        try:
            with framed.working():
                reply = await _reply(message, dispatch, requester)
                try:
                    await framed.send(reply)
                except PyrgosError:
                    raise
                except Exception as exc:  # encoding the result failed; nothing was sent
                    log.exception("an rpc result CBOR cannot carry")
                    await framed.send(rpc.error_reply(reply["id"], exc))
        except PyrgosError as exc:  # the stream failed, or the request had no usable id
            stop(exc)
        finally:
            if budget is not None:
                budget.give(held)
            slots.release()

    try:
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    await slots.acquire()  # stop reading while max_concurrent calls run
                    message = await framed.receive()
                    if message is None:
                        break
                    nursery.start_soon(answer, message, framed.take_held())
            except PyrgosError as exc:
                stop(exc)
    finally:
        await framed.aclose()
    if failures:
        log_stream_end("rpc", peer_id, failures[0])


async def _reply(message: CBORValue, dispatch: Dispatch, requester: bytes) -> CBORValue:
    """The reply to one request. Raises MalformedInput only for a request with no usable id."""
    try:
        request = rpc.parse_request(message)
    except (MalformedInput, TooLarge) as exc:
        call_id = rpc.request_id(message)
        if call_id is None:
            raise
        return rpc.error_reply(call_id, exc)
    try:
        result = await dispatch(request.method, request.args, requester)
    except PyrgosError as exc:
        return rpc.error_reply(request.id, exc)
    except Exception as exc:
        log.exception("internal error in rpc method %s", request.method)
        return rpc.error_reply(request.id, exc)
    return rpc.result_reply(request.id, result)


@dataclass(eq=False)
class _Call:
    reply: rpc.Reply | None = None
    wake: trio.Event = field(default_factory=trio.Event)


class RpcClient:
    """Calls over one stream, pipelined: any number in flight, replies matched by id.

    There is no background task: whichever waiting caller holds the reader role reads frames
    and hands each reply to its caller; when its own reply arrives it passes the role on. A
    garbage or unexpected reply, a stall of `read_timeout` seconds while calls are waiting, or
    the peer ending the stream fails every call in flight (Unavailable, MalformedInput) and
    the client; open a new stream then.
    """

    def __init__(
        self,
        stream: Stream,
        *,
        read_timeout: float = DEFAULT_TIMEOUT,
        max_frame: int = rpc.MAX_FRAME,
    ) -> None:
        self._framed = Framed(stream, max_frame, read_timeout)
        self._next_id = 0
        self._calls: dict[int, _Call] = {}
        self._abandoned: set[int] = set()  # sent, then the caller gave up: a reply may come
        self._reading = False
        self._failure: PyrgosError | None = None

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def call(self, method: str, args: dict[str, Any]) -> Any:
        """Send one call and wait for its reply: the result, or the server's typed error."""
        self._check()
        call_id = self._next_id
        self._next_id += 1
        message = rpc.request(call_id, method, args)
        slot = _Call()
        self._calls[call_id] = slot
        sent = False
        try:
            # A caller that gives up mid-frame would leave the stream out of step for every
            # other caller; the write deadline bounds how long this shield can hold.
            with trio.CancelScope(shield=True):
                await self._framed.send(message)
            sent = True
            await self._await_reply(slot)
            assert slot.reply is not None
            return slot.reply.unwrap()
        finally:
            del self._calls[call_id]
            if sent and slot.reply is None and self._failure is None:
                self._abandoned.add(call_id)

    async def aclose(self) -> None:
        self._fail(Unavailable("the rpc client is closed"))
        await self._framed.aclose()

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _await_reply(self, slot: _Call) -> None:
        while slot.reply is None:
            self._check()
            if self._reading:
                slot.wake = trio.Event()
                await slot.wake.wait()  # set by our reply, a failure, or the role passing to us
                continue
            self._reading = True
            try:
                while slot.reply is None:
                    await self._read_one()
            except PyrgosError as exc:
                self._fail(exc)
                raise
            finally:
                self._reading = False
                self._pass_reader_role()

    async def _read_one(self) -> None:
        message = await self._framed.receive()
        if message is None:
            raise Unavailable("the peer ended the rpc stream with calls in flight")
        reply = rpc.parse_reply(message)
        slot = self._calls.get(reply.id)
        if slot is not None:
            slot.reply = reply
            slot.wake.set()
        elif reply.id in self._abandoned:
            self._abandoned.discard(reply.id)
        else:
            raise MalformedInput(f"the peer replied to call {reply.id}, which was never made")

    def _pass_reader_role(self) -> None:
        for slot in self._calls.values():
            if slot.reply is None:
                slot.wake.set()
                return

    def _check(self) -> None:
        if self._failure is not None:
            raise type(self._failure)(self._failure.message)

    def _fail(self, error: PyrgosError) -> None:
        if self._failure is None:
            self._failure = error
        for slot in self._calls.values():
            slot.wake.set()
