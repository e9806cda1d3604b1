"""The tunnel over an in-memory stream pair: calls, typed errors, pipelining, hostile peers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from node.net._framed import Framed
from node.net._rpc import RpcClient, serve_rpc
from node.server import NodeService, NodeSettings
from node.store import Store
from protocols import rpc
from protocols.cid import CID, CODEC_RAW, encode_varint
from protocols.errors import Conflict, MalformedInput, NotFound, PyrgosError, Unavailable
from protocols.frames import encode_frame
from tests.net.streams import Recorder, drip

PEER = "12D3KooWRequesterPeer"
LIMIT = 5  # seconds: every test here finishes in a fraction of that


async def echo(method: str, args: dict[str, Any], requester: bytes) -> Any:
    await trio.lowlevel.checkpoint()
    if method == "conflict":
        raise Conflict("the name is taken")
    if method == "bug":
        raise RuntimeError("a detail the peer must not see: /home/node/secret")
    if method == "unencodable":
        return {"value": object()}
    return {"method": method, "args": args, "requester": requester}


async def serve(nursery: trio.Nursery, dispatch: Any = echo, **options: Any) -> trio.abc.Stream:
    """A server task on one end of a fresh pair; returns the client's end."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: serve_rpc(server, PEER, dispatch, **options))
    return client


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_calls_round_trip_with_the_peer_as_requester(nursery: trio.Nursery) -> None:
    with trio.fail_after(LIMIT):
        async with RpcClient(await serve(nursery)) as client:
            cid = CID.of(CODEC_RAW, b"x")
            result = await client.call("pointer.get", {"writer": cid, "n": [1, b"2"]})
            assert result == {
                "method": "pointer.get",
                "args": {"writer": cid, "n": [1, b"2"]},
                "requester": PEER.encode(),
            }


async def test_the_node_service_is_the_dispatcher(tmp_path: Path, nursery: trio.Nursery) -> None:
    store = Store(tmp_path / "db")
    try:
        service = NodeService(store, NodeSettings(node_id="node-1", test_mode=True))
        with trio.fail_after(LIMIT):
            async with RpcClient(await serve(nursery, service.call)) as client:
                info = await client.call("node.info", {})
                assert info["node"] == "node-1"
                with pytest.raises(NotFound, match="unknown method"):
                    await client.call("no.such.method", {})
                with pytest.raises(MalformedInput):
                    await client.call("block.get", {"cid": "not a cid"})
                assert (await client.call("node.info", {}))["node"] == "node-1"
    finally:
        store.close()


async def test_errors_keep_their_code_and_internal_ones_say_nothing(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(LIMIT):
        async with RpcClient(await serve(nursery)) as client:
            with pytest.raises(Conflict) as conflict:
                await client.call("conflict", {})
            assert (conflict.value.code, conflict.value.message) == (
                "conflict",
                "the name is taken",
            )
            with pytest.raises(PyrgosError) as internal:
                await client.call("bug", {})
            assert (internal.value.code, internal.value.message) == ("internal", "internal error")
            with pytest.raises(PyrgosError) as unencodable:
                await client.call("unencodable", {})
            assert unencodable.value.code == "internal"
            assert (await client.call("after", {}))["method"] == "after"  # the stream lives on
    assert any("internal error in rpc method bug" in m for m in errors_logged(caplog))
    assert not any("secret" in str(r.args) for r in caplog.records if r.name == "node.net._rpc")


async def test_calls_are_pipelined_and_matched_by_id(nursery: trio.Nursery) -> None:
    calls = 8
    arrived: list[int] = []
    everyone_in = trio.Event()
    turns = {i: trio.Event() for i in range(calls)}

    async def barrier(method: str, args: dict[str, Any], requester: bytes) -> Any:
        i: int = args["i"]
        arrived.append(i)
        if len(arrived) == calls:
            everyone_in.set()
            turns[calls - 1].set()
        await everyone_in.wait()  # stop-and-wait would never get here: it deadlocks instead
        await turns[i].wait()  # answer in reverse order of the calls
        if i:
            turns[i - 1].set()
        return i * 10

    recorder = Recorder(await serve(nursery, barrier, max_concurrent=calls))
    results: dict[int, int] = {}
    with trio.fail_after(LIMIT):
        async with RpcClient(recorder) as client:

            async def one(i: int) -> None:
                results[i] = await client.call("m", {"i": i})

            async with trio.open_nursery() as callers:
                for i in range(calls):
                    callers.start_soon(one, i)
    assert sorted(arrived) == list(range(calls))  # all eight were in the server at once
    assert results == {i: i * 10 for i in range(calls)}
    assert 1 <= recorder.sends <= calls  # one frame per call, sharing writes: no extra trips


async def test_the_server_runs_at_most_max_concurrent_calls(nursery: trio.Nursery) -> None:
    running = peak = 0

    async def slow(method: str, args: dict[str, Any], requester: bytes) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.001)
        running -= 1
        return args["i"]

    with trio.fail_after(LIMIT):
        async with RpcClient(await serve(nursery, slow, max_concurrent=3)) as client:
            got: list[int] = []

            async def one(i: int) -> None:
                got.append(await client.call("m", {"i": i}))

            async with trio.open_nursery() as callers:
                for i in range(20):
                    callers.start_soon(one, i)
    assert sorted(got) == list(range(20))
    assert peak == 3


