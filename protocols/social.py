"""Follow requests and the social state file (DESIGN §10): pure formats, no I/O.

A follow request (or its answer) is signed by the sender's identity key, padded to a fixed
size and boxed to the target's X-Wing key, so every stored request has the same length and the
node that keeps it cannot tell who sent it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from protocols import cbor, crypto
from protocols.cid import CID
from protocols.crypto import BoxingKey, BoxingPublicKey, SigningKey, VerifyKey
from protocols.cryptree import Capability
from protocols.errors import Corrupted, InvalidName, InvalidSignature, MalformedInput, TooLarge
from protocols.names import check_username

VERSION: Final = 1
SIGN_CONTEXT: Final = b"pyrgos/follow/1"  # the sender's identity signature
BOX_CONTEXT: Final = b"pyrgos/follow-request/1"  # the AEAD context of the boxed request
# Every valid request fits (two 32-character names, a capability, a key hash, a signature:
# under 600 bytes), and a multiple of 512 (DESIGN §2) hides the name lengths inside.
FOLLOW_PLAIN_BYTES: Final = 1024
FOLLOW_SEALED_BYTES: Final = (
    crypto.XWING_CIPHERTEXT_BYTES + crypto.SEAL_OVERHEAD + FOLLOW_PLAIN_BYTES
)  # 2184: the only length a node stores
REPLY_BYTES: Final = 32  # random, chosen by the follower: an answer echoes it
INBOX_ID_BYTES: Final = 16  # sha256(sealed request)[:16] names a request in its target's inbox
# Requests waiting per target: bounds what strangers can store for a user, and so the inbox
# a node lists and the ids one removal names.
MAX_PENDING: Final = 1000
_MAX_REQUEST_ITEMS: Final = 64  # the map, its fields and a capability: about 30 items

Kind = Literal["follow", "accept", "reject"]
KINDS: Final[tuple[Kind, ...]] = ("follow", "accept", "reject")
_FIELDS: Final = frozenset({"v", "kind", "from", "to", "identity", "entry", "reply", "time", "sig"})

# The social state file /<me>/.pyrgos/social.
STATE_VERSION: Final = 1
MAX_CONTACTS: Final = 10_000  # followees and followers each: bounds the file and its decoding
# A followee record is under 400 bytes encoded (name, capability, reply key, time), a
# follower's under 64: 10,000 of each fit well within 8 MiB.
MAX_STATE_BYTES: Final = 8 * 1024 * 1024
_MAX_STATE_ITEMS: Final = 40 * MAX_CONTACTS  # about 25 items a followee, 4 a follower


def request_id(sealed: bytes) -> bytes:
    """The id a target's inbox keeps a sealed request under: a duplicate has the same id."""
    return crypto.sha256(sealed)[:INBOX_ID_BYTES]


