"""The node's method table, typed: one request and one reply type per method, with the facts a
transport, a node and a client need about it (argument byte limit, home argument, session,
throttle). Decoding is strict (types, sizes, counts, no unknown keys); encoding gives exactly the
CBOR maps of docs/protocol.md, so typed and untyped callers interoperate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Self

from protocols import bats
from protocols.accounts import MAX_LOGIN_DATA, MAX_SESSIONS
from protocols.blocks import MAX_BLOCKS_PER_PUT
from protocols.cbor import CBORValue
from protocols.champ import MAX_KEY
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import KdfParams, VerifyKey
from protocols.cryptree import MAX_BLOCK_BYTES
from protocols.errors import InvalidName, MalformedInput, TooLarge
from protocols.links import LABEL_BYTES, MAX_SEALED_CAP, PROOF_BYTES
from protocols.names import check_username
from protocols.pki import Claim, Record, record_from_cbor, record_to_cbor
from protocols.pointers import PointerUpdate
from protocols.social import FOLLOW_SEALED_BYTES, INBOX_ID_BYTES, MAX_PENDING

MiB: Final = 1024 * 1024
MAX_CALL_BYTES: Final = 9 * MiB  # one put of 8 blocks of 1 MiB and its framing
SMALL_CALL: Final = 64 * 1024  # the largest other call (a login update: 4 KiB) many times over
MAX_USERNAME_CHARS: Final = 64  # before the name rules run: check_username allows 32
SIGNATURE_BYTES: Final = 64  # Ed25519
UPLOAD_ID_BYTES: Final = 16
MAX_UPLOADS: Final = 16  # upload ids one pointer write may close
MAX_POINTER_UPDATES: Final = 16  # writers one pointer.cas may move at once
MAX_POINTER_BYTES: Final = 512  # a signed pointer update is about 150 bytes
MAX_CHAMP_KEYS: Final = 64  # keys of one champ.get
PKI_PAGE: Final = 1000  # entries per PKI sync request
MAX_TOKEN_CHARS: Final = 1024  # signup and admin tokens: operator-chosen text
MAX_TIME: Final = 2**63 - 1  # the largest integer argument (times, sequence numbers, expiries)


# -- field checks -------------------------------------------------------------------------------


def _fields(value: object, method: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    """The arguments map of `method`, with no unknown key. A missing required argument reads
    as None, which its own check refuses, naming it (the checks run in the order of the
    arguments, so the message names the first bad one)."""
    if not isinstance(value, dict):
        raise MalformedInput(f"the arguments of {method} must be a CBOR map")
    unknown = set(value) - required - optional
    if unknown:
        name = sorted(map(str, unknown))[0]
        raise MalformedInput(f"{method} takes no argument {name[:64]!r}")
    return value


def _reply(value: object, what: str, keys: set[str]) -> dict[str, Any]:
    """A reply map with exactly `keys`."""
    if not isinstance(value, dict) or set(value) != keys:
        raise MalformedInput(f"{what} is a map of {', '.join(sorted(keys))}")
    return value


def _wrong(name: str, what: str) -> MalformedInput:
    return MalformedInput(f"argument {name!r} must be {what}")


def _int(value: object, name: str, low: int = 0, high: int = MAX_TIME) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _wrong(name, f"an integer in [{low}, {high}]")
    return value


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong(name, "a boolean")
    return value


def _bytes(value: object, name: str, *, size: int | None = None, limit: int = SMALL_CALL) -> bytes:
    if not isinstance(value, bytes):
        raise _wrong(name, "a byte string")
    if size is not None and len(value) != size:
        raise _wrong(name, f"{size} bytes")
    if len(value) > limit:
        raise TooLarge(f"argument {name!r} is at most {limit} bytes")
    return value


def _text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise _wrong(name, "text")
    if len(value) > limit:
        raise TooLarge(f"argument {name!r} is at most {limit} characters")
    return value


def _cid(value: object, name: str) -> CID:
    if not isinstance(value, CID):
        raise _wrong(name, "a CID")
    return value


def _key_hash(value: object, name: str) -> CID:
    if not isinstance(value, CID) or not value.is_identity or value.codec != CODEC_DAG_CBOR:
        raise _wrong(name, "a public-key hash")
    return value


def _optional_key_hash(value: object, name: str) -> CID | None:
    return None if value is None else _key_hash(value, name)


def _list(value: object, name: str, low: int, high: int) -> list[Any]:
    if not isinstance(value, list):
        raise _wrong(name, "a list")
    if len(value) > high:
        raise TooLarge(f"argument {name!r} holds at most {high} items")
    if len(value) < low:
        raise _wrong(name, f"a list of {low} to {high} items")
    return value


def _username(value: object) -> str:
    if not isinstance(value, str):
        raise _wrong("username", "text")
    if len(value) > MAX_USERNAME_CHARS:
        raise InvalidName("usernames are at most 32 characters")
    return value


def _session(value: object) -> bytes | None:
    """A session token as the client sends it; its length is checked with the session."""
    return None if value is None else _bytes(value, "session", limit=64)


def _uploads(value: object) -> tuple[bytes, ...]:
    items = _list(value, "uploads", 0, MAX_UPLOADS)
    return tuple(_bytes(u, "uploads", size=UPLOAD_ID_BYTES) for u in items)


def _login_data(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) > MAX_LOGIN_DATA:
        raise MalformedInput("login data must be at most 16 KiB of bytes")
    return value


def _pointer(value: object, name: str) -> PointerUpdate:
    return PointerUpdate.decode(_bytes(value, name, limit=MAX_POINTER_BYTES))


def _blocks(
    blocks: object, sigs: object
) -> tuple[tuple[tuple[int, bytes], ...], tuple[bytes, ...]]:
    """Blocks to put and their signatures: shapes, codecs and sizes (the node checks contents
    and signatures)."""
    if not isinstance(blocks, list) or not isinstance(sigs, list) or len(blocks) != len(sigs):
        raise MalformedInput("blocks and sigs must be lists of the same length")
    if len(blocks) > MAX_BLOCKS_PER_PUT:
        raise TooLarge(f"at most {MAX_BLOCKS_PER_PUT} blocks per put")
    items, signatures = blocks, sigs
    out: list[tuple[int, bytes]] = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes)):
            raise MalformedInput("each block is [codec, bytes]")
        codec, data = item
        if type(codec) is not int or codec not in (CODEC_RAW, CODEC_DAG_CBOR):
            raise MalformedInput("blocks are raw or dag-cbor")
        if len(data) > MAX_BLOCK_BYTES:
            raise TooLarge(f"a block is at most {MAX_BLOCK_BYTES} bytes")
        out.append((codec, data))
    for sig in signatures:
        if not isinstance(sig, bytes):
            raise MalformedInput("block signatures must be bytes")
        if len(sig) > SIGNATURE_BYTES:
            raise TooLarge(f"a block signature is {SIGNATURE_BYTES} bytes")
    return tuple(out), tuple(signatures)


def _put(args: dict[str, object], name: str, value: object) -> None:
    """Set an optional argument: absent when None, as callers have always sent it."""
    if value is not None:
        args[name] = value


class Message:
    """A request or reply: strict `from_cbor`, exact `to_cbor`."""

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        raise NotImplementedError

    def to_cbor(self) -> CBORValue:
        raise NotImplementedError


# -- node.info ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo(Message):
    @classmethod
    def from_cbor(cls, value: object) -> Self:
        _fields(value, "node.info", set(), set())
        return cls()

    def to_cbor(self) -> CBORValue:
        return {}


@dataclass(frozen=True)
class NodeInfoReply(Message):
    node: str
    test_mode: bool
    addrs: tuple[str, ...]
    pki_role: str | None
    pki_head: tuple[int, CID | None] | None  # (seq, hash); hash None: the empty log
    stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        keys = {"node", "test_mode", "addrs", "pki_role", "pki_head", "stats"}
        v = _reply(value, "a node.info reply", keys)
        addrs = _list(v.get("addrs"), "addrs", 0, 64)
        head = v.get("pki_head")
        stats = v.get("stats")
        if not isinstance(stats, dict) or not all(
            isinstance(k, str) and type(n) is int for k, n in stats.items()
        ):
            raise _wrong("stats", "a map of counts")
        if head is not None:
            h = _reply(head, "pki_head", {"seq", "hash"})
            head = (
                _int(h.get("seq"), "seq"),
                None if h.get("hash") is None else _cid(h.get("hash"), "hash"),
            )
        return cls(
            _text(v.get("node"), "node", 128),
            _bool(v.get("test_mode"), "test_mode"),
            tuple(_text(a, "addrs", 1024) for a in addrs),
            None if v.get("pki_role") is None else _text(v.get("pki_role"), "pki_role", 16),
            head,
            dict(stats),
        )

    def to_cbor(self) -> CBORValue:
        head = self.pki_head
        return {
            "node": self.node,
            "test_mode": self.test_mode,
            "addrs": list(self.addrs),
            "pki_role": self.pki_role,
            "pki_head": None if head is None else {"seq": head[0], "hash": head[1]},
            "stats": dict(self.stats),
        }


# -- blocks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockGet(Message):
    cid: CID
    auth: bats.ReadAuth | None = None
    owner: CID | None = None  # whose data: a node relays reads of users homed elsewhere

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "block.get", {"cid"}, {"auth", "owner"})
        auth = v.get("auth")
        return cls(
            _cid(v.get("cid"), "cid"),
            None if auth is None else bats.ReadAuth.from_cbor(auth),
            _optional_key_hash(v.get("owner"), "owner"),
        )

    def to_cbor(self) -> CBORValue:
        args: dict[str, object] = {"cid": self.cid}
        _put(args, "auth", None if self.auth is None else self.auth.to_cbor())
        _put(args, "owner", self.owner)
        return args


@dataclass(frozen=True)
class BlockGetReply(Message):
    data: bytes

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        return cls(_bytes(value, "block", limit=MAX_BLOCK_BYTES))

    def to_cbor(self) -> CBORValue:
        return self.data


@dataclass(frozen=True)
class BlockPut(Message):
    owner: CID
    writer: CID
    blocks: tuple[tuple[int, bytes], ...]  # (codec, data)
    sigs: tuple[bytes, ...]
    upload: bytes | None = None  # pins the blocks until a pointer write closes the upload
    session: bytes | None = None

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(
            value, "block.put", {"owner", "writer", "blocks", "sigs"}, {"upload", "session"}
        )
        upload = v.get("upload")
        blocks, sigs = _blocks(v.get("blocks"), v.get("sigs"))
        return cls(
            _key_hash(v.get("owner"), "owner"),
            _key_hash(v.get("writer"), "writer"),
            blocks,
            sigs,
            None if upload is None else _bytes(upload, "upload", size=UPLOAD_ID_BYTES),
            _session(v.get("session")),
        )

    def to_cbor(self) -> CBORValue:
        args: dict[str, object] = {
            "owner": self.owner,
            "writer": self.writer,
            "blocks": [[codec, data] for codec, data in self.blocks],
            "sigs": list(self.sigs),
        }
        _put(args, "upload", self.upload)
        _put(args, "session", self.session)
        return args


@dataclass(frozen=True)
class BlockPutReply(Message):
    cids: tuple[CID, ...]

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        items = _list(value, "cids", 0, MAX_BLOCKS_PER_PUT)
        return cls(tuple(_cid(c, "cids") for c in items))

    def to_cbor(self) -> CBORValue:
        return list(self.cids)


@dataclass(frozen=True)
class ChampGet(Message):
    root: CID
    keys: tuple[bytes, ...]
    owner: CID | None = None  # routes the call to the owner's home

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "champ.get", {"root", "keys"}, {"owner"})
        keys = _list(v.get("keys"), "keys", 1, MAX_CHAMP_KEYS)
        if not all(isinstance(k, bytes) and 1 <= len(k) <= MAX_KEY for k in keys):
            raise _wrong("keys", f"a list of byte strings of 1 to {MAX_KEY} bytes")
        return cls(
            _cid(v.get("root"), "root"), tuple(keys), _optional_key_hash(v.get("owner"), "owner")
        )

    def to_cbor(self) -> CBORValue:
        args: dict[str, object] = {"root": self.root, "keys": list(self.keys)}
        _put(args, "owner", self.owner)
        return args


@dataclass(frozen=True)
class ChampGetReply(Message):
    blocks: tuple[bytes, ...]  # the nodes on the keys' paths

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        items = _list(value, "blocks", 0, 64 * MAX_CHAMP_KEYS)
        return cls(tuple(_bytes(b, "blocks", limit=MAX_BLOCK_BYTES) for b in items))

    def to_cbor(self) -> CBORValue:
        return list(self.blocks)


# -- pointers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointerGet(Message):
    writer: CID
    owner: CID | None = None  # routes the call to the owner's home

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "pointer.get", {"writer"}, {"owner"})
        return cls(
            _key_hash(v.get("writer"), "writer"), _optional_key_hash(v.get("owner"), "owner")
        )

    def to_cbor(self) -> CBORValue:
        args: dict[str, object] = {"writer": self.writer}
        _put(args, "owner", self.owner)
        return args


@dataclass(frozen=True)
class PointerGetReply(Message):
    update: bytes | None  # the signed update, as stored

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        if value is None:
            return cls(None)
        return cls(_pointer(value, "pointer").encode())

    def to_cbor(self) -> CBORValue:
        return self.update


@dataclass(frozen=True)
class PointerCas(Message):
    owner: CID
    updates: tuple[tuple[CID, PointerUpdate], ...]  # (writer, update), one per writer
    uploads: tuple[bytes, ...] = ()
    session: bytes | None = None

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "pointer.cas", {"owner", "updates"}, {"uploads", "session"})
        owner = _key_hash(v.get("owner"), "owner")
        items = _list(v.get("updates"), "updates", 1, MAX_POINTER_UPDATES)
        updates: list[tuple[CID, PointerUpdate]] = []
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes)):
                raise MalformedInput("each update is [writer, signed update bytes]")
            updates.append((_key_hash(item[0], "writer"), _pointer(item[1], "updates")))
        if len({w for w, _ in updates}) != len(updates):
            raise MalformedInput("one update per writer")
        return cls(
            owner,
            tuple(updates),
            _uploads(v.get("uploads", [])),
            _session(v.get("session")),
        )

    def to_cbor(self) -> CBORValue:
        args: dict[str, object] = {
            "owner": self.owner,
            "updates": [[w, u.encode()] for w, u in self.updates],
            "uploads": list(self.uploads),
        }
        _put(args, "session", self.session)
        return args


@dataclass(frozen=True)
class Done(Message):
    """The reply of a call that answers only that it happened (or, where said, whether it
    changed anything)."""

    done: bool = True

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        return cls(_bool(value, "reply"))

    def to_cbor(self) -> CBORValue:
        return self.done


# -- accounts and sessions ----------------------------------------------------------------------


@dataclass(frozen=True)
class AccountSignup(Message):
    claim: Claim
    login_key: VerifyKey
    login_data: bytes
    mirror_bat: bytes
    pointer: PointerUpdate
    blocks: tuple[tuple[int, bytes], ...]
    sigs: tuple[bytes, ...]
    token: str | None = None  # the node's signup token, when it asks for one

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        keys = {"claim", "login_key", "login_data", "mirror_bat", "pointer", "blocks", "sigs"}
        v = _fields(value, "account.signup", keys, {"token"})
        claim = Claim.from_cbor(v.get("claim"))
        login_key = VerifyKey.from_cbor(v.get("login_key"))
        login_data = _login_data(v.get("login_data"))
        mirror_bat = _bytes(v.get("mirror_bat"), "mirror_bat", size=bats.BAT_BYTES)
        pointer = _pointer(v.get("pointer"), "pointer")
        blocks, sigs = _blocks(v.get("blocks"), v.get("sigs"))
        token = v.get("token")
        return cls(
            claim,
            login_key,
            login_data,
            mirror_bat,
            pointer,
            blocks,
            sigs,
            None if token is None else _text(token, "token", MAX_TOKEN_CHARS),
        )

    def to_cbor(self) -> CBORValue:
        args: dict[str, object] = {
            "claim": self.claim.to_cbor(),
            "login_key": self.login_key.to_cbor(),
            "login_data": self.login_data,
            "mirror_bat": self.mirror_bat,
            "pointer": self.pointer.encode(),
            "blocks": [[codec, data] for codec, data in self.blocks],
            "sigs": list(self.sigs),
        }
        _put(args, "token", self.token)
        return args


@dataclass(frozen=True)
class AccountParams(Message):
    username: str

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "account.params", {"username"}, set())
        return cls(_username(v.get("username")))

    def to_cbor(self) -> CBORValue:
        return {"username": self.username}


@dataclass(frozen=True)
class AccountParamsReply(Message):
    identity: CID
    params: KdfParams

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _reply(value, "an account.params reply", {"identity", "params"})
        return cls(_key_hash(v.get("identity"), "identity"), KdfParams.from_cbor(v.get("params")))

    def to_cbor(self) -> CBORValue:
        return {"identity": self.identity, "params": self.params.to_cbor()}


@dataclass(frozen=True)
class AccountLogin(Message):
    username: str
    time: int  # ms, signed with the username by the login key
    sig: bytes

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "account.login", {"username", "time", "sig"}, set())
        return cls(
            _username(v.get("username")),
            _int(v.get("time"), "time"),
            _bytes(v.get("sig"), "sig", size=SIGNATURE_BYTES),
        )

    def to_cbor(self) -> CBORValue:
        return {"username": self.username, "time": self.time, "sig": self.sig}


@dataclass(frozen=True)
class AccountLoginReply(Message):
    data: bytes  # the sealed login data
    session: bytes
    expiry: int

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _reply(value, "an account.login reply", {"data", "session", "expiry"})
        return cls(
            _bytes(v.get("data"), "data", limit=MAX_LOGIN_DATA),
            _bytes(v.get("session"), "session", limit=64),
            _int(v.get("expiry"), "expiry"),
        )

    def to_cbor(self) -> CBORValue:
        return {"data": self.data, "session": self.session, "expiry": self.expiry}


@dataclass(frozen=True)
class AccountUpdate(Message):
    username: str
    login_key: VerifyKey
    login_data: bytes
    pointer: bytes  # the signed update of the identity root, as signed by the login key
    time: int
    sig: bytes
    uploads: tuple[bytes, ...] = ()

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        keys = {"username", "login_key", "login_data", "pointer", "time", "sig"}
        v = _fields(value, "account.update", keys, {"uploads"})
        pointer = _bytes(v.get("pointer"), "pointer", limit=MAX_POINTER_BYTES)
        PointerUpdate.decode(pointer)
        return cls(
            _username(v.get("username")),
            VerifyKey.from_cbor(v.get("login_key")),
            _login_data(v.get("login_data")),
            pointer,
            _int(v.get("time"), "time"),
            _bytes(v.get("sig"), "sig", size=SIGNATURE_BYTES),
            _uploads(v.get("uploads", [])),
        )

    @property
    def update(self) -> PointerUpdate:
        return PointerUpdate.decode(self.pointer)

    def to_cbor(self) -> CBORValue:
        return {
            "username": self.username,
            "login_key": self.login_key.to_cbor(),
            "login_data": self.login_data,
            "pointer": self.pointer,
            "uploads": list(self.uploads),
            "time": self.time,
            "sig": self.sig,
        }


@dataclass(frozen=True)
class SessionReply(Message):
    """A new session (account.update), or the expiry of a live one (session.check: no
    token)."""

    session: bytes | None
    expiry: int

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "a session reply", {"expiry"}, {"session"})
        if "expiry" not in v:
            raise _wrong("expiry", "an integer")
        return cls(_session(v.get("session")), _int(v.get("expiry"), "expiry"))

    def to_cbor(self) -> CBORValue:
        args: dict[str, object] = {}
        _put(args, "session", self.session)
        args["expiry"] = self.expiry
        return args


@dataclass(frozen=True)
class UsageGet(Message):
    owner: CID
    time: int  # ms, signed with the owner by the identity key
    sig: bytes
    session: bytes | None = None

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "usage.get", {"owner", "time", "sig"}, {"session"})
        return cls(
            _key_hash(v.get("owner"), "owner"),
            _int(v.get("time"), "time"),
            _bytes(v.get("sig"), "sig", size=SIGNATURE_BYTES),
            _session(v.get("session")),
        )

    def to_cbor(self) -> CBORValue:
        args: dict[str, object] = {"owner": self.owner, "time": self.time, "sig": self.sig}
        _put(args, "session", self.session)
        return args


@dataclass(frozen=True)
class UsageGetReply(Message):
    used: int
    quota: int

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _reply(value, "a usage.get reply", {"used", "quota"})
        return cls(_int(v.get("used"), "used"), _int(v.get("quota"), "quota"))

    def to_cbor(self) -> CBORValue:
        return {"used": self.used, "quota": self.quota}


@dataclass(frozen=True)
class SessionEnd(Message):
    owner: CID
    session: bytes | None = None
    all: bool = False  # every session of the user (a live token is the proof)

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "session.end", {"owner"}, {"session", "all"})
        return cls(
            _key_hash(v.get("owner"), "owner"),
            _session(v.get("session")),
            _bool(v.get("all", False), "all"),
        )

    def to_cbor(self) -> CBORValue:
        args: dict[str, object] = {"owner": self.owner, "all": self.all}
        _put(args, "session", self.session)
        return args


@dataclass(frozen=True)
class SessionCheck(Message):
    owner: CID
    session: bytes | None = None

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "session.check", {"owner"}, {"session"})
        return cls(_key_hash(v.get("owner"), "owner"), _session(v.get("session")))

    def to_cbor(self) -> CBORValue:
        args: dict[str, object] = {"owner": self.owner}
        _put(args, "session", self.session)
        return args


# -- PKI ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PkiLookup(Message):
    """The claim of a user, by username or by identity key hash (exactly one of them): a
    secret link names its owner by key only, and its reader needs the owner's home."""

    username: str | None = None
    identity: CID | None = None

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "pki.lookup", set(), {"username", "identity"})
        if "identity" in v:
            if "username" in v:
                raise MalformedInput("pki.lookup takes a username or an identity, not both")
            return cls(identity=_key_hash(v.get("identity"), "identity"))
        return cls(check_username(_username(v.get("username"))))

    def to_cbor(self) -> CBORValue:
        if self.identity is not None:
            return {"identity": self.identity}
        return {"username": self.username}


