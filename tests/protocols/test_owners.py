"""Owner proofs: round trip, the size cap WriterData.owned keeps, and every refusal."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import cbor
from protocols.crypto import SigningKey
from protocols.errors import InvalidSignature, MalformedInput
from protocols.owners import CONTEXT, OwnerProof, owned_writers
from protocols.writerdata import MAX_OWNED, MAX_OWNER_PROOF

OWNER = SigningKey.from_seed(bytes(32))
WRITER = SigningKey.from_seed(bytes(range(32)))


def test_round_trip_and_size() -> None:
    proof = OwnerProof.create(WRITER, OWNER.public.key_hash())
    data = proof.encode()
    assert len(data) <= MAX_OWNER_PROOF
    assert OwnerProof.decode(data) == proof
    proof.verify(OWNER.public.key_hash())
    assert owned_writers(OWNER.public.key_hash(), [data]) == [WRITER.public.key_hash()]


def test_refusals() -> None:
    owner = OWNER.public.key_hash()
    proof = OwnerProof.create(WRITER, owner)
    with pytest.raises(InvalidSignature, match="another owner"):
        proof.verify(WRITER.public.key_hash())
    with pytest.raises(MalformedInput, match="itself"):
        OwnerProof.create(OWNER, owner).verify(owner)
    forged = OwnerProof(owner, WRITER.public.key_hash(), OWNER.sign(b"x", CONTEXT))
    with pytest.raises(InvalidSignature, match="not signed by the writer"):
        forged.verify(owner)
    with pytest.raises(MalformedInput, match="at most 256"):
        OwnerProof.decode(bytes(MAX_OWNER_PROOF + 1))
    for value in ([], [[owner], bytes(64)], [[owner, "w"], bytes(64)], [[owner, owner], b"s"]):
        with pytest.raises(MalformedInput):
            OwnerProof.decode(cbor.encode(value))
    with pytest.raises(MalformedInput, match="listed twice"):
        owned_writers(owner, [proof.encode(), proof.encode()])
    with pytest.raises(MalformedInput, match=f"at most {MAX_OWNED}"):
        owned_writers(owner, [proof.encode()] * (MAX_OWNED + 1))


@given(st.binary(max_size=300))
def test_decode_rejects_junk_cleanly(data: bytes) -> None:
    with contextlib.suppress(MalformedInput):
        OwnerProof.decode(data)
