"""Tests of protocols.cryptree: capabilities, entries, sealed fields, payloads and nodes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import random
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocols import bats, cbor, crypto, cryptree
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import SigningKey
from protocols.cryptree import (
    BASE_BYTES,
    CHUNK_BYTES,
    FRAGMENT_BYTES,
    MAX_BLOCK_BYTES,
    META_BYTES,
    Capability,
    Entry,
    KeyBlock,
    Node,
    Properties,
    SealedPayload,
    build_node,
    chunk_location,
    fragment_ranges,
    open_fragment,
    open_inline,
    open_node,
    seal_payload,
)
from protocols.errors import Corrupted, InvalidName, MalformedInput, TooLarge

MiB = 1024 * 1024
PAGE = crypto.PAD_CONTENT
OVERHEAD = crypto.SEAL_OVERHEAD
SOME = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OWNER = SigningKey.from_seed(bytes(range(32)))
WRITER = SigningKey.from_seed(bytes(range(1, 33)))


def key(n: int) -> bytes:
    return hashlib.sha256(b"test key %d" % n).digest()


CAP = Capability(
    owner=OWNER.public.key_hash(),
    writer=WRITER.public.key_hash(),
    label=key(1),
    bat=key(2),
    read_key=key(3),
    write_key=key(4),
)
CHILD = Capability(CAP.owner, CAP.writer, key(11), key(12), key(13), key(14))
MIRROR_ID = bats.hashed_id(key(5))
BAT_IDS = [bats.inline_id(key(6)), MIRROR_ID]
LABEL = key(7)
DATA_KEY = key(8)
FILE_KEYS = KeyBlock(DATA_KEY)
DIR_KEYS = KeyBlock(key(9), cryptree.seal_writer_secret(key(4), CAP.label, key(10)))

keys32 = st.binary(min_size=32, max_size=32)
key_hashes = st.one_of(
    keys32.map(lambda seed: SigningKey.from_seed(seed).public.key_hash()),
    st.binary(max_size=40).map(lambda data: CID.of(CODEC_DAG_CBOR, data)),
)
capabilities = st.builds(
    Capability,
    owner=key_hashes,
    writer=key_hashes,
    label=keys32,
    bat=keys32,
    read_key=keys32,
    write_key=st.none() | keys32,
)
file_names = st.text(min_size=1, max_size=60).filter(
    lambda name: name not in (".", "..") and "/" not in name and "\x00" not in name
)
properties = st.builds(
    Properties,
    name=file_names,
    is_dir=st.booleans(),
    size=st.integers(0, 2**64 - 1),
    modified=st.integers(0, 2**64 - 1),
    created=st.integers(0, 2**64 - 1),
    mime=st.text(max_size=31),  # at most 124 bytes of UTF-8
    chunks=st.integers(1, 2**32),
    parent=st.none() | keys32,
)


def props(name: str = "notes.txt", is_dir: bool = False, size: int = 0) -> Properties:
    mime = "" if is_dir else "text/plain"
    return Properties(name, is_dir, size, 1_700_000_000_000, 1_600_000_000_000, mime, 1, key(20))


def open_payload(key_: bytes, label: bytes, payload: SealedPayload) -> bytes:
    """Read a payload back the way a client does: inline, or every fragment in order."""
    if payload.inline is not None:
        assert payload.fragments == []
        return open_inline(key_, label, payload.inline)
    last = len(payload.fragments) - 1
    return b"".join(
        open_fragment(key_, label, i, i == last, block) for i, block in enumerate(payload.fragments)
    )


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    changed = bytearray(data)
    changed[index % len(changed)] ^= 1 << bit
    return bytes(changed)


# --- capabilities ------------------------------------------------------------------------------


@given(cap=capabilities)
def test_capability_cbor_round_trip(cap: Capability) -> None:
    value = cap.to_cbor()
    assert ("x" in value) == cap.writable
    assert Capability.from_cbor(cbor.decode(cbor.encode(value))) == cap


@given(cap=capabilities)
def test_capability_text_round_trip(cap: Capability) -> None:
    text = cap.to_text()
    assert text.startswith(cryptree.CAP_TEXT_PREFIX)
    body = text[len(cryptree.CAP_TEXT_PREFIX) :]
    assert "=" not in body
    assert set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert Capability.from_text(text) == cap
    assert len(text) <= 1024


def test_capability_read_only_and_repr() -> None:
    assert CAP.writable
    reader = CAP.read_only()
    assert not reader.writable
    assert reader.write_key is None
    assert (reader.owner, reader.writer, reader.label, reader.bat, reader.read_key) == (
        CAP.owner, CAP.writer, CAP.label, CAP.bat, CAP.read_key,
    )  # fmt: skip
    assert "x" not in reader.to_cbor()
    for secret in (CAP.read_key, CAP.write_key, CAP.bat, CAP.label):
        assert secret is not None
        assert secret.hex() not in repr(CAP)


def _cap_text(value: object) -> str:
    body = base64.urlsafe_b64encode(cbor.encode(value)).rstrip(b"=").decode()
    return cryptree.CAP_TEXT_PREFIX + body


GOOD_CAP = CAP.to_cbor()
GOOD_TEXT = CAP.to_text()
RAW_HASH = CID.of(CODEC_RAW, b"not a key")
BAD_CAPS: dict[str, Any] = {
    "not a map": list(GOOD_CAP.values()),
    "missing label": {k: v for k, v in GOOD_CAP.items() if k != "l"},
    "missing read key": {k: v for k, v in GOOD_CAP.items() if k != "r"},
    "unknown field": {**GOOD_CAP, "z": 1},
    "owner bytes": {**GOOD_CAP, "o": CAP.owner.raw},
    "owner raw CID": {**GOOD_CAP, "o": RAW_HASH},
    "writer raw CID": {**GOOD_CAP, "w": RAW_HASH},
    "writer text": {**GOOD_CAP, "w": CAP.writer.text},
    "label short": {**GOOD_CAP, "l": bytes(31)},
    "label long": {**GOOD_CAP, "l": bytes(33)},
    "bat short": {**GOOD_CAP, "b": bytes(16)},
    "read key text": {**GOOD_CAP, "r": "k" * 32},
    "read key null": {**GOOD_CAP, "r": None},
    "write key short": {**GOOD_CAP, "x": bytes(31)},
    "write key bool": {**GOOD_CAP, "x": True},
}


@pytest.mark.parametrize("value", BAD_CAPS.values(), ids=BAD_CAPS.keys())
def test_capability_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(MalformedInput):
        Capability.from_cbor(value)
    with pytest.raises(MalformedInput):
        Capability.from_text(_cap_text(value))


@pytest.mark.parametrize(
    "text",
    [
        "",
        GOOD_TEXT[len(cryptree.CAP_TEXT_PREFIX) :],  # no prefix
        "PYRGOS-CAP:" + GOOD_TEXT[len(cryptree.CAP_TEXT_PREFIX) :],
        "pyrgos-link:" + GOOD_TEXT[len(cryptree.CAP_TEXT_PREFIX) :],
        " " + GOOD_TEXT,
        GOOD_TEXT + " ",
        GOOD_TEXT + "\n",
        GOOD_TEXT + "=",  # padding is not part of the text form
        GOOD_TEXT + "==",
        GOOD_TEXT[:-1],
        GOOD_TEXT + "A",
        GOOD_TEXT[:30] + "!" + GOOD_TEXT[30:],  # a stray character, silently dropped by b64
        GOOD_TEXT[:30] + "." + GOOD_TEXT[30:],
        GOOD_TEXT.replace("-", "+").replace("_", "/") + "+/",  # standard alphabet
        cryptree.CAP_TEXT_PREFIX,
        cryptree.CAP_TEXT_PREFIX + "é" * 8,
        cryptree.CAP_TEXT_PREFIX + "A" * 1100,
        GOOD_TEXT + "A" * 1024,
        _cap_text(GOOD_CAP)[:-4],
        cryptree.CAP_TEXT_PREFIX
        + base64.urlsafe_b64encode(cbor.encode(GOOD_CAP) + b"\x00").rstrip(b"=").decode(),
        cryptree.CAP_TEXT_PREFIX + base64.urlsafe_b64encode(b"\xa2\x61a").decode(),
    ],
)
def test_capability_from_text_rejects(text: str) -> None:
    with pytest.raises(MalformedInput):
        Capability.from_text(text)


@FUZZ
@given(index=st.integers(0, len(GOOD_TEXT) - 1), char=st.characters(codec="ascii"))
def test_capability_from_text_mutated(index: int, char: str) -> None:
    text = GOOD_TEXT[:index] + char + GOOD_TEXT[index + 1 :]
    try:
        cap = Capability.from_text(text)
    except MalformedInput:
        return
    assert cap.to_text() == text
    assert (cap == CAP) == (text == GOOD_TEXT)


@FUZZ
@given(text=st.text(max_size=120).map(lambda body: cryptree.CAP_TEXT_PREFIX + body))
def test_capability_from_text_fuzz(text: str) -> None:
    with contextlib.suppress(MalformedInput):
        assert Capability.from_text(text).to_text() == text


# --- chunk locations ---------------------------------------------------------------------------


def test_chunk_location_formula() -> None:
    secret = hmac.digest(CAP.read_key, b"pyrgos/stream/1", "sha256")
    assert cryptree.stream_secret(CAP.read_key) == secret
    assert chunk_location(CAP.label, CAP.bat, CAP.read_key, 0) == (CAP.label, CAP.bat)
    label1 = hashlib.sha256(secret + CAP.label).digest()
    bat1 = hashlib.sha256(secret + CAP.bat).digest()
    assert chunk_location(CAP.label, CAP.bat, CAP.read_key, 1) == (label1, bat1)
    label2 = hashlib.sha256(secret + label1).digest()
    assert chunk_location(CAP.label, CAP.bat, CAP.read_key, 2)[0] == label2


@given(cap=capabilities, index=st.integers(0, 40))
def test_chunk_location_chains(cap: Capability, index: int) -> None:
    here = cap.chunk(index)
    assert here == chunk_location(cap.label, cap.bat, cap.read_key, index)
    # One more hash from chunk `index` reaches chunk `index + 1`: no earlier chunk is needed.
    assert chunk_location(*here, cap.read_key, 1) == cap.chunk(index + 1)
    assert chunk_location(*cap.chunk(index // 2), cap.read_key, index - index // 2) == here


def test_chunk_locations_are_distinct_and_key_dependent() -> None:
    labels = [CAP.chunk(i)[0] for i in range(64)]
    chunk_bats = [CAP.chunk(i)[1] for i in range(64)]
    assert len(set(labels)) == 64
    assert len(set(chunk_bats)) == 64
    assert not set(labels) & set(chunk_bats)
    other = replace(CAP, read_key=key(99))
    assert other.chunk(0) == CAP.chunk(0)
    assert all(other.chunk(i)[0] != CAP.chunk(i)[0] for i in range(1, 10))


def test_chunk_bat_ids() -> None:
    assert cryptree.chunk_bat_ids(CAP, 0, MIRROR_ID) == [bats.inline_id(CAP.bat), MIRROR_ID]
    assert cryptree.chunk_bat_ids(CAP, 3, MIRROR_ID) == [bats.inline_id(CAP.chunk(3)[1]), MIRROR_ID]


# --- entries -----------------------------------------------------------------------------------


def test_entry_link_round_trips_the_write_key() -> None:
    entry = Entry.link("docs", True, CHILD, CAP)
    assert entry.write_link is not None
    assert CHILD.write_key is not None
    assert CHILD.write_key not in entry.write_link  # sealed, not in clear
    assert entry.capability(CAP) == CHILD
    again = Entry.from_cbor(cbor.decode(cbor.encode(entry.to_cbor())))
    assert again == entry
    assert again.capability(CAP) == CHILD


def test_entry_link_through_read_only_parent_or_child() -> None:
    from_reader = Entry.link("docs", True, CHILD, CAP.read_only())
    assert from_reader.write_link is None
    assert from_reader.capability(CAP) == CHILD.read_only()
    read_only_child = Entry.link("docs", True, CHILD.read_only(), CAP)
    assert read_only_child.write_link is None
    assert read_only_child.capability(CAP) == CHILD.read_only()
    # A reader of the parent sees the child, but not its write key.
    assert Entry.link("docs", True, CHILD, CAP).capability(CAP.read_only()) == CHILD.read_only()


def test_entry_capability_inherits_owner_and_writer_from_the_parent() -> None:
    child = Entry.link("x", False, CHILD, CAP).capability(CAP)
    assert (child.owner, child.writer) == (CAP.owner, CAP.writer)


def test_entry_write_link_is_bound_to_parent_key_and_child_label() -> None:
    entry = Entry.link("docs", True, CHILD, CAP)
    with pytest.raises(Corrupted):
        entry.capability(replace(CAP, write_key=key(50)))
    moved = replace(entry, label=key(51))
    with pytest.raises(Corrupted):
        moved.capability(CAP)
    assert entry.write_link is not None
    with pytest.raises(Corrupted):
        replace(entry, write_link=flip(entry.write_link, 30)).capability(CAP)


@given(name=file_names, is_dir=st.booleans(), child=capabilities, parent=capabilities)
@SOME
def test_entry_round_trip(name: str, is_dir: bool, child: Capability, parent: Capability) -> None:
    entry = Entry.link(name, is_dir, child, parent)
    again = Entry.from_cbor(cbor.decode(cbor.encode(entry.to_cbor())))
    assert again == entry
    opened = again.capability(parent)
    assert (opened.label, opened.bat, opened.read_key) == (child.label, child.bat, child.read_key)
    expected_write = child.write_key if parent.write_key is not None else None
    assert opened.write_key == expected_write


def test_entry_renamed() -> None:
    entry = Entry.link("a", False, CHILD, CAP)
    renamed = entry.renamed("b.txt")
    assert renamed.name == "b.txt"
    assert renamed.capability(CAP) == entry.capability(CAP)
    with pytest.raises(InvalidName):
        entry.renamed("../b")


HOSTILE_NAMES = ["../x", "..", ".", "a/b", "/", "/etc/passwd", "\x00", "a\x00", "", "x" * 256,
                 "é" * 128, "\ud800"]  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_entry_rejects_hostile_names(name: str) -> None:
    value = Entry.link("ok", False, CHILD, CAP).to_cbor()
    value[0] = name
    with pytest.raises(InvalidName):
        Entry.from_cbor(value)
    with pytest.raises(InvalidName):
        Entry.link(name, False, CHILD, CAP)


def test_entry_rejects_hostile_names_from_the_wire() -> None:
    for name in HOSTILE_NAMES[:-1]:  # a lone surrogate cannot even be CBOR-encoded
        value = Entry.link("ok", False, CHILD, CAP).to_cbor()
        value[0] = name
        with pytest.raises(InvalidName):
            Entry.from_cbor(cbor.decode(cbor.encode(value)))


GOOD_ENTRY = Entry.link("ok", False, CHILD, CAP).to_cbor()


@pytest.mark.parametrize(
    "value",
    [
        None,
        {},
        GOOD_ENTRY[:5],
        [*GOOD_ENTRY, None],
        ["ok", 1, *GOOD_ENTRY[2:]],
        ["ok", None, *GOOD_ENTRY[2:]],
        ["ok", False, bytes(31), *GOOD_ENTRY[3:]],
        ["ok", False, GOOD_ENTRY[2], bytes(33), *GOOD_ENTRY[4:]],
        ["ok", False, GOOD_ENTRY[2], GOOD_ENTRY[3], "k" * 32, None],
        [*GOOD_ENTRY[:5], "link"],
        [*GOOD_ENTRY[:5], 0],
    ],
)
def test_entry_from_cbor_rejects_malformed(value: Any) -> None:
    with pytest.raises(MalformedInput):
        Entry.from_cbor(value)


# --- directory chunks: one bad entry never hides its siblings ---------------------------------

BAD_ITEMS: list[Any] = [
    None,
    7,
    "a name alone",
    {"o": 1},
    GOOD_ENTRY[:5],  # a malformed relative capability
    ["ok", False, bytes(31), *GOOD_ENTRY[3:]],
    ["ok", False, GOOD_ENTRY[2], GOOD_ENTRY[3], "k" * 32, None],
    ["ok", "yes", *GOOD_ENTRY[2:]],
    *[[name, *GOOD_ENTRY[1:]] for name in HOSTILE_NAMES[:-1]],  # names breaking the rules
]


def test_dir_chunk_sets_bad_entries_aside_and_keeps_the_rest() -> None:
    good = [Entry.link(f"file-{i}", i % 2 == 0, CHILD, CAP) for i in range(3)]
    items: list[Any] = [e.to_cbor() for e in good]
    for at, bad in enumerate(BAD_ITEMS):
        items.insert((at * 2) % (len(items) + 1), bad)
    listed = cryptree.decode_dir_chunk(cbor.encode(items))
    assert listed.entries == good
    assert len(listed.unreadable) == len(BAD_ITEMS)
    # A rewrite carries the bad items over unchanged: another writer's entries are not lost.
    again = cryptree.decode_dir_chunk(cryptree.encode_dir_chunk(listed.entries, listed.unreadable))
    assert again == listed


@pytest.mark.parametrize(
    "plain",
    [b"", b"\xff", cbor.encode({"entries": []}), cbor.encode(7), cbor.encode([]) + b"\x00"],
)
def test_a_whole_malformed_dir_chunk_is_corrupted(plain: bytes) -> None:
    with pytest.raises(Corrupted, match="directory chunk is malformed"):
        cryptree.decode_dir_chunk(plain)


@SOME
@given(
    good=st.lists(st.builds(Entry.link, file_names, st.booleans(), capabilities, st.just(CAP))),
    bad=st.lists(st.sampled_from(BAD_ITEMS)),
    order=st.randoms(use_true_random=False),
)
def test_dir_chunk_any_mix_keeps_every_valid_entry_in_order(
    good: list[Entry], bad: list[Any], order: random.Random
) -> None:
    items: list[Any] = [e.to_cbor() for e in good]
    for item in bad:
        items.insert(order.randint(0, len(items)), item)
    listed = cryptree.decode_dir_chunk(cbor.encode(items))
    assert listed.entries == good
    assert len(listed.unreadable) == len(bad)


_DIR_PLAIN = cbor.encode([Entry.link(f"f{i}", i == 1, CHILD, CAP).to_cbor() for i in range(3)])


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.tuples(st.integers(0, len(_DIR_PLAIN) - 1), st.integers(0, 255)).map(
            lambda edit: _DIR_PLAIN[: edit[0]] + bytes([edit[1]]) + _DIR_PLAIN[edit[0] + 1 :]
        ),
    )
)
def test_dir_chunk_decoder_fuzz(data: bytes) -> None:
    """Random and mutated chunk plaintexts: entries and unreadable items, or Corrupted."""
    try:
        listed = cryptree.decode_dir_chunk(data)
    except Corrupted:
        return
    assert all(isinstance(entry, Entry) for entry in listed.entries)
    again = cryptree.decode_dir_chunk(cryptree.encode_dir_chunk(listed.entries, listed.unreadable))
    assert again == listed


def test_chunk_labels_follow_chunk_location() -> None:
    labels = cryptree.chunk_labels(CAP.label, CAP.read_key)
    assert [next(labels) for _ in range(5)] == [CAP.chunk(i)[0] for i in range(5)]


# --- properties --------------------------------------------------------------------------------


@given(value=properties)
def test_properties_round_trip(value: Properties) -> None:
    assert Properties.from_cbor(cbor.decode(cbor.encode(value.to_cbor()))) == value


GOOD_PROPS = props().to_cbor()


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {k: v for k, v in GOOD_PROPS.items() if k != "n"},
        {k: v for k, v in GOOD_PROPS.items() if k != "s"},
        {k: v for k, v in GOOD_PROPS.items() if k != "k"},
        {**GOOD_PROPS, "s": -1},
        {**GOOD_PROPS, "t": True},
        {**GOOD_PROPS, "c": "now"},
        {**GOOD_PROPS, "k": None},
        {**GOOD_PROPS, "m": "x" * 128},
        {**GOOD_PROPS, "m": "é" * 64},  # 128 bytes
        {**GOOD_PROPS, "m": None},
        {**GOOD_PROPS, "d": 0},
        {**GOOD_PROPS, "p": bytes(31)},
    ],
)
def test_properties_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(MalformedInput):
        Properties.from_cbor(value)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_properties_reject_hostile_names(name: str) -> None:
    with pytest.raises(InvalidName):
        Properties.from_cbor({**GOOD_PROPS, "n": name})


def test_properties_limits() -> None:
    assert Properties.from_cbor({**GOOD_PROPS, "m": "x" * 127}).mime == "x" * 127
    assert Properties.from_cbor({**GOOD_PROPS, "n": "é" * 127 + "a"}).name == "é" * 127 + "a"
    assert Properties.from_cbor({k: v for k, v in GOOD_PROPS.items() if k != "p"}).parent is None
    assert Properties.from_cbor({**GOOD_PROPS, "k": 0}).chunks == 1  # at least one chunk


# --- key blocks and metadata -------------------------------------------------------------------


@pytest.mark.parametrize("keys", [FILE_KEYS, DIR_KEYS, KeyBlock(bytes(32), b"")])
def test_key_block_round_trip_and_fixed_size(keys: KeyBlock) -> None:
    sealed = cryptree.seal_key_block(CAP.read_key, LABEL, keys)
    assert len(sealed) == BASE_BYTES + OVERHEAD
    assert cryptree.open_key_block(CAP.read_key, LABEL, sealed) == keys


def test_key_block_is_bound_to_key_and_label() -> None:
    sealed = cryptree.seal_key_block(CAP.read_key, LABEL, DIR_KEYS)
    with pytest.raises(Corrupted):
        cryptree.open_key_block(key(50), LABEL, sealed)
    with pytest.raises(Corrupted):
        cryptree.open_key_block(CAP.read_key, key(50), sealed)
    with pytest.raises(Corrupted):  # nor can it pass for metadata of the same node
        cryptree.open_meta(CAP.read_key, LABEL, sealed)


def test_writer_secret_round_trip() -> None:
    sealed = cryptree.seal_writer_secret(key(4), LABEL, WRITER.seed)
    assert cryptree.open_writer_secret(key(4), LABEL, sealed) == WRITER.seed
    with pytest.raises(Corrupted):
        cryptree.open_writer_secret(key(4), key(50), sealed)
    with pytest.raises(Corrupted):
        cryptree.open_writer_secret(key(50), LABEL, sealed)


def _seal_base(plain: bytes) -> bytes:
    return crypto.seal(CAP.read_key, crypto.pad_to(plain, BASE_BYTES), cryptree._CTX_BASE + LABEL)


def _seal_meta_plain(plain: bytes) -> bytes:
    return crypto.seal(DATA_KEY, crypto.pad_to(plain, META_BYTES), cryptree._CTX_META + LABEL)


@pytest.mark.parametrize(
    "plain",
    [
        cbor.encode({"k": bytes(31), "w": None}),
        cbor.encode({"k": "key", "w": None}),
        cbor.encode({"k": bytes(32)}),
        cbor.encode({"k": bytes(32), "w": 7}),
        cbor.encode({"k": bytes(32), "w": None, "x": 1}),
        cbor.encode([bytes(32), None]),
        b"\xff\xfe",
        b"",
    ],
)
def test_authentic_but_malformed_key_block_is_corrupted(plain: bytes) -> None:
    # What a hostile writer (who holds the read key) can plant: refused as Corrupted.
    with pytest.raises(Corrupted):
        cryptree.open_key_block(CAP.read_key, LABEL, _seal_base(plain))


def test_authentic_but_unpadded_key_block_is_corrupted() -> None:
    sealed = crypto.seal(CAP.read_key, bytes(BASE_BYTES), cryptree._CTX_BASE + LABEL)
    with pytest.raises(Corrupted):
        cryptree.open_key_block(CAP.read_key, LABEL, sealed)


@given(value=properties)
@SOME
def test_meta_round_trip(value: Properties) -> None:
    sealed = cryptree.seal_meta(DATA_KEY, LABEL, value)
    assert len(sealed) == META_BYTES + OVERHEAD
    assert cryptree.open_meta(DATA_KEY, LABEL, sealed) == value


def test_meta_of_later_chunks_is_empty_and_the_same_size() -> None:
    sealed = cryptree.seal_meta(DATA_KEY, LABEL, None)
    assert len(sealed) == META_BYTES + OVERHEAD
    assert cryptree.open_meta(DATA_KEY, LABEL, sealed) is None


def test_meta_sealed_length_is_fixed_whatever_the_content() -> None:
    largest = Properties("é" * 127 + "a", False, 2**64 - 1, 2**64 - 1, 2**64 - 1, "m" * 127,
                         2**64 - 1, key(1))  # fmt: skip
    contents = [
        None,
        props(name="a"),
        props(name="x" * 255),
        props(name="🙂" * 63 + "abc", is_dir=True),
        largest,
    ]
    lengths = {len(cryptree.seal_meta(DATA_KEY, LABEL, value)) for value in contents}
    assert lengths == {META_BYTES + OVERHEAD}
    assert cryptree.open_meta(DATA_KEY, LABEL, cryptree.seal_meta(DATA_KEY, LABEL, largest)) == (
        largest
    )


def test_meta_is_bound_to_key_and_label() -> None:
    sealed = cryptree.seal_meta(DATA_KEY, LABEL, props())
    with pytest.raises(Corrupted):
        cryptree.open_meta(key(50), LABEL, sealed)
    with pytest.raises(Corrupted):
        cryptree.open_meta(DATA_KEY, key(50), sealed)
    with pytest.raises(Corrupted):
        cryptree.open_key_block(DATA_KEY, LABEL, sealed)


@pytest.mark.parametrize("name", HOSTILE_NAMES[:-1])
def test_authentic_metadata_with_a_hostile_name_is_corrupted(name: str) -> None:
    plain = cbor.encode({**GOOD_PROPS, "n": name})
    with pytest.raises(Corrupted):
        cryptree.open_meta(DATA_KEY, LABEL, _seal_meta_plain(plain))


@pytest.mark.parametrize(
    "plain",
    [
        cbor.encode({**GOOD_PROPS, "s": -1}),
        cbor.encode({"n": "x"}),
        cbor.encode([]),
        cbor.encode(None),
        b"\xff",
        b"",
    ],
)
def test_authentic_but_malformed_metadata_is_corrupted(plain: bytes) -> None:
    with pytest.raises(Corrupted):
        cryptree.open_meta(DATA_KEY, LABEL, _seal_meta_plain(plain))


# --- fragment ranges ---------------------------------------------------------------------------


FULL = [(i * MiB, (i + 1) * MiB) for i in range(5)]


@pytest.mark.parametrize(
    ("length", "ranges"),
    [
        (0, []),
        (1, [(0, 1)]),
        (100, [(0, 100)]),
        (PAGE, [(0, PAGE)]),
        (2 * PAGE, [(0, 2 * PAGE)]),
        (MiB, [(0, MiB)]),
        (MiB + PAGE, [(0, MiB + PAGE)]),  # a padding-only spill joins the piece before
        (MiB + 2 * PAGE, [(0, MiB), (MiB, MiB + 2 * PAGE)]),
        (2 * MiB, [(0, MiB), (MiB, 2 * MiB)]),
        (5 * MiB, [*FULL[:5]]),
        (5 * MiB + PAGE, [*FULL[:4], (4 * MiB, 5 * MiB + PAGE)]),  # a full chunk: 5 fragments
        (5 * MiB + 2 * PAGE, [*FULL[:5], (5 * MiB, 5 * MiB + 2 * PAGE)]),
    ],
)
def test_fragment_ranges(length: int, ranges: list[tuple[int, int]]) -> None:
    assert fragment_ranges(length) == ranges


def test_full_chunk_is_exactly_five_ranges() -> None:
    padded = crypto.padded_length(CHUNK_BYTES, PAGE)
    assert padded == 5 * MiB + PAGE
    assert len(fragment_ranges(padded)) == 5


@given(length=st.integers(0, 3 * CHUNK_BYTES))
def test_fragment_ranges_cover_the_payload(length: int) -> None:
    ranges = fragment_ranges(length)
    assert [start for start, _ in ranges] == [0, *(end for _, end in ranges)][: len(ranges)]
    assert (ranges[-1][1] if ranges else 0) == length
    assert all(0 < end - start <= FRAGMENT_BYTES + PAGE for start, end in ranges)
    assert all(end - start == FRAGMENT_BYTES for start, end in ranges[:-1])
    assert len(ranges) == (0 if length == 0 else max(1, -(-(length - PAGE) // FRAGMENT_BYTES)))


def test_every_padded_chunk_size_fits_in_blocks() -> None:
    # Every plaintext length up to a full chunk pads to a multiple of a page: check them all.
    prefix = len(bats.raw_prefix(BAT_IDS))
    for padded in range(PAGE, crypto.padded_length(CHUNK_BYTES, PAGE) + 1, PAGE):
        ranges = fragment_ranges(padded)
        assert len(ranges) <= 5
        assert all(prefix + OVERHEAD + end - start <= MAX_BLOCK_BYTES for start, end in ranges)


# --- payloads ----------------------------------------------------------------------------------


def plaintext(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("size", [0, 1, PAGE - 1])
def test_small_payloads_are_inline_and_one_page(size: int) -> None:
    data = plaintext(size)
    payload = seal_payload(DATA_KEY, LABEL, data, BAT_IDS)
    assert payload.inline is not None
    assert payload.fragments == []
    assert len(payload.inline) == PAGE + OVERHEAD
    assert open_payload(DATA_KEY, LABEL, payload) == data


@pytest.mark.parametrize(
    ("size", "fragments"),
    [
        (PAGE, 1),
        (PAGE + 1, 1),
        (MiB - 1, 1),
        (MiB, 1),
        (MiB + 1, 1),  # pads to 1 MiB + 4096: still one fragment
        (MiB + PAGE, 2),
        (CHUNK_BYTES - 1, 5),
        (CHUNK_BYTES, 5),
    ],
)
def test_payload_round_trip(size: int, fragments: int) -> None:
    data = plaintext(size, seed=size)
    payload = seal_payload(DATA_KEY, LABEL, memoryview(data), BAT_IDS)
    assert payload.inline is None
    assert len(payload.fragments) == fragments
    padded = crypto.padded_length(size, PAGE)
    prefix = bats.raw_prefix(BAT_IDS)
    assert sum(len(block) - len(prefix) - OVERHEAD for block in payload.fragments) == padded
    for block in payload.fragments:
        assert len(block) <= MAX_BLOCK_BYTES
        assert block.startswith(prefix)
        assert bats.block_bat_ids(CID.of(CODEC_RAW, block), block) == BAT_IDS
    assert open_payload(DATA_KEY, LABEL, payload) == data


def test_full_chunk_is_exactly_five_fragments() -> None:
    data = plaintext(CHUNK_BYTES, seed=5)
    payload = seal_payload(DATA_KEY, LABEL, data, BAT_IDS)
    assert len(payload.fragments) == 5
    assert max(len(block) for block in payload.fragments) <= MAX_BLOCK_BYTES
    last = payload.fragments[-1]
    assert open_fragment(DATA_KEY, LABEL, 4, True, last) == data[4 * MiB :]
    assert open_fragment(DATA_KEY, LABEL, 0, False, payload.fragments[0]) == data[:MiB]


@given(size=st.integers(0, 3 * PAGE), seed=st.integers(0, 2**32))
@SOME
def test_payload_round_trip_small_random(size: int, seed: int) -> None:
    data = plaintext(size, seed)
    payload = seal_payload(DATA_KEY, LABEL, data, BAT_IDS)
    assert (payload.inline is not None) == (size < PAGE)
    assert open_payload(DATA_KEY, LABEL, payload) == data
    sealed_sizes = [len(payload.inline)] if payload.inline is not None else [
        len(block) - len(bats.raw_prefix(BAT_IDS)) for block in payload.fragments
    ]  # fmt: skip
    assert sum(sealed_sizes) - OVERHEAD * len(sealed_sizes) == crypto.padded_length(size, PAGE)


def test_payload_needs_its_key_and_label() -> None:
    inline = seal_payload(DATA_KEY, LABEL, b"secret", BAT_IDS)
    assert inline.inline is not None
    with pytest.raises(Corrupted):
        open_inline(key(50), LABEL, inline.inline)
    with pytest.raises(Corrupted):
        open_inline(DATA_KEY, key(50), inline.inline)
    with pytest.raises(Corrupted):
        open_inline(DATA_KEY, LABEL, flip(inline.inline, 100))


def test_fragments_are_bound_to_their_place() -> None:
    data = plaintext(MiB + 3 * PAGE, seed=1)
    payload = seal_payload(DATA_KEY, LABEL, data, BAT_IDS)
    first, second = payload.fragments
    with pytest.raises(Corrupted):  # swapped
        open_fragment(DATA_KEY, LABEL, 0, False, second)
    with pytest.raises(Corrupted):
        open_fragment(DATA_KEY, LABEL, 1, True, first)
    with pytest.raises(Corrupted):  # moved to another chunk's label
        open_fragment(DATA_KEY, key(50), 0, False, first)
    with pytest.raises(Corrupted):
        open_fragment(key(50), LABEL, 0, False, first)
    with pytest.raises(Corrupted):  # tampered ciphertext
        open_fragment(DATA_KEY, LABEL, 0, False, flip(first, len(first) - 1))
    # The BAT header is not sealed: changing it changes the block's CID, which the fetcher
    # checks, but never the plaintext.
    other = seal_payload(DATA_KEY, LABEL, data, [MIRROR_ID]).fragments[0]
    assert open_fragment(DATA_KEY, LABEL, 0, False, other) == data[:MiB]


@FUZZ
@given(index=st.integers(0), bit=st.integers(0, 7))
def test_tampered_fragment_never_opens_to_garbage(index: int, bit: int) -> None:
    data = plaintext(2 * PAGE, seed=2)
    (block,) = seal_payload(DATA_KEY, LABEL, data, BAT_IDS).fragments
    try:
        opened = open_fragment(DATA_KEY, LABEL, 0, True, flip(block, index, bit))
    except (Corrupted, MalformedInput):
        return
    assert opened == data


def test_payload_rejects_too_many_bat_ids() -> None:
    with pytest.raises(MalformedInput):
        seal_payload(DATA_KEY, LABEL, bytes(2 * PAGE), [MIRROR_ID] * 5)


# --- nodes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Everything a client writes for one chunk: the node block and its fragments."""

    block: bytes
    fragments: list[bytes]