@dataclass(frozen=True)
class PkiLookupReply(Message):
    claim: Claim

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        return cls(Claim.from_cbor(value))

    def to_cbor(self) -> CBORValue:
        return self.claim.to_cbor()


@dataclass(frozen=True)
class PkiStatus(Message):
    @classmethod
    def from_cbor(cls, value: object) -> Self:
        _fields(value, "pki.status", set(), set())
        return cls()

    def to_cbor(self) -> CBORValue:
        return {}


@dataclass(frozen=True)
class Report(Message):
    """A map the node reports for people to read (pki.status, pki.entries pages, admin.gc
    counts); its parts are checked where they are used."""

    fields: dict[str, Any]

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise MalformedInput("the node sent a malformed report")
        return cls(dict(value))

    def to_cbor(self) -> CBORValue:
        return dict(self.fields)


@dataclass(frozen=True)
class PkiEntries(Message):
    after: int  # the last sequence number the caller holds
    limit: int

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "pki.entries", {"after", "limit"}, set())
        return cls(_int(v.get("after"), "after"), _int(v.get("limit"), "limit", 1, PKI_PAGE))

    def to_cbor(self) -> CBORValue:
        return {"after": self.after, "limit": self.limit}


@dataclass(frozen=True)
class PkiSubmit(Message):
    record: Record

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "pki.submit", {"record"}, set())
        if not isinstance(v.get("record"), dict):
            raise _wrong("record", "a PKI record map")
        return cls(record_from_cbor(v.get("record")))

    def to_cbor(self) -> CBORValue:
        return {"record": record_to_cbor(self.record)}


