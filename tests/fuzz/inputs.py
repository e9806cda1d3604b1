"""Strategies shared by the fuzz suite: CBOR values that look like ours, and mutations of valid
bytes and values."""

from __future__ import annotations

from typing import Any, Final

from hypothesis import strategies as st

from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW, MH_IDENTITY
from protocols.crypto import SigningKey

# Every map key the protocols read, so random maps often hit a decoder's real fields.
FIELD_NAMES: Final = sorted(
    set(
        "id exp mac v controller tree owned login boxing links bats base meta data o w l b r x "  # noqa: SIM905
        "n d s t c m k p username identity home expiry sig mirrors previous handover node addrs "
        "seq prev time record claim hash method args result error code message want cancel cid "
        "kind entries head owner writer upload blocks sigs root keys updates uploads login_key "
        "login_data mirror_bat pointer after limit token auth quota used".split()
    )
)
EDGE_INTS: Final = [
    -(2**64),
    -(2**63),
    -1,
    0,
    1,
    2,
    23,
    24,
    255,
    256,
    2**31,
    2**32,
    2**53,
    2**63 - 1,
    2**63,
    2**64 - 1,
]
KEY_SIZES: Final = [0, 1, 15, 16, 17, 31, 32, 33, 34, 35, 36, 37, 63, 64, 65, 128, 4096]
SOME_KEY = SigningKey.from_seed(bytes(32))
LINKS: Final = [
    SOME_KEY.public.key_hash(),
    CID(CODEC_RAW, MH_IDENTITY, SOME_KEY.public.key_hash().digest),
    CID(CODEC_DAG_CBOR, MH_IDENTITY, b""),
    CID.of(CODEC_DAG_CBOR, b""),
    CID.of(CODEC_RAW, b""),
]

ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-(2**64), 2**64 - 1))
sized_bytes = st.one_of(
    st.sampled_from(KEY_SIZES).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    st.binary(max_size=64),
)
texts = st.one_of(
    st.sampled_from(FIELD_NAMES),
    st.text(max_size=40),
    st.sampled_from(["alice", "a" * 33, "admin", "", "\x00", "/", "..", "é" * 200]),
)
leaves = st.one_of(
    ints, sized_bytes, texts, st.booleans(), st.none(), st.sampled_from(LINKS), st.just(1.5)
)
# float (1.5) is not CBOR we accept: a value built in memory may still hold one.
cbor_values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), texts), inner, max_size=6),
    ),
    max_leaves=24,
)
# What a CBOR decoder can hand on: no floats.
decoded_values = st.recursive(
    st.one_of(ints, sized_bytes, texts, st.booleans(), st.none(), st.sampled_from(LINKS)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), texts), inner, max_size=6),
    ),
    max_leaves=24,
)


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid input with a few bytes replaced, inserted or deleted, or cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "cut", "flip"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[at:]
    return bytes(data)


@st.composite
def mutated_value(draw: st.DrawFn, seeds: list[Any]) -> Any:
    """A valid value with one part replaced, dropped or added, at any depth."""
    return _mutate(draw, draw(st.sampled_from(seeds)))


def _mutate(draw: st.DrawFn, value: Any) -> Any:
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        out = dict(value)
        action = draw(st.sampled_from(["deeper", "replace", "drop", "add"]))
        if action == "deeper":
            out[key] = _mutate(draw, value[key])
        elif action == "replace":
            out[key] = draw(decoded_values)
        elif action == "drop":
            del out[key]
        else:
            out[draw(st.sampled_from(FIELD_NAMES))] = draw(decoded_values)
        return out
    if isinstance(value, list) and value and draw(st.booleans()):
        index = draw(st.integers(0, len(value) - 1))
        items = list(value)
        action = draw(st.sampled_from(["deeper", "replace", "drop", "add"]))
        if action == "deeper":
            items[index] = _mutate(draw, value[index])
        elif action == "replace":
            items[index] = draw(decoded_values)
        elif action == "drop":
            del items[index]
        else:
            items.insert(index, draw(decoded_values))
        return items
    return draw(decoded_values)