def write_chunk(
    cap: Capability,
    index: int,
    keys: KeyBlock,
    is_dir: bool,
    plain: bytes,
    meta: Properties | None,
) -> Chunk:
    payload = cryptree.seal_data(cap, index, keys, is_dir, plain, MIRROR_ID)
    block = build_node(cap, index, keys, is_dir, meta, cryptree.payload_data(payload), MIRROR_ID)
    return Chunk(block, payload.fragments)


def read_chunk(
    cap: Capability, index: int, is_dir: bool, chunk: Chunk
) -> tuple[KeyBlock, Properties | None, bytes]:
    opened = open_node(cap, index, is_dir, chunk.block)
    label, _ = cap.chunk(index)
    payload_key = cryptree.payload_key(cap, opened.keys, is_dir)
    if isinstance(opened.data, bytes):
        return opened.keys, opened.props, open_inline(payload_key, label, opened.data)
    assert opened.data == [CID.of(CODEC_RAW, block) for block in chunk.fragments]
    payload = SealedPayload.of_fragments(chunk.fragments)
    return opened.keys, opened.props, open_payload(payload_key, label, payload)


FILE_META = props("notes.txt", size=4000)
DIR_META = props("photos", is_dir=True)


@pytest.mark.parametrize(
    ("is_dir", "keys", "plain", "meta", "index"),
    [
        (False, FILE_KEYS, b"hello", FILE_META, 0),
        (False, FILE_KEYS, b"", FILE_META, 0),
        (False, FILE_KEYS, plaintext(3 * PAGE), FILE_META, 0),
        (False, FILE_KEYS, plaintext(PAGE), None, 3),
        (True, DIR_KEYS, cbor.encode([]), DIR_META, 0),
        (True, DIR_KEYS, cbor.encode([Entry.link("a", False, CHILD, CAP).to_cbor()]), DIR_META, 0),
        (True, DIR_KEYS, cbor.encode([]), None, 1),
    ],
)
def test_build_and_open_node(
    is_dir: bool, keys: KeyBlock, plain: bytes, meta: Properties | None, index: int
) -> None:
    chunk = write_chunk(CAP, index, keys, is_dir, plain, meta)
    assert read_chunk(CAP, index, is_dir, chunk) == (keys, meta, plain)
    # Readers need only the read capability.
    assert read_chunk(CAP.read_only(), index, is_dir, chunk) == (keys, meta, plain)
    node = Node.decode(chunk.block)
    assert node.encode() == chunk.block
    assert node.bats == cryptree.chunk_bat_ids(CAP, index, MIRROR_ID)
    assert bats.block_bat_ids(CID.of(CODEC_DAG_CBOR, chunk.block), chunk.block) == node.bats
    assert cbor.iter_links(cbor.decode(chunk.block)) == [
        CID.of(CODEC_RAW, block) for block in chunk.fragments
    ]


