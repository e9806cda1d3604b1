"""Tests of protocols.cbor and protocols.cid: vectors, round trips, canonical form, fuzzing."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.cid import (
    CID,
    CODEC_DAG_CBOR,
    CODEC_RAW,
    MAX_IDENTITY_DIGEST,
    MH_IDENTITY,
    MH_SHA2_256,
    decode_varint,
    encode_varint,
)
from protocols.errors import MalformedInput, TooLarge

VECTORS: list[dict[str, str]] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "cid.json").read_text()
)
CODECS = {"raw": CODEC_RAW, "dag-cbor": CODEC_DAG_CBOR}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CIDS = st.one_of(
    st.builds(CID.of, st.sampled_from([CODEC_RAW, CODEC_DAG_CBOR]), st.binary(max_size=64)),
    st.builds(
        lambda codec, digest: CID(codec, MH_IDENTITY, digest),
        st.sampled_from([CODEC_RAW, CODEC_DAG_CBOR]),
        st.binary(max_size=MAX_IDENTITY_DIGEST),
    ),
)
LEAVES = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.binary(max_size=64),
    st.text(max_size=16),
    st.booleans(),
    st.none(),
    CIDS,
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


def same(a: Any, b: Any) -> bool:
    """Equality that also tells True from 1 and a list from a dict, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def decodes_or_rejects(data: bytes, limit: int = cbor.DEFAULT_LIMIT) -> None:
    """The decoder's whole contract on hostile input: a canonical value, or a typed rejection."""
    try:
        value = cbor.decode(data, limit=limit)
    except (MalformedInput, TooLarge):
        return
    assert cbor.encode(value) == data


# --- CID vectors and forms ---------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v["cid"] for v in VECTORS])
def test_cid_vectors(vector: dict[str, str]) -> None:
    data = bytes.fromhex(vector["data_hex"])
    cid = CID.of(CODECS[vector["codec"]], data)
    assert cid.text == str(cid) == vector["cid"]
    parsed = CID.from_text(vector["cid"])
    assert parsed == cid
    assert parsed.codec == CODECS[vector["codec"]]
    assert parsed.mh_code == MH_SHA2_256
    assert parsed.matches(data)
    assert not parsed.matches(data + b"\x00")
    assert CID.from_bytes(cid.raw) == cid


def test_dag_cbor_vector_is_the_empty_map() -> None:
    (vector,) = [v for v in VECTORS if v["codec"] == "dag-cbor"]
    assert cbor.encode({}) == bytes.fromhex(vector["data_hex"])
    assert CID.of(CODEC_DAG_CBOR, cbor.encode({})).text == vector["cid"]


@given(cid=CIDS)
def test_cid_text_and_bytes_round_trip(cid: CID) -> None:
    assert cid.text.startswith("b")
    assert cid.text == cid.text.lower()
    assert "=" not in cid.text
    assert CID.from_text(cid.text) == cid
    assert CID.from_bytes(cid.raw) == cid
    assert CID.from_bytes(cid.raw).raw == cid.raw
    assert hash(CID.from_text(cid.text)) == hash(cid)
    assert cid.raw[0] == 1
    assert repr(cid) == f"CID({cid.text})"


@given(data=st.binary(max_size=MAX_IDENTITY_DIGEST))
def test_identity_cid_carries_its_data(data: bytes) -> None:
    cid = CID(CODEC_DAG_CBOR, MH_IDENTITY, data)
    parsed = CID.from_bytes(cid.raw)  # 36 bytes, a key hash's size, is parsed at a glance
    assert (parsed.codec, parsed.mh_code, parsed.digest) == (CODEC_DAG_CBOR, MH_IDENTITY, data)
    assert (parsed.raw, hash(parsed)) == (cid.raw, hash(cid))
    assert cid.is_identity
    assert cid.digest == data
    assert cid.matches(data)
    assert not cid.matches(data + b"x")
    assert not CID.of(CODEC_DAG_CBOR, data).is_identity


