"""Every wire and stored-form decoder in protocols/, fed random, mutated-valid and worst-case
inputs: each accepts or raises a PyrgosError, never anything else, within the CPU budget.

The tables below name each decoder as the code calls it, with the cap its caller applies (the
largest input a peer can make it read) and valid inputs to mutate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import (
    accounts,
    bats,
    blockexchange,
    cbor,
    champ,
    contacts,
    crypto,
    cryptree,
    links,
    names,
    rpc,
    shares,
    social,
)
from protocols.blockexchange import MAX_ANSWER_FRAME, MAX_REQUEST_FRAME, Responder
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW, decode_varint, encode_varint
from protocols.crypto import BoxingKey, BoxingPublicKey, KdfParams, SigningKey, VerifyKey
from protocols.cryptree import Capability, KeyBlock, Properties
from protocols.errors import Corrupted, MalformedInput, PyrgosError
from protocols.frames import FrameDecoder, encode_frame
from protocols.mirrors import MirrorToken
from protocols.owners import OwnerProof
from protocols.peerid import base58_decode, check_peer_id, peer_id_of
from protocols.pki import (
    MAX_ENTRY_BYTES,
    Claim,
    Entry,
    IndexOverlay,
    NodeRecord,
    SignedHead,
    record_from_cbor,
    record_to_cbor,
    verify_head,
    verify_served,
)
from protocols.pointers import PointerUpdate
from protocols.publishing import PublicEntry, normalise
from protocols.structured import MAX_STRUCTURED_BYTES, check_structured
from protocols.writerdata import MAX_WRITER_DATA, WriterData, controller_of
from tests.fuzz.budget import FUZZ, SHAPES, describe, shape, shape_bytes, within_budget
from tests.fuzz.inputs import decoded_values, mutated_bytes, mutated_value

NOW = 1_800_000_000


def key(n: int) -> bytes:
    return bytes([n]) * 32


def finish(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (its block source is a dict) to its result."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise AssertionError("the coroutine suspended")


# -- valid inputs, built once -------------------------------------------------------------------

IDENTITY = SigningKey.from_seed(key(1))
NODE_KEY = SigningKey.from_seed(key(2))
PKI_KEY = SigningKey.from_seed(key(3))
NODE_ID = peer_id_of(NODE_KEY.public)
PKI_NODE = peer_id_of(PKI_KEY.public)
OWNER = IDENTITY.public.key_hash()
BOXING = BoxingKey.from_seed(key(4))
KDF = KdfParams(1, 8 * 1024 * 1024, bytes(16))

CLAIM = Claim.create(IDENTITY, "alice", NODE_ID, NOW + 3600, mirrors=[PKI_NODE])
KEY_CHANGE = Claim.create(
    SigningKey.from_seed(key(5)), "alice", NODE_ID, NOW + 7200, previous=IDENTITY
)
NODE_RECORD = NodeRecord.create(NODE_KEY, ["/ip4/127.0.0.1/tcp/4001"], 1)
ENTRY_1 = Entry(1, None, NOW, NODE_RECORD)
ENTRY_2 = Entry(2, ENTRY_1.hash, NOW, CLAIM)
HEAD = SignedHead.create(PKI_KEY, 2, ENTRY_2.hash)
PAGE = {"entries": [ENTRY_1.encoded, ENTRY_2.encoded], "head": HEAD.to_cbor()}

TREE = champ.MemoryBlocks()
TREE_ROOT = finish(champ.build(TREE, {key(n): CID.of(CODEC_RAW, bytes([n])) for n in range(1, 40)}))
CHAMP_NODES = [TREE.blocks[TREE_ROOT]] + [b for c, b in TREE.blocks.items() if c != TREE_ROOT]
WRITER_DATA = WriterData(
    controller=OWNER, tree=TREE_ROOT, login=KDF, boxing=BOXING.public, links=TREE_ROOT
)
POINTER = PointerUpdate.create(IDENTITY, None, CID.of(CODEC_DAG_CBOR, WRITER_DATA.encode()), 1)
CAP = Capability(OWNER, OWNER, key(6), key(7), key(8), key(9))
MIRROR_ID = bats.hashed_id(key(10))
PROPS = Properties(name="notes.txt", is_dir=False, size=10, modified=NOW, created=NOW)
FILE_KEYS = KeyBlock(key(11))
SMALL_PAYLOAD = cryptree.seal_data(CAP, 0, FILE_KEYS, False, b"hello", MIRROR_ID)
BIG_PAYLOAD = cryptree.seal_data(CAP, 0, FILE_KEYS, False, bytes(5000), MIRROR_ID)
NODE_BLOCKS = [
    cryptree.build_node(CAP, 0, FILE_KEYS, False, PROPS, cryptree.payload_data(payload), MIRROR_ID)
    for payload in (SMALL_PAYLOAD, BIG_PAYLOAD)
]
FRAGMENT = BIG_PAYLOAD.fragments[0]
DIR_ENTRY = cryptree.Entry.link("child", True, CAP, CAP)
AUTH = bats.make_read_auth(key(12), CID.of(CODEC_RAW, FRAGMENT), b"", NODE_ID.encode(), NOW)
LOGIN_ROOT = key(13)
LOGIN_DATA = accounts.LoginData(IDENTITY, BOXING, CAP, key(14)).seal(LOGIN_ROOT, "alice")
SEALED = crypto.seal(key(15), b"some plaintext", b"pyrgos/test/1")
BOXED = crypto.box(BOXING.public, b"a follow request", b"pyrgos/test/1")
BLOCK_CID = CID.of(CODEC_RAW, FRAGMENT)
FOLLOW = social.FollowRequest.create(IDENTITY, "follow", "alice", "bob", CAP, key(16), NOW)
FOLLOW_SEALED = social.seal_request(FOLLOW, BOXING.public)
SOCIAL_STATE = social.SocialState(
    following={"bob": social.Followee(CAP.read_only(), key(16), NOW)}, followers={"carol": NOW}
)
KEY_STORE = contacts.KeyStore({"bob": contacts.TrustedKey(OWNER, True, NOW)})
RPC_MESSAGES = [
    rpc.request(7, "block.get", {"cid": BLOCK_CID, "auth": AUTH.to_cbor()}),
    rpc.result_reply(7, {"node": NODE_ID, "stats": {"calls": 1}}),
    rpc.error_reply(8, PyrgosError("refused for a reason")),
]
BLOCK_REQUESTS = [blockexchange.request_message([(BLOCK_CID, AUTH), (TREE_ROOT, None)], [OWNER])]
BLOCK_ANSWERS = [
    blockexchange.block_answer(BLOCK_CID, FRAGMENT),
    blockexchange.dont_have_answer(BLOCK_CID),
    blockexchange.denied_answer(BLOCK_CID, "no BAT"),
]


# -- the decoders -------------------------------------------------------------------------------


def _frames(max_frame: int, then: Callable[[Any], object]) -> Callable[[bytes], object]:
    def decode(data: bytes) -> object:
        decoder = FrameDecoder(max_frame)
        messages = decoder.feed(data)
        decoder.end()
        return [then(message) for message in messages]

    return decode


def _rpc_message(message: Any) -> object:
    for parse in (rpc.parse_request, rpc.parse_reply):
        try:
            parse(message)
        except PyrgosError:
            rpc.request_id(message)
    return None


def _block_request(message: Any) -> object:
    Responder().receive(message)
    return blockexchange.parse_request(message)


def _pki_page(data: bytes) -> object:
    page = cbor.decode(data, limit=rpc.MAX_FRAME)
    if not isinstance(page, dict) or not isinstance(page.get("entries"), list):
        raise PyrgosError("not a page")
    entries = [Entry.decode(raw) if isinstance(raw, bytes) else None for raw in page["entries"]]
    head = SignedHead.from_cbor(page.get("head"))
    if any(entry is None for entry in entries):
        raise PyrgosError("entries are bytes")
    return verify_served(IndexOverlay(), entries, head, PKI_NODE, NOW)  # type: ignore[arg-type]


def _champ_walk(data: bytes) -> object:
    """A fetched root node, then a lookup through it (the node is a valid map's root, mutated)."""
    blocks = champ.MemoryBlocks(CHAMP_NODES)
    root = blocks.add(data)
    champ.node_links(data)
    return finish(champ.get_many(blocks, root, [key(n) for n in range(1, 6)]))


def _claim(value: Any) -> object:
    claim = Claim.from_cbor(value)
    claim.verify()
    return claim


def _node_record(value: Any) -> object:
    record = NodeRecord.from_cbor(value)
    record.verify()
    return record


def _head(value: Any) -> object:
    head = SignedHead.from_cbor(value)
    verify_head(head, PKI_NODE)
    return head


def _signup_claim_check(value: Any) -> object:
    return record_from_cbor(value)


OWNER_PROOF = OwnerProof.create(SigningKey.from_seed(key(21)), OWNER).encode()
LINK_KEYS = links.derive(key(22), None)
LINK_TARGET = links.LinkTarget(
    bats=[bats.hashed_id(key(23))],
    cap=links.seal_capability(LINK_KEYS.cap_key, key(24)[:16], CAP),
    verifier=LINK_KEYS.verifier,
    password=False,
    expiry=NOW * 1000,
    max_uses=3,
).encode()
PUBLIC_ENTRY = PublicEntry("/alice/public/x", CAP.read_only()).encode()
CAPS_FILE = shares.encode_caps(
    [
        shares.SharedItem("/alice/x", CAP.read_only(), False, NOW),
        shares.SharedItem("/alice/y", CAP, True, 1),
    ]
)
LINK_URL = links.format_url("http://127.0.0.1:8000", OWNER, key(24)[:16], key(22))
LINK_RECORDS = links.encode_records(
    {
        key(24)[:16]: links.LinkRecord(
            key(24)[:16], "/alice/x", key(22), 1, None, 3, False, True, key(23)
        )
    }
)


@dataclass(frozen=True)
class Decoder:
    decode: Callable[[bytes], object]
    cap: int  # the largest input the caller lets reach it
    seeds: list[bytes]


BYTE_DECODERS: dict[str, Decoder] = {
    "cbor.decode": Decoder(cbor.decode, cbor.DEFAULT_LIMIT, [WRITER_DATA.encode(), *NODE_BLOCKS]),
    "frames.rpc": Decoder(
        _frames(rpc.MAX_FRAME, _rpc_message), rpc.MAX_FRAME, [encode_frame(m) for m in RPC_MESSAGES]
    ),
    "frames.block-request": Decoder(
        _frames(MAX_REQUEST_FRAME, _block_request),
        MAX_REQUEST_FRAME,
        [encode_frame(m) for m in BLOCK_REQUESTS],
    ),
    "frames.block-answer": Decoder(
        _frames(MAX_ANSWER_FRAME, blockexchange.parse_answer),
        MAX_ANSWER_FRAME,
        [encode_frame(m) for m in BLOCK_ANSWERS],
    ),
    "pki.Entry.decode": Decoder(Entry.decode, MAX_ENTRY_BYTES, [ENTRY_1.encoded, ENTRY_2.encoded]),
    "pki.page": Decoder(_pki_page, rpc.MAX_FRAME, [cbor.encode(PAGE)]),
    "pointers.PointerUpdate.decode": Decoder(PointerUpdate.decode, 512, [POINTER.encode()]),
    "writerdata.WriterData.decode": Decoder(
        WriterData.decode, MAX_WRITER_DATA, [WRITER_DATA.encode()]
    ),
    "writerdata.controller_of": Decoder(controller_of, MAX_WRITER_DATA, [WRITER_DATA.encode()]),
    "champ.node": Decoder(_champ_walk, champ.MAX_NODE_SIZE, CHAMP_NODES),
    "cryptree.Node.decode": Decoder(cryptree.Node.decode, cryptree.MAX_NODE_BYTES, NODE_BLOCKS),
    "cryptree.open_node": Decoder(
        lambda data: cryptree.open_node(CAP, 0, False, data), cryptree.MAX_NODE_BYTES, NODE_BLOCKS
    ),
    "cryptree.open_fragment": Decoder(
        lambda data: cryptree.open_fragment(FILE_KEYS.key, CAP.chunk(0)[0], 0, True, data),
        cryptree.MAX_BLOCK_BYTES,
        [FRAGMENT],
    ),
    "bats.split_raw": Decoder(bats.split_raw, cryptree.MAX_BLOCK_BYTES, [FRAGMENT]),
    "bats.block_bat_ids": Decoder(
        lambda data: bats.block_bat_ids(CID.of(CODEC_DAG_CBOR, data), data),
        cryptree.MAX_BLOCK_BYTES,
        NODE_BLOCKS,
    ),
    "accounts.LoginData.open": Decoder(
        lambda data: accounts.LoginData.open(LOGIN_ROOT, "alice", data),
        accounts.MAX_LOGIN_DATA,
        [LOGIN_DATA],
    ),
    "crypto.open_sealed": Decoder(
        lambda data: crypto.open_sealed(key(15), data, b"pyrgos/test/1"), 64 * 1024, [SEALED]
    ),
    "crypto.open_box": Decoder(
        lambda data: crypto.open_box(BOXING, data, b"pyrgos/test/1"), 64 * 1024, [BOXED]
    ),
    "social.open_request": Decoder(
        lambda data: social.open_request(BOXING, data),
        social.FOLLOW_SEALED_BYTES,
        [FOLLOW_SEALED],
    ),
    "social.SocialState.decode": Decoder(
        social.SocialState.decode, social.MAX_STATE_BYTES, [SOCIAL_STATE.encode()]
    ),
    "contacts.KeyStore.decode": Decoder(
        contacts.KeyStore.decode, contacts.MAX_STORE_BYTES, [KEY_STORE.encode()]
    ),
    "crypto.unpad": Decoder(crypto.unpad, cryptree.MAX_BLOCK_BYTES, [crypto.pad(b"x", 4096)]),
    "cid.CID.from_bytes": Decoder(CID.from_bytes, 256, [OWNER.raw, BLOCK_CID.raw]),
    "cid.decode_varint": Decoder(decode_varint, 16, [b"\x80\x01", b"\x7f"]),
    "owners.OwnerProof.decode": Decoder(OwnerProof.decode, 256, [OWNER_PROOF]),
    "links.LinkTarget.decode": Decoder(
        links.LinkTarget.decode, links.MAX_TARGET_BYTES, [LINK_TARGET]
    ),
    "publishing.PublicEntry.decode": Decoder(PublicEntry.decode, 2048, [PUBLIC_ENTRY]),
    "shares.decode_caps": Decoder(shares.decode_caps, shares.MAX_CAPS_BYTES, [CAPS_FILE]),
    "structured.check_structured": Decoder(
        check_structured, MAX_STRUCTURED_BYTES, [LINK_TARGET, PUBLIC_ENTRY, WRITER_DATA.encode()]
    ),
    "links.decode_records": Decoder(links.decode_records, links.MAX_RECORDS_BYTES, [LINK_RECORDS]),
    "links.open_capability": Decoder(
        lambda data: links.open_capability(LINK_KEYS.cap_key, key(24)[:16], data),
        links.MAX_SEALED_CAP,
        [links.LinkTarget.decode(LINK_TARGET).cap],
    ),
}

VALUE_DECODERS: dict[str, tuple[Callable[[Any], object], list[Any]]] = {
    "pki.Claim": (_claim, [CLAIM.to_cbor(), KEY_CHANGE.to_cbor()]),
    "pki.NodeRecord": (_node_record, [NODE_RECORD.to_cbor()]),
    "pki.record_from_cbor": (_signup_claim_check, [record_to_cbor(CLAIM)]),
    "pki.Entry.from_cbor": (Entry.from_cbor, [ENTRY_1.to_cbor(), ENTRY_2.to_cbor()]),
    "pki.SignedHead": (_head, [HEAD.to_cbor()]),
    "bats.ReadAuth.from_cbor": (bats.ReadAuth.from_cbor, [AUTH.to_cbor()]),
    "pointers.PointerUpdate.from_cbor": (PointerUpdate.from_cbor, [POINTER.to_cbor()]),
    "cryptree.Capability.from_cbor": (Capability.from_cbor, [CAP.to_cbor()]),
    "cryptree.Entry.from_cbor": (cryptree.Entry.from_cbor, [DIR_ENTRY.to_cbor()]),
    "cryptree.Properties.from_cbor": (Properties.from_cbor, [PROPS.to_cbor()]),
    "crypto.VerifyKey.from_cbor": (VerifyKey.from_cbor, [IDENTITY.public.to_cbor()]),
    "crypto.BoxingPublicKey.from_cbor": (BoxingPublicKey.from_cbor, [BOXING.public.to_cbor()]),
    "crypto.KdfParams.from_cbor": (KdfParams.from_cbor, [KDF.to_cbor()]),
    "social.FollowRequest.from_cbor": (social.FollowRequest.from_cbor, [FOLLOW.to_cbor()]),
    "rpc.messages": (_rpc_message, RPC_MESSAGES),
    "blockexchange.request": (_block_request, BLOCK_REQUESTS),
    "blockexchange.answer": (blockexchange.parse_answer, BLOCK_ANSWERS),
}

TEXT_DECODERS: dict[str, tuple[Callable[[str], object], list[str]]] = {
    "cid.CID.from_text": (CID.from_text, [OWNER.text, BLOCK_CID.text]),
    "bats.ReadAuth.from_text": (bats.ReadAuth.from_text, [AUTH.to_text()]),
    "cryptree.Capability.from_text": (Capability.from_text, [CAP.to_text()]),
    "cbor.decode_text": (lambda text: cbor.decode_text(text, limit=700), [AUTH.to_text()]),
    "peerid.check_peer_id": (check_peer_id, [NODE_ID]),
    "peerid.base58_decode": (lambda text: base58_decode(text[:64]), [NODE_ID]),
    "names.check_username": (names.check_username, ["alice", "a-b-c"]),
    "names.split_path": (names.split_path, ["/alice/docs/notes.txt", "a//b/"]),
    "links.parse_url": (links.parse_url, [LINK_URL]),
    "links.parse_duration": (links.parse_duration, ["30m", "7d"]),
    "mirrors.MirrorToken.from_text": (
        MirrorToken.from_text,
        [MirrorToken("alice", bytes(range(32))).to_text()],
    ),
    "publishing.normalise": (normalise, ["/alice/public/x", "/alice//x/"]),
    "names.check_password": (
        lambda text: names.check_password("alice", text),
        ["correct horse battery"],
    ),
}


# -- random and mutated inputs ------------------------------------------------------------------


def _byte_inputs(name: str) -> st.SearchStrategy[bytes]:
    decoder = BYTE_DECODERS[name]
    return st.one_of(
        st.binary(max_size=min(decoder.cap, 2048)),
        mutated_bytes(decoder.seeds),
        decoded_values.map(cbor.encode),
    )


@pytest.mark.parametrize("name", sorted(BYTE_DECODERS))
@FUZZ
@given(data=st.data())
def test_byte_decoders_reject_or_accept(name: str, data: st.DataObject) -> None:
    decoder = BYTE_DECODERS[name]
    decoder.decode(decoder.seeds[0])  # the first valid input is accepted
    raw = data.draw(_byte_inputs(name), label=name)
    within_budget(name, lambda: decoder.decode(raw), describe(raw))


@pytest.mark.parametrize("name", sorted(VALUE_DECODERS))
@FUZZ
@given(data=st.data())
def test_value_decoders_reject_or_accept(name: str, data: st.DataObject) -> None:
    decode, seeds = VALUE_DECODERS[name]
    decode(seeds[0])
    value = data.draw(st.one_of(decoded_values, mutated_value(seeds)), label=name)
    within_budget(name, lambda: decode(value), describe(value))


@st.composite
def _mutated_text(draw: st.DrawFn, seeds: list[str]) -> str:
    text = list(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, max(0, len(text) - 1)))
        char = draw(st.characters())
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set" and text:
            text[at] = char
        elif action == "insert":
            text.insert(at, char)
        elif text:
            del text[at]
    return "".join(text)


