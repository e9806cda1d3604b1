"""A node facing strangers over HTTP: bodies that are bombs, slow or unfinished, crowds of
connections, and block reads that must not tell who holds what."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from node.client import NodeApi
from node.net import API_PREFIX, ApiLimits, serve_api
from node.net._rpc import serve_rpc
from node.server import NodeService
from node.store import Store
from protocols import bats, cbor, rpc
from protocols.cid import CID, CODEC_RAW
from protocols.errors import Denied, NotFound
from simulations.swarm import new_node
from tests.net.test_rpc_limits import bomb, request_frame, send_until_closed

CBOR_TYPE = "application/cbor"
MiB = 1024 * 1024
TIMEOUT = 20  # seconds: a generous bound on each test; none comes near it


async def start(nursery: trio.Nursery, store: Store, **limits: Any) -> tuple[NodeService, str]:
    service = new_node(store)
    url = await nursery.start(lambda task_status: serve_api(
        service, "127.0.0.1", 0, limits=ApiLimits(**limits), task_status=task_status
    ))  # fmt: skip
    return service, url


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = Store(tmp_path / "db")
    yield opened
    opened.close()


class Body(httpx.AsyncByteStream):
    """A request body sent in 1 MiB pieces; not an async generator, so a server that answers
    before reading it all leaves no unfinished generator behind."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        if not self.data:
            raise StopAsyncIteration
        piece, self.data = bytes(self.data[:MiB]), self.data[MiB:]
        return piece


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def head(method: str, length: int | None, content_type: str = CBOR_TYPE) -> bytes:
    lines = [
        f"POST {API_PREFIX}/call/{method} HTTP/1.1",
        "host: node",
        f"content-type: {content_type}",
    ]
    lines.append("transfer-encoding: chunked" if length is None else f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_all(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)


def api_error(reply: bytes, status: int) -> dict[str, str]:
    """The API's CBOR error in a raw HTTP reply with `status`."""
    header, _, body = reply.partition(b"\r\n\r\n")
    assert header.startswith(f"HTTP/1.1 {status} ".encode()), header
    assert f"content-type: {CBOR_TYPE}".encode() in header.lower()
    error: dict[str, str] = cbor.decode(body)
    return error


# -- item 2: no anonymous freeze ----------------------------------------------------------------


async def test_bombs_over_http_and_the_tunnel_leave_other_callers_answered(
    nursery: trio.Nursery, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Two 9 MiB bodies of 9 million empty arrays (and two over the tunnel, from an anonymous
    peer) are in flight while another caller's node.info must answer within a second."""
    service, url = await start(nursery, store)
    count = rpc.MAX_CALL_BYTES - 16
    body = bomb(count)
    frame = request_frame("block.put", bomb(count))
    refused: list[str] = []

    async def over_http(method: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
            request = http.build_request("POST", f"{API_PREFIX}/call/{method}")
            request.headers["content-type"] = CBOR_TYPE
            request.headers["content-length"] = str(len(body))
            request.stream = Body(body)
            response = await http.send(request)
        assert response.status_code == 413
        refused.append(cbor.decode(response.content)["error"])

    async def over_the_tunnel() -> None:
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(serve_rpc, server, "12D3KooWAnonymous", service.call)
        await send_until_closed(client, frame)
        refused.append("closed")

    async with NodeApi(url) as api:
        await api.call("node.info")  # the caller's connection is up before the bombs come
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as bombs:
                for method in ("block.put", "node.info"):
                    bombs.start_soon(over_http, method)
                for _ in range(2):
                    bombs.start_soon(over_the_tunnel)
                await trio.sleep(0.05)  # the bombs are on their way
                for _ in range(3):
                    with trio.fail_after(1):
                        assert (await api.call("node.info"))["node"] == service.settings.node_id
        assert sorted(refused) == ["closed", "closed", "too-large", "too-large"]
        assert service.stats["calls"] == 4  # the bombs never reached the method table
    assert any("(too-large)" in r.getMessage() for r in caplog.records)


# -- item 7: slow and unfinished bodies, crowds -------------------------------------------------


@pytest.mark.parametrize("how", ["trickle", "stall", "chunked stall"])
async def test_slow_and_unfinished_bodies_are_cut(
    nursery: trio.Nursery, store: Store, how: str
) -> None:
    service, url = await start(nursery, store, body_timeout=0.5)
    calls = service.stats["calls"]
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(*host_port(url))
        await stream.send_all(head("block.put", None if how == "chunked stall" else 1000))
        if how == "trickle":
            async with trio.open_nursery() as dripping:

                async def drip() -> None:
                    for _ in range(1000):
                        await stream.send_all(b"\x00")
                        await trio.sleep(0.1)

                dripping.start_soon(drip)
                reply = await read_all(stream)
                dripping.cancel_scope.cancel()
        else:
            await stream.send_all(b"10\r\n" + bytes(16) if how == "chunked stall" else bytes(500))
            reply = await read_all(stream)  # the server closes after answering
        await stream.aclose()
    error = api_error(reply, 408)
    assert "did not arrive within 0.5 s" in error["message"]
    assert service.stats["calls"] == calls


async def test_connections_over_the_cap_are_refused_and_the_node_lives(
    nursery: trio.Nursery, store: Store
) -> None:
    """1,100 connections at once: the first `max_connections` are held, every other one is
    answered 503 and closed at once (no descriptor kept); once they go, the node serves."""
    cap = 16
    service, url = await start(nursery, store, max_connections=cap)
    with trio.fail_after(TIMEOUT):
        streams = [await trio.open_tcp_stream(*host_port(url)) for _ in range(1100)]
        for stream in streams[cap:]:
            api_error(await read_all(stream), 503)
        for stream in streams:
            await stream.aclose()
        async with NodeApi(url) as api:
            for _ in range(50):  # the held connections' slots come back as the server sees them go
                try:
                    await api.call("node.info")
                    break
                except Exception:
                    await trio.sleep(0.05)
            assert (await api.call("node.info"))["node"] == service.settings.node_id


async def test_bodies_over_the_buffer_budget_are_refused_not_queued(
    nursery: trio.Nursery, store: Store
) -> None:
    _, url = await start(nursery, store, max_buffered_bytes=256 * 1024)
    with trio.fail_after(TIMEOUT):
        holder = await trio.open_tcp_stream(*host_port(url))
        await holder.send_all(head("block.put", 200 * 1024) + bytes(1024))  # and stops there
        async with httpx.AsyncClient(base_url=url) as http:
            while True:  # until the holder's body is being read, the budget has room
                response = await http.post(
                    f"{API_PREFIX}/call/block.put",
                    content=bytes(100 * 1024),
                    headers={"content-type": CBOR_TYPE},
                )
                if response.status_code == 503:
                    break
                await trio.sleep(0.01)
            error = cbor.decode(response.content)
            assert error["error"] == "unavailable"
            assert "too many request bodies" in error["message"]
            await holder.aclose()  # its share comes back
            while response.status_code == 503:
                await trio.sleep(0.01)
                response = await http.post(
                    f"{API_PREFIX}/call/block.put",
                    content=bytes(100 * 1024),
                    headers={"content-type": CBOR_TYPE},
                )
            assert response.status_code == 400  # read and judged (zeros are not a call)


# -- item 12: the smaller HTTP items ------------------------------------------------------------


async def test_wrong_verbs_name_the_allowed_ones_and_wrong_types_are_415(
    nursery: trio.Nursery, store: Store
) -> None:
    service, url = await start(nursery, store)
    calls = service.stats["calls"]
    async with httpx.AsyncClient(base_url=url) as http:
        with trio.fail_after(TIMEOUT):
            response = await http.get(f"{API_PREFIX}/call/node.info")
            assert (response.status_code, response.headers["allow"]) == (405, "POST")
            response = await http.post(f"{API_PREFIX}/block/{CID.of(CODEC_RAW, b'x').text}")
            assert response.status_code == 405
            assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
            for content_type in ("text/plain", "application/json", "application/cbor-seq"):
                response = await http.post(
                    f"{API_PREFIX}/call/node.info",
                    content=cbor.encode({}),
                    headers={"content-type": content_type},
                )
                assert response.status_code == 415
                assert response.headers["content-type"] == CBOR_TYPE
                assert CBOR_TYPE in cbor.decode(response.content)["message"]
            untyped = http.build_request("POST", f"{API_PREFIX}/call/node.info")
            del untyped.headers["content-length"]
            untyped.headers["transfer-encoding"] = "chunked"
            untyped.stream = Body(cbor.encode({}))
            for request in (
                http.build_request("POST", f"{API_PREFIX}/call/node.info", content=b"\xa0"),
                untyped,
            ):
                assert "content-type" not in request.headers
                assert (await http.send(request)).status_code == 415
            response = await http.post(
                f"{API_PREFIX}/call/node.info",
                content=cbor.encode({}),
                headers={"content-type": "Application/CBOR; charset=binary"},
            )
            assert response.status_code == 200
            assert (await http.post(f"{API_PREFIX}/call/node.info")).status_code == 200
    assert service.stats["calls"] == calls + 2


async def test_a_client_leaving_mid_body_is_not_an_internal_error(
    nursery: trio.Nursery, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="node.net._http")
    _, url = await start(nursery, store)
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            stream = await trio.open_tcp_stream(*host_port(url))
            await stream.send_all(head("block.put", 100_000) + bytes(10_000))
            await trio.sleep(0.05)
            await stream.aclose()
        for _ in range(1000):
            if sum("a client left" in r.getMessage() for r in caplog.records) == 3:
                break
            await trio.sleep(0.01)
        else:
            raise AssertionError("the server never saw the clients leave")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_block_reads_tell_only_a_holder_of_its_bat_whether_it_is_here(
    store: Store,
) -> None:
    """Missing, or private without one of its BATs: the same answer (NotFound, DontHave on
    the block exchange). An auth that fails its own checks is Denied, whatever the block."""
    service = new_node(store)
    node = service.node_id_bytes
    secret = secrets.token_bytes(32)
    data = bats.raw_prefix([bats.inline_id(secret)]) + b"ciphertext"
    held = CID.of(CODEC_RAW, data)
    with store.batch() as batch:
        store.put_block(batch, held.raw, data)
    missing = CID.of(CODEC_RAW, bats.raw_prefix([bats.inline_id(secret)]) + b"never stored")
    now = int(time.time())
    mine = secrets.token_bytes(32)  # anyone can make valid auths of a BAT of their own

    async def answer(cid: CID, auth: bats.ReadAuth | None) -> str:
        try:
            await service.get_block(cid, auth, b"")
        except (NotFound, Denied) as exc:
            return f"{exc.code}: {exc.message.replace(cid.text, 'CID')}"
        return "data"

    for auth_of in (
        lambda cid: None,
        lambda cid: bats.make_read_auth(mine, cid, b"", node, now),
        lambda cid: bats.make_read_auth(mine, cid, b"", node, now, hashed=True),
        lambda cid: bats.make_read_auth(secret, cid, b"", b"another node", now),
        lambda cid: bats.make_read_auth(secret, cid, b"", node, now - 1000),
    ):
        assert await answer(held, auth_of(held)) == await answer(missing, auth_of(missing))
    assert (await answer(held, None)).startswith("not-found")
    # a holder of the BAT reads it, and learns when it is missing (DontHave stays meaningful)
    assert await answer(held, bats.make_read_auth(secret, held, b"", node, now)) == "data"
    good = bats.make_read_auth(secret, missing, b"", node, now)
    assert (await answer(missing, good)).startswith("not-found")


async def send_in_pieces(stream: trio.SocketStream, data: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        for start in range(0, len(data), 4096):
            await stream.send_all(data[start : start + 4096])
            await trio.lowlevel.checkpoint()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no host
        (
            b"POST /api/v1/call/node.info HTTP/1.1\r\nhost: a\r\ncontent-length: x\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"y" * 100_000 + b"\r\n\r\n", 431),
    ],
)
async def test_requests_h11_cannot_parse_get_the_api_error_form(
    nursery: trio.Nursery, store: Store, request_bytes: bytes, status: int
) -> None:
    _, url = await start(nursery, store)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(*host_port(url))
        async with trio.open_nursery() as sending:
            sending.start_soon(send_in_pieces, stream, request_bytes)
            reply = await read_all(stream)
        await stream.aclose()
    assert "not valid HTTP/1.1" in api_error(reply, status)["message"]


async def test_a_trickled_request_head_is_cut(nursery: trio.Nursery, store: Store) -> None:
    _, url = await start(nursery, store, idle_timeout=0.5)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(*host_port(url))
        async with trio.open_nursery() as dripping:

            async def drip() -> None:
                with contextlib.suppress(trio.BrokenResourceError):
                    for byte in head("node.info", 0):
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(0.1)

            dripping.start_soon(drip)
            assert await read_all(stream) == b""  # closed, never answered
            dripping.cancel_scope.cancel()
        await stream.aclose()


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
async def test_clients_that_connect_and_leave_hold_no_descriptors(
    nursery: trio.Nursery, store: Store
) -> None:
    """Each connection a client ends frees its socket at once, not when an idle timer runs
    out: connecting and leaving in a loop cannot use up the node's descriptors."""
    _, url = await start(nursery, store, max_connections=8)
    async with NodeApi(url) as api:
        await api.call("node.info")
        baseline = open_fds()
        with trio.fail_after(TIMEOUT):
            for index in range(300):
                stream = await trio.open_tcp_stream(*host_port(url))
                if index % 2:
                    await stream.send_all(head("block.put", 1000)[:20])  # part of a head
                await stream.aclose()
            for _ in range(500):
                if open_fds() <= baseline + 4:
                    break
                await trio.sleep(0.01)
            else:
                raise AssertionError(f"{open_fds() - baseline} descriptors still held")
            assert (await api.call("node.info"))["node"]
