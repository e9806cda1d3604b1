"""The typed method table: every request and reply type round-trips through CBOR, decodes
exactly what callers send today, and refuses wrong types, sizes, counts and unknown keys."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from protocols import bats, cbor, methods, rpc
from protocols.blocks import MAX_BLOCKS_PER_PUT, sign_put
from protocols.champ import MAX_KEY
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import KdfParams, SigningKey
from protocols.cryptree import MAX_BLOCK_BYTES
from protocols.errors import InvalidName, MalformedInput, PyrgosError, TooLarge
from protocols.methods import METHODS, Message
from protocols.pki import Claim, NodeRecord
from protocols.pointers import PointerUpdate
from protocols.social import FOLLOW_SEALED_BYTES, INBOX_ID_BYTES, MAX_PENDING

KEY = SigningKey.from_seed(bytes(32))
OWNER = KEY.public.key_hash()
WRITER = SigningKey.from_seed(bytes([1]) * 32).public.key_hash()
BLOCK = b"some raw bytes"
CID_RAW = CID.of(CODEC_RAW, BLOCK)
ROOT = CID.of(CODEC_DAG_CBOR, b"\xa0")
UPDATE = PointerUpdate.create(KEY, None, ROOT, 1)
TOKEN = bytes(range(32))
UPLOAD = bytes(16)
SIG = bytes(64)
CLAIM = Claim.create(KEY, "alice", "node-a", 2_000_000_000)
AUTH = bats.ReadAuth(bats.inline_id(bytes(32)), 100, bytes(32))
PARAMS = KdfParams(3, 64 * 1024 * 1024, bytes(16))
SEALED = bytes(FOLLOW_SEALED_BYTES)  # a sealed follow request's only length
INBOX_ID = bytes(INBOX_ID_BYTES)
LABEL = bytes(range(16))
PROOF = bytes(32)


def _requests() -> dict[str, list[Message]]:
    """Valid requests of each method, with and without their optional arguments."""
    put = ((CODEC_RAW, BLOCK),)
    return {
        "node.info": [methods.NodeInfo()],
        "block.get": [methods.BlockGet(CID_RAW), methods.BlockGet(CID_RAW, AUTH, OWNER)],
        "block.put": [
            methods.BlockPut(OWNER, WRITER, put, (sign_put(KEY, CID_RAW),)),
            methods.BlockPut(OWNER, WRITER, put, (SIG,), UPLOAD, TOKEN),
        ],
        "champ.get": [
            methods.ChampGet(ROOT, (bytes(32),)),
            methods.ChampGet(ROOT, (b"k",) * 64, OWNER),
        ],
        "pointer.get": [methods.PointerGet(WRITER), methods.PointerGet(WRITER, OWNER)],
        "pointer.cas": [
            methods.PointerCas(OWNER, ((OWNER, UPDATE),)),
            methods.PointerCas(OWNER, ((OWNER, UPDATE), (WRITER, UPDATE)), (UPLOAD,), TOKEN),
        ],
        "account.signup": [
            methods.AccountSignup(CLAIM, KEY.public, b"sealed", bytes(32), UPDATE, put, (SIG,)),
            methods.AccountSignup(
                CLAIM, KEY.public, b"sealed", bytes(32), UPDATE, (), (), "invite"
            ),
        ],
        "account.params": [methods.AccountParams("alice")],
        "account.login": [methods.AccountLogin("alice", 1_700_000_000_000, SIG)],
        "account.update": [
            methods.AccountUpdate("alice", KEY.public, b"x", UPDATE.encode(), 1, SIG),
            methods.AccountUpdate("alice", KEY.public, b"x", UPDATE.encode(), 1, SIG, (UPLOAD,)),
        ],
        "usage.get": [
            methods.UsageGet(OWNER, 1, SIG),
            methods.UsageGet(OWNER, 1, SIG, TOKEN),
        ],
        "session.end": [methods.SessionEnd(OWNER), methods.SessionEnd(OWNER, TOKEN, True)],
        "session.check": [methods.SessionCheck(OWNER), methods.SessionCheck(OWNER, TOKEN)],
        "pki.lookup": [methods.PkiLookup("alice"), methods.PkiLookup(identity=OWNER)],
        "pki.status": [methods.PkiStatus()],
        "pki.entries": [methods.PkiEntries(0, 1), methods.PkiEntries(5, methods.PKI_PAGE)],
        "pki.submit": [
            methods.PkiSubmit(CLAIM),
            methods.PkiSubmit(NodeRecord.create(KEY, ["/ip4/127.0.0.1/tcp/1"], 1)),
        ],
        "admin.gc": [methods.AdminGc("secret")],
        "social.send": [methods.SocialSend(OWNER, SEALED)],
        "social.list": [methods.SocialList(OWNER, 1, SIG)],
        "social.remove": [
            methods.SocialRemove(OWNER, (INBOX_ID,), 1, SIG),
            methods.SocialRemove(OWNER, (INBOX_ID,) * MAX_PENDING, 1, SIG),
        ],
        "link.get": [methods.LinkGet(OWNER, LABEL, PROOF)],
        "mirror.account": [methods.MirrorAccount("alice", bytes(34), 1, bytes(32))],
        "admin.mirror.add": [methods.AdminMirrorAdd("secret", "pyrgos-mirror-1:x")],
        "admin.mirror.list": [methods.AdminMirrorList("secret")],
        "admin.mirror.remove": [methods.AdminMirrorRemove("secret", "alice")],
        "account.migrate": [methods.AccountMigrate(CLAIM)],
        "mirror.handoff": [methods.MirrorHandoff(CLAIM)],
    }


def _replies() -> dict[str, list[Message]]:
    return {
        "node.info": [
            methods.NodeInfoReply("node-a", True, ("/ip4/1.2.3.4",), "root", (3, ROOT), {"x": 1}),
            methods.NodeInfoReply("node-a", False, (), None, None, {}),
            methods.NodeInfoReply("node-a", False, (), "mirror", (0, None), {}),
        ],
        "block.get": [methods.BlockGetReply(BLOCK)],
        "block.put": [methods.BlockPutReply((CID_RAW, ROOT)), methods.BlockPutReply(())],
        "champ.get": [methods.ChampGetReply((b"\xa0",))],
        "pointer.get": [methods.PointerGetReply(None), methods.PointerGetReply(UPDATE.encode())],
        "pointer.cas": [methods.Done()],
        "account.signup": [methods.Done()],
        "account.params": [methods.AccountParamsReply(OWNER, PARAMS)],
        "account.login": [methods.AccountLoginReply(b"sealed", TOKEN, 99)],
        "account.update": [methods.SessionReply(TOKEN, 99)],
        "usage.get": [methods.UsageGetReply(10, 100)],
        "session.end": [methods.Done(True), methods.Done(False)],
        "session.check": [methods.SessionReply(None, 99)],
        "pki.lookup": [methods.PkiLookupReply(CLAIM)],
        "pki.status": [methods.Report({"role": "root", "seq": 0})],
        "pki.entries": [methods.Report({"entries": [], "head": None})],
        "pki.submit": [methods.PkiSubmitReply(1, ROOT)],
        "admin.gc": [methods.Report({"deleted": 0})],
        "social.send": [methods.Done()],
        "social.list": [
            methods.SocialListReply(()),
            methods.SocialListReply(((INBOX_ID, SEALED), (bytes([1]) * 16, SEALED))),
        ],
        "social.remove": [methods.Count(0), methods.Count(3)],
        "link.get": [methods.LinkGetReply(bytes(41), False), methods.LinkGetReply(b"c", True)],
        "mirror.account": [methods.MirrorAccountReply(b"record")],
        "account.migrate": [methods.Done()],
        "mirror.handoff": [
            methods.MirrorHandoffReply((), (), ()),
            methods.MirrorHandoffReply(((INBOX_ID, SEALED),), ((LABEL, 3),), ((bytes(32), 9),)),
        ],
        "admin.mirror.add": [methods.Report({"username": "alice"})],
        "admin.mirror.list": [methods.Report({"mirrors": []})],
        "admin.mirror.remove": [methods.Done()],
    }


def test_every_method_has_examples() -> None:
    assert set(_requests()) == set(METHODS) == set(_replies())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_requests_and_replies_round_trip(name: str) -> None:
    spec = METHODS[name]
    for request in _requests()[name]:
        assert isinstance(request, spec.request)
        wire = cbor.decode(cbor.encode(request.to_cbor()))
        assert spec.request.from_cbor(wire) == request
        assert spec.request.from_cbor(wire).to_cbor() == request.to_cbor()
    for reply in _replies()[name]:
        assert isinstance(reply, spec.reply)
        wire = cbor.decode(cbor.encode(reply.to_cbor()))
        assert spec.reply.from_cbor(wire) == reply


def test_the_wire_form_is_what_callers_have_always_sent() -> None:
    """Optional arguments are absent when unset: a typed request encodes to the same bytes as
    the untyped maps clients send."""
    assert methods.BlockGet(CID_RAW).to_cbor() == {"cid": CID_RAW}
    assert methods.PointerGet(WRITER, OWNER).to_cbor() == {"writer": WRITER, "owner": OWNER}
    assert methods.SessionEnd(OWNER, TOKEN).to_cbor() == {
        "owner": OWNER,
        "all": False,
        "session": TOKEN,
    }
    assert methods.SessionReply(None, 5).to_cbor() == {"expiry": 5}
    assert methods.PointerGetReply(None).to_cbor() is None
    assert methods.Done().to_cbor() is True


@pytest.mark.parametrize("name", sorted(METHODS))
def test_unknown_arguments_and_non_maps_are_refused(name: str) -> None:
    spec = METHODS[name]
    for request in _requests()[name]:
        args = request.to_cbor()
        assert isinstance(args, dict)
        with pytest.raises(MalformedInput, match="takes no argument 'extra'"):
            spec.request.from_cbor({**args, "extra": 1})
    for junk in (None, [], 7, "args", b"args"):
        with pytest.raises(MalformedInput, match="must be a CBOR map"):
            spec.request.from_cbor(junk)


def _wrong_types() -> list[tuple[str, dict[str, Any], type[PyrgosError], str]]:
    """(method, arguments changed from the first example, error, part of the message)."""
    return [
        ("block.get", {"cid": "not a cid"}, MalformedInput, "'cid'"),
        ("block.get", {"owner": ROOT}, MalformedInput, "'owner' must be a public-key hash"),
        ("block.get", {"auth": {"id": 1}}, MalformedInput, "read auth"),
        ("block.put", {"owner": None}, MalformedInput, "'owner'"),
        ("block.put", {"writer": CID_RAW}, MalformedInput, "'writer'"),
        ("block.put", {"upload": bytes(15)}, MalformedInput, "'upload' must be 16 bytes"),
        ("block.put", {"session": "token"}, MalformedInput, "'session'"),
        ("block.put", {"session": bytes(65)}, TooLarge, "'session'"),
        ("block.put", {"blocks": [[CODEC_RAW, BLOCK]], "sigs": []}, MalformedInput, "same"),
        ("block.put", {"blocks": [[5, BLOCK]]}, MalformedInput, "raw or dag-cbor"),
        ("block.put", {"blocks": [[True, BLOCK]]}, MalformedInput, "raw or dag-cbor"),
        ("block.put", {"blocks": [BLOCK]}, MalformedInput, "[codec, bytes]"),
        ("block.put", {"blocks": [[CODEC_RAW, bytes(MAX_BLOCK_BYTES + 1)]]}, TooLarge, "block"),
        ("block.put", {"sigs": ["sig"]}, MalformedInput, "signatures must be bytes"),
        ("block.put", {"sigs": [bytes(65)]}, TooLarge, "signature"),
        (
            "block.put",
            {"blocks": [[CODEC_RAW, b""]] * 65, "sigs": [SIG] * 65},
            TooLarge,
            f"at most {MAX_BLOCKS_PER_PUT} blocks",
        ),
        ("champ.get", {"keys": []}, MalformedInput, "'keys'"),
        ("champ.get", {"keys": [b"k"] * 65}, TooLarge, "'keys'"),
        ("champ.get", {"keys": [b""]}, MalformedInput, "'keys'"),
        ("champ.get", {"keys": [bytes(MAX_KEY + 1)]}, MalformedInput, "'keys'"),
        ("champ.get", {"keys": ["k"]}, MalformedInput, "'keys'"),
        ("champ.get", {"root": None}, MalformedInput, "'root'"),
        ("pointer.get", {"writer": "alice"}, MalformedInput, "'writer'"),
        ("pointer.cas", {"updates": []}, MalformedInput, "'updates'"),
        ("pointer.cas", {"updates": [[OWNER, UPDATE.encode()]] * 17}, TooLarge, "'updates'"),
        ("pointer.cas", {"updates": [[OWNER, b"\x00"]]}, MalformedInput, ""),
        ("pointer.cas", {"updates": [[OWNER, UPDATE.encode()]] * 2}, MalformedInput, "one"),
        ("pointer.cas", {"updates": [[ROOT, UPDATE.encode()]]}, MalformedInput, "'writer'"),
        ("pointer.cas", {"uploads": [bytes(16)] * 17}, TooLarge, "'uploads'"),
        ("pointer.cas", {"uploads": [b"short"]}, MalformedInput, "'uploads'"),
        ("account.signup", {"claim": 1}, MalformedInput, "claim"),
        ("account.migrate", {"claim": 1}, MalformedInput, "claim"),
        ("mirror.handoff", {"claim": "alice"}, MalformedInput, "claim"),
        ("account.signup", {"login_key": [9, b"x"]}, MalformedInput, ""),
        ("account.signup", {"login_data": bytes(17 * 1024)}, MalformedInput, "16 KiB"),
        ("account.signup", {"mirror_bat": b"short"}, MalformedInput, "'mirror_bat'"),
        ("account.signup", {"pointer": bytes(600)}, TooLarge, "'pointer'"),
        ("account.signup", {"token": 7}, MalformedInput, "'token' must be text"),
        ("account.signup", {"token": "x" * 1025}, TooLarge, "'token'"),
        ("account.params", {"username": 5}, MalformedInput, "'username'"),
        ("mirror.account", {"bat": bytes(33)}, MalformedInput, "'bat'"),
        ("mirror.account", {"mac": b"short"}, MalformedInput, "'mac'"),
        ("admin.mirror.add", {"mirror": 5}, MalformedInput, "'mirror'"),
        ("admin.mirror.list", {"token": "x" * 1025}, TooLarge, "'token'"),
        ("admin.mirror.remove", {"username": 5}, MalformedInput, "'username'"),
        ("account.params", {"username": "x" * 65}, InvalidName, "32"),
        ("account.login", {"time": "now"}, MalformedInput, "'time'"),
        ("account.login", {"time": True}, MalformedInput, "'time'"),
        ("account.login", {"time": -1}, MalformedInput, "'time'"),
        ("account.login", {"sig": bytes(63)}, MalformedInput, "'sig' must be 64 bytes"),
        ("account.update", {"pointer": b"\x00"}, MalformedInput, ""),
        ("account.update", {"uploads": "all"}, MalformedInput, "'uploads'"),
        ("usage.get", {"owner": 7}, MalformedInput, "'owner'"),
        ("usage.get", {"sig": None}, MalformedInput, "'sig'"),
        ("session.end", {"all": 1}, MalformedInput, "'all' must be a boolean"),
        ("session.check", {"owner": CID_RAW}, MalformedInput, "'owner'"),
        ("pki.lookup", {"username": "Not Valid"}, InvalidName, "a-z"),
        ("pki.lookup", {"identity": OWNER}, MalformedInput, "not both"),
        ("pki.entries", {"after": -1}, MalformedInput, "'after'"),
        ("pki.entries", {"limit": 0}, MalformedInput, "'limit'"),
        ("pki.entries", {"limit": methods.PKI_PAGE + 1}, MalformedInput, "'limit'"),
        ("pki.submit", {"record": [1]}, MalformedInput, "'record'"),
        ("pki.submit", {"record": {"kind": "nothing"}}, MalformedInput, ""),
        ("admin.gc", {"token": b"x"}, MalformedInput, "'token'"),
        ("social.send", {"target": ROOT}, MalformedInput, "'target'"),
        ("social.send", {"request": SEALED[:-1]}, MalformedInput, "'request' must be 2184 bytes"),
        ("social.send", {"request": SEALED + b"\0"}, MalformedInput, "'request'"),
        ("social.send", {"request": "sealed"}, MalformedInput, "'request'"),
        ("social.list", {"owner": "alice"}, MalformedInput, "'owner'"),
        ("social.list", {"time": -5}, MalformedInput, "'time'"),
        ("social.list", {"sig": bytes(65)}, MalformedInput, "'sig'"),
        ("social.remove", {"ids": []}, MalformedInput, "'ids'"),
        ("social.remove", {"ids": [INBOX_ID] * (MAX_PENDING + 1)}, TooLarge, "'ids'"),
        ("social.remove", {"ids": [bytes(15)]}, MalformedInput, "'ids' must be 16 bytes"),
        ("social.remove", {"ids": INBOX_ID}, MalformedInput, "'ids' must be a list"),
        ("social.remove", {"time": 2**63}, MalformedInput, "'time'"),
        ("link.get", {"owner": CID_RAW}, MalformedInput, "'owner'"),
        ("link.get", {"label": bytes(15)}, MalformedInput, "'label' must be 16 bytes"),
        ("link.get", {"proof": bytes(33)}, MalformedInput, "'proof' must be 32 bytes"),
        ("link.get", {"proof": "guess"}, MalformedInput, "'proof'"),
    ]


@pytest.mark.parametrize(("name", "change", "error", "match"), _wrong_types())
def test_wrong_types_sizes_and_counts_are_refused(
    name: str, change: dict[str, Any], error: type[PyrgosError], match: str
) -> None:
    args = _requests()[name][0].to_cbor()
    assert isinstance(args, dict)
    with pytest.raises(error) as caught:
        METHODS[name].request.from_cbor({**args, **change})
    assert match in caught.value.message


def test_every_method_refuses_some_wrong_argument() -> None:
    with_arguments = {name for name, spec in METHODS.items() if spec.request.__dataclass_fields__}
    assert with_arguments <= {name for name, *_ in _wrong_types()}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_missing_argument_is_refused_by_name(name: str) -> None:
    args = _requests()[name][0].to_cbor()
    assert isinstance(args, dict)
    spec = METHODS[name]
    for item in dataclasses.fields(spec.request):
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            with pytest.raises(PyrgosError):
                spec.request.from_cbor({k: v for k, v in args.items() if k != item.name})


def test_malformed_replies_are_refused() -> None:
    for value, reply in (
        ({"used": 1}, methods.UsageGetReply),
        ({"used": 1, "quota": "x"}, methods.UsageGetReply),
        ({"data": b"", "session": TOKEN, "expiry": 1, "x": 2}, methods.AccountLoginReply),
        ("yes", methods.Done),
        ([b"\xa0", 5], methods.ChampGetReply),
        ([ROOT, "cid"], methods.BlockPutReply),
        (b"\x00", methods.PointerGetReply),
        ({}, methods.SessionReply),
        ({"seq": 1}, methods.PkiSubmitReply),
        ({1: 2}, methods.Report),
        ({"node": "n"}, methods.NodeInfoReply),
        ([{"id": INBOX_ID}], methods.SocialListReply),
        ([{"id": INBOX_ID, "request": SEALED[:-1]}], methods.SocialListReply),
        ([{"id": b"short", "request": SEALED}], methods.SocialListReply),
        ({"id": INBOX_ID, "request": SEALED}, methods.SocialListReply),
        (True, methods.Count),
        (-1, methods.Count),
        ({"cap": b"c"}, methods.LinkGetReply),
        ({"cap": "c", "password": False}, methods.LinkGetReply),
        ({"cap": b"c", "password": 1}, methods.LinkGetReply),
    ):
        with pytest.raises(MalformedInput):
            reply.from_cbor(value)
    with pytest.raises(TooLarge):  # a node cannot make a client hold more than an inbox
        methods.SocialListReply.from_cbor([{"id": INBOX_ID, "request": SEALED}] * 1001)
    with pytest.raises(TooLarge):
        methods.LinkGetReply.from_cbor({"cap": bytes(1025), "password": False})


def test_the_table_carries_the_facts_of_each_method() -> None:
    assert rpc.args_limit("block.put") == rpc.args_limit("account.signup") == rpc.MAX_CALL_BYTES
    assert rpc.args_limit("pointer.cas") == rpc.args_limit("no.such.method") == rpc.SMALL_CALL
    assert rpc.CALL_BYTES == {"block.put": rpc.MAX_CALL_BYTES, "account.signup": rpc.MAX_CALL_BYTES}
    throttled = {n for n, m in METHODS.items() if m.throttled}
    assert throttled == {"account.login", "account.update", "link.get"}
    assert {n for n, m in METHODS.items() if m.session} == {
        "block.put",
        "pointer.cas",
        "usage.get",
        "session.check",
        "session.end",
    }
    assert METHODS["social.send"].home == "target"
    assert METHODS["social.list"].home == METHODS["social.remove"].home == "owner"
    assert METHODS["link.get"].home == "owner"
    for name, spec in METHODS.items():
        assert spec.name == name
        if spec.home is not None:  # the home argument is a field of the request
            assert spec.home in spec.request.__dataclass_fields__


def test_each_request_type_names_its_method() -> None:
    for name, examples in _requests().items():
        for request in examples:
            assert methods.method_of(request).name == name
    with pytest.raises(TypeError):
        methods.method_of(methods.Done())