def test_cid_equality_and_order_follow_the_binary_form() -> None:
    a, b = CID.of(CODEC_RAW, b"a"), CID.of(CODEC_RAW, b"b")
    assert a == CID.of(CODEC_RAW, b"a")
    assert a != CID.of(CODEC_DAG_CBOR, b"a")
    assert a != a.raw
    assert (a < b) == (a.raw < b.raw)
    assert sorted([b, a]) == sorted([a, b])
    assert len({a, CID.from_bytes(a.raw), b}) == 2


@pytest.mark.parametrize(
    ("codec", "mh_code", "digest"),
    [
        (0x70, MH_SHA2_256, bytes(32)),  # dag-pb
        (0x00, MH_SHA2_256, bytes(32)),
        (CODEC_RAW, 0x13, bytes(64)),  # sha2-512
        (CODEC_RAW, 0x1E, bytes(32)),  # blake3
        (CODEC_RAW, MH_SHA2_256, bytes(31)),
        (CODEC_RAW, MH_SHA2_256, bytes(33)),
        (CODEC_RAW, MH_IDENTITY, bytes(MAX_IDENTITY_DIGEST + 1)),
    ],
)
def test_cid_constructor_rejects(codec: int, mh_code: int, digest: bytes) -> None:
    with pytest.raises(MalformedInput):
        CID(codec, mh_code, digest)


GOOD = CID.of(CODEC_RAW, b"hello world")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01",
        b"\x00" + GOOD.raw[1:],  # CIDv0 marker
        b"\x12\x20" + GOOD.digest,  # a bare multihash (CIDv0)
        b"\x02" + GOOD.raw[1:],  # CIDv2
        b"\x81\x00" + GOOD.raw[1:],  # non-minimal version varint
        b"\x01\xd5\x00" + GOOD.raw[2:],  # non-minimal codec varint
        GOOD.raw[:-1],  # digest shorter than its length
        GOOD.raw + b"\x00",  # trailing byte
        b"\x01\x55\x12\x21" + GOOD.digest + b"\x00",  # sha2-256 of 33 bytes
        b"\x01\x55\x12",  # truncated before the length
        b"\x01\x55\x00\x25" + bytes(37),  # identity over 36 bytes
        b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint too long
    ],
)
def test_cid_from_bytes_rejects(raw: bytes) -> None:
    with pytest.raises(MalformedInput):
        CID.from_bytes(raw)


def _with_last_char(text: str, char: str) -> str:
    return text[:-1] + char


@pytest.mark.parametrize(
    "text",
    [
        "",
        "b",
        "z" + GOOD.text[1:],  # base58btc
        "B" + GOOD.text[1:].upper(),  # base32 upper is another multibase
        "f" + GOOD.raw.hex(),  # base16
        "b" + GOOD.text[1:].upper(),  # prefix says lower, body is upper
        GOOD.text[:2] + GOOD.text[2].upper() + GOOD.text[3:],  # one upper-case letter
        GOOD.text + "======",  # padding
        GOOD.text + "=",
        _with_last_char(GOOD.text, "f"),  # same bytes, non-zero trailing bits
        GOOD.text[:-1],
        GOOD.text[:-2],
        GOOD.text + "a",
        GOOD.text + "aaaaaaaa",  # five more bytes after the digest
        GOOD.text.replace("a", "1", 1),  # 1 is not in the base32 alphabet
        GOOD.text[:10] + " " + GOOD.text[10:],
        GOOD.text + "\n",
        "b" + "é" * 10,
        "b!!!!",
        "b" + "a" * 300,
        "bafy",
    ],
)
def test_cid_from_text_rejects(text: str) -> None:
    with pytest.raises(MalformedInput):
        CID.from_text(text)


@given(
    cid=CIDS,
    index=st.integers(min_value=1),
    char=st.sampled_from("abcdefghijklmnopqrstuvwxyz234567"),
)
def test_cid_from_text_never_aliases(cid: CID, index: int, char: str) -> None:
    # Any other text either names another CID or is rejected: one CID, one text.
    text = cid.text
    index = 1 + index % (len(text) - 1)
    other = text[:index] + char + text[index + 1 :]
    try:
        parsed = CID.from_text(other)
    except MalformedInput:
        return
    assert parsed.text == other
    assert (parsed == cid) == (other == text)