@pytest.mark.parametrize("name", sorted(TEXT_DECODERS))
@FUZZ
@given(data=st.data())
def test_text_decoders_reject_or_accept(name: str, data: st.DataObject) -> None:
    decode, seeds = TEXT_DECODERS[name]
    decode(seeds[0])
    text = data.draw(st.one_of(st.text(max_size=300), _mutated_text(seeds)), label=name)
    within_budget(name, lambda: decode(text), describe(text))


# -- worst cases: the most work per byte, at each decoder's cap ---------------------------------


CBOR_SHAPES = sorted(SHAPES)
# Files a user writes in their own encrypted space, read only once their AEAD under the user's
# keys holds: no peer chooses their bytes, and their cost grows with the user's own contacts
# (a full state of 10,000 followees takes longer to decode than any worst case of its size).
OWNER_WRITTEN = {"social.SocialState.decode", "contacts.KeyStore.decode"}


@pytest.mark.parametrize("shape_name", CBOR_SHAPES)
@pytest.mark.parametrize("name", sorted(set(BYTE_DECODERS) - OWNER_WRITTEN))
def test_byte_decoders_worst_cases_within_budget(name: str, shape_name: str) -> None:
    decoder = BYTE_DECODERS[name]
    budget_key = f"{name}/{shape_name}"
    size = shape_bytes(budget_key, decoder.cap)
    body = shape(shape_name, max(0, size - 12))
    raw = encode_varint(len(body)) + body if name.startswith("frames.") else body
    within_budget(budget_key, lambda: decoder.decode(raw), f"{shape_name} of {len(raw)} bytes")


