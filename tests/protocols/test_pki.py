"""Tests of protocols.pki: username claims, their signatures and their wire shape."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import BoxingKey, SigningKey
from protocols.errors import InvalidName, InvalidSignature, MalformedInput, PyrgosError
from protocols.pki import CLAIM_LIFETIME, CONTEXT, MAX_NODE_ID, Claim

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDENTITY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))
HOME = "12D3KooWGzh7bKx1Y2R5oJ4TsdWqZ1NvV2pY9Lz3aM5wQeXcRkTn"
EXPIRY = 1_700_000_000 + CLAIM_LIFETIME


def claim(username: str = "alice", home: str = HOME, expiry: int = EXPIRY) -> Claim:
    return Claim.create(IDENTITY, username, home, expiry)


def through_the_wire(value: Claim) -> Claim:
    return Claim.from_cbor(cbor.decode(cbor.encode(value.to_cbor())))


@given(
    username=st.from_regex(r"[a-z][a-z0-9]{0,20}", fullmatch=True),
    home=st.text(min_size=1, max_size=MAX_NODE_ID),
    expiry=st.integers(0, 2**64 - 1),
)
@settings(deadline=None)
def test_claim_round_trip_and_verify(username: str, home: str, expiry: int) -> None:
    made = claim(username, home, expiry)
    assert made.identity == IDENTITY.public.key_hash()
    assert made.signed_part == cbor.encode([username, made.identity, home, expiry, [], None])
    assert len(made.signature) == 64
    with contextlib.suppress(InvalidName):  # a banned name still round trips
        made.verify()
    again = through_the_wire(made)
    assert again == made
    assert again.to_cbor() == made.to_cbor()


def test_valid_claim_verifies() -> None:
    made = claim()
    made.verify()
    through_the_wire(made).verify()
    IDENTITY.public.verify(made.signed_part, made.signature, CONTEXT)


def test_claim_signature_is_domain_separated() -> None:
    made = claim()
    forged = replace(made, signature=IDENTITY.sign(made.signed_part, b"pyrgos/block-put/1"))
    with pytest.raises(InvalidSignature):
        forged.verify()


@pytest.mark.parametrize(
    "change",
    [
        {"username": "mallory"},
        {"username": "alicf"},
        {"home": HOME + "x"},
        {"home": "12D3KooWAnotherNodeEntirely"},
        {"expiry": EXPIRY + 1},
        {"expiry": EXPIRY - 1},
        {"expiry": 2**64 - 1},
        {"identity": OTHER.public.key_hash()},
        {"signature": bytes(64)},
        {"signature": claim().signature[::-1]},
        {"signature": claim(username="bob").signature},
        {"signature": Claim.create(OTHER, "alice", HOME, EXPIRY).signature},
    ],
)
def test_tampered_claims_fail(change: dict[str, Any]) -> None:
    tampered = replace(claim(), **change)
    with pytest.raises(InvalidSignature):
        tampered.verify()
    with pytest.raises(InvalidSignature):
        through_the_wire(tampered).verify()


@given(index=st.integers(0, 63), bit=st.integers(0, 7))
def test_any_signature_bit_flip_fails(index: int, bit: int) -> None:
    made = claim()
    signature = bytearray(made.signature)
    signature[index] ^= 1 << bit
    with pytest.raises(InvalidSignature):
        replace(made, signature=bytes(signature)).verify()


def test_claim_by_another_key_for_the_same_name_verifies_on_its_own() -> None:
    # Signatures bind a name to a key; who got the name first is the log's business.
    theirs = Claim.create(OTHER, "alice", HOME, EXPIRY)
    theirs.verify()
    assert theirs.identity != claim().identity


def test_claim_names_must_follow_the_username_rules() -> None:
    for username in ("Alice", "al--ice", "-alice", "a" * 33, "root", "admin", ""):
        made = Claim.create(IDENTITY, username, HOME, EXPIRY)
        with pytest.raises(InvalidName):
            made.verify()


def test_claim_for_a_hashed_identity_cannot_verify() -> None:
    # The identity must inline its key: a sha2-256 key hash leaves nothing to verify with.
    made = claim()
    hashed = CID.of(CODEC_DAG_CBOR, cbor.encode(IDENTITY.public.to_cbor()))
    with pytest.raises(MalformedInput):
        replace(made, identity=hashed).verify()
    boxing = BoxingKey.from_seed(bytes(32)).public.key_hash()  # not even a signing key
    with pytest.raises(MalformedInput):
        replace(made, identity=boxing).verify()


GOOD = claim().to_cbor()
BAD_CLAIMS: dict[str, Any] = {
    "not a map": list(GOOD.values()),
    "null": None,
    "missing sig": {k: v for k, v in GOOD.items() if k != "sig"},
    "missing expiry": {k: v for k, v in GOOD.items() if k != "expiry"},
    "extra field": {**GOOD, "mirrors": []},
    "username bytes": {**GOOD, "username": b"alice"},
    "username null": {**GOOD, "username": None},
    "identity bytes": {**GOOD, "identity": IDENTITY.public.key_hash().raw},
    "identity text": {**GOOD, "identity": IDENTITY.public.key_hash().text},
    "home empty": {**GOOD, "home": ""},
    "home too long": {**GOOD, "home": "x" * (MAX_NODE_ID + 1)},
    "home bytes": {**GOOD, "home": HOME.encode()},
    "expiry negative": {**GOOD, "expiry": -1},
    "expiry bool": {**GOOD, "expiry": True},
    "expiry text": {**GOOD, "expiry": "2030"},
    "expiry null": {**GOOD, "expiry": None},
    "sig short": {**GOOD, "sig": bytes(63)},
    "sig long": {**GOOD, "sig": bytes(65)},
    "sig text": {**GOOD, "sig": "x" * 64},
}


@pytest.mark.parametrize("value", BAD_CLAIMS.values(), ids=BAD_CLAIMS.keys())
def test_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(MalformedInput):
        Claim.from_cbor(value)


def test_from_cbor_limits() -> None:
    assert Claim.from_cbor({**GOOD, "home": "x" * MAX_NODE_ID}).home == "x" * MAX_NODE_ID
    assert Claim.from_cbor({**GOOD, "expiry": 0}).expiry == 0


SAMPLE = cbor.encode(GOOD)


@FUZZ
@given(at=st.integers(0, len(SAMPLE) - 1), byte=st.integers(0, 255))
def test_mutated_claims_never_verify_as_the_original(at: int, byte: int) -> None:
    data = SAMPLE[:at] + bytes([byte]) + SAMPLE[at + 1 :]
    try:
        parsed = Claim.from_cbor(cbor.decode(data))
        parsed.verify()
    except PyrgosError:
        return
    assert data == SAMPLE
