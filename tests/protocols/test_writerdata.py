"""Tests of protocols.writerdata: the WriterData block and `controller_of`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import BoxingKey, KdfParams, SigningKey
from protocols.errors import MalformedInput, TooLarge
from protocols.writerdata import (
    MAX_OWNED,
    MAX_OWNER_PROOF,
    MAX_WRITER_DATA,
    VERSION,
    WriterData,
    controller_of,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDENTITY = SigningKey.from_seed(bytes(range(32)))
CONTROLLER = IDENTITY.public.key_hash()
TREE = CID.of(CODEC_DAG_CBOR, b"champ root")
LINKS = CID.of(CODEC_DAG_CBOR, b"links root")
LOGIN = KdfParams(1, 8 * 1024 * 1024, bytes(range(16)))
BOXING = BoxingKey.from_seed(bytes(range(1, 33))).public
FULL = WriterData(CONTROLLER, TREE, LOGIN, BOXING, [b"owner proof"], LINKS)


@pytest.mark.parametrize("data", [WriterData(CONTROLLER, TREE), FULL])
def test_round_trip(data: WriterData) -> None:
    encoded = data.encode()
    assert len(encoded) <= MAX_WRITER_DATA
    assert WriterData.decode(encoded) == data
    assert controller_of(encoded) == CONTROLLER
    assert cbor.decode(encoded)["v"] == VERSION


def test_minimal_block_fields() -> None:
    assert set(cbor.decode(WriterData(CONTROLLER, TREE).encode())) == {
        "v", "controller", "tree", "owned",
    }  # fmt: skip
    links = cbor.iter_links(cbor.decode(FULL.encode()))
    assert TREE in links
    assert LINKS in links


GOOD = FULL.to_cbor()
BAD: dict[str, Any] = {
    "not a map": [GOOD],
    "no version": {k: v for k, v in GOOD.items() if k != "v"},
    "version 2": {**GOOD, "v": 2},
    "no controller": {k: v for k, v in GOOD.items() if k != "controller"},
    "hashed controller": {**GOOD, "controller": CID.of(CODEC_DAG_CBOR, b"key")},
    "controller bytes": {**GOOD, "controller": CONTROLLER.raw},
    "no tree": {k: v for k, v in GOOD.items() if k != "tree"},
    "raw tree": {**GOOD, "tree": CID.of(CODEC_RAW, b"x")},
    "owned map": {**GOOD, "owned": {}},
    "owned over the count": {**GOOD, "owned": [b""] * (MAX_OWNED + 1)},
    "owned proof too long": {**GOOD, "owned": [bytes(MAX_OWNER_PROOF + 1)]},
    "owned proof not bytes": {**GOOD, "owned": [[]]},
    "raw links": {**GOOD, "links": CID.of(CODEC_RAW, b"x")},
    "links bytes": {**GOOD, "links": LINKS.raw},
    "unknown field": {**GOOD, "public": []},
    "login malformed": {**GOOD, "login": {"t": 1}},
    "login weak memory": {**GOOD, "login": {"t": 1, "m": 1, "s": bytes(16)}},
    "boxing malformed": {**GOOD, "boxing": [1, b"short"]},
}


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_decode_rejects(value: Any) -> None:
    block = cbor.encode(value)
    with pytest.raises(MalformedInput):
        WriterData.decode(block)
    assert controller_of(block) is None


def test_size_limit() -> None:
    big = cbor.encode({**GOOD, "owned": [bytes(MAX_WRITER_DATA)]})
    with pytest.raises(TooLarge):
        WriterData.decode(big)
    assert controller_of(big) is None  # any stored block may be named: it is just not one


@pytest.mark.parametrize("block", [b"", b"\xff", cbor.encode(GOOD) + b"\x00", bytes(100)])
def test_controller_of_non_writer_data(block: bytes) -> None:
    assert controller_of(block) is None


SAMPLE = FULL.encode()


@FUZZ
@given(data=st.binary(max_size=300) | st.builds(
    lambda at, byte: SAMPLE[:at] + bytes([byte]) + SAMPLE[at + 1 :],
    st.integers(0, len(SAMPLE) - 1), st.integers(0, 255),
))  # fmt: skip
def test_decode_fuzz(data: bytes) -> None:
    controller = controller_of(data)
    try:
        decoded = WriterData.decode(data)
    except (MalformedInput, TooLarge):
        assert controller is None
        return
    assert decoded.controller == controller