async def test_a_request_with_an_id_but_bad_fields_gets_an_error_reply(
    nursery: trio.Nursery,
) -> None:
    client = Framed(await serve(nursery), rpc.MAX_FRAME, 5)
    with trio.fail_after(LIMIT):
        await client.send({"id": 7, "method": "", "args": {}})
        reply = rpc.parse_reply(await client.receive())
        assert reply.id == 7
        assert isinstance(reply.error, MalformedInput)
        await client.send({"id": 8, "method": "m", "args": []})
        assert isinstance(rpc.parse_reply(await client.receive()).error, MalformedInput)
        await client.send(rpc.request(9, "m", {}))
        assert rpc.parse_reply(await client.receive()).result["method"] == "m"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x05\xff\xff\xff\xff\xff", "malformed"),  # not CBOR
        (b"\x02\x18\x01", "malformed"),  # not canonical
        (encode_frame({"method": "m", "args": {}}), "malformed"),  # no id to answer
        (encode_frame(["id", 1]), "malformed"),
        (encode_varint(rpc.MAX_FRAME + 1), "too-large"),  # refused from its header alone
        (b"\xff" * 12, "malformed"),
    ],
)
async def test_garbage_and_oversized_frames_end_the_stream_with_a_logged_error(
    data: bytes, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_rpc, server, PEER, echo)
            await client.send_all(data)
            assert await client.receive_some(100) == b""  # the server closed its end
    (error,) = errors_logged(caplog)
    assert PEER in error
    assert f"({code})" in error


async def test_a_slow_drip_hits_the_deadline(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    client, server = trio.testing.memory_stream_pair()
    frame = encode_frame(rpc.request(1, "m", {"pad": b"x" * 50}))
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_rpc(server, PEER, echo, read_timeout=10))
            start = trio.current_time()
            with pytest.raises(trio.BrokenResourceError):
                await drip(client, frame, every=2)  # each byte within any per-read timeout
            elapsed = trio.current_time() - start
    assert 10 <= elapsed <= 13  # the frame's deadline runs from its first byte
    assert any("stalled inside a frame" in m for m in errors_logged(caplog))


async def test_an_idle_stream_is_closed_quietly(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_rpc(server, PEER, echo, read_timeout=10))
            async with RpcClient(client) as rpc_client:
                assert (await rpc_client.call("m", {}))["method"] == "m"
                await trio.sleep(11)
                with pytest.raises(Unavailable):
                    await rpc_client.call("m", {})
    assert errors_logged(caplog) == []
    assert any("sent nothing for 10" in r.getMessage() for r in caplog.records)


# --- the client against a scripted server --------------------------------------------------


