"""The node's HTTP API: the method table over HTTP with CBOR bodies, plus block GET by CID.

`POST /api/v1/call/<method>` takes a CBOR map of arguments and answers the CBOR result (200) or
`{"error": code, "message": text}` with a 4xx/5xx status. `GET /api/v1/block/<cid>?auth=...`
answers the block's bytes. What a stranger can make the server hold is bounded: connections,
body bytes across requests, a body's size per method and the time it may take to arrive.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import h11
import trio
from hypercorn.config import Config
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from node.net._budget import ByteBudget
from node.server import NodeService
from protocols import bats, cbor, rpc
from protocols.cid import CID
from protocols.errors import MalformedInput, NotFound, PyrgosError, TooLarge, Unavailable

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"
MAX_BODY_BYTES: Final = rpc.MAX_CALL_BYTES  # the largest body of any method (a block put)
CBOR_TYPE: Final = "application/cbor"
MiB: Final = 1024 * 1024
# A connection reads up to RECEIVE_BYTES at once, and hypercorn queues up to its
# max_app_queue_size (10) reads for the app: what one connection can hold of a body the app
# does not read (2.5 MiB), for as long as the answer takes; a request whose body is not read
# is answered with the connection's close.
RECEIVE_BYTES: Final = 256 * 1024
CLOSE_GRACE: Final = 1.0  # seconds a connection's task may take to wind up once its socket closed


@dataclass(frozen=True)
class ApiLimits:
    """What the API server holds for its callers at most; the defaults suit a node on the
    open internet with clients that send puts of 2 MiB, four at a time."""

    max_connections: int = 256  # open at once; more are answered 503 and closed at once
    max_buffered_bytes: int = 64 * MiB  # request bodies held across all requests at once
    body_timeout: float = 60.0  # seconds a body may take to arrive whole (9 MiB: 150 KiB/s)
    idle_timeout: float = 75.0  # seconds a connection may wait between requests, or send a head


def _error_body(exc: PyrgosError) -> bytes:
    return cbor.encode({"error": exc.code, "message": exc.message})


def _error(exc: PyrgosError, status: int | None = None, *, close: bool = False) -> Response:
    """An error answer; `close` ends the connection after it, for a request whose body was not
    read whole: the client may still be sending it, and would wait for the node to read on."""
    headers = {"connection": "close"} if close else None
    return Response(
        _error_body(exc),
        status_code=status or exc.http_status,
        media_type=CBOR_TYPE,
        headers=headers,
    )


# A 500 says nothing about the failure: the details go to the log only.
_INTERNAL_ERROR: Final = cbor.encode({"error": "internal", "message": "internal error"})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong verbs answer in the API's CBOR error form too; a 405 names
    the verbs allowed (`Allow`). The connection closes after it: the request's body, if any,
    is never read."""
    status = exc.status_code if isinstance(exc, HTTPException) else 400
    kind = NotFound if status == 404 else MalformedInput
    body = cbor.encode({"error": kind.code, "message": f"no such API endpoint (HTTP {status})"})
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    headers["connection"] = "close"
    return Response(body, status_code=status, media_type=CBOR_TYPE, headers=headers)


def _check_content_type(request: Request) -> None:
    """A call's body is CBOR and says so; an empty body may say nothing."""
    declared = request.headers.get("content-type")
    length = request.headers.get("content-length")
    bodiless = length == "0" or (length is None and "transfer-encoding" not in request.headers)
    if declared is None and bodiless:
        return
    if (declared or "").split(";")[0].strip().lower() != CBOR_TYPE:
        raise _UnsupportedType(f"a call's body must be sent as {CBOR_TYPE}")


class _UnsupportedType(MalformedInput):
    http_status = 415


