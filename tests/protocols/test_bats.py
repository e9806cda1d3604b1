"""Tests of protocols.bats: BAT ids, raw block prefixes, the read-auth check and its text form."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import bats, cbor
from protocols.bats import ReadAuth, check_read_auth, make_read_auth
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW, encode_varint
from protocols.errors import Denied, MalformedInput

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
CID_A = CID.of(CODEC_RAW, b"a private fragment")
CID_B = CID.of(CODEC_RAW, b"another fragment")
REQUESTER = b"12D3KooW-requester"
SERVER = b"12D3KooW-server"
NOW = 1_700_000_000

secrets = st.binary(min_size=32, max_size=32)
bat_ids = st.one_of(secrets.map(bats.inline_id), secrets.map(bats.hashed_id))


def no_registry(bat_id: bytes) -> bytes | None:
    return None


def registry(*known: bytes) -> Callable[[bytes], bytes | None]:
    table = {bats.hashed_id(secret): secret for secret in known}
    return table.get


def check(
    auth: ReadAuth | None,
    block_ids: list[bytes],
    *,
    cid: CID = CID_A,
    requester: bytes = REQUESTER,
    server: bytes = SERVER,
    now: int = NOW,
    mirror_secret: Callable[[bytes], bytes | None] = no_registry,
) -> None:
    check_read_auth(
        cid,
        block_ids,
        auth,
        requester=requester,
        server=server,
        now=now,
        mirror_secret=mirror_secret,
    )


def auth_for(
    secret: bytes = SECRET,
    *,
    cid: CID = CID_A,
    requester: bytes = REQUESTER,
    server: bytes = SERVER,
    now: int = NOW,
    hashed: bool = False,
) -> ReadAuth:
    return make_read_auth(secret, cid, requester, server, now, hashed=hashed)


# --- BAT ids -----------------------------------------------------------------------------------


@given(secret=secrets)
def test_bat_ids(secret: bytes) -> None:
    inline, hashed = bats.inline_id(secret), bats.hashed_id(secret)
    assert len(inline) == len(hashed) == bats.BAT_ID_BYTES
    assert inline == b"\x00\x20" + secret  # identity multihash: the secret itself
    assert hashed == b"\x12\x20" + hashlib.sha256(secret).digest()
    assert secret not in hashed


@pytest.mark.parametrize("secret", [b"", bytes(31), bytes(33), "x" * 32, bytearray(32)])
def test_bat_ids_reject_bad_secrets(secret: Any) -> None:
    with pytest.raises(MalformedInput):
        bats.inline_id(secret)
    with pytest.raises(MalformedInput):
        bats.hashed_id(secret)


# --- raw block prefix --------------------------------------------------------------------------


@given(ids=st.lists(bat_ids, max_size=bats.MAX_BATS_PER_BLOCK), payload=st.binary(max_size=200))
def test_raw_prefix_round_trip(ids: list[bytes], payload: bytes) -> None:
    prefix = bats.raw_prefix(ids)
    assert prefix.startswith(bats.RAW_MAGIC)
    listed = cbor.encode(ids)
    assert prefix == bats.RAW_MAGIC + encode_varint(len(listed)) + listed
    block = prefix + payload
    found, rest = bats.split_raw(block)
    assert found == ids
    assert bytes(rest) == payload
    assert bats.block_bat_ids(CID.of(CODEC_RAW, block), block) == ids
    found, rest = bats.split_raw(memoryview(block))
    assert (found, bytes(rest)) == (ids, payload)


@given(payload=st.binary(max_size=200))
def test_raw_block_without_magic_is_public(payload: bytes) -> None:
    block = b"\x00" + payload  # the magic starts with 0x70, so this never has it
    found, rest = bats.split_raw(block)
    assert found == []
    assert bytes(rest) == block
    assert bats.block_bat_ids(CID.of(CODEC_RAW, block), block) == []


@pytest.mark.parametrize(
    "ids",
    [
        [bats.inline_id(bytes([i]) * 32) for i in range(bats.MAX_BATS_PER_BLOCK + 1)],
        [b"\x00\x20" + bytes(31)],  # short
        [b"\x00\x20" + bytes(33)],  # long
        [b"\x13\x20" + bytes(32)],  # sha2-512 code
        [b"\x00\x21" + bytes(32)],  # wrong length byte
        ["not bytes"],
    ],
)
def test_raw_prefix_rejects_bad_id_lists(ids: Any) -> None:
    with pytest.raises(MalformedInput):
        bats.raw_prefix(ids)


PREFIX = bats.raw_prefix([bats.inline_id(SECRET)])


@pytest.mark.parametrize(
    "block",
    [
        bats.RAW_MAGIC,  # no length
        bats.RAW_MAGIC + b"\x80",  # truncated varint
        bats.RAW_MAGIC + b"\x80\x00",  # non-minimal varint
        bats.RAW_MAGIC + b"\xff\xff\x01",  # length varint longer than two bytes
        bats.RAW_MAGIC + b"\x00",  # empty list encoding
        PREFIX[:-1],  # list cut short
        bats.RAW_MAGIC + b"\x02\x00\x00",  # not a list
        bats.RAW_MAGIC + b"\x02\x81\x00",  # a list of a non-id
        bats.RAW_MAGIC + b"\x01\xa0",  # a map
        bats.RAW_MAGIC + encode_varint(5) + cbor.encode([b"abc"]),  # short id
        bats.raw_prefix([]).replace(b"\x01\x80", b"\x01\x9f"),  # indefinite list
    ],
)
def test_split_raw_rejects_malformed_prefixes(block: bytes) -> None:
    with pytest.raises(MalformedInput):
        bats.split_raw(block)
    with pytest.raises(MalformedInput):
        bats.block_bat_ids(CID.of(CODEC_RAW, block), block)


@FUZZ
@given(tail=st.binary(max_size=120), cut=st.integers(0, 200))
def test_split_raw_fuzz(tail: bytes, cut: int) -> None:
    for block in (bats.RAW_MAGIC + tail, (PREFIX + tail)[:cut], bytes(tail)):
        with contextlib.suppress(MalformedInput):
            ids, rest = bats.split_raw(block)
            assert len(ids) <= bats.MAX_BATS_PER_BLOCK
            assert bytes(rest) == block[len(block) - len(rest) :]


# --- dag-cbor blocks ---------------------------------------------------------------------------


@given(ids=st.lists(bat_ids, max_size=bats.MAX_BATS_PER_BLOCK))
def test_block_bat_ids_of_dag_cbor(ids: list[bytes]) -> None:
    block = cbor.encode({"v": 1, "bats": ids, "data": b"x"})
    assert bats.block_bat_ids(CID.of(CODEC_DAG_CBOR, block), block) == ids


@pytest.mark.parametrize(
    "value", [{"v": 1}, [], [{"bats": [bats.inline_id(SECRET)]}], b"bats", 7, {"x": {"bats": []}}]
)
def test_dag_cbor_blocks_without_top_level_bats_are_public(value: object) -> None:
    block = cbor.encode(value)
    assert bats.block_bat_ids(CID.of(CODEC_DAG_CBOR, block), block) == []


@pytest.mark.parametrize(
    "block",
    [
        cbor.encode({"bats": b"x"}),
        cbor.encode({"bats": None}),
        cbor.encode({"bats": [b"short"]}),
        cbor.encode({"bats": [bats.inline_id(bytes([i]) * 32) for i in range(5)]}),
        b"\xa1",  # not CBOR
        bytes.fromhex("a2616101616101"),  # not canonical
    ],
)
def test_block_bat_ids_rejects_malformed_dag_cbor(block: bytes) -> None:
    with pytest.raises(MalformedInput):
        bats.block_bat_ids(CID.of(CODEC_DAG_CBOR, block), block)


# --- the read-auth check -----------------------------------------------------------------------


def test_make_read_auth() -> None:
    auth = auth_for()
    assert auth.bat_id == bats.inline_id(SECRET)
    assert auth.expiry == NOW + bats.MAX_AUTH_TTL
    assert len(auth.mac) == 32
    assert auth_for(hashed=True).bat_id == bats.hashed_id(SECRET)
    assert auth_for(hashed=True).mac == auth.mac  # the mac depends on the secret, not the id


def test_valid_inline_auth_is_allowed() -> None:
    def unused(bat_id: bytes) -> bytes | None:
        raise AssertionError("an inline BAT must not touch the mirror registry")

    check(auth_for(), [bats.inline_id(SECRET)], mirror_secret=unused)
    check(auth_for(), [bats.inline_id(OTHER_SECRET), bats.inline_id(SECRET)])


def test_public_block_needs_no_auth() -> None:
    check(None, [])
    check(auth_for(OTHER_SECRET, cid=CID_B), [])  # whatever auth comes with it


def test_missing_auth_is_denied() -> None:
    with pytest.raises(Denied, match="private"):
        check(None, [bats.inline_id(SECRET)])


def test_bat_not_in_block_is_denied() -> None:
    with pytest.raises(Denied, match="not one of"):
        check(auth_for(OTHER_SECRET), [bats.inline_id(SECRET)])
    # The right secret under the other id form is not one of the block's ids either.
    with pytest.raises(Denied, match="not one of"):
        check(auth_for(hashed=True), [bats.inline_id(SECRET)], mirror_secret=registry(SECRET))
    with pytest.raises(Denied, match="not one of"):
        check(auth_for(), [bats.hashed_id(SECRET)], mirror_secret=registry(SECRET))


def test_expiry_window() -> None:
    ids = [bats.inline_id(SECRET)]
    check(auth_for(now=NOW - bats.MAX_AUTH_TTL), ids)  # expires this very second
    with pytest.raises(Denied, match="expired"):
        check(auth_for(now=NOW - bats.MAX_AUTH_TTL - 1), ids)
    with pytest.raises(Denied, match="expired"):
        check(auth_for(now=0), ids)
    check(auth_for(now=NOW + 30), ids)  # the requester's clock 30 s ahead
    with pytest.raises(Denied, match="future"):
        check(auth_for(now=NOW + 31), ids)
    far = auth_for(now=NOW + 10**9)
    with pytest.raises(Denied, match="future"):
        check(far, ids)


def test_forged_far_expiry_is_denied_before_the_mac() -> None:
    # An expiry past 2**63 still fits the mac's 8 bytes; it is refused on the clock alone.
    forged = ReadAuth(bats.inline_id(SECRET), 2**64 - 1, bytes(32))
    with pytest.raises(Denied, match="future"):
        check(forged, [bats.inline_id(SECRET)])


@given(index=st.integers(0, 31), bit=st.integers(0, 7))
def test_wrong_mac_is_denied(index: int, bit: int) -> None:
    auth = auth_for()
    mac = bytearray(auth.mac)
    mac[index] ^= 1 << bit
    with pytest.raises(Denied, match="does not verify"):
        check(ReadAuth(auth.bat_id, auth.expiry, bytes(mac)), [auth.bat_id])


def test_changed_expiry_is_denied() -> None:
    auth = auth_for()
    with pytest.raises(Denied, match="does not verify"):
        check(ReadAuth(auth.bat_id, auth.expiry - 1, auth.mac), [auth.bat_id])


def test_wrong_cid_is_denied() -> None:
    with pytest.raises(Denied, match="does not verify"):
        check(auth_for(cid=CID_B), [bats.inline_id(SECRET)])
    same_digest_other_codec = CID(CODEC_DAG_CBOR, CID_A.mh_code, CID_A.digest)
    with pytest.raises(Denied, match="does not verify"):
        check(auth_for(), [bats.inline_id(SECRET)], cid=same_digest_other_codec)


@pytest.mark.parametrize(
    ("requester", "server"),
    [
        (b"12D3KooW-someone-else", SERVER),
        (b"", SERVER),
        (REQUESTER, b"12D3KooW-another-node"),
        (REQUESTER, b""),
        (SERVER, REQUESTER),  # swapped
        # Length-prefixed fields: moving bytes from one field to the next changes the mac.
        (REQUESTER + SERVER[:1], SERVER[1:]),
    ],
)
def test_wrong_requester_or_server_is_denied(requester: bytes, server: bytes) -> None:
    with pytest.raises(Denied, match="does not verify"):
        check(auth_for(), [bats.inline_id(SECRET)], requester=requester, server=server)


def test_http_auth_names_no_requester() -> None:
    # Over HTTP the requester is empty: such an auth is good at the node it names, for anyone.
    auth = auth_for(requester=b"")
    check(auth, [bats.inline_id(SECRET)], requester=b"")
    with pytest.raises(Denied):
        check(auth, [bats.inline_id(SECRET)], requester=REQUESTER)
    with pytest.raises(Denied):
        check(auth, [bats.inline_id(SECRET)], requester=b"", server=b"another-node")


def test_mirror_bat_via_registry() -> None:
    ids = [bats.inline_id(OTHER_SECRET), bats.hashed_id(SECRET)]
    check(auth_for(hashed=True), ids, mirror_secret=registry(SECRET))
    with pytest.raises(Denied, match="unknown mirror BAT"):
        check(auth_for(hashed=True), ids)
    with pytest.raises(Denied, match="unknown mirror BAT"):
        check(auth_for(hashed=True), ids, mirror_secret=registry(OTHER_SECRET))
    with pytest.raises(Denied, match="does not verify"):  # a registry with the wrong secret
        check(auth_for(hashed=True), ids, mirror_secret=lambda bat_id: OTHER_SECRET)
    forged = ReadAuth(bats.hashed_id(SECRET), NOW + 10, bytes(32))
    with pytest.raises(Denied, match="does not verify"):  # forged mac on a known mirror BAT
        check(forged, ids, mirror_secret=registry(SECRET))


# --- ReadAuth text and CBOR forms --------------------------------------------------------------


@given(bat_id=bat_ids, expiry=st.integers(0, 2**64 - 1), mac=st.binary(min_size=32, max_size=32))
def test_read_auth_text_round_trip(bat_id: bytes, expiry: int, mac: bytes) -> None:
    auth = ReadAuth(bat_id, expiry, mac)
    text = auth.to_text()
    assert "=" not in text
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert ReadAuth.from_text(text) == auth
    assert ReadAuth.from_cbor(cbor.decode(cbor.encode(auth.to_cbor()))) == auth


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(cbor.encode(value)).rstrip(b"=").decode()


GOOD_AUTH = auth_for()
GOOD_TEXT = GOOD_AUTH.to_text()
GOOD_CBOR = GOOD_AUTH.to_cbor()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a",
        "not base64 at all!",
        "é" * 10,
        GOOD_TEXT + "=",  # padding is not part of the text form
        GOOD_TEXT + "==",
        GOOD_TEXT[:-1],
        GOOD_TEXT + "A",
        GOOD_TEXT[:10] + "!" + GOOD_TEXT[10:],  # a stray character, silently dropped by b64
        GOOD_TEXT[:10] + "\n" + GOOD_TEXT[10:],
        GOOD_TEXT.replace("-", "+").replace("_", "/") + "+/",  # standard alphabet
        "A" * 513,
        GOOD_TEXT + "A" * 513,
        _b64([GOOD_AUTH.bat_id, GOOD_AUTH.expiry, GOOD_AUTH.mac]),
        _b64({**GOOD_CBOR, "extra": 1}),
        _b64({"id": GOOD_AUTH.bat_id, "exp": GOOD_AUTH.expiry}),
        _b64({**GOOD_CBOR, "exp": -1}),
        _b64({**GOOD_CBOR, "exp": True}),
        _b64({**GOOD_CBOR, "exp": "1"}),
        _b64({**GOOD_CBOR, "mac": bytes(31)}),
        _b64({**GOOD_CBOR, "mac": "x" * 32}),
        _b64({**GOOD_CBOR, "id": SECRET}),
        _b64({**GOOD_CBOR, "id": b"\x13\x20" + SECRET}),
        _b64({**GOOD_CBOR, "id": None}),
        base64.urlsafe_b64encode(cbor.encode(GOOD_CBOR) + b"\x00").rstrip(b"=").decode(),
        base64.urlsafe_b64encode(bytes.fromhex("a1616101a1")).rstrip(b"=").decode(),
    ],
)
def test_read_auth_from_text_rejects(text: str) -> None:
    with pytest.raises(MalformedInput):
        ReadAuth.from_text(text)


def test_read_auth_text_with_last_char_alias_is_rejected() -> None:
    # The last base64 character carries unused low bits: another letter with other low bits
    # decodes to the same bytes, and must still be refused (one auth, one text).
    auth = ReadAuth(GOOD_AUTH.bat_id, 5, GOOD_AUTH.mac)  # 83 bytes of CBOR: 2 spare bits
    good = auth.to_text()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    accepted = []
    for char in alphabet.replace(good[-1], ""):
        with contextlib.suppress(MalformedInput):
            accepted.append(ReadAuth.from_text(good[:-1] + char))
    assert ReadAuth.from_text(good) == auth
    assert auth not in accepted


@FUZZ
@given(text=st.text(max_size=200))
def test_read_auth_from_text_fuzz(text: str) -> None:
    with contextlib.suppress(MalformedInput):
        assert ReadAuth.from_text(text).to_text() == text


@FUZZ
@given(index=st.integers(0, len(GOOD_TEXT) - 1), char=st.characters(codec="ascii"))
def test_read_auth_from_text_mutated(index: int, char: str) -> None:
    text = GOOD_TEXT[:index] + char + GOOD_TEXT[index + 1 :]
    try:
        auth = ReadAuth.from_text(text)
    except MalformedInput:
        return
    assert auth.to_text() == text
    assert (auth == GOOD_AUTH) == (text == GOOD_TEXT)


def test_a_mirror_takes_an_auth_made_out_to_the_home_it_answers_for() -> None:
    """Rule 5: an auth made out to the home verifies at a node that names that home in `also`
    (a mirror of the block's owner), and nowhere else; the requester binding still holds."""
    home, mirror = b"12D3KooW-home", b"12D3KooW-mirror"
    auth = make_read_auth(SECRET, CID_A, REQUESTER, home, NOW)
    ids = [bats.inline_id(SECRET)]
    common: dict[str, Any] = {"now": NOW, "mirror_secret": no_registry}
    check_read_auth(CID_A, ids, auth, requester=REQUESTER, server=mirror, also=[home], **common)
    with pytest.raises(Denied):
        check_read_auth(CID_A, ids, auth, requester=REQUESTER, server=mirror, **common)
    with pytest.raises(Denied):
        check_read_auth(CID_A, ids, auth, requester=b"other", server=mirror, also=[home], **common)