# Text at the most the transports carry (a URL or a 64 KiB header block), in the characters
# that cost each decoder most.
TEXT_SHAPES = {"ones": "1", "letters": "z", "slashes": "/", "wide": "\U0010ffff", "nul": "\x00"}


@pytest.mark.parametrize("shape_name", sorted(TEXT_SHAPES))
@pytest.mark.parametrize("name", sorted(TEXT_DECODERS))
def test_text_decoders_worst_cases_within_budget(name: str, shape_name: str) -> None:
    decode, _ = TEXT_DECODERS[name]
    text = TEXT_SHAPES[shape_name] * (64 * 1024)
    within_budget(f"{name}/{shape_name}", lambda: decode(text), f"64 Ki x {shape_name!r}")


def test_budget_catches_a_slow_decoder() -> None:
    """The budget check itself: a decoder that spins past the budget fails the suite."""

    def spin(_: bytes) -> None:
        end = time.process_time() + 0.08
        while time.process_time() < end:
            pass

    with pytest.raises(AssertionError, match="over the budget"):
        within_budget("a-slow-decoder", lambda: spin(b""), "nothing")


def test_budget_passes_crashes_through() -> None:
    """An exception that is not a PyrgosError is a crash, never swallowed."""

    def crash() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        within_budget("a-crashing-decoder", crash)