@dataclass(frozen=True)
class PkiSubmitReply(Message):
    seq: int
    hash: CID

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _reply(value, "a pki.submit reply", {"seq", "hash"})
        return cls(_int(v.get("seq"), "seq"), _cid(v.get("hash"), "hash"))

    def to_cbor(self) -> CBORValue:
        return {"seq": self.seq, "hash": self.hash}


# -- maintenance --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdminGc(Message):
    token: str = field(repr=False)  # the node's admin token

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "admin.gc", {"token"}, set())
        return cls(_text(v.get("token"), "token", MAX_TOKEN_CHARS))

    def to_cbor(self) -> CBORValue:
        return {"token": self.token}


# -- the follow-request inbox (protocols/social.py) ---------------------------------------------


@dataclass(frozen=True)
class SocialSend(Message):
    target: CID  # the identity key hash of the user the request is boxed to
    request: bytes  # sealed: always FOLLOW_SEALED_BYTES, whoever sent it

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "social.send", {"target", "request"}, set())
        return cls(
            _key_hash(v.get("target"), "target"),
            _bytes(v.get("request"), "request", size=FOLLOW_SEALED_BYTES),
        )

    def to_cbor(self) -> CBORValue:
        return {"target": self.target, "request": self.request}


@dataclass(frozen=True)
class SocialList(Message):
    owner: CID
    time: int  # ms, signed with the owner by the identity key
    sig: bytes

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "social.list", {"owner", "time", "sig"}, set())
        return cls(
            _key_hash(v.get("owner"), "owner"),
            _int(v.get("time"), "time"),
            _bytes(v.get("sig"), "sig", size=SIGNATURE_BYTES),
        )

    def to_cbor(self) -> CBORValue:
        return {"owner": self.owner, "time": self.time, "sig": self.sig}


