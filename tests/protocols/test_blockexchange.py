"""Tests of protocols.blockexchange: message rules, the serving queue, the requester's window,
fallback and cancel, a model test against simulated sources, and fuzzing of every decoder."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.bats import ReadAuth, make_read_auth
from protocols.blockexchange import (
    MAX_ENTRIES,
    MAX_QUEUED,
    MAX_REQUEST_FRAME,
    Fetched,
    Requester,
    Responder,
    answer_for,
    block_answer,
    denied_answer,
    dont_have_answer,
    parse_answer,
    parse_request,
    request_message,
)
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW, MH_IDENTITY
from protocols.errors import (
    Corrupted,
    Denied,
    MalformedInput,
    NotFound,
    PyrgosError,
    TooLarge,
    Unavailable,
)
from protocols.frames import FrameDecoder, encode_frame

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Hypothesis caches runs by their draws; b"" and 0 hash alike, so under `python -b` its own
# lookups can raise BytesWarning. Not ours to fail on.
pytestmark = pytest.mark.filterwarnings(r"ignore::BytesWarning:hypothesis\.internal\..*")
MODEL = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BLOCKS = {CID.of(CODEC_RAW, bytes([i]) * 100): bytes([i]) * 100 for i in range(40)}
CIDS = list(BLOCKS)
SECRET = b"s" * 32


def auth_for(cid: CID, server: bytes = b"node-a") -> ReadAuth:
    return make_read_auth(SECRET, cid, b"requester", server, now=1_000)


def wants(cids: list[CID]) -> list[tuple[CID, ReadAuth | None]]:
    return [(cid, None) for cid in cids]


def sent_wants(messages: list[Any]) -> list[CID]:
    return [cid for message in messages for cid, _ in parse_request(message)[0]]


def sent_cancels(messages: list[Any]) -> list[CID]:
    return [cid for message in messages for cid in parse_request(message)[1]]


def drain(requester: Requester) -> list[Fetched]:
    results = []
    while (result := requester.next_result()) is not None:
        results.append(result)
    return results


# --- messages ------------------------------------------------------------------------------


def test_request_messages_round_trip() -> None:
    auth = auth_for(CIDS[0])
    message = request_message([(CIDS[0], auth), (CIDS[1], None)], [CIDS[2]])
    assert message == {
        "cancel": [CIDS[2]],
        "want": [
            [CIDS[0], {"id": auth.bat_id, "exp": auth.expiry, "mac": auth.mac}],
            [CIDS[1], None],
        ],
    }
    assert parse_request(cbor.decode(cbor.encode(message))) == (
        [(CIDS[0], auth), (CIDS[1], None)],
        [CIDS[2]],
    )
    assert parse_request(request_message(cancels=[CIDS[0]])) == ([], [CIDS[0]])


def test_a_full_request_fits_its_frame_cap() -> None:
    biggest = CID(CODEC_DAG_CBOR, MH_IDENTITY, b"x" * 36)
    auth = ReadAuth(b"\x12\x20" + b"i" * 32, 2**64 - 1, b"m" * 32)
    message = request_message(
        [(biggest, auth)] * (MAX_ENTRIES // 2), [biggest] * (MAX_ENTRIES // 2)
    )
    assert len(encode_frame(message)) < MAX_REQUEST_FRAME
    assert len(encode_frame(request_message([(biggest, auth)] * MAX_ENTRIES))) < MAX_REQUEST_FRAME


@pytest.mark.parametrize(
    "message",
    [
        {},
        [],
        {"want": []},
        {"cancel": []},
        {"want": [[CIDS[0], None]], "extra": 1},
        {"want": [[CIDS[0]]]},
        {"want": [[CIDS[0], None, None]]},
        {"want": [[CIDS[0].raw, None]]},
        {"want": [[CIDS[0], {"id": b"x", "exp": 1, "mac": b"m" * 32}]]},
        {"want": [[CIDS[0], {"id": b"\x00\x20" + b"x" * 32, "exp": -1, "mac": b"m" * 32}]]},
        {"want": {"a": 1}},
        {"cancel": [CIDS[0].text]},
        {"cancel": [CIDS[0]] * (MAX_ENTRIES + 1)},
        {"cancel": [CIDS[0]] * 200, "want": [[CIDS[0], None]] * 57},
    ],
)
def test_bad_requests_are_malformed(message: Any) -> None:
    with pytest.raises(MalformedInput):
        parse_request(message)
    with pytest.raises(MalformedInput):
        Responder().receive(message)


def test_answers_round_trip_and_are_checked() -> None:
    cid = CIDS[0]
    block = parse_answer(cbor.decode(cbor.encode(block_answer(cid, BLOCKS[cid]))))
    assert (block.cid, block.kind, block.data) == (cid, "block", BLOCKS[cid])
    assert parse_answer(dont_have_answer(cid)).kind == "dont-have"
    denied = parse_answer(denied_answer(cid, "the read auth has expired"))
    assert (denied.kind, denied.message) == ("denied", "the read auth has expired")
    assert parse_answer(denied_answer(cid, "x" * 1000)).message == "x" * 256
    with pytest.raises(Corrupted):
        parse_answer(block_answer(cid, BLOCKS[CIDS[1]]))


@pytest.mark.parametrize(
    "message",
    [
        None,
        {"cid": CIDS[0]},
        {"cid": CIDS[0], "kind": "block"},
        {"cid": CIDS[0], "kind": "block", "data": "text"},
        {"cid": CIDS[0], "kind": "dont-have", "data": b""},
        {"cid": CIDS[0], "kind": "denied"},
        {"cid": CIDS[0], "kind": "denied", "message": ""},
        {"cid": CIDS[0], "kind": "denied", "message": "x" * 257},
        {"cid": CIDS[0], "kind": "maybe"},
        {"cid": CIDS[0].raw, "kind": "dont-have"},
        {"cid": CIDS[0], "kind": b"dont-have"},
    ],
)
def test_bad_answers_are_malformed(message: Any) -> None:
    with pytest.raises(MalformedInput):
        parse_answer(message)


def test_answer_for_maps_the_lookup_outcome() -> None:
    cid = CIDS[0]
    assert answer_for(cid, BLOCKS[cid]) == block_answer(cid, BLOCKS[cid])
    assert answer_for(cid, NotFound("no")) == dont_have_answer(cid)
    assert answer_for(cid, Denied("the read auth does not verify")) == denied_answer(
        cid, "the read auth does not verify"
    )
    assert answer_for(cid, Corrupted("bad copy")) == dont_have_answer(cid)


# --- the serving queue ---------------------------------------------------------------------


def test_responder_applies_cancels_then_wants_in_order() -> None:
    responder = Responder()
    first, second = auth_for(CIDS[0]), auth_for(CIDS[0], b"node-b")
    responder.receive(request_message([(CIDS[0], first), (CIDS[1], None), (CIDS[2], None)]))
    responder.receive(request_message([(CIDS[0], second), (CIDS[3], None)], [CIDS[1], CIDS[9]]))
    assert len(responder) == 3
    assert responder.next_want() == (CIDS[0], second)  # kept its place, took the newer auth
    assert responder.next_want() == (CIDS[2], None)
    responder.receive(request_message([(CIDS[1], None)], [CIDS[1]]))  # cancel, then want again
    assert responder.next_want() == (CIDS[3], None)
    assert responder.next_want() == (CIDS[1], None)
    assert responder.next_want() is None


def test_responder_queue_is_bounded() -> None:
    responder = Responder()
    for start in range(0, MAX_QUEUED, MAX_ENTRIES):
        responder.receive(request_message(wants(fresh_cids(start, MAX_ENTRIES))))
    assert len(responder) == MAX_QUEUED
    responder.receive(request_message(wants(fresh_cids(0, 10))))  # repeats do not grow it
    with pytest.raises(TooLarge):
        responder.receive(request_message(wants(fresh_cids(MAX_QUEUED, 1))))


def fresh_cids(start: int, count: int) -> list[CID]:
    return [CID.of(CODEC_RAW, i.to_bytes(4, "big")) for i in range(start, start + count)]


# --- the requester -------------------------------------------------------------------------


def test_requester_keeps_a_full_window_in_flight() -> None:
    requester = Requester(wants(CIDS), window=8)
    first = requester.outbound(0)
    assert sent_wants(first) == CIDS[:8]  # eight wants before any answer
    assert requester.outbound(0) == []
    for n, cid in enumerate(CIDS[:5]):
        requester.receive(0, block_answer(cid, BLOCKS[cid]))
        assert sent_wants(requester.outbound(0)) == [CIDS[8 + n]]  # one freed, one more sent
        assert requester.in_flight(0) == 8
    assert [result.cid for result in drain(requester)] == CIDS[:5]
    assert not requester.finished


def test_wants_go_out_in_batches_while_the_window_is_full() -> None:
    many = fresh_cids(0, 100)
    requester = Requester(wants(many), window=32)  # batches of 32 // 8 = 4
    out = sent_wants(requester.outbound(0))
    assert out == many[:32]
    batches = []
    for answered, cid in enumerate(many, start=1):
        requester.receive(0, dont_have_answer(cid))
        batch = sent_wants(requester.outbound(0))
        if batch:
            batches.append(len(batch))
        out += batch
        if len(out) < len(many):
            assert len(out) - answered >= 32 - 3  # seven eighths of the window stay out
    assert out == many  # every want sent once, in order
    assert batches[:-1] == [4] * (len(batches) - 1)  # the last batch may be short
    assert len(drain(requester)) == len(many)
    assert requester.finished


def test_cancels_and_the_last_wants_do_not_wait_for_a_batch() -> None:
    requester = Requester(wants(fresh_cids(0, 34)), window=32)
    assert len(sent_wants(requester.outbound(0))) == 32
    requester.cancel(fresh_cids(0, 1)[0])  # frees a slot: want 32 rides with the cancel
    assert requester.outbound(0) == [
        request_message(wants(fresh_cids(32, 1)), cancels=fresh_cids(0, 1))
    ]
    requester.receive(0, dont_have_answer(fresh_cids(1, 1)[0]))
    assert requester.outbound(0) == []  # want 33 waits: the window is full again
    requester.receive(0, dont_have_answer(fresh_cids(2, 1)[0]))
    # nothing is left to add, so no batch will fill: want 33 goes out alone
    assert sent_wants(requester.outbound(0)) == fresh_cids(33, 1)


def test_requester_finishes_with_one_result_per_distinct_want() -> None:
    requester = Requester(wants(CIDS[:3] + CIDS[:2] + CIDS[2:3]), window=2)
    for _ in range(2):
        for cid in sent_wants(requester.outbound(0)):
            requester.receive(0, block_answer(cid, BLOCKS[cid]))
    assert [r.data for r in drain(requester)] == [BLOCKS[c] for c in CIDS[:3]]
    assert requester.outbound(0) == []
    assert requester.finished


def test_identity_cids_need_no_source() -> None:
    inline = CID(CODEC_RAW, MH_IDENTITY, b"tiny block")
    requester = Requester([(inline, None)])
    assert requester.outbound(0) == []
    assert drain(requester) == [Fetched(inline, data=b"tiny block")]
    assert requester.finished


def test_wants_spread_over_sources_and_fall_back_on_dont_have() -> None:
    requester = Requester(wants(CIDS[:6]), sources=2, window=4)
    at_a, at_b = sent_wants(requester.outbound(0)), sent_wants(requester.outbound(1))
    assert sorted(at_a + at_b) == sorted(CIDS[:6])
    assert abs(len(at_a) - len(at_b)) <= 1
    requester.receive(0, dont_have_answer(at_a[0]))
    assert sent_wants(requester.outbound(1)) == [at_a[0]]  # B has room and has not refused it
    requester.receive(1, dont_have_answer(at_a[0]))
    (result,) = drain(requester)
    assert isinstance(result.error, NotFound)


def test_denied_anywhere_and_found_nowhere_is_denied_with_the_reason() -> None:
    requester = Requester(wants(CIDS[:1]), sources=2)
    assert sent_wants(requester.outbound(0)) == CIDS[:1]  # ties go to the first source
    requester.receive(0, denied_answer(CIDS[0], "the read auth has expired"))
    assert sent_wants(requester.outbound(1)) == CIDS[:1]
    requester.receive(1, dont_have_answer(CIDS[0]))
    (result,) = drain(requester)
    assert isinstance(result.error, Denied)
    assert result.error.message == "the read auth has expired"


def test_authorize_gives_each_source_its_own_auth() -> None:
    servers = [b"node-a", b"node-b"]
    requester = Requester(
        wants(CIDS[:1]), sources=2, authorize=lambda i, cid: auth_for(cid, servers[i])
    )
    [(cid, auth)] = parse_request(requester.outbound(0)[0])[0]
    assert auth == auth_for(cid, b"node-a")
    requester.receive(0, dont_have_answer(cid))
    [(_, auth)] = parse_request(requester.outbound(1)[0])[0]
    assert auth == auth_for(cid, b"node-b")


def test_a_corrupt_block_drops_the_source_and_moves_its_wants() -> None:
    requester = Requester(wants(CIDS[:4]), sources=2, window=2)
    at_a, at_b = sent_wants(requester.outbound(0)), sent_wants(requester.outbound(1))
    with pytest.raises(Corrupted):
        requester.receive(0, block_answer(at_a[0], b"not the block"))
    requester.source_failed(0, Corrupted("bad block"))
    assert not requester.alive(0)
    assert requester.outbound(0) == []
    for cid in at_b:
        requester.receive(1, block_answer(cid, BLOCKS[cid]))
    assert sorted(sent_wants(requester.outbound(1))) == sorted(at_a)
    with pytest.raises(Corrupted):
        requester.receive(1, block_answer(at_a[0], b"also not the block"))
    requester.source_failed(1, Corrupted("bad block"))
    results = {r.cid: r for r in drain(requester)}
    assert all(results[cid].data == BLOCKS[cid] for cid in at_b)
    assert all(isinstance(results[cid].error, Corrupted) for cid in at_a)
    assert requester.finished


def test_when_every_source_fails_the_rest_fail_unavailable() -> None:
    requester = Requester(wants(CIDS), sources=2, window=3)
    requester.outbound(0)
    requester.outbound(1)
    requester.source_failed(0, Unavailable("reset"))
    requester.source_failed(1, MalformedInput("garbage"))
    results = drain(requester)
    assert sorted(r.cid for r in results) == sorted(CIDS)
    assert all(isinstance(r.error, Unavailable) for r in results)
    assert requester.finished


def test_cancel_sends_a_cancel_only_for_what_was_sent() -> None:
    requester = Requester(wants(CIDS[:10]), window=4)
    assert sent_wants(requester.outbound(0)) == CIDS[:4]
    requester.cancel(CIDS[1])  # sent: the server must hear of it
    assert requester.in_flight(0) == 4  # the freed slot went to the next want
    requester.cancel(CIDS[4])  # assigned but not sent: just dropped
    requester.cancel(CIDS[8])  # not read from the wants yet: skipped when it is
    messages = requester.outbound(0)
    assert sent_cancels(messages) == [CIDS[1]]
    assert sent_wants(messages) == [CIDS[5]]
    requester.receive(0, block_answer(CIDS[1], BLOCKS[CIDS[1]]))  # already in flight: ignored
    assert requester.strays == 1
    for cid in [CIDS[0], CIDS[2], CIDS[3], CIDS[5]]:
        requester.receive(0, block_answer(cid, BLOCKS[cid]))
    for cid in sent_wants(requester.outbound(0)):
        requester.receive(0, block_answer(cid, BLOCKS[cid]))
    got = [r.cid for r in drain(requester)]
    assert sorted(got) == sorted(set(CIDS[:10]) - {CIDS[1], CIDS[4], CIDS[8]})
    assert requester.finished


def test_cancel_withdraws_a_settled_result_not_yet_taken() -> None:
    requester = Requester(wants(CIDS[:2]))
    requester.outbound(0)
    requester.receive(0, block_answer(CIDS[0], BLOCKS[CIDS[0]]))
    requester.cancel(CIDS[0])
    assert requester.next_result() is None
    requester.receive(0, block_answer(CIDS[1], BLOCKS[CIDS[1]]))
    assert drain(requester) == [Fetched(CIDS[1], data=BLOCKS[CIDS[1]])]


def test_window_limits() -> None:
    with pytest.raises(ValueError, match="window"):
        Requester([], window=0)
    with pytest.raises(ValueError, match="window"):
        Requester([], window=MAX_QUEUED + 1)
    with pytest.raises(ValueError, match="source"):
        Requester([], sources=0)
    assert Requester([]).finished


# --- a model test: random sources, random order, random cancels and failures ----------------

BEHAVIOURS = st.sampled_from(["has", "has", "dont-have", "denied", "corrupt"])


@given(data=st.data())
@MODEL
def test_every_want_settles_once_whatever_the_sources_do(data: st.DataObject) -> None:
    sources = data.draw(st.integers(1, 3), label="sources")
    window = data.draw(st.integers(1, 6), label="window")
    cids = data.draw(st.lists(st.sampled_from(CIDS), min_size=1, max_size=25), label="wants")
    behaviour = [
        {cid: data.draw(BEHAVIOURS, label="behaviour") for cid in CIDS} for _ in range(sources)
    ]
    requester = Requester(wants(cids), sources=sources, window=window)
    responders = [Responder(max_queued=window) for _ in range(sources)]
    working: list[list[CID]] = [[] for _ in range(sources)]
    failed: set[int] = set()
    cancelled: set[CID] = set()
    results: list[Fetched] = []
    for _ in range(2_000):
        for i in range(sources):
            for message in requester.outbound(i):
                responders[i].receive(message)  # TooLarge here would be a window breach
            assert requester.in_flight(i) <= window
        results += drain(requester)
        if requester.finished:
            break
        actions = [("take", i) for i in range(sources) if len(responders[i])]
        actions += [("answer", i) for i in range(sources) if working[i]]
        actions += [("fail", i) for i in range(sources) if i not in failed]
        actions.append(("cancel", 0))
        action, i = data.draw(st.sampled_from(actions), label="action")
        if action == "take":
            want = responders[i].next_want()
            assert want is not None
            working[i].append(want[0])
        elif action == "answer":
            cid = working[i].pop(data.draw(st.integers(0, len(working[i]) - 1)))
            kind = behaviour[i][cid]
            answer = {
                "has": block_answer(cid, BLOCKS[cid]),
                "dont-have": dont_have_answer(cid),
                "denied": denied_answer(cid, "no"),
                "corrupt": block_answer(cid, b"junk"),
            }[kind]
            try:
                requester.receive(i, answer)
            except Corrupted as exc:
                requester.source_failed(i, exc)
                failed.add(i)
        elif action == "fail":
            requester.source_failed(i, Unavailable("disconnected"))
            failed.add(i)
        else:
            cid = data.draw(st.sampled_from(cids))
            requester.cancel(cid)
            cancelled.add(cid)
    else:
        pytest.fail("the fetch did not finish")
    settled = [r.cid for r in results]
    assert len(settled) == len(set(settled))  # exactly one result per want
    assert set(cids) - cancelled <= set(settled) <= set(cids)
    for result in results:
        if result.data is not None:
            assert result.data == BLOCKS[result.cid]
            continue
        assert isinstance(result.error, NotFound | Denied | Corrupted | Unavailable)
        honest = [i for i in range(sources) if i not in failed]
        assert all(behaviour[i][result.cid] != "has" for i in honest)
        if not failed:
            refusals = {behaviour[i][result.cid] for i in range(sources)}
            assert isinstance(result.error, Denied) == ("denied" in refusals)


# --- fuzzing: every decoder rejects, never crashes -----------------------------------------

CBOR_VALUES = st.recursive(
    st.one_of(
        st.integers(-(2**64), 2**64 - 1),
        st.binary(max_size=40),
        st.text(max_size=12),
        st.booleans(),
        st.none(),
        st.sampled_from(CIDS[:3]),
        st.sampled_from(["want", "cancel", "cid", "kind", "block", "dont-have", "denied"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["want", "cancel", "cid", "kind", "data", "message", "id", "exp"]),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=16,
)
VALID = [
    request_message([(CIDS[0], auth_for(CIDS[0])), (CIDS[1], None)], [CIDS[2]]),
    block_answer(CIDS[0], BLOCKS[CIDS[0]]),
    dont_have_answer(CIDS[1]),
    denied_answer(CIDS[2], "no"),
]


def rejects_or_accepts(message: Any) -> None:
    requester = Requester(wants(CIDS[:3]))
    requester.outbound(0)
    checks = (parse_request, parse_answer, Responder().receive, partial(requester.receive, 0))
    for check in checks:
        with contextlib.suppress(MalformedInput, TooLarge, Corrupted):
            check(message)


@given(message=CBOR_VALUES)
@FUZZ
def test_fuzz_random_messages(message: Any) -> None:
    rejects_or_accepts(message)


@given(
    which=st.sampled_from(VALID),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),
)
@FUZZ
def test_fuzz_mutated_frames(which: Any, edits: list[tuple[int, int]]) -> None:
    frame = bytearray(encode_frame(which))
    for position, byte in edits:
        frame[position % len(frame)] = byte
    try:
        messages = FrameDecoder(MAX_REQUEST_FRAME).feed(bytes(frame))
    except (MalformedInput, TooLarge):
        return
    for message in messages:
        rejects_or_accepts(message)


def test_error_results_are_typed() -> None:
    requester = Requester(wants(CIDS[:1]))
    requester.outbound(0)
    requester.receive(0, dont_have_answer(CIDS[0]))
    (result,) = drain(requester)
    assert isinstance(result.error, PyrgosError)
    assert result.error.code == "not-found"
