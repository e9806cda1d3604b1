"""Bounded decoding: a body of many tiny items or deep nesting is refused before cbor2 runs,
in steps bounded by the item limit, never by the body's size."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.cid import CID
from protocols.errors import MalformedInput, PyrgosError, TooLarge
from tests.protocols.test_cbor import VALUES

MiB = 1024 * 1024
N = 9 * MiB


def _array(count: int) -> bytes:
    return b"\x9a" + count.to_bytes(4, "big")


def _map(count: int) -> bytes:
    return b"\xba" + count.to_bytes(4, "big")


BOMBS = {
    "empty arrays": _array(N) + b"\x80" * N,
    "arrays of one": _array(N // 2) + b"\x81\x80" * (N // 2),
    "tiny map": _map(N // 2) + b"\x60\x00" * (N // 2),
    "tiny byte strings": _array(N // 2) + b"\x41\x00" * (N // 2),
    "tiny text": _array(N // 2) + b"\x61a" * (N // 2),
    "tags": _array(N // 3) + b"\xd8\x2a\x00" * (N // 3),
    "deep nesting": b"\x81" * N + b"\x80",
    "deep maps": b"\xa1\x61a" * (N // 3) + b"\x00",
    # containers that each stay small, nested so that none declares too much alone
    "nested small lists": (b"\x98\x80" + (b"\x98\x80" + b"\x80" * 128) * 128) * 512,
    "a lying count": _array(2**32 - 1) + b"\x80" * (cbor.DEFAULT_MAX_ITEMS + 1),
}


class _Counting:
    """Counts the heads `check_shape` reads (by indexing), to bound its work exactly."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: Any) -> Any:
        self.reads += 1
        return self.data[index]


@pytest.fixture
def no_cbor2(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("cbor2 ran on input that should have been refused before")

    monkeypatch.setattr(cbor2, "loads", refuse)


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_are_refused_before_cbor2_runs(name: str, no_cbor2: None) -> None:
    with pytest.raises((TooLarge, MalformedInput)):
        cbor.decode(BOMBS[name], limit=10 * MiB)


@pytest.mark.parametrize("name", sorted(BOMBS))
@pytest.mark.parametrize("max_items", [64, 4096, cbor.DEFAULT_MAX_ITEMS])
def test_refusing_costs_steps_bounded_by_the_item_limit(name: str, max_items: int) -> None:
    counting = _Counting(BOMBS[name])
    with pytest.raises((TooLarge, MalformedInput)):
        cbor.check_shape(counting, max_items)  # type: ignore[arg-type]
    assert counting.reads <= 2 * max_items + 2  # a head and its argument bytes, per item


def test_item_limit_is_exact() -> None:
    value = [[0] * 9 for _ in range(10)]  # 1 + 10 + 90 = 101 items
    data = cbor.encode(value)
    assert cbor.decode(data, max_items=101) == value
    with pytest.raises(TooLarge, match="more than 100 items"):
        cbor.decode(data, max_items=100)
    keyed = cbor.encode({"a": [1, 2], "bb": b"x" * 100})  # map, 2 keys, list, 2 ints, bytes
    assert cbor.decode(keyed, max_items=7)
    with pytest.raises(TooLarge):
        cbor.decode(keyed, max_items=6)


def test_large_strings_cost_one_step_each() -> None:
    put = {"blocks": [[0x55, bytes(MiB)] for _ in range(8)], "sigs": [bytes(64)] * 8}
    data = b"".join(cbor.encode_parts(put))
    counting = _Counting(data)
    cbor.check_shape(counting, 64)  # type: ignore[arg-type]
    assert counting.reads < 200  # 46 items: never a read per byte
    assert cbor.decode(data, limit=10 * MiB, max_items=64) == put


def _items(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(map(_items, value))
    if isinstance(value, dict):
        return 1 + len(value) + sum(map(_items, value.values()))
    return 2 if isinstance(value, CID) else 1  # a link is a tag and its byte string


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_the_walk_counts_exactly_what_encode_wrote(value: Any) -> None:
    data = cbor.encode(value)
    items = _items(value)
    cbor.check_shape(data, items)
    if items - 1 < len(data):  # else the walk is skipped: there cannot be that many items
        with pytest.raises(TooLarge):
            cbor.check_shape(data, items - 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(1, 64))
def test_random_bytes_are_judged_the_same_with_a_small_limit(data: bytes, max_items: int) -> None:
    """The walk only refuses: whatever it lets through, cbor2 and the canonical check judge."""
    try:
        value = cbor.decode(data, max_items=max_items)
    except PyrgosError:
        return
    assert cbor.encode(value) == data
