"""Tests of the PKI log rules (protocols.pki, protocols.peerid): node ids, records, entries and
heads on the wire, every rule of `apply_entry`, and what `verify_served` refuses."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import SigningKey
from protocols.errors import (
    Conflict,
    Corrupted,
    InvalidName,
    InvalidSignature,
    MalformedInput,
    PyrgosError,
    TooLarge,
)
from protocols.peerid import base58_decode, base58_encode, check_peer_id, peer_id_of, peer_key
from protocols.pki import (
    CLAIM_LIFETIME,
    MAX_ADDRS,
    MAX_CLAIM_LIFETIME,
    MAX_CLOCK_SKEW,
    MAX_ENTRY_BYTES,
    MAX_MIRRORS,
    BrokenChain,
    Changes,
    Claim,
    Entry,
    ForkDetected,
    IndexOverlay,
    KeyUse,
    NodeRecord,
    Record,
    SignedHead,
    apply_entry,
    next_entry,
    next_expiry,
    record_from_cbor,
    record_to_cbor,
    verify_head,
    verify_served,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = 1_700_000_000


@functools.cache
def key(n: int) -> SigningKey:
    return SigningKey.from_seed(n.to_bytes(32, "big"))


def node_id(n: int) -> str:
    return peer_id_of(key(1000 + n).public)


ROOT = key(999)
ROOT_ID = peer_id_of(ROOT.public)
HOME, OTHER_HOME = node_id(1), node_id(2)


def claim(
    username: str = "alice",
    who: int = 1,
    expiry: int = T0 + CLAIM_LIFETIME,
    home: str = HOME,
    mirrors: Sequence[str] = (),
    previous: int | None = None,
) -> Claim:
    old = None if previous is None else key(previous)
    return Claim.create(key(who), username, home, expiry, mirrors=mirrors, previous=old)


class Log:
    """A PKI node in memory: its index, its entries, and its signed heads."""

    def __init__(self, pki_key: SigningKey = ROOT) -> None:
        self.index = IndexOverlay()
        self.entries: list[Entry] = []
        self.pki_key = pki_key

    def append(self, record: Record, now: int = T0) -> Entry:
        entry = next_entry(self.index, record, now)
        self.index.apply(entry, apply_entry(self.index, entry, now))
        self.entries.append(entry)
        return entry

    def refuse(self, record: Record, now: int = T0) -> type[PyrgosError]:
        """Apply `record` expecting a refusal; the index must not change."""
        before = self.snapshot()
        entry = next_entry(self.index, record, now)
        with pytest.raises(PyrgosError) as info:
            apply_entry(self.index, entry, now)
        assert self.snapshot() == before
        return type(info.value)

    def snapshot(self) -> tuple[Any, ...]:
        i = self.index
        return (i.tip(), dict(i.claims), dict(i.keys), dict(i.nodes), len(i.entries))

    def head(self, seq: int | None = None) -> SignedHead:
        seq = len(self.entries) if seq is None else seq
        entry_hash = self.entries[seq - 1].hash if seq else None
        return SignedHead.create(self.pki_key, seq, entry_hash)

    def current(self, username: str) -> Claim | None:
        return self.index.claim(username)


# ================================================================================================
# node ids


def test_peer_id_matches_libp2p() -> None:
    # py-libp2p's ID.from_pubkey of the Ed25519 key with the all-zero seed.
    zero = SigningKey.from_seed(bytes(32))
    assert peer_id_of(zero.public) == "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    assert peer_key("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN") == zero.public


@given(st.binary(max_size=64))
def test_base58_round_trip(data: bytes) -> None:
    text = base58_encode(data)
    assert base58_decode(text) == data
    assert base58_encode(base58_decode(text)) == text


@given(st.binary(min_size=32, max_size=32))
def test_peer_ids_carry_their_key(seed: bytes) -> None:
    public = SigningKey.from_seed(seed).public
    peer = peer_id_of(public)
    assert peer.startswith("12D3KooW")
    assert len(peer) == 52
    assert peer_key(peer) == public
    assert check_peer_id(peer) == peer


BAD_PEER_IDS: dict[str, Any] = {
    "empty": "",
    "not text": b"12D3KooW",
    "not base58": HOME[:-1] + "0",
    "truncated": HOME[:-1],
    "extended": HOME + "1",
    "leading zero": "1" + HOME,
    "sha2-256 (RSA) peer id": "QmVdFZgHnEgcedCS2G2ZNiEN59LuVrnRm7z3yXtEBv2XiF",
    "too long": "1" * 65,
    "secp256k1 key": base58_encode(bytes([0, 37, 8, 2, 18, 33]) + bytes(33)),
}


@pytest.mark.parametrize("value", BAD_PEER_IDS.values(), ids=BAD_PEER_IDS.keys())
def test_bad_peer_ids_are_refused(value: Any) -> None:
    with pytest.raises(MalformedInput):
        peer_key(value)


@FUZZ
@given(st.text(max_size=70))
def test_peer_key_never_crashes(text: str) -> None:
    try:
        found = peer_key(text)
    except MalformedInput:
        return
    assert peer_id_of(found) == text


# ================================================================================================
# records on the wire


def through(value: Claim) -> Claim:
    return Claim.from_cbor(cbor.decode(cbor.encode(value.to_cbor())))


def test_extended_claims_round_trip_and_verify() -> None:
    made = claim(mirrors=[OTHER_HOME, node_id(3)], who=2, previous=1)
    assert made.previous == key(1).public.key_hash()
    assert set(made.to_cbor()) == {
        "username", "identity", "home", "expiry", "sig", "mirrors", "previous", "handover",
    }  # fmt: skip
    again = through(made)
    assert again == made
    again.verify()
    plain = claim()
    assert set(plain.to_cbor()) == {"username", "identity", "home", "expiry", "sig"}
    assert through(plain) == plain


@pytest.mark.parametrize(
    "change",
    [
        {"handover": bytes(64)},
        {"handover": claim(who=2, previous=3).handover},
        {"previous": key(3).public.key_hash()},
        {"mirrors": (node_id(3),)},
        {"mirrors": ()},
    ],
)
def test_tampered_key_changes_fail(change: dict[str, Any]) -> None:
    made = claim(who=2, previous=1, mirrors=[node_id(4)])
    with pytest.raises(InvalidSignature):
        through(replace(made, **change)).verify()


def test_a_key_change_is_signed_by_both_keys() -> None:
    made = claim(who=2, previous=1)
    # The handover is the old key's signature under its own context, not a copy of the claim's.
    assert made.handover != made.signature
    with pytest.raises(InvalidSignature):
        replace(made, handover=key(1).sign(made.signed_part, b"pyrgos/pki-claim/1")).verify()
    with pytest.raises(MalformedInput):
        replace(made, handover=None).verify()


GOOD_CHANGE = claim(who=2, previous=1, mirrors=[OTHER_HOME]).to_cbor()
BAD_CLAIMS: dict[str, Any] = {
    "previous without handover": {k: v for k, v in GOOD_CHANGE.items() if k != "handover"},
    "handover without previous": {k: v for k, v in GOOD_CHANGE.items() if k != "previous"},
    "previous null": {**GOOD_CHANGE, "previous": None},
    "previous is the new key": {**GOOD_CHANGE, "previous": GOOD_CHANGE["identity"]},
    "previous bytes": {**GOOD_CHANGE, "previous": key(1).public.key_hash().raw},
    "handover short": {**GOOD_CHANGE, "handover": bytes(63)},
    "mirrors empty": {**GOOD_CHANGE, "mirrors": []},
    "mirrors text": {**GOOD_CHANGE, "mirrors": OTHER_HOME},
    "mirrors repeated": {**GOOD_CHANGE, "mirrors": [OTHER_HOME, OTHER_HOME]},
    "mirrors include home": {**GOOD_CHANGE, "mirrors": [HOME]},
    "mirrors too many": {**GOOD_CHANGE, "mirrors": [node_id(i) for i in range(MAX_MIRRORS + 1)]},
    "mirror bytes": {**GOOD_CHANGE, "mirrors": [OTHER_HOME.encode()]},
    "unknown field": {**GOOD_CHANGE, "moved": True},
}


@pytest.mark.parametrize("value", BAD_CLAIMS.values(), ids=BAD_CLAIMS.keys())
def test_claim_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(MalformedInput):
        Claim.from_cbor(value)


def node_record(
    n: int = 1, seq: int = 1, addrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/4001",)
) -> NodeRecord:
    return NodeRecord.create(key(1000 + n), addrs, seq)


def test_node_records_round_trip_and_verify() -> None:
    made = node_record(addrs=["/ip4/10.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"], seq=7)
    assert made.node == HOME
    again = NodeRecord.from_cbor(cbor.decode(cbor.encode(made.to_cbor())))
    assert again == made
    again.verify()
    node_record(addrs=[]).verify()  # a node that stops listening says so


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 2},
        {"addrs": ("/ip4/6.6.6.6/tcp/4001",)},
        {"node": OTHER_HOME},  # another node's id: its key did not sign
        {"signature": bytes(64)},
        {"signature": key(1001).sign(node_record().signed_part, b"pyrgos/pki-claim/1")},
    ],
)
def test_tampered_node_records_fail(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidSignature):
        replace(node_record(), **change).verify()


def test_node_record_of_a_bad_node_id_is_malformed() -> None:
    with pytest.raises(MalformedInput):
        replace(node_record(), node="test-node").verify()


GOOD_NODE = node_record().to_cbor()
BAD_NODES: dict[str, Any] = {
    "not a map": [GOOD_NODE],
    "missing sig": {k: v for k, v in GOOD_NODE.items() if k != "sig"},
    "extra": {**GOOD_NODE, "expiry": 1},
    "seq zero": {**GOOD_NODE, "seq": 0},
    "seq bool": {**GOOD_NODE, "seq": True},
    "seq huge": {**GOOD_NODE, "seq": 2**63},
    "addrs text": {**GOOD_NODE, "addrs": "/ip4/1.2.3.4/tcp/1"},
    "addr relative": {**GOOD_NODE, "addrs": ["ip4/1.2.3.4/tcp/1"]},
    "addr space": {**GOOD_NODE, "addrs": ["/ip4/1.2.3.4/tcp/1 x"]},
    "addr newline": {**GOOD_NODE, "addrs": ["/ip4/1.2.3.4/tcp/1\n"]},
    "addr non-ascii": {**GOOD_NODE, "addrs": ["/dns4/ex\u00e4mple.org/tcp/1"]},
    "addr too long": {**GOOD_NODE, "addrs": ["/" + "a" * 256]},
    "addr bare slash": {**GOOD_NODE, "addrs": ["/"]},
    "addrs repeated": {**GOOD_NODE, "addrs": ["/ip4/1.2.3.4/tcp/1"] * 2},
    "addrs too many": {**GOOD_NODE, "addrs": [f"/ip4/1.2.3.4/tcp/{i}" for i in range(17)]},
    "node empty": {**GOOD_NODE, "node": ""},
    "node bytes": {**GOOD_NODE, "node": HOME.encode()},
}


@pytest.mark.parametrize("value", BAD_NODES.values(), ids=BAD_NODES.keys())
def test_node_record_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(MalformedInput):
        NodeRecord.from_cbor(value)


def test_entries_round_trip_and_hash_their_bytes() -> None:
    log = Log()
    first = log.append(claim())
    second = log.append(node_record())
    for entry in (first, second):
        again = Entry.decode(entry.encoded)
        assert again == entry
        assert again.hash == entry.hash == CID.of(CODEC_DAG_CBOR, entry.encoded)
    assert second.prev == first.hash


def test_records_as_submitted_round_trip() -> None:
    for record in (claim(), claim(who=2, previous=1), node_record()):
        value = cbor.decode(cbor.encode(record_to_cbor(record)))
        assert record_from_cbor(value) == record
    bad_records: list[object] = [{}, {"claim": None}, {"moved": {}}, [claim().to_cbor()], None]
    for bad in bad_records:
        with pytest.raises(MalformedInput):
            record_from_cbor(bad)


def sample_entry(**change: Any) -> dict[str, Any]:
    return {**Log().append(claim()).to_cbor(), **change}


BAD_ENTRIES: dict[str, Any] = {
    "not a map": [1, None, T0, {}],
    "missing time": {k: v for k, v in sample_entry().items() if k != "time"},
    "seq zero": sample_entry(seq=0),
    "first with prev": sample_entry(prev=CID.of(CODEC_DAG_CBOR, b"x")),
    "later without prev": sample_entry(seq=2),
    "prev raw codec": sample_entry(seq=2, prev=CID.of(CODEC_RAW, b"x")),
    "prev identity": sample_entry(seq=2, prev=key(1).public.key_hash()),
    "time negative": sample_entry(time=-1),
    "two records": sample_entry(
        record={"claim": claim().to_cbor(), "node": node_record().to_cbor()}
    ),
    "unknown kind": sample_entry(record={"moved": claim().to_cbor()}),
    "record list": sample_entry(record=[claim().to_cbor()]),
    "claim in node slot": sample_entry(record={"node": claim().to_cbor()}),
}


@pytest.mark.parametrize("value", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_entry_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(MalformedInput):
        Entry.from_cbor(value)


def test_entry_decode_limits_and_canonical_form() -> None:
    entry = Log().append(claim())
    with pytest.raises(TooLarge):
        Entry.decode(entry.encoded + bytes(MAX_ENTRY_BYTES))
    with pytest.raises(MalformedInput):
        Entry.decode(entry.encoded + b"\x00")
    long_addrs = [f"/dns4/{'n' * 200}.example/tcp/{i}" for i in range(MAX_ADDRS)]
    big = Log().append(node_record(addrs=long_addrs))
    assert Entry.decode(big.encoded) == big  # the largest record fits


SAMPLE_ENTRY = Log().append(claim(mirrors=[OTHER_HOME], who=1)).encoded


@FUZZ
@given(at=st.integers(0, len(SAMPLE_ENTRY) - 1), byte=st.integers(0, 255))
def test_mutated_entries_are_refused_or_harmless(at: int, byte: int) -> None:
    data = SAMPLE_ENTRY[:at] + bytes([byte]) + SAMPLE_ENTRY[at + 1 :]
    try:
        entry = Entry.decode(data)
        apply_entry(IndexOverlay(), entry, T0)
    except PyrgosError:
        return
    # Only the entry's seq, prev and time are outside the claim's signature, and those the
    # chain rules and the head signature cover; the record itself is the original.
    assert entry.record == Entry.decode(SAMPLE_ENTRY).record


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_entry_decode(data: bytes) -> None:
    with contextlib.suppress(PyrgosError):
        Entry.decode(data)


def test_heads_round_trip_and_verify() -> None:
    log = Log()
    log.append(claim())
    head = log.head()
    again = SignedHead.from_cbor(cbor.decode(cbor.encode(head.to_cbor())))
    assert again == head
    verify_head(again, ROOT_ID)
    verify_head(log.head(0), ROOT_ID)
    with pytest.raises(InvalidSignature):
        verify_head(head, HOME)
    with pytest.raises(InvalidSignature):
        verify_head(replace(head, seq=2), ROOT_ID)
    with pytest.raises(InvalidSignature):
        verify_head(replace(head, hash=CID.of(CODEC_DAG_CBOR, b"other")), ROOT_ID)
    with pytest.raises(InvalidSignature):
        verify_head(SignedHead.create(key(5), 1, head.hash), ROOT_ID)


@pytest.mark.parametrize(
    "value",
    [
        {"seq": 0, "hash": CID.of(CODEC_DAG_CBOR, b"x"), "sig": bytes(64)},
        {"seq": 1, "hash": None, "sig": bytes(64)},
        {"seq": -1, "hash": None, "sig": bytes(64)},
        {"seq": 1, "hash": CID.of(CODEC_RAW, b"x"), "sig": bytes(64)},
        {"seq": 1, "hash": CID.of(CODEC_DAG_CBOR, b"x"), "sig": bytes(63)},
        {"seq": 1, "hash": CID.of(CODEC_DAG_CBOR, b"x")},
        [1, None, bytes(64)],
    ],
)
def test_head_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(MalformedInput):
        SignedHead.from_cbor(value)


# ================================================================================================
# the rules: chain


def test_entries_must_follow_the_tip_by_seq_and_hash() -> None:
    log = Log()
    first = log.append(claim())
    record = claim("bob", who=2)
    good = next_entry(log.index, record, T0)
    for broken in (
        replace(good, seq=3),  # a gap
        replace(good, seq=1, prev=None),  # a replay of position 1
        replace(good, prev=CID.of(CODEC_DAG_CBOR, b"elsewhere")),  # a broken link
        replace(good, time=first.time - 1),  # time going back
    ):
        with pytest.raises(BrokenChain):
            apply_entry(log.index, broken, T0)
    with pytest.raises(MalformedInput, match="future"):
        apply_entry(log.index, replace(good, time=T0 + MAX_CLOCK_SKEW + 1), T0)
    # Within the skew is fine: clocks differ a little.
    apply_entry(log.index, replace(good, time=T0 + MAX_CLOCK_SKEW), T0)
    assert isinstance(BrokenChain("x"), Corrupted)


def test_the_first_entry_has_no_prev() -> None:
    with pytest.raises(BrokenChain):
        apply_entry(IndexOverlay(), Entry(2, CID.of(CODEC_DAG_CBOR, b"x"), T0, claim()), T0)
    changes = apply_entry(IndexOverlay(), Entry(1, None, T0, claim()), T0)
    assert changes.tip.seq == 1


def test_next_entry_never_dates_back() -> None:
    log = Log()
    log.append(claim(), now=T0 + 100)
    entry = log.append(claim("bob", who=2), now=T0)  # the PKI node's clock stepped back
    assert entry.time == T0 + 100


# ================================================================================================
# the rules: claims


def test_first_come_first_served() -> None:
    log = Log()
    log.append(claim("alice", who=1))
    assert log.refuse(claim("alice", who=2)) is Conflict
    assert log.current("alice") == claim("alice", who=1)
    log.append(claim("bob", who=2))


def test_a_key_serves_one_username() -> None:
    log = Log()
    log.append(claim("alice", who=1))
    assert log.refuse(claim("bob", who=1)) is Conflict


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (claim("admin"), InvalidName),
        (claim("Alice"), InvalidName),
        (claim(home="test-node"), MalformedInput),
        (claim(mirrors=["not-a-node"]), MalformedInput),
        (replace(claim(), signature=claim("bob").signature), InvalidSignature),
        (replace(claim(), identity=key(2).public.key_hash()), InvalidSignature),
        (claim(expiry=T0), MalformedInput),  # already expired when logged
        (claim(expiry=T0 - 1), MalformedInput),
        (claim(expiry=T0 + MAX_CLAIM_LIFETIME + 1), MalformedInput),  # squatting for decades
        (claim(who=2, previous=1), Conflict),  # nothing to hand over from
    ],
)
def test_bad_claims_are_refused(record: Claim, error: type[PyrgosError]) -> None:
    assert Log().refuse(record) is error


def test_expiry_bounds() -> None:
    log = Log()
    log.append(claim("alice", who=1, expiry=T0 + 1))
    log.append(claim("bob", who=2, expiry=T0 + MAX_CLAIM_LIFETIME))


def test_updates_and_renewals_by_the_current_key() -> None:
    log = Log()
    original = claim(expiry=T0 + 100)
    log.append(original)
    moved = claim(expiry=T0 + 101, home=OTHER_HOME, mirrors=[node_id(3)])
    log.append(moved, now=T0 + 50)
    assert log.current("alice") == moved
    renewed = claim(expiry=T0 + 50 + CLAIM_LIFETIME, home=OTHER_HOME)
    log.append(renewed, now=T0 + 50)
    assert log.current("alice") == renewed
    # An update must extend the expiry: a replay of an older claim, or a same-expiry edit, fails.
    assert log.refuse(original, now=T0 + 60) is Conflict
    assert log.refuse(moved, now=T0 + 60) is Conflict
    assert log.refuse(claim(expiry=renewed.expiry), now=T0 + 60) is Conflict
    assert log.current("alice") == renewed


def test_next_expiry_always_extends() -> None:
    assert next_expiry(None, T0) == T0 + CLAIM_LIFETIME
    current = claim(expiry=T0 + CLAIM_LIFETIME)
    assert next_expiry(current, T0) == current.expiry + 1
    assert next_expiry(current, T0 + 10) == T0 + 10 + CLAIM_LIFETIME


def test_a_key_change_chain() -> None:
    log = Log()
    log.append(claim(who=1, expiry=T0 + 10))
    for n, old in enumerate(range(1, 6), start=1):
        log.append(claim(who=old + 1, previous=old, expiry=T0 + 10 + n), now=T0 + n)
        current = log.current("alice")
        assert current is not None
        assert current.identity == key(old + 1).public.key_hash()
        assert log.index.key_use(key(old).public.key_hash()) == KeyUse("alice", retired=True)
        assert log.index.key_use(key(old + 1).public.key_hash()) == KeyUse("alice", retired=False)
    now, expiry = T0 + 6, T0 + 100
    # No old key can come back: not by its own claim, not by a handover from the current key.
    for old in range(1, 6):
        assert log.refuse(claim(who=old, expiry=expiry), now=now) is Conflict
        assert log.refuse(claim(who=old, previous=6, expiry=expiry), now=now) is Conflict
        # An old key cannot hand the name on either.
        assert log.refuse(claim(who=9, previous=old, expiry=expiry), now=now) is Conflict
    # A change to a key another user holds is refused too.
    log.append(claim("bob", who=20, expiry=expiry), now=now)
    assert log.refuse(claim(who=20, previous=6, expiry=expiry), now=now) is Conflict
    # The current key hands over to a fresh one.
    log.append(claim(who=7, previous=6, expiry=expiry), now=now)


def test_a_key_change_must_extend_the_expiry_and_be_handed_over() -> None:
    log = Log()
    log.append(claim(who=1, expiry=T0 + 100))
    assert log.refuse(claim(who=2, previous=1, expiry=T0 + 100)) is Conflict
    forged = replace(claim(who=2, previous=1, expiry=T0 + 101), handover=bytes(64))
    assert log.refuse(forged) is InvalidSignature
    wrong = claim(who=2, previous=3, expiry=T0 + 101)  # a handover by a key that is not current
    assert log.refuse(wrong) is Conflict


def test_expired_names_are_free_again_but_old_keys_stay_retired() -> None:
    log = Log()
    log.append(claim(who=1, expiry=T0 + 100))
    assert log.refuse(claim(who=2, expiry=T0 + 500), now=T0 + 99) is Conflict
    # At its expiry the name is free: a new key takes it, the old one retires for good.
    log.append(claim(who=2, expiry=T0 + 500), now=T0 + 100)
    assert log.index.key_use(key(1).public.key_hash()) == KeyUse("alice", retired=True)
    assert log.refuse(claim(who=1, expiry=T0 + 900), now=T0 + 600) is Conflict
    log.append(claim(who=3, expiry=T0 + 900), now=T0 + 600)
    assert log.refuse(claim(who=2, expiry=T0 + 1200), now=T0 + 1000) is Conflict


def test_an_expired_claim_is_renewed_by_its_key_until_someone_else_takes_it() -> None:
    log = Log()
    log.append(claim(who=1, expiry=T0 + 100))
    log.append(claim(who=1, expiry=T0 + 1000 + CLAIM_LIFETIME), now=T0 + 1000)
    assert log.refuse(claim(who=2, expiry=T0 + 2000), now=T0 + 1001) is Conflict
    # An expired owner may also still hand over to a new key.
    log.append(claim(who=2, previous=1, expiry=T0 + 10**8), now=T0 + 10**8 - 10)


def test_claims_and_node_records_share_one_chain() -> None:
    log = Log()
    log.append(node_record(1))
    log.append(claim())
    log.append(node_record(1, seq=2))
    assert [e.seq for e in log.entries] == [1, 2, 3]
    assert log.index.node(HOME) == node_record(1, seq=2)


def test_node_record_seq_must_grow() -> None:
    log = Log()
    log.append(node_record(1, seq=5))
    assert log.refuse(node_record(1, seq=5)) is Conflict
    assert log.refuse(node_record(1, seq=4)) is Conflict
    log.append(node_record(1, seq=6, addrs=[]))
    log.append(node_record(2, seq=1))  # each node counts on its own
    forged = replace(node_record(2, seq=2), signature=node_record(1, seq=2).signature)
    assert log.refuse(forged) is InvalidSignature


def test_changes_say_exactly_what_moves() -> None:
    log = Log()
    entry = next_entry(log.index, claim(), T0)
    changes = apply_entry(log.index, entry, T0)
    assert changes == Changes(
        changes.tip, claim=claim(), keys=((key(1).public.key_hash(), KeyUse("alice", False)),)
    )
    assert (changes.tip.seq, changes.tip.hash, changes.tip.time) == (1, entry.hash, T0)


# A model of the claim rules, stated plainly over dicts, against which random histories run.
OPS = st.lists(
    st.tuples(
        st.sampled_from(["claim", "change"]),
        st.integers(0, 2),  # name
        st.integers(1, 6),  # key
        st.sampled_from([0, 1, 1000, CLAIM_LIFETIME // 2, CLAIM_LIFETIME + 1]),  # time passing
        st.integers(1, CLAIM_LIFETIME),  # lifetime of the claim
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_random_histories_agree_with_a_model(ops: list[tuple[str, int, int, int, int]]) -> None:
    log = Log()
    names: dict[str, tuple[int, int]] = {}  # name -> (key, expiry)
    keys: dict[int, tuple[str, bool]] = {}  # key -> (name, retired)
    now = T0
    for kind, name_index, who, passing, lifetime in ops:
        now += passing
        name, expiry = ("alice", "bob", "carol")[name_index], now + lifetime
        current = names.get(name)
        use = keys.get(who)
        if kind == "change":
            previous = current[0] if current else 6 - who + 1
            if previous == who:
                continue
            record = claim(name, who=who, expiry=expiry, previous=previous)
            accepted = current is not None and use is None and expiry > current[1]
        else:
            record = claim(name, who=who, expiry=expiry)
            if use is not None and (use[0] != name or use[1]):
                accepted = False
            elif current is None:
                accepted = True
            elif current[0] == who:
                accepted = expiry > current[1]
            else:
                accepted = current[1] <= now
        if accepted:
            log.append(record, now=now)
            if current is not None and current[0] != who:
                keys[current[0]] = (name, True)
            names[name] = (who, expiry)
            keys[who] = (name, False)
        else:
            log.refuse(record, now=now)
        for each, (holder, held_expiry) in names.items():
            found = log.current(each)
            assert found is not None
            assert (found.identity, found.expiry) == (key(holder).public.key_hash(), held_expiry)
        for number, (username, retired) in keys.items():
            assert log.index.key_use(key(number).public.key_hash()) == KeyUse(username, retired)


def test_every_node_builds_the_same_index() -> None:
    log = Log()
    for i in range(20):
        log.append(claim(f"user{i}", who=100 + i))
        log.append(node_record(i % 3, seq=i + 1))
    replica = IndexOverlay()
    for entry in log.entries:
        again = Entry.decode(entry.encoded)
        replica.apply(again, apply_entry(replica, again, T0))
    assert replica.claims == log.index.claims
    assert replica.keys == log.index.keys
    assert replica.nodes == log.index.nodes
    assert replica.tip() == log.index.tip()


# ================================================================================================
# what a mirror is served


def history(n: int, pki_key: SigningKey = ROOT, first: int = 0) -> Log:
    log = Log(pki_key)
    for i in range(n):
        log.append(claim(f"user{first + i}", who=100 + first + i))
    return log


def mirror_of(log: Log, upto: int) -> IndexOverlay:
    mirror = IndexOverlay()
    pending = verify_served(mirror, log.entries[:upto], log.head(upto), ROOT_ID, T0)
    for entry in log.entries[:upto]:
        assert pending.entries[entry.seq] == entry
    return pending


def test_an_honest_sync_is_accepted_in_pages() -> None:
    log = history(10)
    mirror = IndexOverlay()
    for start in range(0, 10, 4):
        end = min(start + 4, 10)
        pending = verify_served(mirror, log.entries[start:end], log.head(end), ROOT_ID, T0)
        assert sorted(pending.entries) == list(range(start + 1, end + 1))
        mirror = pending
    for i in range(10):
        assert mirror.claim(f"user{i}") == log.current(f"user{i}")


def test_overlapping_and_stale_answers_are_fine() -> None:
    log = history(6)
    mirror = mirror_of(log, 4)
    pending = verify_served(mirror, log.entries[1:6], log.head(6), ROOT_ID, T0)
    assert sorted(pending.entries) == [5, 6]
    assert not verify_served(mirror, [], log.head(2), ROOT_ID, T0).entries  # stale head
    assert not verify_served(mirror, [], log.head(6), ROOT_ID, T0).entries  # behind: fetch more


def test_a_forged_head_is_refused() -> None:
    log = history(3)
    impostor = history(3, pki_key=key(77))
    with pytest.raises(InvalidSignature):
        verify_served(IndexOverlay(), impostor.entries, impostor.head(), ROOT_ID, T0)
    with pytest.raises(InvalidSignature):  # entries that do not lead to the signed head
        verify_served(IndexOverlay(), log.entries[:2], log.head(3), ROOT_ID, T0)


def test_a_forged_record_is_refused_even_under_a_signed_head() -> None:
    # A PKI node that signs a head over a record nobody signed: every mirror refuses it.
    log = history(2)
    forged_claim = replace(claim("mallory", who=50), signature=bytes(64))
    entry = next_entry(log.index, forged_claim, T0)
    served = [*log.entries, entry]
    with pytest.raises(InvalidSignature):
        verify_served(IndexOverlay(), served, SignedHead.create(ROOT, 3, entry.hash), ROOT_ID, T0)
    # And a record the rules refuse (a taken name) the same way.
    stolen = next_entry(log.index, claim("user0", who=51), T0)
    with pytest.raises(Conflict):
        verify_served(
            IndexOverlay(), [*log.entries, stolen], SignedHead.create(ROOT, 3, stolen.hash),
            ROOT_ID, T0,
        )  # fmt: skip


def test_broken_chains_are_refused() -> None:
    log = history(5)
    relinked = replace(log.entries[3], prev=log.entries[1].hash)
    served = [*log.entries[:3], relinked, log.entries[4]]
    with pytest.raises(BrokenChain):
        verify_served(IndexOverlay(), served, log.head(5), ROOT_ID, T0)
    with pytest.raises(BrokenChain):  # a gap inside the page
        verify_served(
            IndexOverlay(), [*log.entries[:2], *log.entries[3:]], log.head(5), ROOT_ID, T0
        )
    mirror = mirror_of(log, 2)
    with pytest.raises(BrokenChain):  # a gap after what the mirror holds
        verify_served(mirror, log.entries[3:], log.head(5), ROOT_ID, T0)


def test_forks_are_detected() -> None:
    log = history(5)
    mirror = mirror_of(log, 5)
    # The same PKI key signs another history that departs at entry 4.
    fork = Log()
    for entry in log.entries[:3]:
        fork.append(entry.record)
    fork.append(claim("eve", who=60))
    fork.append(claim("frank", who=61))
    fork.append(claim("grace", who=62))
    assert fork.entries[2] == log.entries[2]
    assert fork.entries[3] != log.entries[3]
    with pytest.raises(ForkDetected):  # its head for an entry the mirror holds
        verify_served(mirror, [], fork.head(4), ROOT_ID, T0)
    with pytest.raises(ForkDetected):  # a different entry 4
        verify_served(mirror, fork.entries[3:4], fork.head(4), ROOT_ID, T0)
    with pytest.raises(ForkDetected):  # new entries that build on the other history
        verify_served(mirror, fork.entries[5:], fork.head(6), ROOT_ID, T0)
    with pytest.raises(ForkDetected):  # a shorter history that differs
        verify_served(mirror, fork.entries[:4], fork.head(4), ROOT_ID, T0)
    assert isinstance(ForkDetected("x"), Conflict)
