"""The client's view of one node: the method table over HTTP, and verified block reads."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol
from urllib.parse import urlencode

from node.client import _typed
from node.client._http import HttpClient
from protocols import bats, cbor, methods
from protocols.cid import CID
from protocols.errors import Corrupted, PyrgosError, error_from_code

API_PREFIX: Final = "/api/v1"
CBOR_TYPE: Final = "application/cbor"
MAX_REPLY_BYTES: Final = 16 * 1024 * 1024
MAX_CONNECTIONS: Final = 16


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


class HttpTransport:
    """The API over HTTP: `POST /api/v1/call/<method>`, `GET /api/v1/block/<cid>`."""

    def __init__(self, url: str, *, timeout: float = 120.0) -> None:
        self.url = url
        self._http = HttpClient(url, timeout=timeout, max_connections=MAX_CONNECTIONS)

    async def post_call(self, method: str, body: list[bytes]) -> tuple[int, bytes]:
        headers = [("content-type", CBOR_TYPE), ("content-length", str(sum(map(len, body))))]
        # The body goes through a one-shot generator, so that nothing holds its parts once
        # they are sent.
        target = f"{API_PREFIX}/call/{method}"
        return await self._http.request("POST", target, MAX_REPLY_BYTES, headers, _once(body))

    async def get_block(self, cid: str, params: dict[str, str]) -> tuple[int, bytes]:
        target = f"{API_PREFIX}/block/{cid}" + ("?" + urlencode(params) if params else "")
        return await self._http.request("GET", target, MAX_REPLY_BYTES)

    async def aclose(self) -> None:
        await self._http.aclose()


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
