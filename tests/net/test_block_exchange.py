"""The block exchange over in-memory stream pairs: pipelining, the window, fallback between
sources, cancel, Denied with real read auths, corrupt blocks, drops, stalls and garbage."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from node.net._blocks import READY_RESULTS, fetch_blocks, open_block_fetch, serve_blocks
from node.net._framed import RECEIVE_BYTES, Framed
from node.net._stream import WRITE_UNIT
from node.server import NodeService, NodeSettings
from node.store import Store
from protocols import bats
from protocols.blockexchange import (
    MAX_ANSWER_FRAME,
    MAX_ENTRIES,
    MAX_QUEUED,
    MAX_REQUEST_FRAME,
    WANT_BATCHES,
    Responder,
    block_answer,
    dont_have_answer,
    parse_request,
    request_message,
)
from protocols.cid import CID, CODEC_RAW, encode_varint
from protocols.errors import Corrupted, Denied, NotFound, Unavailable
from protocols.frames import encode_frame
from tests.net.streams import Recorder, drip

REQUESTER = "12D3KooWRequester"
LIMIT = 5  # seconds: every test here finishes in a fraction of that
GetBlock = Callable[[CID, bats.ReadAuth | None, bytes], Awaitable[bytes]]


def make_blocks(count: int, size: int = 4096, tag: bytes = b"") -> dict[CID, bytes]:
    out = {}
    for i in range(count):
        data = tag + i.to_bytes(4, "big") + secrets.token_bytes(size - 4 - len(tag))
        out[CID.of(CODEC_RAW, data)] = data
    return out


def store_of(blocks: dict[CID, bytes]) -> GetBlock:
    async def get_block(cid: CID, auth: bats.ReadAuth | None, requester: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        if cid not in blocks:
            raise NotFound(f"block {cid} is not stored here")
        return blocks[cid]

    return get_block


def source(nursery: trio.Nursery, get_block: GetBlock, **options: Any) -> trio.abc.Stream:
    """serve_blocks on one end of a fresh pair; returns the requester's end."""
    mine, theirs = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: serve_blocks(theirs, REQUESTER, get_block, **options))
    return mine


def public(cids: Any) -> list[tuple[CID, bats.ReadAuth | None]]:
    return [(cid, None) for cid in cids]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_blocks_flow_from_one_source(nursery: trio.Nursery) -> None:
    blocks = make_blocks(200)
    looking_up = peak = 0
    get = store_of(blocks)

    async def counted(cid: CID, auth: bats.ReadAuth | None, requester: bytes) -> bytes:
        nonlocal looking_up, peak
        assert requester == REQUESTER.encode()
        looking_up += 1
        peak = max(peak, looking_up)
        try:
            return await get(cid, auth, requester)
        finally:
            looking_up -= 1

    mine, theirs = trio.testing.memory_stream_pair()
    served = Recorder(theirs)
    nursery.start_soon(lambda: serve_blocks(served, REQUESTER, counted))
    recorder = Recorder(mine)
    with trio.fail_after(LIMIT):
        got = await fetch_blocks([recorder], public(blocks), window=32)
    assert got == blocks
    assert peak <= 2  # two answering tasks: lookups never pile up
    assert served.sends <= len(blocks) // 4  # answers go out in batches, not one write each
    # wants go out in batches as the window frees up, never one frame per round trip per block
    assert recorder.sends < len(blocks)