async def _read_body(request: Request, limit: int, budget: ByteBudget) -> tuple[bytearray, int]:
    """The request body, gathered in one buffer (never the parts and their join at once: a
    put's body is megabytes, and several are in flight), and the budget it took. A declared
    length is taken from the budget before a byte is read, and its buffer made at once (not
    grown by copies as parts arrive); a chunked body grows as it comes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge(f"the body of this call is at most {limit} bytes")
    _check_content_type(request)
    taken = int(declared) if declared is not None else 0
    budget.take(taken)
    body = bytearray(taken)
    filled = 0
    try:
        async with contextlib.aclosing(request.stream()) as stream:
            async for part in stream:
                end = filled + len(part)
                if end > limit:
                    raise TooLarge(f"the body of this call is at most {limit} bytes")
                if end > taken:  # chunked: taken as it comes
                    budget.take(end - taken)
                    taken = end
                    body += part
                else:
                    body[filled:end] = part
                filled = end
        if filled != len(body):  # HTTP ends a body at its declared length; this is a guard
            raise MalformedInput("the body ended before its declared length")
    except BaseException:
        budget.give(taken)
        raise
    return body, taken


class Answering(Protocol):
    """What answers the API: a NodeService, or a stand-in that wraps one (simulations/)."""

    async def call(
        self, method: str, args: Any, requester: bytes = b"", *, source: str | None = None
    ) -> Any: ...

    async def get_block(
        self, cid: CID, auth: bats.ReadAuth | None, requester: bytes, owner: CID | None = None
    ) -> bytes: ...


async def answer_call(
    service: Answering, method: str, body: bytes | bytearray, source: str
) -> tuple[int, bytes]:
    """The API's answer to a call whose whole body (at most the method's limit) arrived:
    (HTTP status, CBOR body). The one dispatch of the API, whatever carries it: HTTP here, a
    simulated link in simulations/."""
    try:
        limit = rpc.args_limit(method)
        if len(body) > limit:
            raise TooLarge(f"the body of this call is at most {limit} bytes")
        args = cbor.decode(body, limit=limit, max_items=rpc.MAX_CALL_ITEMS) if body else {}
        del body  # the blocks now live in `args`: the body need not wait for the answer
        result: Any = await service.call(method, args, source=source)
        return 200, cbor.encode(result)
    except PyrgosError as exc:
        return exc.http_status, _error_body(exc)
    except Exception:
        log.exception("internal error in %s", method[:64])
        return 500, _INTERNAL_ERROR


async def answer_block(
    service: Answering, cid_text: str, params: Mapping[str, str]
) -> tuple[int, bytes]:
    """The API's answer to a block read (`auth` and `owner` from `params`): (HTTP status,
    the block or a CBOR error)."""
    try:
        cid = CID.from_text(cid_text)
        auth_text = params.get("auth")
        auth = bats.ReadAuth.from_text(auth_text) if auth_text else None
        owner_text = params.get("owner")
        owner = CID.from_text(owner_text) if owner_text else None
        if owner is not None and not owner.is_identity:
            raise MalformedInput("owner must be a public-key hash")
        return 200, await service.get_block(cid, auth, b"", owner)
    except PyrgosError as exc:
        return exc.http_status, _error_body(exc)
    except Exception:
        log.exception("internal error in a block read")
        return 500, _INTERNAL_ERROR


def build_app(service: NodeService, limits: ApiLimits | None = None) -> Starlette:
    """The ASGI app serving `service`'s method table."""
    limits = limits or ApiLimits()
    budget = ByteBudget(limits.max_buffered_bytes, "request bodies")

    async def call(request: Request) -> Response:
        method = request.path_params["method"]
        taken = 0
        unread = True  # the body, until it is read whole
        try:
            limit = rpc.args_limit(method)
            with trio.fail_after(limits.body_timeout):
                body, taken = await _read_body(request, limit, budget)
            unread = False
            client = request.client  # the source that per-source limits (signups) count
            answering = answer_call(service, method, body, client.host if client else "")
            del body  # the call alone holds the body now, and drops it once decoded
            status, answer = await answering
            return Response(answer, status_code=status, media_type=CBOR_TYPE)
        except trio.TooSlowError:
            late = Unavailable(f"the request body did not arrive within {limits.body_timeout} s")
            return _error(late, 408, close=True)
        except ClientDisconnect:
            log.debug("a client left during a call to %s", method[:64])
            return _error(Unavailable("the client disconnected"))
        except PyrgosError as exc:
            return _error(exc, close=unread)
        except Exception:
            log.exception("internal error in %s", method[:64])
            return Response(_INTERNAL_ERROR, status_code=500, media_type=CBOR_TYPE)
        finally:
            budget.give(taken)

    async def get_block(request: Request) -> Response:
        status, answer = await answer_block(
            service, request.path_params["cid"], request.query_params
        )
        media = "application/octet-stream" if status == 200 else CBOR_TYPE
        return Response(answer, status_code=status, media_type=media)

    return Starlette(
        routes=[
            Route(API_PREFIX + "/call/{method}", call, methods=["POST"]),
            Route(API_PREFIX + "/block/{cid}", get_block, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )


class _H11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, answering requests h11 cannot parse in the API's CBOR
    error form rather than with an empty body."""

    async def _send_error_response(self, status_code: int) -> None:
        message = f"the request is not valid HTTP/1.1 (HTTP {status_code})"
        body = cbor.encode({"error": MalformedInput.code, "message": message})
        headers = [
            (b"content-type", CBOR_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *self.config.response_headers("h11"),
        ]
        # A peer that left mid-request gets here too, while the connection is being closed
        # by another task: then there is no one to tell.
        with contextlib.suppress(trio.BusyResourceError, trio.BrokenResourceError):
            await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
            await self._send_h11_event(h11.Data(data=body))
            await self._send_h11_event(h11.EndOfMessage())


class _TCPServer(TCPServer):
    """hypercorn's connection handler with `_H11Protocol` in place of its own."""

    @property
    def protocol(self) -> ProtocolWrapper:
        return self._wrapper

    @protocol.setter
    def protocol(self, wrapper: ProtocolWrapper) -> None:
        if type(wrapper.protocol) is H11Protocol:  # the same state; only the method differs
            wrapper.protocol.__class__ = _H11Protocol
        self._wrapper = wrapper


def _busy_reply() -> bytes:
    """What a connection over the cap gets before it is closed: a 503 in the API's form."""
    body = cbor.encode({"error": Unavailable.code, "message": "the node has too many connections"})
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"content-type: {CBOR_TYPE}\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\nretry-after: 1\r\n\r\n"
    )
    return head.encode() + body


async def serve_api(
    service: NodeService,
    host: str,
    port: int,
    *,
    limits: ApiLimits | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,  # trio.TaskStatus[str],
) -> None:
    """Serve the API until cancelled; reports the URL it listens on (port 0 picks one).

    Connections are accepted here rather than by hypercorn's own loop, which has no cap: one
    over `limits.max_connections` is answered 503 and closed, so strangers cannot use up the
    process's file descriptors."""
    limits = limits or ApiLimits()
    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Runs from a connection's start or its last answer until a request head is whole, so it
    # cuts idle connections and trickled heads; hypercorn's read_timeout would also cut a
    # client waiting (silently) for a long call, such as a collection, to answer.
    config.keep_alive_timeout = limits.idle_timeout
    config.h11_max_incomplete_size = 64 * 1024
    app = wrap_app(build_app(service, limits), config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    context = WorkerContext(None)
    listeners = await trio.open_tcp_listeners(port, host=host)
    open_connections = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal open_connections
        if open_connections >= limits.max_connections:
            with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, OSError):
                await stream.send_all(_busy_reply())
            await trio.aclose_forcefully(stream)
            return
        open_connections += 1
        with trio.CancelScope() as scope:
            counted = _CountedStream(stream, scope)
            try:
                await _TCPServer(app, config, context, {}, counted)  # type: ignore[arg-type]
            except Exception as exc:  # one connection's failure must not end the server
                log.info("an HTTP connection ended on an error: %r", exc)
            finally:
                counted.release()

    class _CountedStream:
        """The connection's socket, handing its slot back when either side ends it, and
        giving the connection's task CLOSE_GRACE to wind up: hypercorn would keep it (and the
        socket) until its idle timer runs out."""

        def __init__(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
            self._stream = stream
            self._scope = scope
            self._held = True

        def __getattr__(self, name: str) -> Any:
            return getattr(self._stream, name)

        def release(self) -> None:
            nonlocal open_connections
            if self._held:
                self._held = False
                open_connections -= 1
                self._scope.deadline = trio.current_time() + CLOSE_GRACE

        async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
            """Up to RECEIVE_BYTES, whatever hypercorn asks for (64 KiB: a 2 MiB put took 32
            trips through h11, hypercorn and the app's queue; h11 takes data of any length).

            hypercorn treats the client's end of stream as a disconnect (the app's answer
            is dropped), then waits out its idle timer: the socket is closed and the slot
            free from here, so a client that connects and leaves in a loop holds nothing."""
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.aclose()
                raise
            if not data:
                await self.aclose()
            return data

        async def aclose(self) -> None:
            self.release()
            await self._stream.aclose()

    address = listeners[0].socket.getsockname()
    bound = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
    async with trio.open_nursery() as nursery:
        task_status.started(f"http://{bound}")
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)