async def scripted(nursery: trio.Nursery, script: Any) -> RpcClient:
    """A client whose server is `script(framed)`, a test function speaking raw frames."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(script, Framed(server, rpc.MAX_FRAME, 5))
    return RpcClient(client, read_timeout=5)


async def gather(client: RpcClient, calls: int) -> list[Any]:
    """Run `calls` calls at once; each entry is the result or the exception."""
    outcomes: list[Any] = [None] * calls

    async def one(i: int) -> None:
        try:
            outcomes[i] = await client.call("m", {"i": i})
        except PyrgosError as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as callers:
        for i in range(calls):
            callers.start_soon(one, i)
    return outcomes


async def test_the_client_keeps_every_call_in_flight(nursery: trio.Nursery) -> None:
    seen: list[int] = []

    async def server(framed: Framed) -> None:
        requests = [rpc.parse_request(await framed.receive()) for _ in range(20)]
        seen.extend(r.id for r in requests)  # twenty requests before a single reply
        for request in reversed(requests):
            await framed.send(rpc.result_reply(request.id, request.args["i"]))

    with trio.fail_after(LIMIT):
        client = await scripted(nursery, server)
        assert await gather(client, 20) == list(range(20))
    assert sorted(seen) == list(range(20))
    assert client.in_flight == 0


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"\x03garbage", MalformedInput),
        (encode_frame({"id": 999, "result": 1}), MalformedInput),  # a reply to no call
        (encode_frame({"id": 0}), MalformedInput),
        (b"", Unavailable),  # the server hangs up with calls in flight
    ],
)
async def test_a_bad_reply_fails_every_call_in_flight(
    nursery: trio.Nursery, reply: bytes, error: type[PyrgosError]
) -> None:
    async def server(framed: Framed) -> None:
        for _ in range(3):
            await framed.receive()
        if reply:
            await framed.stream.send_all(reply)
        await framed.aclose()

    with trio.fail_after(LIMIT):
        client = await scripted(nursery, server)
        outcomes = await gather(client, 3)
        assert all(isinstance(outcome, error) for outcome in outcomes)
        with pytest.raises(error):
            await client.call("m", {})  # the client stays failed: open a new stream


async def test_a_silent_server_hits_the_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async def server(framed: Framed) -> None:
        await framed.receive()
        await trio.sleep_forever()

    with trio.fail_after(100):
        client = await scripted(nursery, server)
        start = trio.current_time()
        with pytest.raises(Unavailable, match="sent nothing"):
            await client.call("m", {})
        assert trio.current_time() - start == pytest.approx(5)


async def test_a_call_given_up_leaves_the_others_working(nursery: trio.Nursery) -> None:
    got_both = trio.Event()
    requests: list[rpc.Request] = []

    async def server(framed: Framed) -> None:
        requests.extend([rpc.parse_request(await framed.receive()) for _ in range(2)])
        got_both.set()
        await trio.sleep(0.01)  # the first caller gives up meanwhile
        for request in requests:
            await framed.send(rpc.result_reply(request.id, request.method))

    first = trio.CancelScope()

    async def first_caller() -> None:
        with first:
            await client.call("first", {})

    async def give_up() -> None:
        await got_both.wait()
        first.cancel()

    with trio.fail_after(LIMIT):
        client = await scripted(nursery, server)
        async with trio.open_nursery() as callers:
            callers.start_soon(first_caller)
            callers.start_soon(give_up)
            assert await client.call("second", {}) == "second"
        assert first.cancelled_caught
        assert client.in_flight == 0


async def test_a_long_call_does_not_count_as_an_idle_stream(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async def slow(method: str, args: dict[str, Any], requester: bytes) -> Any:
        await trio.sleep(50)  # five times the server's idle deadline
        return "done"

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: serve_rpc(server, PEER, slow, read_timeout=10))
    with trio.fail_after(100):
        async with RpcClient(client, read_timeout=60) as rpc_client:
            assert await rpc_client.call("m", {}) == "done"