@dataclass(frozen=True)
class SocialListReply(Message):
    items: tuple[tuple[bytes, bytes], ...]  # (id, sealed request), at most MAX_PENDING

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        items = []
        for item in _list(value, "inbox", 0, MAX_PENDING):
            v = _reply(item, "an inbox item", {"id", "request"})
            items.append(
                (
                    _bytes(v.get("id"), "id", size=INBOX_ID_BYTES),
                    _bytes(v.get("request"), "request", size=FOLLOW_SEALED_BYTES),
                )
            )
        return cls(tuple(items))

    def to_cbor(self) -> CBORValue:
        return [{"id": i, "request": r} for i, r in self.items]


@dataclass(frozen=True)
class SocialRemove(Message):
    owner: CID
    ids: tuple[bytes, ...]  # 1 to MAX_PENDING inbox ids
    time: int  # ms, signed with the owner and the ids by the identity key
    sig: bytes

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "social.remove", {"owner", "ids", "time", "sig"}, set())
        owner = _key_hash(v.get("owner"), "owner")
        ids = _list(v.get("ids"), "ids", 1, MAX_PENDING)
        return cls(
            owner,
            tuple(_bytes(i, "ids", size=INBOX_ID_BYTES) for i in ids),
            _int(v.get("time"), "time"),
            _bytes(v.get("sig"), "sig", size=SIGNATURE_BYTES),
        )

    def to_cbor(self) -> CBORValue:
        return {"owner": self.owner, "ids": list(self.ids), "time": self.time, "sig": self.sig}