# -- type confusion: every field of every valid input, swapped for each other type --------------

SUBSTITUTES: list[Any] = [1, 2, -1, True, None, b"\x01", b"\x02" * 32, "1", [], {}, [1], OWNER]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Any:
    yield path
    if isinstance(value, dict):
        for name in value:
            yield from _paths(value[name], (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    items = list(value)
    items[head] = _replaced(items[head], rest, new)
    return items


def _confusions(value: Any) -> list[Any]:
    return [
        _replaced(value, path, new)
        for path in _paths(value)
        for new in SUBSTITUTES
        if type(new) is not type(_at(value, path))
    ]


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _cbor_seed(name: str) -> Any:
    decoder = BYTE_DECODERS[name]
    raw = decoder.seeds[0]
    if name.startswith("frames."):
        return FrameDecoder(decoder.cap).feed(raw)[0]
    return cbor.decode(raw, limit=decoder.cap)


CBOR_BYTE_DECODERS = [
    name
    for name in sorted(BYTE_DECODERS)
    if name.split(".")[0] in {"cbor", "frames", "pki", "pointers", "writerdata", "champ"}
    or name
    in {
        "cryptree.Node.decode",
        "cryptree.open_node",
        "bats.block_bat_ids",
        "social.SocialState.decode",
        "contacts.KeyStore.decode",
    }
]


@pytest.mark.parametrize("name", CBOR_BYTE_DECODERS)
def test_byte_decoders_type_confusion(name: str) -> None:
    """Regression: a bytes value where an int was expected (a version, a key type) raised a
    BytesWarning from `==`, not a typed error; any field of any other type must be refused."""
    decoder = BYTE_DECODERS[name]
    for variant in _confusions(_cbor_seed(name)):
        raw = cbor.encode(variant)
        raw = encode_varint(len(raw)) + raw if name.startswith("frames.") else raw
        within_budget(name, lambda raw=raw: decoder.decode(raw), describe(variant))


@pytest.mark.parametrize("name", sorted(VALUE_DECODERS))
def test_value_decoders_type_confusion(name: str) -> None:
    decode, seeds = VALUE_DECODERS[name]
    for seed in seeds:
        for variant in _confusions(seed):
            within_budget(name, lambda variant=variant: decode(variant), describe(variant))


def test_login_data_of_a_bytes_version_is_corrupted() -> None:
    """Regression: login data whose version is bytes raised a BytesWarning."""
    plain = crypto.pad(cbor.encode({"v": b"\x01"}), crypto.PAD_CONTENT)
    sealed = crypto.seal(LOGIN_ROOT, plain, accounts._DATA_CONTEXT + b"alice")
    with pytest.raises(Corrupted):
        accounts.LoginData.open(LOGIN_ROOT, "alice", sealed)


def test_signing_key_of_a_bytes_type_is_malformed() -> None:
    """Regression: [b"\\x02", key] as a signing key raised a BytesWarning."""
    with pytest.raises(MalformedInput):
        VerifyKey.from_cbor([b"\x02", bytes(32)])