class Writes:
    """A Stream that keeps each write it is given (a copy: a view may be reused after)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_block_answers_go_out_in_whole_write_units() -> None:
    # A write of WRITE_UNIT bytes is one Yamux frame in one Noise message: a run of block
    # answers (and the small ones between them) fills every write up to its last.
    blocks = list(make_blocks(3, size=1 << 20).items())
    answers = [block_answer(*blocks[0]), dont_have_answer(blocks[1][0]), block_answer(*blocks[1])]
    answers += [block_answer(*blocks[2]), dont_have_answer(blocks[0][0])]
    stream = Writes()
    framed = Framed(stream, MAX_REQUEST_FRAME, LIMIT)
    with trio.fail_after(LIMIT):
        await framed.send_many(answers)
        await framed.send(block_answer(*blocks[2]))  # a later batch starts afresh
    first_batch = len(stream.writes) - 3  # the last block's lead, its whole units, its tail
    assert b"".join(stream.writes) == b"".join(encode_frame(answer) for answer in answers) + (
        encode_frame(block_answer(*blocks[2]))
    )
    assert all(len(write) % WRITE_UNIT == 0 for write in stream.writes[: first_batch - 1])
    assert len(stream.writes[first_batch - 1]) < WRITE_UNIT  # the batch's tail, flushed
    assert sum(map(len, stream.writes[:first_batch])) < 3 * (1 << 20) + 2 * WRITE_UNIT
    assert len(stream.writes[:first_batch]) <= 3 * 3 + 1  # no write of a few bytes of its own


async def raw_source(
    nursery: trio.Nursery, serve: Callable[[Framed, Responder], Awaitable[None]]
) -> trio.abc.Stream:
    """A source whose server side is a test function speaking raw frames."""
    mine, theirs = trio.testing.memory_stream_pair()
    nursery.start_soon(serve, Framed(theirs, MAX_REQUEST_FRAME, 1000), Responder())
    return mine


async def test_the_window_is_kept_full_and_never_exceeded(nursery: trio.Nursery) -> None:
    blocks = make_blocks(100)
    window = 16
    received: list[int] = []  # wants the server has been sent, sampled after each answer
    answered = 0

    async def serve(framed: Framed, responder: Responder) -> None:
        nonlocal answered
        wanted = 0

        async def read() -> None:
            nonlocal wanted
            while (message := await framed.receive()) is not None:
                wants, cancels = parse_request(message)
                assert not cancels
                wanted += len(wants)
                responder.receive(message)

        async with trio.open_nursery() as inner:
            inner.start_soon(read)
            while answered < len(blocks):
                await trio.testing.wait_all_tasks_blocked()
                received.append(wanted)
                want = responder.next_want()
                assert want is not None
                await framed.send(block_answer(want[0], blocks[want[0]]))
                answered += 1
            inner.cancel_scope.cancel()

    stream = await raw_source(nursery, serve)
    with trio.fail_after(LIMIT):
        got = await fetch_blocks([stream], public(blocks), window=window)
    assert got == blocks
    # before the first answer exactly `window` wants were out; after that they follow the
    # answers in batches of window // 8, never more than `window` ahead of them
    batch = window // WANT_BATCHES
    assert received[0] == window
    assert received == [min(len(blocks), window + n - n % batch) for n in range(len(blocks))]


async def test_dont_have_falls_back_to_a_second_source(nursery: trio.Nursery) -> None:
    blocks = make_blocks(60)
    evens = {cid: data for n, (cid, data) in enumerate(blocks.items()) if n % 2 == 0}
    asked_b: list[CID] = []
    get_all = store_of(blocks)

    async def b(cid: CID, auth: bats.ReadAuth | None, requester: bytes) -> bytes:
        asked_b.append(cid)
        return await get_all(cid, auth, requester)

    streams = [source(nursery, store_of(evens)), source(nursery, b)]
    with trio.fail_after(LIMIT):
        got = await fetch_blocks(streams, public(blocks), window=8)
    assert got == blocks
    assert set(blocks) - set(evens) <= set(asked_b)  # each odd block came from B
    assert len(asked_b) < len(blocks)  # and A served its share


async def test_missing_everywhere_is_not_found(nursery: trio.Nursery) -> None:
    blocks = make_blocks(4)
    missing = make_blocks(2, tag=b"missing")
    streams = [source(nursery, store_of(blocks)), source(nursery, store_of({}))]
    with trio.fail_after(LIMIT):
        async with open_block_fetch(streams, public({**blocks, **missing})) as fetch:
            results = {r.cid: r async for r in fetch}
        assert {cid for cid, r in results.items() if r.data is not None} == set(blocks)
        assert all(isinstance(results[cid].error, NotFound) for cid in missing)
        with pytest.raises(NotFound):
            await fetch_blocks([source(nursery, store_of(blocks))], public(missing))


def private_block(secret: bytes, payload: bytes) -> tuple[CID, bytes]:
    data = bats.raw_prefix([bats.inline_id(secret)]) + payload
    return CID.of(CODEC_RAW, data), data


async def test_read_auths_are_checked_by_the_node_service(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Denied comes from the node's one read rule; an auth is good only at the node it names."""
    secret = secrets.token_bytes(32)
    private_cid, private_data = private_block(secret, b"ciphertext" * 100)
    public_data = b"a public block"
    public_cid = CID.of(CODEC_RAW, public_data)
    services, stores = [], []
    for node in ("node-a", "node-b"):
        store = Store(tmp_path / node)
        with store.batch() as batch:
            store.put_block(batch, private_cid.raw, private_data)
            store.put_block(batch, public_cid.raw, public_data)
        stores.append(store)
        services.append(NodeService(store, NodeSettings(node_id=node, test_mode=True)))
    now = int(time.time())

    def auth_at(server: str) -> bats.ReadAuth:
        return bats.make_read_auth(secret, private_cid, REQUESTER.encode(), server.encode(), now)

    try:
        with trio.fail_after(LIMIT):
            streams = [source(nursery, service.get_block) for service in services]
            got = await fetch_blocks(
                streams,
                public([private_cid, public_cid]),
                authorize=lambda i, cid: auth_at(("node-a", "node-b")[i]),
            )
            assert got == {private_cid: private_data, public_cid: public_data}

            # node A's auth shown at both nodes: A serves it, B refuses it
            only_a = [(private_cid, auth_at("node-a"))]
            a = source(nursery, services[0].get_block)
            assert await fetch_blocks([a], only_a) == {private_cid: private_data}
            with pytest.raises(Denied, match="does not verify"):
                await fetch_blocks([source(nursery, services[1].get_block)], only_a)
            # without an auth, a private block looks missing (DontHave): see the next test
            with pytest.raises(NotFound):
                await fetch_blocks([source(nursery, services[0].get_block)], public([private_cid]))
    finally:
        for store in stores:
            store.close()


