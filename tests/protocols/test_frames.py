"""Tests of protocols.frames: round trips however the bytes are split, caps, garbage, fuzzing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.cid import CID, CODEC_RAW, encode_varint
from protocols.errors import MalformedInput, TooLarge
from protocols.frames import MAX_LENGTH_BYTES, FrameDecoder, encode_frame

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Hypothesis caches runs by their draws; b"" and 0 (or b"a" and "a") hash alike, so under
# `python -b` its own lookups can raise BytesWarning. Not ours to fail on.
pytestmark = pytest.mark.filterwarnings(r"ignore::BytesWarning:hypothesis\.internal\..*")

LEAVES = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.binary(max_size=300),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
    st.builds(CID.of, st.just(CODEC_RAW), st.binary(max_size=8)),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)
CAP = 4096


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


@given(
    values=st.lists(VALUES, max_size=8),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
    large=st.sampled_from([1, 16, 100, CAP + 1]),  # frames this long are collected in pieces
)
@FUZZ
def test_frames_round_trip_however_the_bytes_arrive(
    values: list[Any], cuts: list[int], large: int
) -> None:
    stream = b"".join(encode_frame(value) for value in values)
    decoder = FrameDecoder(CAP, large=large)
    received: list[Any] = []
    for piece in split(stream, cuts):
        received += decoder.feed(piece)
        assert decoder.buffered <= CAP + MAX_LENGTH_BYTES
        assert decoder.missing <= CAP
    decoder.end()
    assert [cbor.encode(value) for value in received] == [cbor.encode(value) for value in values]


def test_a_frame_is_a_varint_length_then_canonical_cbor() -> None:
    assert encode_frame({"a": 1}) == b"\x04" + cbor.encode({"a": 1})
    body = cbor.encode(b"x" * 200)
    assert encode_frame(b"x" * 200) == encode_varint(len(body)) + body
    assert encode_varint(len(body)) == b"\xca\x01"  # 202 = 0x4a + 1 << 7


def test_byte_at_a_time_and_many_frames_in_one_read() -> None:
    stream = b"".join(encode_frame([i, "x" * i]) for i in range(50))
    one_by_one = FrameDecoder(CAP)
    received = [value for byte in stream for value in one_by_one.feed(bytes([byte]))]
    assert received == [[i, "x" * i] for i in range(50)]
    assert FrameDecoder(CAP).feed(stream) == received
    assert not one_by_one.in_frame


def test_a_declared_length_over_the_cap_is_refused_before_its_body() -> None:
    decoder = FrameDecoder(CAP)
    with pytest.raises(TooLarge):
        decoder.feed(encode_varint(CAP + 1))  # the header alone: nothing of the body is held
    assert decoder.buffered == 0
    with pytest.raises(MalformedInput):  # the stream is out of step for good
        decoder.feed(encode_frame(1))
    with pytest.raises(TooLarge):
        FrameDecoder(CAP).feed(encode_varint(2**62) + b"\x00" * 10)
    assert FrameDecoder(CAP).feed(encode_frame(b"x" * (CAP - 3))) == [b"x" * (CAP - 3)]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x00", "empty frame"),
        (b"\x81\x00" + b"\x00", "non-minimal varint"),
        (b"\xff" * MAX_LENGTH_BYTES, "varint too long"),
        (b"\x02\x18\x01", "non-canonical CBOR (1 as two bytes)"),
        (b"\x01\xff", "not CBOR"),
        (b"\x01\xf9", "truncated CBOR"),
        (b"\x03\xf9\x3c\x00", "a float"),
        (b"\x02\x01\x01", "two values in one frame"),
    ],
)
def test_garbage_is_malformed(data: bytes, why: str) -> None:
    with pytest.raises(MalformedInput):
        FrameDecoder(CAP).feed(data)


def test_the_stream_may_end_only_between_frames() -> None:
    decoder = FrameDecoder(CAP)
    frame = encode_frame("hello")
    assert decoder.feed(frame + frame[:1]) == ["hello"]
    assert decoder.in_frame
    with pytest.raises(MalformedInput):
        decoder.end()
    header_only = FrameDecoder(CAP)
    assert header_only.feed(frame[:1]) == []
    assert header_only.in_frame
    assert header_only.buffered == 0
    FrameDecoder(CAP).end()


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, byte in edits:
        if out:
            out[position % len(out)] = byte
    return bytes(out)


def decodes_or_rejects(data: bytes, cuts: list[int]) -> None:
    for large in (16, CAP + 1):  # bodies collected in pieces, and in the buffer
        decoder = FrameDecoder(CAP, large=large)
        try:
            for piece in split(data, cuts):
                for value in decoder.feed(piece):
                    cbor.encode(value)
                assert decoder.buffered <= CAP + MAX_LENGTH_BYTES + len(piece)
            decoder.end()
        except (MalformedInput, TooLarge):
            continue


@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=4))
@FUZZ
def test_fuzz_random_bytes(data: bytes, cuts: list[int]) -> None:
    decodes_or_rejects(data, cuts)


@given(
    values=st.lists(VALUES, min_size=1, max_size=4),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 10**6), max_size=4),
    drop=st.integers(0, 8),
)
@FUZZ
def test_fuzz_mutated_frames(
    values: list[Any], edits: list[tuple[int, int]], cuts: list[int], drop: int
) -> None:
    stream = b"".join(encode_frame(value) for value in values)
    decodes_or_rejects(mutate(stream, edits), cuts)
    decodes_or_rejects(stream[: max(0, len(stream) - drop)], cuts)
