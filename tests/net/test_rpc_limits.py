"""The tunnel's call limits: arguments over their method's size, and frames of too many items,
are refused before the method table sees them."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from node.net import RPC_PROTOCOL, open_host, serve_node
from node.net._budget import ByteBudget
from node.net._rpc import RpcClient, serve_rpc
from node.store import Store
from protocols import cbor, rpc
from protocols.cid import encode_varint
from protocols.errors import TooLarge
from protocols.frames import FrameDecoder
from simulations.swarm import new_node
from tests.net.test_host import LOOPBACK

PEER = "12D3KooWAnonymousPeer"
LIMIT = 5  # seconds: every test here finishes in a fraction of that
MiB = 1024 * 1024


def request_frame(method: str, args_cbor: bytes, call_id: int = 1) -> bytes:
    """A request frame around arguments given as raw CBOR (keys in canonical order)."""
    body = b"".join(
        [
            b"\xa3",
            cbor.encode("id"),
            cbor.encode(call_id),
            cbor.encode("args"),
            args_cbor,
            cbor.encode("method"),
            cbor.encode(method),
        ]
    )
    return encode_varint(len(body)) + body


async def send_until_closed(stream: trio.abc.Stream, data: bytes) -> None:
    """Send `data` and read until the peer ends the stream (it may before taking it all)."""
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(data)
    while await stream.receive_some(65536):
        pass


async def receive_message(stream: trio.abc.Stream) -> Any:
    """The first whole message the peer sends."""
    decoder = FrameDecoder(rpc.MAX_FRAME)
    while True:
        data = await stream.receive_some(65536)
        assert data, "the stream ended before a reply"
        if messages := decoder.feed(data):
            return messages[0]


def bomb(count: int) -> bytes:
    """{"x": [[], [], …]}: `count` empty arrays, a byte each."""
    return b"\xa1" + cbor.encode("x") + b"\x9a" + count.to_bytes(4, "big") + b"\x80" * count


async def test_arguments_over_their_method_limit_are_too_large(nursery: trio.Nursery) -> None:
    calls: list[str] = []

    async def dispatch(method: str, args: dict[str, Any], requester: bytes) -> Any:
        calls.append(method)
        return len(args.get("pad", b""))

    client_end, server_end = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_rpc, server_end, PEER, dispatch)
    small = rpc.SMALL_CALL
    with trio.fail_after(LIMIT):
        async with RpcClient(client_end) as client:
            for method in ("node.info", "pki.submit", "pointer.cas", "no.such.method"):
                with pytest.raises(TooLarge, match=f"at most {small}"):
                    await client.call(method, {"pad": bytes(small)})
            assert calls == []
            # the stream stays usable, and the methods that carry blocks take megabytes
            assert await client.call("node.info", {"pad": bytes(small - 16)}) == small - 16
            assert await client.call("block.put", {"pad": bytes(2 * MiB)}) == 2 * MiB
            assert await client.call("account.signup", {"pad": bytes(2 * MiB)}) == 2 * MiB
    assert calls == ["node.info", "block.put", "account.signup"]


@pytest.mark.parametrize("count", [rpc.MAX_CALL_ITEMS + 1, 9 * MiB])
async def test_a_frame_of_too_many_items_ends_the_stream_undecoded(
    count: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    decoded: list[int] = []
    real_loads = cbor.cbor2.loads

    def counting_loads(data: Any, **options: Any) -> Any:
        decoded.append(len(data))
        return real_loads(data, **options)

    monkeypatch.setattr(cbor.cbor2, "loads", counting_loads)

    async def dispatch(method: str, args: dict[str, Any], requester: bytes) -> Any:
        raise AssertionError("a refused frame reached the method table")

    client_end, server_end = trio.testing.memory_stream_pair()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_rpc, server_end, PEER, dispatch)
            await send_until_closed(client_end, request_frame("block.put", bomb(count)))
    assert decoded == []
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(PEER in m and "(too-large)" in m and "items" in m for m in messages)


@pytest.mark.filterwarnings("ignore:Comparison between bytes and string:BytesWarning:varint")
async def test_bombs_from_an_anonymous_libp2p_peer_leave_other_peers_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Over real libp2p (Noise, Yamux): two 9 MiB frames of 9 million empty arrays from a
    peer with a fresh key, while another peer's node.info must answer within a second."""
    store = Store(tmp_path / "db")
    try:
        service = new_node(store)
        async with (
            open_host(tmp_path / "node.key", LOOPBACK) as node,
            open_host(tmp_path / "anonymous.key", []) as stranger,
            open_host(tmp_path / "caller.key", []) as caller,
        ):
            serve_node(node, service)
            frame = request_frame("block.put", bomb(rpc.MAX_CALL_BYTES - 16))
            with trio.fail_after(30):
                calls = RpcClient(await caller.open_stream(node.peer_id, node.addrs, RPC_PROTOCOL))
                async with calls:
                    await calls.call("node.info", {})
                    async with trio.open_nursery() as bombs:
                        for _ in range(2):
                            stream = await stranger.open_stream(
                                node.peer_id, node.addrs, RPC_PROTOCOL
                            )
                            bombs.start_soon(send_until_closed, stream, frame)
                        await trio.sleep(0.05)  # the bombs are on their way
                        for _ in range(3):
                            with trio.fail_after(1):
                                info = await calls.call("node.info", {})
                            assert info["node"] == service.settings.node_id
            assert service.stats["calls"] == 4  # the bombs never reached the method table
        refusals = [r.getMessage() for r in caplog.records if "(too-large)" in r.getMessage()]
        assert len(refusals) == 2
        assert all(stranger.peer_id in m and "items" in m for m in refusals)
    finally:
        store.close()


async def test_large_calls_from_every_stream_share_one_budget(nursery: trio.Nursery) -> None:
    """Half-sent large frames on many streams hold the node's budget from their first bytes:
    one over it ends its stream at once, a call that fits is still answered, and every byte
    comes back when the frames end or are answered."""
    budget = ByteBudget(5 * MiB, "large calls")
    release = trio.Event()
    answered: list[str] = []

    async def dispatch(method: str, args: dict[str, Any], requester: bytes) -> Any:
        await release.wait()
        answered.append(method)
        return True

    def two_mib_put(call_id: int) -> bytes:
        args = b"\xa1" + cbor.encode("blocks") + cbor.encode(bytes(2 * MiB))
        return request_frame("block.put", args, call_id)

    async def serve(server: trio.abc.Stream) -> None:
        await serve_rpc(server, PEER, dispatch, budget=budget)

    with trio.fail_after(LIMIT):
        halves = []
        for call_id in (1, 2):  # two frames of 2 MiB, each half-sent: 4 MiB held
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(serve, server)
            frame = two_mib_put(call_id)
            await client.send_all(frame[: len(frame) // 2])
            halves.append((client, frame))
        await trio.testing.wait_all_tasks_blocked()
        assert budget.held > 4 * MiB
        third, server = trio.testing.memory_stream_pair()
        nursery.start_soon(serve, server)
        await send_until_closed(third, two_mib_put(3))  # over the budget: the stream ends
        assert budget.held <= budget.total
        for client, frame in halves:  # the first two finish and are answered
            await client.send_all(frame[len(frame) // 2 :])
        await trio.testing.wait_all_tasks_blocked()
        assert budget.held > 4 * MiB  # held while their calls run
        release.set()
        for client, _ in halves:
            assert rpc.parse_reply(await receive_message(client)).result is True
            await client.send_eof()
        await trio.testing.wait_all_tasks_blocked()
        assert answered == ["block.put", "block.put"]
        assert budget.held == 0
