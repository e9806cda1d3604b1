"""The client's view of one node: the method table over HTTP, and verified block reads."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol
from urllib.parse import urlencode, urlsplit

import httpcore

from node.client import _typed
from protocols import bats, cbor, methods
from protocols.cid import CID
from protocols.errors import Corrupted, PyrgosError, Unavailable, error_from_code

API_PREFIX: Final = "/api/v1"
CBOR_TYPE: Final = "application/cbor"
MAX_REPLY_BYTES: Final = 16 * 1024 * 1024
MAX_CONNECTIONS: Final = 16
CONNECT_TIMEOUT: Final = 10.0  # seconds
# Bytes a connection reads at once. httpcore asks for 64 KiB, and each read is a trip through
# h11 and httpcore's layers: a megabyte block took 16, a sixth of the client's CPU per byte.
READ_BYTES: Final = 1024 * 1024
# What a connection failing, timing out or speaking bad HTTP raises: the node is unreachable.
_HTTP_ERRORS: Final = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)


@dataclass(frozen=True)
class Route:
    """How to reach one owner's data: their identity key hash, and the node id of their home
    (None, or the id of the node we talk to, when it is that node). Every read names the
    route of the tree it reads, so one client reads any owner's data through one node."""

    owner: CID
    home: bytes | None = None


def check_block(cid: CID, data: bytes) -> None:
    """Raise Corrupted unless `data` is what `cid` names."""
    if not cid.matches(data):
        raise Corrupted(f"block {cid} does not match its hash: the node returned corrupt data")


async def _once(parts: list[bytes]) -> AsyncIterator[bytes]:
    """The pieces of a body, each dropped as it is sent: a spent generator holds nothing."""
    parts.reverse()
    while parts:
        yield parts.pop()


class Transport(Protocol):
    """How a NodeApi reaches its node: HTTP (`HttpTransport`), or, in simulations, a simulated
    link to an in-process node. Both carry the same bytes: a call's CBOR body and its CBOR
    answer, a block's bytes; the status is the HTTP status the API server would send."""

    async def post_call(self, method: str, body: list[bytes]) -> tuple[int, bytes]: ...

    async def get_block(self, cid: str, params: dict[str, str]) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


# The two classes below implement httpcore's interfaces, `timeout` parameters included.
class _LargeReads(httpcore.AsyncNetworkStream):
    """A connection whose reads take up to READ_BYTES, whatever httpcore asks for: it hands
    every read to h11, which takes data of any length."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._stream.read(max(max_bytes, READ_BYTES), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        return _LargeReads(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _LargeReadsBackend(httpcore.AsyncNetworkBackend):
    """trio's sockets, read by `_LargeReads`."""

    def __init__(self) -> None:
        self._backend = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _LargeReads(stream)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class HttpTransport:
    """The API over HTTP: `POST /api/v1/call/<method>`, `GET /api/v1/block/<cid>`, on up to
    MAX_CONNECTIONS kept-alive connections (httpcore: HTTP/1.1 and its connection pool, with
    none of the layers above it that a client of one API does not use)."""

    def __init__(self, url: str, *, timeout: float = 120.0) -> None:
        self.url = url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http or https URL: {url!r}")
        self._scheme, self._host = parts.scheme.encode(), parts.hostname.encode("idna")
        self._port = parts.port
        self._base = parts.path.rstrip("/") + API_PREFIX
        self._timeouts = {
            "timeout": {
                "connect": CONNECT_TIMEOUT,
                "read": timeout,
                "write": timeout,
                "pool": timeout,
            }
        }
        self._pool = httpcore.AsyncConnectionPool(
            # Plain HTTP needs no CA bundle, and loading one costs a tenth of a second.
            ssl_context=ssl.create_default_context() if parts.scheme == "https" else None,
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_CONNECTIONS,
            network_backend=_LargeReadsBackend(),
        )

    def _url(self, path: str, params: dict[str, str] | None = None) -> httpcore.URL:
        target = self._base + path + ("?" + urlencode(params) if params else "")
        return httpcore.URL(scheme=self._scheme, host=self._host, port=self._port, target=target)

    def _unreachable(self, exc: Exception) -> Unavailable:
        return Unavailable(f"cannot reach the node at {self.url} ({type(exc).__name__})")

    async def _request(
        self,
        method: bytes,
        url: httpcore.URL,
        limit: int,
        headers: list[tuple[bytes, bytes]] | None = None,
        content: AsyncIterator[bytes] | None = None,
    ) -> tuple[int, bytes]:
        """One request; the answer's body, read into our own list of parts (an answer over
        `limit` bytes is refused as it arrives)."""
        try:
            async with self._pool.stream(
                method, url, headers=headers, content=content, extensions=self._timeouts
            ) as response:
                parts, size = [], 0
                async for part in response.aiter_stream():
                    size += len(part)
                    if size > limit:
                        raise Corrupted(f"the node's answer is over {limit} bytes")
                    parts.append(part)
                return response.status, parts[0] if len(parts) == 1 else b"".join(parts)
        except _HTTP_ERRORS as exc:
            raise self._unreachable(exc) from exc

    async def post_call(self, method: str, body: list[bytes]) -> tuple[int, bytes]:
        headers = [
            (b"content-type", CBOR_TYPE.encode()),
            (b"content-length", str(sum(map(len, body))).encode()),
        ]
        # The body goes through a one-shot generator, so that nothing holds its parts once
        # they are sent.
        url = self._url(f"/call/{method}")
        return await self._request(b"POST", url, MAX_REPLY_BYTES, headers, _once(body))

    async def get_block(self, cid: str, params: dict[str, str]) -> tuple[int, bytes]:
        return await self._request(b"GET", self._url(f"/block/{cid}", params), MAX_REPLY_BYTES)

    async def aclose(self) -> None:
        await self._pool.aclose()