@dataclass(frozen=True)
class Count(Message):
    """The reply of a call that answers how many items it changed."""

    count: int

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        return cls(_int(value, "reply"))

    def to_cbor(self) -> CBORValue:
        return self.count


# -- secret links (protocols/links.py) ----------------------------------------------------------


@dataclass(frozen=True)
class LinkGet(Message):
    owner: CID
    label: bytes
    proof: bytes = field(repr=False)  # derived from the link's key (and password)

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "link.get", {"owner", "label", "proof"}, set())
        return cls(
            _key_hash(v.get("owner"), "owner"),
            _bytes(v.get("label"), "label", size=LABEL_BYTES),
            _bytes(v.get("proof"), "proof", size=PROOF_BYTES),
        )

    def to_cbor(self) -> CBORValue:
        return {"owner": self.owner, "label": self.label, "proof": self.proof}


@dataclass(frozen=True)
class LinkGetReply(Message):
    cap: bytes  # the sealed capability (protocols/links.py open_capability)
    password: bool  # whether the link was made with a password

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _reply(value, "a link.get reply", {"cap", "password"})
        return cls(
            _bytes(v.get("cap"), "cap", limit=MAX_SEALED_CAP),
            _bool(v.get("password"), "password"),
        )

    def to_cbor(self) -> CBORValue:
        return {"cap": self.cap, "password": self.password}


