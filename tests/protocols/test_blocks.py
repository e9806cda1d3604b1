"""Tests of protocols.blocks: a writer's signature over each block it puts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.blocks import PUT_CONTEXT, sign_put, verify_put
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import SigningKey
from protocols.errors import InvalidSignature

WRITER = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))


@given(data=st.binary(max_size=100), codec=st.sampled_from([CODEC_RAW, CODEC_DAG_CBOR]))
def test_sign_and_verify_put(data: bytes, codec: int) -> None:
    cid = CID.of(codec, data)
    signature = sign_put(WRITER, cid)
    assert len(signature) == 64
    verify_put(WRITER.public, cid, signature)


def test_put_signature_is_bound_to_writer_cid_and_context() -> None:
    cid = CID.of(CODEC_RAW, b"block")
    signature = sign_put(WRITER, cid)
    with pytest.raises(InvalidSignature):
        verify_put(OTHER.public, cid, signature)
    with pytest.raises(InvalidSignature):
        verify_put(WRITER.public, CID.of(CODEC_RAW, b"other block"), signature)
    with pytest.raises(InvalidSignature):  # same digest, other codec
        verify_put(WRITER.public, CID.of(CODEC_DAG_CBOR, b"block"), signature)
    with pytest.raises(InvalidSignature):
        verify_put(WRITER.public, cid, WRITER.sign(cid.raw, b"pyrgos/pointer/1"))
    assert WRITER.sign(cid.raw, PUT_CONTEXT) == signature
    for bad in (bytes(64), signature[:-1], signature + b"\x00", signature[::-1]):
        with pytest.raises(InvalidSignature):
            verify_put(WRITER.public, cid, bad)
