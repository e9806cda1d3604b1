"""Tests of protocols.social: follow requests (signed, padded, boxed) and the social state."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import cbor, crypto
from protocols.crypto import BoxingKey, SigningKey
from protocols.cryptree import Capability
from protocols.errors import (
    Corrupted,
    InvalidSignature,
    MalformedInput,
    PyrgosError,
    TooLarge,
)
from protocols.social import (
    BOX_CONTEXT,
    FOLLOW_PLAIN_BYTES,
    FOLLOW_SEALED_BYTES,
    MAX_CONTACTS,
    REPLY_BYTES,
    Followee,
    FollowRequest,
    Kind,
    SocialState,
    open_request,
    request_id,
    seal_request,
)

ALICE = SigningKey.from_seed(bytes(range(32)))
MALLORY = SigningKey.from_seed(bytes(range(1, 33)))
BOB_BOX = BoxingKey.from_seed(bytes(range(2, 34)))
CAROL_BOX = BoxingKey.from_seed(bytes(range(3, 35)))
REPLY = bytes(range(REPLY_BYTES))
NOW = 1_700_000_000_000


def folder(owner: SigningKey, writable: bool = False) -> Capability:
    key_hash = owner.public.key_hash()
    return Capability(
        key_hash, key_hash, b"l" * 32, b"b" * 32, b"r" * 32, b"w" * 32 if writable else None
    )


def request(
    kind: Kind = "follow", sender: str = "alice", to: str = "bob", key: SigningKey = ALICE
) -> FollowRequest:
    entry = None if kind == "reject" else folder(key)
    return FollowRequest.create(key, kind, sender, to, entry, REPLY, NOW)


@pytest.mark.parametrize("kind", ["follow", "accept", "reject"])
def test_round_trip(kind: Kind) -> None:
    sent = request(kind)
    sealed = seal_request(sent, BOB_BOX.public)
    assert len(sealed) == FOLLOW_SEALED_BYTES
    opened = open_request(BOB_BOX, sealed)
    assert opened == sent
    opened.verify(ALICE.public, "bob")
    assert opened.sender == "alice"
    assert opened.entry == (None if kind == "reject" else folder(ALICE))


def test_entry_is_made_read_only() -> None:
    sent = FollowRequest.create(ALICE, "accept", "alice", "bob", folder(ALICE, True), REPLY, NOW)
    assert sent.entry is not None
    assert not sent.entry.writable


@settings(max_examples=20, deadline=None)
@given(
    st.from_regex(r"[a-z0-9]{1,32}", fullmatch=True),
    st.from_regex(r"[a-z0-9]{1,32}", fullmatch=True),
    st.sampled_from(["follow", "accept", "reject"]),
    st.binary(min_size=REPLY_BYTES, max_size=REPLY_BYTES),
    st.integers(0, 2**64 - 1),
)
def test_every_request_seals_to_the_same_length_and_round_trips(
    sender: str, to: str, kind: Kind, reply: bytes, time: int
) -> None:
    entry = None if kind == "reject" else folder(ALICE)
    try:
        sent = FollowRequest.create(ALICE, kind, sender, to, entry, reply, time)
    except MalformedInput:  # a banned name such as "root"
        return
    sealed = seal_request(sent, BOB_BOX.public)
    assert len(sealed) == FOLLOW_SEALED_BYTES
    opened = open_request(BOB_BOX, sealed)
    assert opened == sent
    opened.verify(ALICE.public, to)


def test_short_and_long_usernames_seal_alike() -> None:
    short = seal_request(request(sender="a", to="b"), BOB_BOX.public)
    long = seal_request(request(sender="a" * 32, to="b" * 32), BOB_BOX.public)
    assert len(short) == len(long) == FOLLOW_SEALED_BYTES
    assert FOLLOW_PLAIN_BYTES % 512 == 0


def test_request_id_names_the_sealed_bytes() -> None:
    sealed = seal_request(request(), BOB_BOX.public)
    assert request_id(sealed) == crypto.sha256(sealed)[:16]


def test_a_flipped_byte_is_detected() -> None:
    sealed = bytearray(seal_request(request(), BOB_BOX.public))
    for position in (0, crypto.XWING_CIPHERTEXT_BYTES + 30, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[position] ^= 1
        with pytest.raises(Corrupted, match="failed authentication"):
            open_request(BOB_BOX, bytes(tampered))


def test_the_wrong_recipient_cannot_open_it() -> None:
    sealed = seal_request(request(), BOB_BOX.public)
    with pytest.raises(Corrupted, match="not boxed to this user"):
        open_request(CAROL_BOX, sealed)


@pytest.mark.parametrize("size", [0, 1, FOLLOW_SEALED_BYTES - 1, FOLLOW_SEALED_BYTES + 1, 10**6])
def test_wrong_lengths_are_refused_before_any_work(size: int) -> None:
    with pytest.raises(MalformedInput, match=f"exactly {FOLLOW_SEALED_BYTES} bytes"):
        open_request(BOB_BOX, bytes(size))


def test_a_non_bytes_request_is_refused() -> None:
    with pytest.raises(MalformedInput):
        open_request(BOB_BOX, "x" * FOLLOW_SEALED_BYTES)


def test_a_forged_sender_is_refused() -> None:
    # Mallory signs a request claiming to be alice: the key the PKI names for alice refutes it.
    forged = FollowRequest.create(MALLORY, "follow", "alice", "bob", folder(MALLORY), REPLY, NOW)
    opened = open_request(BOB_BOX, seal_request(forged, BOB_BOX.public))
    with pytest.raises(InvalidSignature, match="another identity key"):
        opened.verify(ALICE.public, "bob")


def test_a_signature_over_other_fields_is_refused() -> None:
    sent = request()
    value = sent.to_cbor()
    value["time"] = NOW + 1
    altered = FollowRequest.from_cbor(value)
    with pytest.raises(InvalidSignature, match="forged"):
        altered.verify(ALICE.public, "bob")


def test_a_request_for_someone_else_is_refused() -> None:
    sent = request(to="carol")
    opened = open_request(BOB_BOX, seal_request(sent, BOB_BOX.public))
    with pytest.raises(InvalidSignature, match="addressed to carol"):
        opened.verify(ALICE.public, "bob")


def test_an_entry_of_another_owner_is_refused() -> None:
    body = request().to_cbor()
    body["entry"] = folder(MALLORY).to_cbor()
    del body["sig"]
    signed = {**body, "sig": ALICE.sign(cbor.encode(body), b"pyrgos/follow/1")}
    with pytest.raises(InvalidSignature, match="another user"):
        FollowRequest.from_cbor(signed).verify(ALICE.public, "bob")


def _sealed_plain(value: Any, *, pad: bool = True) -> bytes:
    plain = cbor.encode(value)
    padded = crypto.pad_to(plain, FOLLOW_PLAIN_BYTES) if pad else plain
    return crypto.box(BOB_BOX.public, padded, BOX_CONTEXT)


def test_bad_padding_and_length_inside_the_box_are_refused() -> None:
    good = request().to_cbor()
    unpadded = _sealed_plain(good, pad=False)
    with pytest.raises(MalformedInput):
        open_request(BOB_BOX, unpadded)  # shorter than the sealed length
    zeros = crypto.box(BOB_BOX.public, bytes(FOLLOW_PLAIN_BYTES), BOX_CONTEXT)
    with pytest.raises(Corrupted, match="padding"):
        open_request(BOB_BOX, zeros)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "unknown version"),
        ({"kind": "poke"}, "kind"),
        ({"kind": "reject"}, "entry"),
        ({"entry": None}, "entry"),
        ({"from": "Alice"}, "sender"),
        ({"to": "a" * 33}, "target"),
        ({"to": "root"}, "reserved"),
        ({"identity": b"x"}, "identity"),
        ({"reply": b"short"}, "reply"),
        ({"time": -1}, "time"),
        ({"time": True}, "time"),
        ({"sig": b"\x00" * 63}, "signature"),
        ({"extra": 1}, "is {v, kind"),
        ({"entry": folder(ALICE, True).to_cbor()}, "read-only"),
    ],
)
def test_malformed_fields_are_refused(change: dict[str, Any], message: str) -> None:
    value = {**request().to_cbor(), **change}
    with pytest.raises(MalformedInput, match=message):
        open_request(BOB_BOX, _sealed_plain(value))


def test_missing_fields_and_garbage_are_refused() -> None:
    value = request().to_cbor()
    del value["reply"]
    with pytest.raises(MalformedInput):
        open_request(BOB_BOX, _sealed_plain(value))
    garbage = crypto.box(
        BOB_BOX.public, crypto.pad_to(b"\xff\x00", FOLLOW_PLAIN_BYTES), BOX_CONTEXT
    )
    with pytest.raises(PyrgosError):
        open_request(BOB_BOX, garbage)


def test_social_state_round_trip() -> None:
    state = SocialState(
        following={"bob": Followee(folder(ALICE), REPLY, NOW), "carol": Followee(None, REPLY, 1)},
        followers={"dave": NOW},
    )
    assert SocialState.decode(state.encode()) == state
    assert SocialState.decode(SocialState().encode()) == SocialState()


def test_social_state_is_bounded() -> None:
    many = SocialState(followers={f"u{i}": NOW for i in range(MAX_CONTACTS + 1)})
    with pytest.raises(TooLarge):
        many.encode()
    value = {"v": 1, "following": {}, "followers": {f"u{i}": {"since": 1} for i in range(10_001)}}
    with pytest.raises(MalformedInput, match="at most"):
        SocialState.decode(cbor.encode(value))
    full = SocialState(followers={f"u{i}": NOW for i in range(MAX_CONTACTS)})
    assert len(SocialState.decode(full.encode()).followers) == MAX_CONTACTS


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"v": 2, "following": {}, "followers": {}},
        {"v": 1, "following": [], "followers": {}},
        {"v": 1, "following": {"Bob": {"cap": None, "reply": REPLY, "since": 1}}, "followers": {}},
        {"v": 1, "following": {"bob": {"cap": None, "reply": b"x", "since": 1}}, "followers": {}},
        {"v": 1, "following": {}, "followers": {"bob": {"since": "now"}}},
        {"v": 1, "following": {}, "followers": {"bob": 1}},
    ],
)
def test_malformed_social_state_is_refused(value: Any) -> None:
    with pytest.raises(MalformedInput):
        SocialState.decode(cbor.encode(value))
