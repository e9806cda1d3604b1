"""Secret links and public entries: URLs (and hostile ones), the derivation, the sealed
capability, the link-target and public-entry blocks, and their place among structured blocks."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import bats, cbor, crypto, links
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import SigningKey
from protocols.cryptree import Capability
from protocols.errors import AuthFailed, InvalidName, MalformedInput, TooLarge
from protocols.links import LinkTarget, derive, format_url, parse_url
from protocols.publishing import PublicEntry, normalise, path_key
from protocols.structured import check_structured
from protocols.writerdata import WriterData

OWNER = SigningKey.from_seed(bytes(32)).public.key_hash()
LABEL = bytes(range(16))
KEY = bytes(range(32, 64))
NODE = "http://127.0.0.1:8000"
CAP = Capability(OWNER, OWNER, bytes(32), bytes([1]) * 32, bytes([2]) * 32)


def test_url_round_trip() -> None:
    url = format_url(NODE + "/", OWNER, LABEL, KEY)
    assert url.startswith(f"{NODE}/secret/{OWNER.text}/")
    parsed = parse_url(url)
    assert (parsed.node, parsed.owner, parsed.label, parsed.key) == (NODE, OWNER, LABEL, KEY)
    assert parsed.text() == url
    assert parsed.id == links.encode_b64(LABEL)
    behind_proxy = parse_url(format_url("https://example.org/pyrgos", OWNER, LABEL, KEY))
    assert behind_proxy.node == "https://example.org/pyrgos"
    assert KEY.hex() not in repr(parsed)


def hostile_urls() -> list[tuple[str, str]]:
    good = format_url(NODE, OWNER, LABEL, KEY)
    base, key = good.split("#")
    label = links.encode_b64(LABEL)
    return [
        (good.replace("http://", "ftp://"), "http"),
        (good.replace("http://", "javascript:"), "http"),
        (good.replace("127.0.0.1", "user:pw@127.0.0.1"), "@"),
        (base, "#KEY"),
        (base + "#", "#KEY"),
        (good + "#x", "#KEY"),
        (base + "?x=1#" + key, "query"),
        (base + "#" + key[:-1], "key"),
        (base + "#" + key + "A", "key"),
        (base + "#" + key[:-1] + "=", "key"),
        (base + "#" + key[:-1] + "+", "key"),
        (base + "#" + key[:-1] + "B", "key"),  # non-zero trailing bits: a second spelling
        (good.replace(f"/{label}", f"/{label}A"), "label"),
        (good.replace("/secret/", "/public/"), "/secret/OWNER/LABEL"),
        (good.replace("/secret/", "/../secret/"), "plain"),
        (good.replace("/secret/", "//secret/"), "plain"),
        (good.replace("/secret/", "/%73ecret/"), "/secret/"),
        (good.replace(OWNER.text, OWNER.text.upper()), "OWNER"),
        (good.replace(OWNER.text, CID.of(CODEC_DAG_CBOR, b"x").text), "OWNER"),
        (good.replace(OWNER.text, "bafy"), "OWNER"),
        (good + " ", "spaces"),
        (good.replace("127", "\uff11\uff12\uff17"), "ASCII"),  # full-width digits
        (NODE + "/" * 3000, "at most"),
        (f"{NODE}/secret/{label}#{key}", "/secret/OWNER/LABEL"),
    ]


@pytest.mark.parametrize(("url", "message"), hostile_urls())
def test_hostile_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        parse_url(url)


@given(st.text(max_size=300))
def test_parse_never_crashes(text: str) -> None:
    with contextlib.suppress(MalformedInput):
        parse_url(text)


def test_derivation() -> None:
    plain = derive(KEY, None)
    assert plain == derive(KEY, None)
    assert len(plain.cap_key) == len(plain.proof) == 32
    assert plain.cap_key != plain.proof
    assert plain.verifier == crypto.sha256(plain.proof)
    with_password = derive(KEY, "open sesame", test_kdf=True)
    assert with_password == derive(KEY, "open sesame", test_kdf=True)
    assert with_password != plain
    assert with_password != derive(KEY, "open sesame!", test_kdf=True)
    assert derive(bytes(32), "open sesame", test_kdf=True) != with_password
    assert (links.LINK_KDF_OPSLIMIT, links.LINK_KDF_MEMLIMIT) == (3, 64 * 1024 * 1024)
    assert repr(plain.cap_key) not in repr(plain)
    for bad_key, password in ((bytes(31), None), (KEY, ""), (KEY, "x" * 1025), (KEY, "\udc80")):
        with pytest.raises(MalformedInput):
            derive(bad_key, password, test_kdf=True)


def test_sealed_capability() -> None:
    keys = derive(KEY, None)
    sealed = links.seal_capability(keys.cap_key, LABEL, CAP)
    writable = links.seal_capability(keys.cap_key, LABEL, dataclasses.replace(CAP, write_key=KEY))
    assert len(sealed) == len(writable)  # the node cannot tell a writable link
    assert links.open_capability(keys.cap_key, LABEL, sealed) == CAP
    wrong = derive(KEY, "guess", test_kdf=True)
    with pytest.raises(AuthFailed, match="wrong link password"):
        links.open_capability(wrong.cap_key, LABEL, sealed)
    with pytest.raises(AuthFailed):
        links.open_capability(keys.cap_key, bytes(16), sealed)  # moved under another label


def target(**changes: object) -> LinkTarget:
    keys = derive(KEY, None)
    base = LinkTarget(
        bats=[bats.hashed_id(bytes(32))],
        cap=links.seal_capability(keys.cap_key, LABEL, CAP),
        verifier=keys.verifier,
        password=False,
        expiry=None,
        max_uses=3,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_link_target_round_trip_and_structured() -> None:
    for value in (target(), target(expiry=10**12, max_uses=None, password=True)):
        data = value.encode()
        assert len(data) <= links.MAX_TARGET_BYTES
        assert LinkTarget.decode(data) == value
        check_structured(data)
        assert bats.block_bat_ids(CID.of(CODEC_DAG_CBOR, data), data) == value.bats


def test_bad_link_targets() -> None:
    good = target().to_cbor()
    cases: list[dict[str, object]] = [
        {**good, "link": 2},
        {**good, "bats": []},
        {**good, "bats": [bats.inline_id(bytes(32))]},  # a secret in the block: refused
        {**good, "cap": b"short"},
        {**good, "cap": bytes(2000)},
        {**good, "verifier": bytes(31)},
        {**good, "password": 1},
        {**good, "expiry": -1},
        {**good, "expiry": True},
        {**good, "max": 0},
        {**good, "max": 2**32},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "max"},
    ]
    for value in cases:
        data = cbor.encode(value)
        with pytest.raises((MalformedInput, TooLarge)):
            LinkTarget.decode(data)
        with pytest.raises((MalformedInput, TooLarge)):
            check_structured(data)
    with pytest.raises(TooLarge):
        LinkTarget.decode(bytes(links.MAX_TARGET_BYTES + 1))


def test_public_entries() -> None:
    entry = PublicEntry("/alice/public/x", CAP)
    data = entry.encode()
    assert PublicEntry.decode(data) == entry
    check_structured(data)
    assert normalise("/alice//public/x/") == "/alice/public/x"
    assert path_key("/alice//public/x/") == crypto.blake2b_256(b"/alice/public/x")
    for bad in ("alice/x", "/", "/Alice/x", "/alice/../x"):
        with pytest.raises(InvalidName):
            normalise(bad)
    writable = dataclasses.replace(CAP, write_key=KEY)
    cases: list[object] = [
        {**entry.to_cbor(), "path": "/alice//public/x"},
        {**entry.to_cbor(), "path": 7},
        {**entry.to_cbor(), "cap": writable.to_cbor()},
        {**entry.to_cbor(), "public": 2},
        {**entry.to_cbor(), "more": 1},
    ]
    for value in cases:
        with pytest.raises(MalformedInput):
            PublicEntry.decode(cbor.encode(value))
        with pytest.raises(MalformedInput):
            check_structured(cbor.encode(value))


def test_writer_data_public_root() -> None:
    root = CID.of(CODEC_DAG_CBOR, b"\x80")
    data = WriterData(controller=OWNER, tree=root, links=root, public=root)
    assert WriterData.decode(data.encode()) == data
    with pytest.raises(MalformedInput, match="public"):
        WriterData.decode(cbor.encode({**data.to_cbor(), "public": b"x"}))


def _record(label: bytes = LABEL, **changes: object) -> links.LinkRecord:
    base = links.LinkRecord(LABEL, "/alice/docs/a", KEY, 1, None, 3, False, True, bytes(32))
    return dataclasses.replace(base, label=label, **changes)  # type: ignore[arg-type]


def test_link_records_round_trip() -> None:
    records = {LABEL: _record(), bytes(16): _record(bytes(16), expiry=5, max_uses=None)}
    assert links.decode_records(links.encode_records(records)) == records
    assert links.decode_records(links.encode_records({})) == {}
    assert "cap_key" not in repr(_record())
    too_many = {i.to_bytes(16, "big"): _record(i.to_bytes(16, "big")) for i in range(1001)}
    with pytest.raises(TooLarge, match="revoke some"):
        links.encode_records(too_many)


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"v": 2, "links": []},
        {"v": 1},
        {"v": 1, "links": {}},
        {"v": 1, "links": [_record().to_cbor(), _record().to_cbor()]},
        {"v": 1, "links": [{**_record().to_cbor(), "label": bytes(15)}]},
        {"v": 1, "links": [{**_record().to_cbor(), "path": "relative"}]},
        {"v": 1, "links": [{**_record().to_cbor(), "cap_key": b"short"}]},
        {"v": 1, "links": [{**_record().to_cbor(), "created": None}]},
        {"v": 1, "links": [{**_record().to_cbor(), "max": 0}]},
        {"v": 1, "links": [{**_record().to_cbor(), "writable": 1}]},
        {"v": 1, "links": [{**_record().to_cbor(), "extra": 1}]},
        {"v": 1, "links": [{**_record().to_cbor(), "verifier": bytes(31)}]},
    ],
)
def test_bad_link_records_are_refused(value: object) -> None:
    with pytest.raises(MalformedInput):
        links.decode_records(cbor.encode(value))


@given(st.binary(max_size=200))
def test_link_records_decode_never_crashes(data: bytes) -> None:
    with contextlib.suppress(MalformedInput, TooLarge):
        links.decode_records(data)