def test_keys_used_for_files_and_directories() -> None:
    # Files: data under the data key, metadata under the read key.
    # Directories: children under the read key, metadata under the parent key.
    assert cryptree.payload_key(CAP, FILE_KEYS, False) == FILE_KEYS.key
    assert cryptree.meta_key(CAP, FILE_KEYS, False) == CAP.read_key
    assert cryptree.payload_key(CAP, DIR_KEYS, True) == CAP.read_key
    assert cryptree.meta_key(CAP, DIR_KEYS, True) == DIR_KEYS.key


def test_small_files_and_directories_look_the_same() -> None:
    blocks = [
        write_chunk(CAP, 0, FILE_KEYS, False, b"x", props("a", size=1)).block,
        write_chunk(CAP, 0, FILE_KEYS, False, plaintext(4000), props("b" * 255, size=4000)).block,
        write_chunk(CAP, 0, DIR_KEYS, True, cbor.encode([]), props("c", is_dir=True)).block,
        write_chunk(CHILD, 0, DIR_KEYS, True, cbor.encode([]), DIR_META).block,
        write_chunk(CAP, 2, FILE_KEYS, False, plaintext(PAGE - 1), None).block,
    ]
    assert len({len(block) for block in blocks}) == 1
    assert len(blocks[0]) < cryptree.MAX_NODE_BYTES


