"""Tests of protocols.structured: which dag-cbor blocks a node accepts at put."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor, champ, cryptree
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import SigningKey
from protocols.errors import MalformedInput, TooLarge
from protocols.structured import MAX_STRUCTURED_BYTES, check_structured, structured_links
from protocols.writerdata import MAX_OWNED, MAX_OWNER_PROOF, WriterData

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONTROLLER = SigningKey.from_seed(bytes(range(32))).public.key_hash()
FRAGMENT = CID.of(CODEC_RAW, b"fragment")
CHAMP_NODE = cbor.encode(
    [(1 << 31).to_bytes(4, "big"), bytes(4), [[[bytes(32), CID.of(CODEC_DAG_CBOR, b"n")]]], []]
)
WRITER_DATA = WriterData(CONTROLLER, champ.EMPTY_ROOT, owned=[bytes(MAX_OWNER_PROOF)] * MAX_OWNED)
NODES = [
    cryptree.Node([bytes(32)], bytes(256), bytes(1024), bytes(4096)).encode(),
    cryptree.Node([bytes(32)], bytes(256), bytes(1024), [FRAGMENT] * 5).encode(),
]
GOOD = [champ.EMPTY_NODE, CHAMP_NODE, WRITER_DATA.encode(), *NODES]


@pytest.mark.parametrize("block", GOOD)
def test_known_kinds_are_accepted(block: bytes) -> None:
    check_structured(block)
    assert structured_links(block) == cbor.iter_links(cbor.decode(block))


WD = WRITER_DATA.to_cbor()
BAD: dict[str, Any] = {
    "a map of no kind": {"a": 1},
    "an integer": 5,
    "a list of many empty lists": [[]] * 5000,
    "a deeply nested list": [[[[[[[[[[[]]]]]]]]]]],
    "CHAMP node with a fifth part": [bytes(4), bytes(4), [], [], []],
    "CHAMP bucket of four": [
        (1 << 31).to_bytes(4, "big"),
        bytes(4),
        [[[bytes([i]) * 32, FRAGMENT] for i in range(4)]],
        [],
    ],
    "owned over the count": {**WD, "owned": [b""] * (MAX_OWNED + 1)},
    "owned proof too long": {**WD, "owned": [bytes(MAX_OWNER_PROOF + 1)]},
    "owned of lists": {**WD, "owned": [[]] * 10},
    "WriterData with an unknown field": {**WD, "extra": [[]] * 10},
    "cryptree node with an extra field": {**cbor.decode(NODES[0]), "x": [[]] * 10},
    "cryptree node data of lists": {**cbor.decode(NODES[0]), "data": [[]] * 10},
}


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_unknown_shapes_are_refused(value: Any) -> None:
    with pytest.raises(MalformedInput):
        check_structured(cbor.encode(value))


def test_a_structured_block_is_small() -> None:
    big = cbor.encode([[]] * (MAX_STRUCTURED_BYTES + 1))
    with pytest.raises(TooLarge):
        check_structured(big)
    with pytest.raises(TooLarge):
        structured_links(big)


@FUZZ
@given(st.sampled_from(GOOD), st.integers(min_value=0), st.binary(min_size=1, max_size=4))
def test_mutations_are_refused_or_accepted_never_crash(block: bytes, at: int, new: bytes) -> None:
    at %= len(block)
    mutated = block[:at] + new + block[at + len(new) :]
    try:
        check_structured(mutated)
    except (MalformedInput, TooLarge):
        return
    structured_links(mutated)  # accepted: then its links can be followed