async def test_a_source_dropping_mid_transfer_resumes_from_another(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    blocks = make_blocks(80)
    streams = [dropping_source(nursery, blocks, after=10), source(nursery, store_of(blocks))]
    with trio.fail_after(LIMIT):
        got = await fetch_blocks(streams, public(blocks), window=8)
    assert got == blocks
    assert any("source 0" in r.getMessage() for r in caplog.records)


def dropping_source(nursery: trio.Nursery, blocks: dict[CID, bytes], after: int) -> trio.abc.Stream:
    """A source whose connection goes away while it serves its `after`-th block."""
    mine, theirs = trio.testing.memory_stream_pair()
    get_all = store_of(blocks)
    served = 0

    async def dropping(cid: CID, auth: bats.ReadAuth | None, requester: bytes) -> bytes:
        nonlocal served
        served += 1
        if served == after:
            await theirs.aclose()
        return await get_all(cid, auth, requester)

    nursery.start_soon(lambda: serve_blocks(theirs, REQUESTER, dropping))
    return mine


async def test_a_drop_with_no_other_source_fails_cleanly(nursery: trio.Nursery) -> None:
    blocks = make_blocks(30)
    with trio.fail_after(LIMIT):
        stream = dropping_source(nursery, blocks, after=5)
        async with open_block_fetch([stream], public(blocks), window=4) as fetch:
            results = [r async for r in fetch]
    assert sorted(r.cid for r in results) == sorted(blocks)  # one result each, none lost
    fetched = [r for r in results if r.data is not None]
    assert all(r.data == blocks[r.cid] for r in fetched)
    assert 1 <= len(fetched) < len(blocks)
    assert all(isinstance(r.error, Unavailable) for r in results if r.data is None)
    with trio.fail_after(LIMIT), pytest.raises(Unavailable):  # raised plain, not in a group
        await fetch_blocks([dropping_source(nursery, blocks, after=5)], public(blocks), window=4)


async def test_a_corrupt_block_drops_that_source(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    blocks = make_blocks(20)
    bad = next(iter(blocks))
    lying = {**blocks, bad: b"not the block"}
    streams = [source(nursery, store_of(lying)), source(nursery, store_of(blocks))]
    with trio.fail_after(LIMIT):
        got = await fetch_blocks(streams, public(blocks), window=4)
        assert got == blocks
        with pytest.raises(Corrupted):
            await fetch_blocks([source(nursery, store_of(lying))], public([bad]))
    assert any("(corrupted)" in m for m in errors_logged(caplog))


async def test_cancel_reaches_the_source_and_drops_the_result(nursery: trio.Nursery) -> None:
    blocks = make_blocks(4)
    cids = list(blocks)
    cancelled: list[CID] = []
    all_wanted = trio.Event()

    async def serve(framed: Framed, responder: Responder) -> None:
        wanted: list[CID] = []
        while len(wanted) < 4:
            wanted += [cid for cid, _ in parse_request(await framed.receive())[0]]
        all_wanted.set()
        _, cancels = parse_request(await framed.receive())
        cancelled.extend(cancels)
        for cid in wanted:  # including the cancelled one: it was already on its way
            await framed.send(block_answer(cid, blocks[cid]))
        await trio.sleep_forever()

    stream = await raw_source(nursery, serve)
    with trio.fail_after(LIMIT):
        async with open_block_fetch([stream], public(blocks)) as fetch:
            await all_wanted.wait()
            fetch.cancel(cids[1])
            results = [r async for r in fetch]
            assert fetch.strays == 1
    assert cancelled == [cids[1]]
    assert [r.cid for r in results] == [cids[0], cids[2], cids[3]]


async def test_a_slow_consumer_bounds_what_is_read(nursery: trio.Nursery) -> None:
    blocks = make_blocks(40, size=64 * 1024)
    recorder = Recorder(source(nursery, store_of(blocks)))
    with trio.fail_after(LIMIT):
        async with open_block_fetch([recorder], public(blocks), window=32) as fetch:
            first = await fetch.__anext__()
            await trio.testing.wait_all_tasks_blocked()
            # 32 blocks are on their way, but only what the consumer can take is read
            assert recorder.bytes_received <= (READY_RESULTS + 2) * 64 * 1024 + RECEIVE_BYTES
            rest = [r async for r in fetch]
    assert {r.cid: r.data for r in [first, *rest]} == blocks


async def test_a_stalled_source_is_dropped_after_its_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    blocks = make_blocks(10)

    async def silent(framed: Framed, responder: Responder) -> None:
        await trio.sleep_forever()

    streams = [await raw_source(nursery, silent), source(nursery, store_of(blocks))]
    with trio.fail_after(100):
        start = trio.current_time()
        got = await fetch_blocks(streams, public(blocks), window=4, read_timeout=7)
        assert got == blocks
        assert trio.current_time() - start == pytest.approx(7)


async def test_garbage_from_a_source_drops_it(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    blocks = make_blocks(10)

    async def garbage(framed: Framed, responder: Responder) -> None:
        await framed.receive()
        await framed.stream.send_all(b"\x04\xff\xff\xff\xff")
        await trio.sleep_forever()

    async def stray_kind(framed: Framed, responder: Responder) -> None:
        message = await framed.receive()
        cid = parse_request(message)[0][0][0]
        await framed.send({"cid": cid, "kind": "maybe"})
        await trio.sleep_forever()

    streams = [
        await raw_source(nursery, garbage),
        await raw_source(nursery, stray_kind),
        source(nursery, store_of(blocks)),
    ]
    with trio.fail_after(LIMIT):
        assert await fetch_blocks(streams, public(blocks), window=2) == blocks
    assert sum("(malformed)" in m for m in errors_logged(caplog)) == 2


# --- hostile requesters against serve_blocks -----------------------------------------------


async def run_against_server(data: bytes, get_block: GetBlock | None = None) -> bytes:
    """Send `data` to serve_blocks; return all it answered before closing the stream."""
    mine, theirs = trio.testing.memory_stream_pair()
    answered = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_blocks, theirs, REQUESTER, get_block or store_of({}))
        await mine.send_all(data)
        while chunk := await mine.receive_some(MAX_ANSWER_FRAME):
            answered += chunk
    return answered


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x05\xff\xff\xff\xff\xff", "malformed"),
        (encode_frame({"want": [], "cancel": []}), "malformed"),
        (encode_frame({"wants": 1}), "malformed"),
        (encode_varint(MAX_REQUEST_FRAME + 1), "too-large"),  # from its header alone
        (encode_varint(MAX_ANSWER_FRAME), "too-large"),  # a request is never block-sized
        (b"\x80" * 12, "malformed"),
    ],
)
async def test_garbage_and_oversized_requests_end_the_stream_with_a_logged_error(
    data: bytes, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(LIMIT):
        assert await run_against_server(data) == b""
    (error,) = errors_logged(caplog)
    assert REQUESTER in error
    assert f"({code})" in error


async def test_answers_before_garbage_are_still_sent(caplog: pytest.LogCaptureFixture) -> None:
    blocks = make_blocks(1)
    (cid,) = blocks
    wants = encode_frame(request_message(public([cid])))
    with trio.fail_after(LIMIT):
        answered = await run_against_server(wants + b"\x01\xff", store_of(blocks))
    assert answered in (b"", encode_frame(block_answer(cid, blocks[cid])))
    assert any("(malformed)" in m for m in errors_logged(caplog))


async def test_a_requester_over_the_queue_limit_is_cut_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = trio.Event()

    async def stuck(cid: CID, auth: bats.ReadAuth | None, requester: bytes) -> bytes:
        await never.wait()
        raise AssertionError

    cids = list(make_blocks(MAX_QUEUED + 8 + 1, size=8))  # 8 taken by lookups, then the queue
    data = b"".join(
        encode_frame(request_message(public(cids[i : i + MAX_ENTRIES])))
        for i in range(0, len(cids), MAX_ENTRIES)
    )
    with trio.fail_after(LIMIT):
        assert await run_against_server(data, stuck) == b""
    assert any("more than 1024 wants" in m for m in errors_logged(caplog))


async def test_server_answers_dont_have_and_denied_per_cid() -> None:
    blocks = make_blocks(1)
    (cid,) = blocks
    other, refused = make_blocks(2, tag=b"x")

    async def lookup(c: CID, auth: bats.ReadAuth | None, requester: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        if c == refused:
            raise Denied("the BAT presented is not one of this block's")
        if c == other:
            raise RuntimeError("a bug")
        return blocks[c]

    mine, theirs = trio.testing.memory_stream_pair()
    framed = Framed(mine, MAX_ANSWER_FRAME, 5)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_blocks(theirs, REQUESTER, lookup))
            await framed.send(request_message(public([cid, other, refused])))
            answers = [await framed.receive() for _ in range(3)]
            await framed.aclose()
    expected = [
        block_answer(cid, blocks[cid]),
        dont_have_answer(other),
        {
            "cid": refused,
            "kind": "denied",
            "message": "the BAT presented is not one of this block's",
        },
    ]
    assert sorted(answers, key=lambda a: a["cid"]) == sorted(expected, key=lambda a: a["cid"])


async def test_a_slow_drip_to_the_server_hits_the_deadline(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    frame = encode_frame(request_message(public(make_blocks(20, size=8))))
    mine, theirs = trio.testing.memory_stream_pair()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: serve_blocks(theirs, REQUESTER, store_of({}), read_timeout=9)
            )
            start = trio.current_time()
            with pytest.raises(trio.BrokenResourceError):
                await drip(mine, frame, every=1)
            assert 9 <= trio.current_time() - start <= 11
    assert any("stalled inside a frame" in m for m in errors_logged(caplog))


async def test_a_requester_that_stops_reading_does_not_wedge_the_server(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    blocks = make_blocks(8, size=64 * 1024)
    mine, theirs = trio.testing.lockstep_stream_pair()  # a send waits for the reader
    ended = trio.Event()

    async def server() -> None:
        await serve_blocks(theirs, REQUESTER, store_of(blocks), read_timeout=6)
        ended.set()

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            await mine.send_all(encode_frame(request_message(public(blocks))))
            start = trio.current_time()
            await ended.wait()  # never read: the server's send gives up rather than hang
            assert trio.current_time() - start == pytest.approx(6)
    assert any("did not accept a frame" in m for m in errors_logged(caplog))


async def test_a_slow_lookup_does_not_count_as_an_idle_stream(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    blocks = make_blocks(3)
    get = store_of(blocks)

    async def slow(cid: CID, auth: bats.ReadAuth | None, requester: bytes) -> bytes:
        await trio.sleep(25)  # longer than the server's idle deadline, with nothing to read
        return await get(cid, auth, requester)

    stream = source(nursery, slow, read_timeout=10)
    with trio.fail_after(200):
        assert await fetch_blocks([stream], public(blocks), read_timeout=60) == blocks