# -- mirroring (protocols/mirrors.py) -----------------------------------------------------------


@dataclass(frozen=True)
class MirrorAccount(Message):
    """A mirror asks the user's home for the user's login record, proving it holds their
    mirror BAT (protocols/mirrors.py `check_account_auth`)."""

    username: str
    bat: bytes  # the mirror BAT id
    expiry: int
    mac: bytes = field(repr=False)

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "mirror.account", {"username", "bat", "expiry", "mac"}, set())
        return cls(
            _username(v.get("username")),
            _bytes(v.get("bat"), "bat", size=bats.BAT_ID_BYTES),
            _int(v.get("expiry"), "expiry"),
            _bytes(v.get("mac"), "mac", size=32),
        )

    def to_cbor(self) -> CBORValue:
        return {"username": self.username, "bat": self.bat, "expiry": self.expiry, "mac": self.mac}


@dataclass(frozen=True)
class MirrorAccountReply(Message):
    account: bytes = field(repr=False)  # the login record as the home keeps it

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _reply(value, "a mirror.account reply", {"account"})
        return cls(_bytes(v.get("account"), "account", limit=MAX_LOGIN_DATA + 4096))

    def to_cbor(self) -> CBORValue:
        return {"account": self.account}


@dataclass(frozen=True)
class AccountMigrate(Message):
    """Make a mirror of the user their home (protocol.md §14): the user's new claim, signed by
    their identity key, naming that node as home. Any node takes it and passes it to that
    node, which does the move."""

    claim: Claim

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "account.migrate", {"claim"}, set())
        return cls(Claim.from_cbor(v.get("claim")))

    def to_cbor(self) -> CBORValue:
        return {"claim": self.claim.to_cbor()}