# --- varints -----------------------------------------------------------------------------------


@given(value=st.integers(min_value=0, max_value=2**63 - 1), prefix=st.binary(max_size=4))
def test_varint_round_trip(value: int, prefix: bytes) -> None:
    encoded = encode_varint(value)
    assert len(encoded) == max(1, (value.bit_length() + 6) // 7)
    assert all(byte & 0x80 for byte in encoded[:-1])
    assert not encoded[-1] & 0x80
    assert decode_varint(encoded) == (value, len(encoded))
    assert decode_varint(prefix + encoded + b"\xff", len(prefix)) == (
        value,
        len(prefix) + len(encoded),
    )
    assert decode_varint(memoryview(encoded)) == (value, len(encoded))


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (16384, b"\x80\x80\x01"), (2**63 - 1, b"\xff" * 8 + b"\x7f")],
)  # fmt: skip
def test_varint_known_encodings(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    assert decode_varint(encoded) == (value, len(encoded))


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x00",  # 0 in two bytes
        b"\x81\x00",  # 1 in two bytes
        b"\xff\x80\x00",  # 127 in three bytes
        b"\x80\x80\x80\x00",
    ],
)
def test_varint_rejects_non_minimal(data: bytes) -> None:
    with pytest.raises(MalformedInput, match="non-minimal"):
        decode_varint(data)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff"])
def test_varint_rejects_truncated(data: bytes) -> None:
    with pytest.raises(MalformedInput, match="truncated"):
        decode_varint(data)


def test_varint_length_limits() -> None:
    with pytest.raises(MalformedInput, match="too long"):
        decode_varint(encode_varint(2**63))
    with pytest.raises(MalformedInput, match="too long"):
        decode_varint(encode_varint(2**14), max_bytes=2)
    assert decode_varint(encode_varint(2**14 - 1), max_bytes=2) == (2**14 - 1, 2)
    with pytest.raises(MalformedInput, match="truncated"):
        decode_varint(b"\x05", offset=1)
    with pytest.raises(ValueError, match="non-negative"):
        encode_varint(-1)


# --- CBOR round trips and canonical form -------------------------------------------------------


@given(value=VALUES)
def test_round_trip(value: Any) -> None:
    assume(depth(value) <= cbor.MAX_DEPTH)
    encoded = cbor.encode(value)
    decoded = cbor.decode(encoded)
    assert same(decoded, value)
    assert cbor.encode(decoded) == encoded
    assert same(cbor.decode(memoryview(encoded)), value)
    assert same(cbor.decode(bytearray(encoded)), value)