def test_node_moved_to_another_label_fails() -> None:
    chunk = write_chunk(CAP, 0, FILE_KEYS, False, b"hello", FILE_META)
    with pytest.raises(Corrupted):
        read_chunk(replace(CAP, label=key(50)), 0, False, chunk)
    with pytest.raises(Corrupted):  # chunk 0 presented as chunk 1
        read_chunk(CAP, 1, False, chunk)
    with pytest.raises(Corrupted):
        read_chunk(replace(CAP, read_key=key(50)), 0, False, chunk)
    # Another node of the same writer cannot stand in for it either.
    with pytest.raises(Corrupted):
        read_chunk(CHILD, 0, False, chunk)


def test_node_kind_must_match_its_entry() -> None:
    chunk = write_chunk(CAP, 0, DIR_KEYS, True, cbor.encode([]), DIR_META)
    with pytest.raises(Corrupted):
        open_node(CAP, 0, False, chunk.block)
    file_chunk = write_chunk(CAP, 0, FILE_KEYS, False, b"x", FILE_META)
    with pytest.raises(Corrupted):
        open_node(CAP, 0, True, file_chunk.block)


INLINE_FILE = write_chunk(CAP, 0, FILE_KEYS, False, b"hello", FILE_META)
INLINE_DIR = write_chunk(CAP, 0, DIR_KEYS, True, cbor.encode([]), DIR_META)
_BATS = cbor.encode(cryptree.chunk_bat_ids(CAP, 0, MIRROR_ID))
_BATS_START = INLINE_FILE.block.index(_BATS)
BATS_REGION = range(_BATS_START + 1, _BATS_START + len(_BATS))  # the list's items, in clear