@dataclass(frozen=True)
class MirrorHandoff(Message):
    """The new home asks the old one to stop the user's writes and hand over what is not in
    their blocks (the node named home by `claim` calls, the user's claim is its authority)."""

    claim: Claim

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "mirror.handoff", {"claim"}, set())
        return cls(Claim.from_cbor(v.get("claim")))

    def to_cbor(self) -> CBORValue:
        return {"claim": self.claim.to_cbor()}


MAX_LINK_COUNTS: Final = 4096  # link use counts one handoff carries (links revoked included)


@dataclass(frozen=True)
class MirrorHandoffReply(Message):
    """What the old home keeps of a user beside their blocks, copied opaquely: the sealed
    follow requests of their inbox, the use counts of their links, their sessions (ids and
    expiry: hashes of the tokens, so devices stay logged in)."""

    inbox: tuple[tuple[bytes, bytes], ...]  # (id, sealed request)
    links: tuple[tuple[bytes, int], ...]  # (label, uses so far)
    sessions: tuple[tuple[bytes, int], ...]  # (session id, expiry)

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _reply(value, "a mirror.handoff reply", {"inbox", "links", "sessions"})
        inbox = SocialListReply.from_cbor(v.get("inbox")).items
        links = []
        for item in _list(v.get("links"), "links", 0, MAX_LINK_COUNTS):
            pair = _list(item, "a link count", 2, 2)
            links.append((_bytes(pair[0], "label", size=LABEL_BYTES), _int(pair[1], "uses")))
        sessions = []
        for item in _list(v.get("sessions"), "sessions", 0, MAX_SESSIONS):
            pair = _list(item, "a session", 2, 2)
            sessions.append((_bytes(pair[0], "session id", size=32), _int(pair[1], "expiry")))
        return cls(inbox, tuple(links), tuple(sessions))

    def to_cbor(self) -> CBORValue:
        return {
            "inbox": SocialListReply(self.inbox).to_cbor(),
            "links": [[label, uses] for label, uses in self.links],
            "sessions": [[sid, expiry] for sid, expiry in self.sessions],
        }