BULK_LEAVES = st.sampled_from([-1, 0, 1, 70_000]).map(
    lambda extra: bytes([extra & 0xFF]) * (cbor.BULK_BYTES + extra)
)
BULKY_VALUES = st.recursive(
    st.one_of(LEAVES, BULK_LEAVES),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(value=VALUES, bulk=st.integers(1, 40))
def test_parts_join_to_the_encoding(value: Any, bulk: int) -> None:
    parts = cbor.encode_parts(value, bulk=bulk)
    assert b"".join(parts) == cbor.encode(value)
    leaves = bulk_leaves(value, bulk)
    assert all(any(part is leaf for leaf in leaves) for part in parts[1::2])  # not copies
    assert not any(parts[0] is leaf for leaf in leaves)  # a frame header can go in front


@given(value=BULKY_VALUES)
@settings(max_examples=60, deadline=None)
def test_bulk_strings_are_passed_on_and_checked_in_place(value: Any) -> None:
    assume(depth(value) <= cbor.MAX_DEPTH)
    parts = cbor.encode_parts(value)
    encoded = b"".join(parts)
    assert encoded == cbor.encode(value)
    assert len(parts) == 1 + 2 * len(bulk_leaves(value, cbor.BULK_BYTES))
    assert same(cbor.decode(encoded, limit=len(encoded)), value)


def bulk_leaves(value: Any, bulk: int) -> list[bytes]:
    if isinstance(value, bytes):
        return [value] if len(value) >= bulk else []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [leaf for item in items for leaf in bulk_leaves(item, bulk)]


def test_non_canonical_messages_with_bulk_strings_are_refused() -> None:
    big = b"\x07" * cbor.BULK_BYTES
    good = cbor.encode({"a": 1, "data": big})
    limit = len(good) + 16
    long_head = b"\x5b" + len(big).to_bytes(8, "big")  # the same string with an 8-byte length
    unsorted = b"\xa2" + cbor2.dumps("data") + cbor.encode(big) + cbor2.dumps("a") + b"\x01"
    for data in (
        good + b"\x00",  # trailing bytes
        good.replace(b"\x5a" + len(big).to_bytes(4, "big"), long_head),
        unsorted,
        good[:-1],  # cut short
    ):
        with pytest.raises(MalformedInput):
            cbor.decode(data, limit=limit)
    assert cbor.decode(good, limit=limit) == {"a": 1, "data": big}


@given(items=st.dictionaries(st.text(max_size=8), st.integers(), max_size=10), data=st.data())
def test_map_encoding_ignores_insertion_order(items: dict[str, int], data: st.DataObject) -> None:
    keys = data.draw(st.permutations(list(items)))
    shuffled = {key: items[key] for key in keys}
    assert cbor.encode(shuffled) == cbor.encode(items)


@given(items=st.dictionaries(st.text(max_size=8), st.none(), min_size=2, max_size=10))
def test_map_keys_are_sorted_length_first_then_bytewise(items: dict[str, None]) -> None:
    order = list(cbor.decode(cbor.encode(items)))  # decoding keeps the encoded order
    encoded_keys = [cbor2.dumps(key) for key in order]
    assert encoded_keys == sorted(encoded_keys, key=lambda k: (len(k), k))


def test_known_encodings() -> None:
    assert cbor.encode({"b": 1, "aa": 2, "a": 3}) == bytes.fromhex("a361610361620162616102")
    assert cbor.encode(2**64 - 1) == bytes.fromhex("1bffffffffffffffff")
    assert cbor.encode(-(2**64)) == bytes.fromhex("3bffffffffffffffff")
    assert cbor.encode(23) == b"\x17"
    assert cbor.encode(24) == b"\x18\x18"
    assert cbor.encode([True, False, None]) == bytes.fromhex("83f5f4f6")


def test_cid_link_encoding() -> None:
    cid = CID.of(CODEC_RAW, b"x")
    encoded = cbor.encode(cid)
    # tag 42 (d8 2a), byte string of 37 (58 25), 0x00, then the 36 CID bytes
    assert encoded == bytes.fromhex("d82a5825") + b"\x00" + cid.raw
    assert cbor.decode(encoded) == cid


def test_iter_links_in_document_order() -> None:
    a, b, c, d = (CID.of(CODEC_RAW, bytes([i])) for i in range(4))
    value = {"z": [a, {"k": b}], "a": c, "list": [[[d]], 1, b"x", "y"], "n": None}
    # Map order is the canonical encoded order: "a", "n", "z", "list".
    assert cbor.iter_links(cbor.decode(cbor.encode(value))) == [c, a, b, d]
    assert cbor.iter_links(a) == [a]
    assert cbor.iter_links([1, "x", b"y"]) == []


def test_encode_refuses_unknown_types() -> None:
    with pytest.raises(TypeError):
        cbor.encode({"x": object()})


def test_nesting_up_to_the_limit() -> None:
    nested: Any = 0
    for _ in range(cbor.MAX_DEPTH):
        nested = [nested]
    assert cbor.decode(cbor.encode(nested)) == nested
    with pytest.raises(MalformedInput, match=r"depth|deeply"):
        cbor.decode(cbor.encode([nested]))
    with pytest.raises(MalformedInput):
        cbor.decode(b"\xa1\x61a" * 100 + b"\x00")


# --- rejection of non-canonical and non-DAG-CBOR input -----------------------------------------

NON_CANONICAL = {
    "unsorted keys": "a2616201616102",
    "bytewise but not length-first": "a262616101616202",
    "non-minimal int 1 byte": "1801",
    "non-minimal int 23": "1817",
    "non-minimal int 2 bytes": "190001",
    "non-minimal int 4 bytes": "1a00000001",
    "non-minimal int 8 bytes": "1b0000000000000001",
    "non-minimal negative": "3800",
    "non-minimal uint16 in uint32": "1a0000ffff",
    "non-minimal bytes length": "580161",
    "non-minimal text length": "780161",
    "non-minimal array length": "980100",
    "non-minimal map length": "b801616100",
    "non-minimal CID bytes length": "d82a590025" + "00" + GOOD.raw.hex(),
    "indefinite bytes": "5f4161ff",
    "indefinite text": "7f6161ff",
    "indefinite array": "9f00ff",
    "indefinite map": "bf616100ff",
    "half float": "f93c00",
    "single float": "fa3f800000",
    "double float": "fb3ff0000000000000",
    "float zero": "f90000",
    "NaN": "f97e00",
    "infinity": "f97c00",
    "float in a map": "a16161f93c00",
    "undefined": "f7",
    "simple value": "f0",
    "simple value 255": "f8ff",
    "tag 0 datetime": "c074323031332d30332d32315432303a30343a30305a",
    "tag 1 epoch": "c100",
    "tag 2 small bignum": "c24101",
    "tag 2 bignum 2**64": "c249010000000000000000",
    "tag 3 bignum -(2**64)-1": "c349010000000000000000",
    "tag 4 decimal": "c4820101",
    "tag 24 embedded": "d8184100",
    "tag 28 shareable": "d81c00",
    "tag 30 rational": "d81e820102",
    "tag 37 uuid": "d82550" + "00" * 16,
    "tag 43": "d82b00",
    "tag 258 set": "d9010280",
    "tag 55799 self-describe": "d9d9f700",
    "tag 42 over text": "d82a6161",
    "tag 42 without 0x00": "d82a5824" + GOOD.raw.hex(),
    "tag 42 with 0x01": "d82a5825" + "01" + GOOD.raw.hex(),
    "tag 42 over a dag-pb CID": "d82a5825" + "00" + "01701220" + GOOD.digest.hex(),
    "tag 42 over a short CID": "d82a5824" + "00" + GOOD.raw[:-1].hex(),
    "tag 42 over CIDv0": "d82a5823" + "00" + GOOD.raw[2:].hex(),
    "tag 42 over empty": "d82a40",
    "tag 42 over an array": "d82a80",
    "duplicate keys": "a2616101616101",
    "duplicate keys, different values": "a2616101616102",
    "trailing byte": "0000",
    "trailing map": "a0a0",
    "trailing break": "80ff",
    "int key": "a10102",
    "bytes key": "a1416101",
    "null key": "a1f600",
    "bool key": "a1f500",
    "array key": "a18000",
    "CID key": "a1d82a5825" + "00" + GOOD.raw.hex() + "00",
    "empty": "",
    "truncated array": "8201",
    "truncated bytes": "5a0000000a00",
    "invalid utf-8": "61ff",
    "overlong utf-8": "62c0af",
    "encoded surrogate": "63eda080",
    "lone break": "ff",
    "reserved additional info": "1c",
    "huge declared array": "9bffffffffffffffff",
    "huge declared map": "bbffffffffffffffff",
    "huge declared bytes": "5bffffffffffffffff",
}


@pytest.mark.parametrize("hex_data", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_decode_rejects(hex_data: str) -> None:
    with pytest.raises(MalformedInput):
        cbor.decode(bytes.fromhex(hex_data))


def test_decode_rejects_out_of_range_ints_either_side() -> None:
    assert cbor.decode(bytes.fromhex("1bffffffffffffffff")) == 2**64 - 1
    assert cbor.decode(bytes.fromhex("3bffffffffffffffff")) == -(2**64)
    with pytest.raises(MalformedInput):
        cbor.decode(cbor2.dumps(2**64))
    with pytest.raises(MalformedInput):
        cbor.decode(cbor2.dumps(-(2**64) - 1))
    with pytest.raises(MalformedInput):
        cbor.decode(cbor2.dumps([2**200]))


def test_size_limit() -> None:
    value = b"x" * 1000
    encoded = cbor.encode(value)
    assert cbor.decode(encoded, limit=len(encoded)) == value
    with pytest.raises(TooLarge):
        cbor.decode(encoded, limit=len(encoded) - 1)
    with pytest.raises(TooLarge):  # checked before parsing: garbage over the limit is TooLarge
        cbor.decode(b"\xff" * (cbor.DEFAULT_LIMIT + 1))
    big = cbor.encode(bytes(cbor.DEFAULT_LIMIT - 5))
    assert len(big) == cbor.DEFAULT_LIMIT
    assert len(cbor.decode(big)) == cbor.DEFAULT_LIMIT - 5
    with pytest.raises(TooLarge):
        cbor.decode(cbor.encode(bytes(cbor.DEFAULT_LIMIT - 4)))
    with pytest.raises(TooLarge):
        cbor.decode(memoryview(encoded), limit=10)


# --- fuzzing -----------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    decodes_or_rejects(data)
    decodes_or_rejects(data, limit=len(data) // 2)


@FUZZ
@given(data=st.binary(max_size=40).map(lambda tail: b"\xd8\x2a" + tail))
def test_fuzz_random_cid_tags(data: bytes) -> None:
    decodes_or_rejects(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    value = draw(VALUES)
    assume(depth(value) <= cbor.MAX_DEPTH)
    data = bytearray(cbor.encode(value))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 3))]
        else:
            del data[at:]
    return bytes(data)


@FUZZ
@given(data=mutated())
def test_fuzz_mutated_encodings(data: bytes) -> None:
    decodes_or_rejects(data)


@settings(max_examples=150, deadline=None)
@given(
    value=st.lists(LEAVES, max_size=4),
    header=st.sampled_from([0x5B, 0x7B, 0x9B, 0xBB]),
    length=st.integers(0, 2**64 - 1),
)
def test_fuzz_lying_length_headers(value: Any, header: int, length: int) -> None:
    # A length claim far beyond the input must fail fast, not allocate it.
    decodes_or_rejects(bytes([header]) + length.to_bytes(8, "big") + cbor.encode(value))


@FUZZ
@given(text=st.text(max_size=80))
def test_fuzz_cid_text(text: str) -> None:
    try:
        cid = CID.from_text(text)
    except MalformedInput:
        return
    assert cid.text == text


@FUZZ
@given(raw=st.binary(max_size=60))
def test_fuzz_cid_bytes(raw: bytes) -> None:
    try:
        cid = CID.from_bytes(raw)
    except MalformedInput:
        return
    assert cid.raw == raw
    assert CID.from_text(cid.text) == cid


def test_cid_text_of_raw_bytes_matches_multibase() -> None:
    expected = "b" + base64.b32encode(GOOD.raw).decode().rstrip("=").lower()
    assert GOOD.text == expected


def type_verdict(check: Any, value: Any) -> str:
    try:
        return f"bulky {check(value)}"
    except MalformedInput as exc:
        return f"refused: {exc}"


ANY_LEAVES = st.one_of(
    LEAVES,
    st.integers(),  # out of range too
    st.floats(allow_nan=False),
    st.just(b"x" * cbor.BULK_BYTES),
    st.builds(cbor2.CBORTag, st.integers(0, 100), st.none()),
    st.builds(cbor2.CBORSimpleValue, st.integers(32, 255)),
)
ANY_VALUES = st.recursive(
    ANY_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3)), inner, max_size=5),
    ),
    max_leaves=30,
)


@FUZZ
@given(value=ANY_VALUES, nest=st.integers(0, 3))
def test_the_type_walk_gives_the_verdict_of_the_item_by_item_check(value: Any, nest: int) -> None:
    for _ in range(nest * 22):  # past MAX_DEPTH at the deepest
        value = [value]
    assert type_verdict(cbor._check_types, value) == type_verdict(cbor._check_types_of, value)


@given(value=st.integers(min_value=0, max_value=2**64 - 1))
def test_encode_uint_is_encode(value: int) -> None:
    assert cbor.encode_uint(value) == cbor.encode(value)
