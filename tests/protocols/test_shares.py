"""The caps file of what an owner shares with one follower: round trips and strict decoding."""

from __future__ import annotations

import pytest

from protocols import cbor
from protocols.cid import CID
from protocols.crypto import SigningKey
from protocols.cryptree import Capability
from protocols.errors import InvalidName, MalformedInput, TooLarge
from protocols.shares import (
    MAX_SHARES,
    SharedItem,
    decode_caps,
    encode_caps,
    normalise,
    within,
)

OWNER: CID = SigningKey.from_seed(bytes(range(32))).public.key_hash()
CAP = Capability(OWNER, OWNER, b"l" * 32, b"b" * 32, b"r" * 32, b"w" * 32)


def item(path: str = "/alice/x", writable: bool = False) -> SharedItem:
    return SharedItem(path, CAP if writable else CAP.read_only(), writable, 5)


def test_round_trip() -> None:
    items = [item(), item("/alice/y/z", True)]
    assert decode_caps(encode_caps(items)) == items
    assert decode_caps(encode_caps([])) == []


def test_paths() -> None:
    assert normalise("/alice//x/") == "/alice/x"
    for bad in ("alice/x", "/alice", "/", "/Alice/x", "/alice/../x"):
        with pytest.raises(InvalidName):
            normalise(bad)
    assert within("/alice/x/y", "/alice/x")
    assert within("/alice/x", "/alice/x")
    assert not within("/alice/xy", "/alice/x")


def raw(**changes: object) -> bytes:
    value = {**item().to_cbor(), **changes}
    return cbor.encode([value])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (raw(writable=True), "does not match"),
        (raw(path="/alice"), "not valid"),
        (raw(path="/alice/.."), "not valid"),
        (raw(path=7), "path"),
        (raw(since=-1), "time"),
        (raw(since=True), "time"),
        (raw(writable=1), "boolean"),
        (raw(extra=1), "shared item is"),
        (raw(cap={"o": 1}), "capability"),
        (cbor.encode({"path": "/alice/x"}), "list"),
        (cbor.encode([item().to_cbor(), item().to_cbor()]), "twice"),
        (cbor.encode([1]), "shared item is"),
    ],
)
def test_bad_caps_files(data: bytes, message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        decode_caps(data)


def test_limits() -> None:
    many = [item(f"/alice/x{i}") for i in range(MAX_SHARES + 1)]
    with pytest.raises(TooLarge, match="at most"):
        encode_caps(many)
    with pytest.raises(MalformedInput, match="at most"):
        decode_caps(cbor.encode([i.to_cbor() for i in many]))