@dataclass(frozen=True)
class AdminMirrorAdd(Message):
    token: str = field(repr=False)  # the node's admin token
    mirror: str = field(repr=False)  # the user's mirror token

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "admin.mirror.add", {"token", "mirror"}, set())
        return cls(
            _text(v.get("token"), "token", MAX_TOKEN_CHARS),
            _text(v.get("mirror"), "mirror", MAX_TOKEN_CHARS),
        )

    def to_cbor(self) -> CBORValue:
        return {"token": self.token, "mirror": self.mirror}


@dataclass(frozen=True)
class AdminMirrorList(Message):
    token: str = field(repr=False)

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "admin.mirror.list", {"token"}, set())
        return cls(_text(v.get("token"), "token", MAX_TOKEN_CHARS))

    def to_cbor(self) -> CBORValue:
        return {"token": self.token}


@dataclass(frozen=True)
class AdminMirrorRemove(Message):
    token: str = field(repr=False)
    username: str

    @classmethod
    def from_cbor(cls, value: object) -> Self:
        v = _fields(value, "admin.mirror.remove", {"token", "username"}, set())
        return cls(_text(v.get("token"), "token", MAX_TOKEN_CHARS), _username(v.get("username")))

    def to_cbor(self) -> CBORValue:
        return {"token": self.token, "username": self.username}


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """What every party needs to know about one method."""

    name: str
    request: type[Message]
    reply: type[Message]
    args_bytes: int = SMALL_CALL  # the most bytes of CBOR its arguments may take
    # The argument naming the user whose home node the call belongs to: a node that receives
    # it for a user homed elsewhere forwards it there and relays the answer.
    home: str | None = None
    # The node accepts it only within a live session of the user (block.put and pointer.cas:
    # when the writer is the user's identity writer; a sub-writer's signatures suffice).
    session: bool = False
    throttled: bool = False  # it proves a password (or a link's): failures are throttled
    # A read a mirror of the user answers when their home is unreachable (protocol.md §14).
    failover: bool = False


METHODS: Final[dict[str, Method]] = {
    m.name: m
    for m in (
        Method("node.info", NodeInfo, NodeInfoReply),
        Method("block.get", BlockGet, BlockGetReply),
        Method("block.put", BlockPut, BlockPutReply, MAX_CALL_BYTES, "owner", session=True),
        Method("champ.get", ChampGet, ChampGetReply, home="owner", failover=True),
        Method("pointer.get", PointerGet, PointerGetReply, home="owner", failover=True),
        Method("pointer.cas", PointerCas, Done, home="owner", session=True),
        Method("account.signup", AccountSignup, Done, MAX_CALL_BYTES),
        Method("account.params", AccountParams, AccountParamsReply, home="username"),
        Method("account.login", AccountLogin, AccountLoginReply, home="username", throttled=True),
        Method("account.update", AccountUpdate, SessionReply, home="username", throttled=True),
        Method("usage.get", UsageGet, UsageGetReply, home="owner", session=True),
        Method("session.end", SessionEnd, Done, home="owner", session=True),
        Method("session.check", SessionCheck, SessionReply, home="owner", session=True),
        Method("pki.lookup", PkiLookup, PkiLookupReply),
        Method("pki.status", PkiStatus, Report),
        Method("pki.entries", PkiEntries, Report),
        Method("pki.submit", PkiSubmit, PkiSubmitReply),
        Method("admin.gc", AdminGc, Report),
        Method("social.send", SocialSend, Done, home="target"),
        Method("social.list", SocialList, SocialListReply, home="owner"),
        Method("social.remove", SocialRemove, Count, home="owner"),
        Method("link.get", LinkGet, LinkGetReply, home="owner", throttled=True),
        Method("mirror.account", MirrorAccount, MirrorAccountReply),
        Method("admin.mirror.add", AdminMirrorAdd, Report),
        Method("admin.mirror.list", AdminMirrorList, Report),
        Method("admin.mirror.remove", AdminMirrorRemove, Done),
        Method("account.migrate", AccountMigrate, Done),
        Method("mirror.handoff", MirrorHandoff, MirrorHandoffReply),
    )
}
# Each request type names its method: a typed caller needs no method name of its own.
_BY_REQUEST: Final[dict[type[Message], Method]] = {m.request: m for m in METHODS.values()}


def method_of(request: Message) -> Method:
    """The method whose request `request` is."""
    spec = _BY_REQUEST.get(type(request))
    if spec is None:
        raise TypeError(f"{type(request).__name__} is not the request of a method")
    return spec
