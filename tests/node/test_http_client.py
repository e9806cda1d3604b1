"""The client's HTTP/1.1 (node/client/_http.py) against a scripted server on the loopback:
kept-alive connections, stale ones replaced, bounded answers, broken and stalled nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import h11
import pytest
import trio
import trio.testing

from node.client._http import HttpClient
from protocols.errors import Corrupted, MalformedInput, Unavailable

TIMEOUT = 10  # seconds any test may take
Answer = Callable[[trio.SocketStream, h11.Connection, h11.Request, bytes], Awaitable[None]]


class Server:
    """Accepts connections on 127.0.0.1 and answers each request with `answer`."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.bodies: list[bytes] = []
        self.url = ""

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        http = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = None, b""
                while True:
                    event = http.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        http.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert request is not None
                self.bodies.append(body)
                await self.answer(stream, http, request, body)
                if http.our_state is not h11.DONE:
                    return  # the answer cut the connection
                http.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            self.open -= 1
            await stream.aclose()


Serving = Callable[[Answer], Awaitable[Server]]


@pytest.fixture
def serving(nursery: trio.Nursery) -> Serving:
    """Starts a server in the test's nursery (closed with it)."""

    async def start(answer: Answer) -> Server:
        server = Server(answer)
        listeners = await nursery.start(partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1"))
        server.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        return server

    return start


async def reply(
    stream: trio.SocketStream, http: h11.Connection, body: bytes, *, close: bool = False
) -> None:
    head = h11.Response(status_code=200, headers=[("content-length", str(len(body)))])
    await stream.send_all(http.send(head) + http.send(h11.Data(data=body)))
    if close:
        await stream.aclose()  # without saying so: the client must notice before reusing it
    else:
        await stream.send_all(http.send(h11.EndOfMessage()))


async def echo_target(
    stream: trio.SocketStream, http: h11.Connection, request: h11.Request, body: bytes
) -> None:
    await reply(stream, http, request.target + b"|" + body)


async def once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def test_requests_share_one_kept_alive_connection(serving: Serving) -> None:
    with trio.fail_after(TIMEOUT):
        server = await serving(echo_target)
        client = HttpClient(server.url + "/base/", timeout=5, max_connections=4)
        for i in range(3):
            status, body = await client.request("GET", f"/x{i}", 1024)
            assert (status, body) == (200, f"/base/x{i}|".encode())
        headers = [("content-length", "5")]
        assert await client.request("POST", "/p", 1024, headers, once(b"hello")) == (
            200,
            b"/base/p|hello",
        )
        await client.aclose()
    assert server.connections == 1
    assert server.bodies[-1] == b"hello"


async def test_a_connection_the_node_closed_is_not_reused(serving: Serving) -> None:
    async def answer_and_hang_up(
        stream: trio.SocketStream, http: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        await reply(stream, http, b"ok")
        await stream.aclose()

    with trio.fail_after(TIMEOUT):
        server = await serving(answer_and_hang_up)
        client = HttpClient(server.url, timeout=5, max_connections=4)
        for _ in range(3):
            assert await client.request("GET", "/", 1024) == (200, b"ok")
            await trio.sleep(0.05)  # the close reaches the client's socket
        await client.aclose()
    assert server.connections == 3


async def test_an_answer_over_the_limit_is_refused_and_its_connection_dropped(
    serving: Serving,
) -> None:
    async def big(
        stream: trio.SocketStream, http: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        await reply(stream, http, bytes(4096) if request.target == b"/big" else b"small")

    with trio.fail_after(TIMEOUT):
        server = await serving(big)
        client = HttpClient(server.url, timeout=5, max_connections=4)
        with pytest.raises(Corrupted, match="over 1024 bytes"):
            await client.request("GET", "/big", 1024)
        assert await client.request("GET", "/small", 1024) == (200, b"small")
        await client.aclose()
    assert server.connections == 2


async def test_a_node_closing_mid_answer_is_unreachable(serving: Serving) -> None:
    async def cut(
        stream: trio.SocketStream, http: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        head = h11.Response(status_code=200, headers=[("content-length", "100")])
        await stream.send_all(http.send(head) + http.send(h11.Data(data=b"0123456789")))
        await stream.aclose()

    with trio.fail_after(TIMEOUT):
        server = await serving(cut)
        client = HttpClient(server.url, timeout=5, max_connections=4)
        with pytest.raises(Unavailable, match="cannot reach the node"):
            await client.request("GET", "/", 1024)
        await client.aclose()


async def test_a_stalled_node_times_out(
    serving: Serving, autojump_clock: trio.testing.MockClock
) -> None:
    async def stall(
        stream: trio.SocketStream, http: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        server = await serving(stall)
        client = HttpClient(server.url, timeout=5, max_connections=4)
        with pytest.raises(Unavailable, match="TooSlowError"):
            await client.request("GET", "/", 1024)
        await client.aclose()


async def test_connections_are_bounded(serving: Serving) -> None:
    async def slow(
        stream: trio.SocketStream, http: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        await trio.sleep(0.05)
        await reply(stream, http, b"ok")

    with trio.fail_after(TIMEOUT):
        server = await serving(slow)
        client = HttpClient(server.url, timeout=5, max_connections=2)
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(client.request, "GET", "/", 1024)
        await client.aclose()
    assert server.most_open == 2
    assert server.connections == 2


async def test_unreachable_and_malformed_addresses() -> None:
    with trio.fail_after(TIMEOUT):
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()  # nothing listens there now: connecting is refused
        client = HttpClient(f"http://127.0.0.1:{port}", timeout=5, max_connections=4)
        with pytest.raises(Unavailable, match=f"cannot reach the node at http://127.0.0.1:{port}"):
            await client.request("GET", "/", 1024)
    for url in ("127.0.0.1:8000", "ftp://node", "http://"):
        with pytest.raises(MalformedInput, match="not an http:// or https:// URL"):
            HttpClient(url, timeout=5, max_connections=4)


async def test_a_body_trickled_in_pieces_is_read_whole(serving: Serving) -> None:
    """A body with a length is read straight from the socket, however it is cut."""
    block = bytes(range(256)) * 4096  # 1 MiB

    async def trickle(
        stream: trio.SocketStream, http: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        head = h11.Response(status_code=200, headers=[("content-length", str(len(block)))])
        await stream.send_all(http.send(head))
        for start in range(0, len(block), 100_003):  # pieces unaligned with any read
            await stream.send_all(http.send(h11.Data(data=block[start : start + 100_003])))
            await trio.sleep(0.001)
        await stream.send_all(http.send(h11.EndOfMessage()))

    with trio.fail_after(TIMEOUT):
        server = await serving(trickle)
        client = HttpClient(server.url, timeout=5, max_connections=4)
        for _ in range(3):
            status, body = await client.request("GET", "/", len(block))
            assert status == 200
            assert type(body) is bytes
            assert body == block
        await client.aclose()
    assert server.connections == 1  # each answer read to its end, the connection reused


async def test_an_answer_saying_close_ends_its_connection(serving: Serving) -> None:
    async def closing(
        stream: trio.SocketStream, http: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        head = h11.Response(
            status_code=200, headers=[("content-length", "2"), ("connection", "close")]
        )
        await stream.send_all(http.send(head) + http.send(h11.Data(data=b"ok")))
        await stream.send_all(http.send(h11.EndOfMessage()))
        await trio.sleep_forever()  # it said close: a request sent here would wait forever

    with trio.fail_after(TIMEOUT):
        server = await serving(closing)
        client = HttpClient(server.url, timeout=5, max_connections=4)
        for _ in range(3):
            assert await client.request("GET", "/", 1024) == (200, b"ok")
        await client.aclose()
    assert server.connections == 3


async def test_bytes_past_an_answer_are_never_taken_for_the_next(serving: Serving) -> None:
    """A node that sends more than its answer's length: the connection is not reused."""

    async def overlong(
        stream: trio.SocketStream, http: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        await reply(stream, http, b"ok")
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nforged")

    with trio.fail_after(TIMEOUT):
        server = await serving(overlong)
        client = HttpClient(server.url, timeout=5, max_connections=4)
        for _ in range(3):
            assert await client.request("GET", "/", 1024) == (200, b"ok")
            await trio.sleep(0.05)  # the extra bytes reach the client's socket
        await client.aclose()
    assert server.connections == 3