@FUZZ
@given(index=st.integers(0), bit=st.integers(0, 7), is_dir=st.booleans())
def test_tampered_node_never_opens_to_garbage(index: int, bit: int, is_dir: bool) -> None:
    chunk = INLINE_DIR if is_dir else INLINE_FILE
    index %= len(chunk.block)
    tampered = Chunk(flip(chunk.block, index, bit), [])
    expected = read_chunk(CAP, 0, is_dir, chunk)
    try:
        opened = read_chunk(CAP, 0, is_dir, tampered)
    except Corrupted:
        return
    # Only the BAT ids are in clear, and they are not part of what a node opens to: a changed
    # one changes the block's CID (checked on fetch) but never the content.
    assert index in BATS_REGION
    assert opened == expected


@pytest.mark.parametrize("index", [0, 1, 2, 10, 50, 100, 200, 400, 1500, 4000, -200, -1])
def test_tampered_node_bytes_are_corrupted(index: int) -> None:
    index %= len(INLINE_FILE.block)
    assert index not in BATS_REGION
    with pytest.raises(Corrupted):
        read_chunk(CAP, 0, False, Chunk(flip(INLINE_FILE.block, index), []))


@FUZZ
@given(cut=st.integers(0, len(INLINE_FILE.block) - 1), extra=st.binary(max_size=3))
def test_truncated_or_extended_node_is_corrupted(cut: int, extra: bytes) -> None:
    block = INLINE_FILE.block[:cut] + extra
    assume(block != INLINE_FILE.block)
    with pytest.raises(Corrupted):
        open_node(CAP, 0, False, block)