class NodeApi:
    """Calls to the node at `url`; every block read is checked against its CID.

    `transport` (default: HTTP to `url`) carries the calls; `clock` is the client's clock
    (seconds since the epoch) for everything it stamps: read auths, signed requests,
    modification times, claim expiries. Both are virtual in simulations (DESIGN §12).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 120.0,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self._transport = transport or HttpTransport(self.url, timeout=timeout)
        self._node_id: bytes | None = None
        self.round_trips = 0
        # The session token from login: sent, opaque, with every call that needs a session;
        # the node forwards it with the call to the user's home, which alone can check it.
        self.session: bytes | None = None
        self.clock = clock

    def now_ms(self) -> int:
        """The client's clock in milliseconds, as signed requests and metadata carry it."""
        return int(self.clock() * 1000)

    async def __aenter__(self) -> NodeApi:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    @staticmethod
    def _check(status: int, content: bytes) -> None:
        if status == 200:
            return
        try:
            value = cbor.decode(content, limit=64 * 1024)
            code, message = str(value["error"]), str(value["message"])
        except (PyrgosError, KeyError, TypeError):  # not an error reply of the API
            raise PyrgosError(f"the node answered HTTP {status}") from None
        raise error_from_code(code, message)  # typed, Corrupted included

    async def call(self, method: str, args: dict[str, Any] | None = None) -> Any:
        """Call one method of the node's table and return its CBOR result."""
        spec = methods.METHODS.get(method)
        # The calls a node accepts only within a live session carry the token (the table says
        # which: docs/protocol.md, "Sessions").
        if self.session is not None and spec is not None and spec.session:
            args = {"session": self.session, **(args or {})}
        body = cbor.encode_parts(args or {})  # blocks in the body are sent, not copied
        status, content = await self._transport.post_call(method, body)
        del body
        self.round_trips += 1
        self._check(status, content)
        return cbor.decode(content, limit=MAX_REPLY_BYTES)

    async def node_id(self) -> bytes:
        if self._node_id is None:
            info = await _typed.request(self, methods.NodeInfo(), methods.NodeInfoReply)
            self._node_id = info.node.encode()
        return self._node_id

    async def get_block(
        self,
        cid: CID,
        bat: bytes | None = None,
        *,
        route: Route | None = None,
        verify: bool = True,
    ) -> bytes:
        """Fetch a block of the owner `route` names, proving knowledge of its BAT when given;
        verify it is what `cid` names. When the owner's home is not the node at `url`, the read
        auth is made out to the home, with this node as requester.

        `verify=False` leaves the hash check to the caller, who must make it (with
        `check_block`) before using a byte: a reader that decrypts in a worker thread hashes
        there too, in the same hop.
        """
        params = {}
        if route is not None:
            params["owner"] = route.owner.text
        if bat is not None:
            here = await self.node_id()
            home = None if route is None else route.home
            requester, server = (b"", here) if home in (None, here) else (here, home)
            auth = bats.make_read_auth(bat, cid, requester, server or here, int(self.clock()))
            params["auth"] = auth.to_text()
        status, data = await self._transport.get_block(cid.text, params)
        self._check(status, data)
        self.round_trips += 1
        if verify:
            check_block(cid, data)
        return data