def _username(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedInput(f"{what} must be a username")
    try:
        return check_username(value)
    except InvalidName as exc:
        raise MalformedInput(f"{what} is not a valid username: {exc.message}") from None


def _time(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise MalformedInput(f"{what} must be a non-negative integer of milliseconds")
    return value


def _bytes(value: object, length: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != length:
        raise MalformedInput(f"{what} must be {length} bytes")
    return value


def _identity(value: object, what: str) -> CID:
    if not isinstance(value, CID) or not value.is_identity:
        raise MalformedInput(f"{what} must be an identity key hash")
    return value


@dataclass(frozen=True)
class FollowRequest:
    """A follow request (`follow`) or an answer to one (`accept`, `reject`).

    `entry` is a read-only capability of `/<sender>/shared/<to>/` (None in a reject); `reply`
    is the follower's random key, echoed by the answer so it matches a request of ours.
    """

    kind: Kind
    sender: str
    to: str
    identity: CID
    entry: Capability | None
    reply: bytes
    time: int
    sig: bytes = field(repr=False)

    @staticmethod
    def _body(
        kind: str,
        sender: str,
        to: str,
        identity: CID,
        entry: Capability | None,
        reply: bytes,
        time: int,
    ) -> dict[str, object]:
        return {
            "v": VERSION,
            "kind": kind,
            "from": sender,
            "to": to,
            "identity": identity,
            "entry": None if entry is None else entry.to_cbor(),
            "reply": reply,
            "time": time,
        }

    @property
    def signed_part(self) -> bytes:
        """Canonical CBOR of every field but the signature."""
        return cbor.encode(
            self._body(
                self.kind, self.sender, self.to, self.identity, self.entry, self.reply, self.time
            )
        )

    @classmethod
    def create(
        cls,
        identity: SigningKey,
        kind: Kind,
        sender: str,
        to: str,
        entry: Capability | None,
        reply: bytes,
        time: int,
    ) -> FollowRequest:
        """A request signed by the sender's identity key; checked as a recipient would."""
        key_hash = identity.public.key_hash()
        body = cls._body(kind, sender, to, key_hash, None if entry is None else entry.read_only(),
                         reply, time)  # fmt: skip
        request = cls.from_cbor({**body, "sig": identity.sign(cbor.encode(body), SIGN_CONTEXT)})
        request.verify(identity.public, to)
        return request

    def to_cbor(self) -> dict[str, object]:
        return {
            **self._body(
                self.kind, self.sender, self.to, self.identity, self.entry, self.reply, self.time
            ),
            "sig": self.sig,
        }

    @classmethod
    def from_cbor(cls, value: object) -> FollowRequest:
        """Strict shape: exactly the version-1 fields, each of its type and size."""
        if not isinstance(value, dict) or set(value) != _FIELDS:
            raise MalformedInput(
                "a follow request is {v, kind, from, to, identity, entry, reply, time, sig}"
            )
        if type(value["v"]) is not int or value["v"] != VERSION:
            raise MalformedInput("a follow request of an unknown version")
        kind = value["kind"]
        if not isinstance(kind, str) or kind not in KINDS:
            raise MalformedInput('a follow request\'s kind is "follow", "accept" or "reject"')
        entry = None if value["entry"] is None else Capability.from_cbor(value["entry"])
        if (entry is None) != (kind == "reject"):
            raise MalformedInput("a follow or an accept carries an entry, a reject none")
        if entry is not None and entry.writable:
            raise MalformedInput("a follow request's entry must be read-only")
        return cls(
            kind=kind,
            sender=_username(value["from"], "a follow request's sender"),
            to=_username(value["to"], "a follow request's target"),
            identity=_identity(value["identity"], "a follow request's identity"),
            entry=entry,
            reply=_bytes(value["reply"], REPLY_BYTES, "a follow request's reply key"),
            time=_time(value["time"], "a follow request's time"),
            sig=_bytes(value["sig"], crypto.SIGNATURE_BYTES, "a follow request's signature"),
        )

    def verify(self, identity: VerifyKey, me: str) -> None:
        """Raise unless `identity` (the key the PKI and the keystore name for the sender)
        signed this request, it is addressed to `me`, and its entry is the sender's own."""
        if self.identity != identity.key_hash():
            raise InvalidSignature(
                f"this request names another identity key than the one known for {self.sender}"
            )
        try:
            identity.verify(self.signed_part, self.sig, SIGN_CONTEXT)
        except InvalidSignature:
            raise InvalidSignature(
                f"the request from {self.sender} is not signed by their identity key (forged)"
            ) from None
        if self.to != me:
            raise InvalidSignature(f"the request from {self.sender} is addressed to {self.to}")
        if self.entry is not None and self.entry.owner != self.identity:
            raise InvalidSignature(
                f"the request from {self.sender} offers a folder of another user than them"
            )


def seal_request(request: FollowRequest, recipient: BoxingPublicKey) -> bytes:
    """The request padded to FOLLOW_PLAIN_BYTES and boxed to `recipient`: always
    FOLLOW_SEALED_BYTES long, whoever sent it."""
    plain = cbor.encode(request.to_cbor())
    try:
        padded = crypto.pad_to(plain, FOLLOW_PLAIN_BYTES)
    except ValueError:  # not reachable with valid fields; kept as a typed refusal
        raise TooLarge(f"a follow request is at most {FOLLOW_PLAIN_BYTES - 1} bytes") from None
    sealed = crypto.box(recipient, padded, BOX_CONTEXT)
    assert len(sealed) == FOLLOW_SEALED_BYTES
    return sealed


def open_request(recipient: BoxingKey, sealed: object) -> FollowRequest:
    """Open a sealed request: MalformedInput for a wrong length or shape, Corrupted when it
    was not boxed to this key or any byte changed. The signature is checked by `verify`."""
    if type(sealed) is not bytes or len(sealed) != FOLLOW_SEALED_BYTES:
        raise MalformedInput(f"a sealed follow request is exactly {FOLLOW_SEALED_BYTES} bytes")
    try:
        padded = crypto.open_box(recipient, sealed, BOX_CONTEXT)
    except Corrupted:
        raise Corrupted(
            "a follow request failed authentication: not boxed to this user, or changed"
        ) from None
    if len(padded) != FOLLOW_PLAIN_BYTES:
        raise MalformedInput(f"a follow request is padded to {FOLLOW_PLAIN_BYTES} bytes")
    plain = crypto.unpad(padded)
    try:
        value = cbor.decode(plain, limit=FOLLOW_PLAIN_BYTES, max_items=_MAX_REQUEST_ITEMS)
    except TooLarge as exc:
        raise MalformedInput(f"a malformed follow request: {exc.message}") from None
    return FollowRequest.from_cbor(value)


# ================================================================================================
# the social state file


@dataclass(frozen=True)
class Followee:
    """Someone I follow: their folder for me (None while my request is pending), the reply
    key of my request, and since when (ms)."""

    cap: Capability | None
    reply: bytes
    since: int

    def to_cbor(self) -> dict[str, object]:
        return {
            "cap": None if self.cap is None else self.cap.to_cbor(),
            "reply": self.reply,
            "since": self.since,
        }

    @classmethod
    def from_cbor(cls, value: object) -> Followee:
        if not isinstance(value, dict) or set(value) != {"cap", "reply", "since"}:
            raise MalformedInput("a followee record is {cap, reply, since}")
        cap = None if value["cap"] is None else Capability.from_cbor(value["cap"])
        return cls(
            cap=cap,
            reply=_bytes(value["reply"], REPLY_BYTES, "a followee's reply key"),
            since=_time(value["since"], "a followee's time"),
        )


@dataclass
class SocialState:
    """Whom I follow (username -> Followee) and who follows me (username -> since, ms)."""

    following: dict[str, Followee] = field(default_factory=dict)
    followers: dict[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        if len(self.following) > MAX_CONTACTS or len(self.followers) > MAX_CONTACTS:
            raise TooLarge(f"at most {MAX_CONTACTS} followees and {MAX_CONTACTS} followers")
        return cbor.encode(
            {
                "v": STATE_VERSION,
                "following": {name: f.to_cbor() for name, f in self.following.items()},
                "followers": {name: {"since": t} for name, t in self.followers.items()},
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> SocialState:
        """Strict: a known version, valid usernames, at most MAX_CONTACTS of each."""
        value = cbor.decode(data, limit=MAX_STATE_BYTES, max_items=_MAX_STATE_ITEMS)
        if not isinstance(value, dict) or set(value) != {"v", "following", "followers"}:
            raise MalformedInput("the social state is {v, following, followers}")
        if type(value["v"]) is not int or value["v"] != STATE_VERSION:
            raise MalformedInput("the social state has an unknown version")
        following, followers = value["following"], value["followers"]
        if not isinstance(following, dict) or not isinstance(followers, dict):
            raise MalformedInput("the social state's following and followers are maps")
        if len(following) > MAX_CONTACTS or len(followers) > MAX_CONTACTS:
            raise MalformedInput(f"the social state holds at most {MAX_CONTACTS} of each")
        state = cls()
        for name, record in following.items():
            state.following[_username(name, "a followee")] = Followee.from_cbor(record)
        for name, record in followers.items():
            if not isinstance(record, dict) or set(record) != {"since"}:
                raise MalformedInput("a follower record is {since}")
            state.followers[_username(name, "a follower")] = _time(
                record["since"], "a follower's time"
            )
        return state
