"""The client's HTTP/1.1: h11 over trio streams, on kept-alive connections to one node.

A client speaks to one origin, one request per connection at a time, without proxies,
redirects, cookies or compression, so what it needs of an HTTP library is h11 (the protocol)
and a pool of idle connections. A general client's layers above that cost more than the rest
of a download: httpx with httpcore took about 2 ms of CPU a megabyte block, this 0.8, and its
import 40 ms of every command's start.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Final
from urllib.parse import urlsplit

import h11
import trio

from protocols.errors import Corrupted, MalformedInput, Unavailable

CONNECT_TIMEOUT: Final = 10.0  # seconds to open a connection (and finish TLS)
# Bytes read from a connection at once while h11 parses: an answer's head (and the start of its
# body), or a body of unknown length.
READ_BYTES: Final = 64 * 1024
# What a connection that fails, stalls or speaks bad HTTP raises: the node is unreachable.
_BROKEN: Final = (
    OSError,  # refused, reset, TLS failures (ssl.SSLError)
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    h11.ProtocolError,
)


class _Connection:
    """One connection and its HTTP state."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.http = h11.Connection(h11.CLIENT)

    def is_stale(self) -> bool:
        """An idle connection the node closed (or wrote to, which it never does): readable
        with no request outstanding, so it must not carry the next one."""
        sock = getattr(getattr(self.stream, "transport_stream", self.stream), "socket", None)
        return sock is None or sock.is_readable()


class HttpClient:
    """Requests to the node at `url` (http or https), at most `max_connections` at a time, each
    connection kept for the next request once its answer is read whole. `timeout` bounds
    every wait for the node: a write, or the next bytes of an answer."""

    def __init__(self, url: str, *, timeout: float, max_connections: int) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MalformedInput(f"the node's address {url!r} is not an http:// or https:// URL")
        self.url = url
        self._host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        self._port = parts.port or default_port
        self._host_header = (
            self._host if self._port == default_port else f"{self._host}:{self._port}"
        )
        self.base_path = parts.path.rstrip("/")
        # Plain HTTP needs no CA bundle, and loading one costs a tenth of a second.
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._timeout = timeout
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    def _unreachable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"cannot reach the node at {self.url} ({type(exc).__name__})")

    async def _connect(self) -> _Connection:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream: trio.abc.Stream = await trio.open_tcp_stream(self._host, self._port)
            if self._tls is not None:
                tls = trio.SSLStream(
                    stream, self._tls, server_hostname=self._host, https_compatible=True
                )
                await tls.do_handshake()
                stream = tls
        return _Connection(stream)

    async def _take(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.is_stale():
                return connection
            await trio.aclose_forcefully(connection.stream)
        return await self._connect()

    async def request(
        self,
        method: str,
        target: str,
        limit: int,
        headers: Iterable[tuple[str, str]] = (),
        body: AsyncIterator[bytes] | None = None,
    ) -> tuple[int, bytes]:
        """(status, body) of one request; an answer over `limit` bytes is refused as it
        arrives. `target` is the path (and query) below the URL's own path."""
        async with self._slots:
            connection: _Connection | None = None
            try:
                connection = await self._take()
                return await self._exchange(connection, method, target, limit, headers, body)
            except _BROKEN as exc:
                raise self._unreachable(exc) from exc
            finally:
                if connection is not None:
                    if connection.http.our_state is h11.IDLE:
                        self._idle.append(connection)
                    else:  # cut mid-exchange, or closing: never reused
                        await trio.aclose_forcefully(connection.stream)

    async def _exchange(
        self,
        connection: _Connection,
        method: str,
        target: str,
        limit: int,
        headers: Iterable[tuple[str, str]],
        body: AsyncIterator[bytes] | None,
    ) -> tuple[int, bytes]:
        http, stream = connection.http, connection.stream
        # One scope for the whole exchange, its deadline moved on by every write and read.
        with trio.fail_after(self._timeout) as wait:
            head = h11.Request(
                method=method,
                target=self.base_path + target,
                headers=[("host", self._host_header), *headers],
            )
            await stream.send_all(http.send(head) or b"")
            if body is not None:
                async for part in body:
                    for piece in http.send_with_data_passthrough(h11.Data(data=part)) or ():
                        wait.deadline = trio.current_time() + self._timeout
                        await stream.send_all(piece)
            await stream.send_all(http.send(h11.EndOfMessage()) or b"")
            status, size = 0, 0
            parts: list[bytes | bytearray] = []
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    wait.deadline = trio.current_time() + self._timeout
                    http.receive_data(await stream.receive_some(READ_BYTES))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    length = _declared_length(event)
                    sock = getattr(stream, "socket", None)  # a plain TCP stream's
                    if length is not None and sock is not None and status not in (204, 304):
                        answer = await self._read_body(connection, sock, event, length, limit, wait)
                        return status, answer
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        raise Corrupted(f"the node's answer is over {limit} bytes")
                    parts.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise trio.BrokenResourceError("the node closed the connection mid-answer")
        if http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()  # kept for the next request
        return status, b"".join(parts)  # the one copy out of h11's buffers

    async def _read_body(
        self,
        connection: _Connection,
        sock: trio.socket.SocketType,
        response: h11.Response,
        length: int,
        limit: int,
        wait: trio.CancelScope,
    ) -> bytes:
        """The body of `response`, `length` bytes, read from `sock` straight into one buffer:
        through h11, each byte of a megabyte block was copied four times more (its buffer,
        the extraction, the event, the join), and the buffers of varying sizes fragmented the
        heap. The connection then starts a new HTTP cycle, or, if either side closes it, is
        left to be closed."""
        if length > limit:
            raise Corrupted(f"the node's answer is over {limit} bytes")
        start, closed = connection.http.trailing_data  # what came with the head
        if len(start) > length:
            raise trio.BrokenResourceError("the node sent more than its answer's length")
        body = bytearray(length)
        body[: len(start)] = start
        view = memoryview(body)
        got = len(start)
        while got < length:
            wait.deadline = trio.current_time() + self._timeout
            read = await sock.recv_into(view[got:], length - got)
            if not read:
                raise trio.BrokenResourceError("the node closed the connection mid-answer")
            got += read
        view.release()
        if not (closed or _closes(response)):
            connection.http = h11.Connection(h11.CLIENT)  # the next exchange on it
        return bytes(body)

    async def aclose(self) -> None:
        while self._idle:
            await trio.aclose_forcefully(self._idle.pop().stream)


def _declared_length(response: h11.Response) -> int | None:
    """The body length `response` declares, when it is read straight from the socket: a
    Content-Length (which h11 has checked) and no Transfer-Encoding."""
    length = None
    for name, value in response.headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)
    return length


def _closes(response: h11.Response) -> bool:
    """Whether the node closes the connection after `response`."""
    if response.http_version != b"1.1":
        return True
    return any(
        name == b"connection" and b"close" in value.lower() for name, value in response.headers
    )