def test_oversized_node_is_corrupted() -> None:
    node = Node.decode(INLINE_FILE.block)
    huge = replace(node, data=bytes(cryptree.MAX_NODE_BYTES)).encode()
    with pytest.raises(TooLarge):
        Node.decode(huge)
    with pytest.raises(Corrupted):
        open_node(CAP, 0, False, huge)


_NODE = cbor.decode(INLINE_FILE.block)
BAD_NODES: dict[str, Any] = {
    "not a map": [_NODE],
    "missing data": {k: v for k, v in _NODE.items() if k != "data"},
    "extra field": {**_NODE, "x": 1},
    "version 2": {**_NODE, "v": 2},
    "version text": {**_NODE, "v": "1"},
    "base text": {**_NODE, "base": "x"},
    "meta null": {**_NODE, "meta": None},
    "data empty list": {**_NODE, "data": []},
    "data dag-cbor link": {**_NODE, "data": [CID.of(CODEC_DAG_CBOR, b"x")]},
    "data bytes in a list": {**_NODE, "data": [b"x"]},
    "data int": {**_NODE, "data": 1},
    "bats map": {**_NODE, "bats": {}},
    "bats of ints": {**_NODE, "bats": [1]},
}


@pytest.mark.parametrize("value", BAD_NODES.values(), ids=BAD_NODES.keys())
def test_node_decode_rejects(value: Any) -> None:
    block = cbor.encode(value)
    with pytest.raises(MalformedInput):
        Node.decode(block)
    with pytest.raises(Corrupted):
        open_node(CAP, 0, False, block)


def test_node_with_fragment_links_round_trip() -> None:
    chunk = write_chunk(CAP, 0, FILE_KEYS, False, plaintext(MiB + 2 * PAGE), FILE_META)
    node = Node.decode(chunk.block)
    assert isinstance(node.data, list)
    assert len(node.data) == 2
    assert all(link.codec == CODEC_RAW and not link.is_identity for link in node.data)
    assert read_chunk(CAP, 0, False, chunk)[2] == plaintext(MiB + 2 * PAGE)


def test_authentic_node_with_hostile_name_is_corrupted() -> None:
    # A writer who shares the directory can seal anything; the name is checked on read.
    hostile = Properties("../../etc", False, 0, 0, 0)
    block = build_node(CAP, 0, FILE_KEYS, False, hostile, INLINE_FILE.block[:0], MIRROR_ID)
    with pytest.raises(Corrupted):
        open_node(CAP, 0, False, block)
