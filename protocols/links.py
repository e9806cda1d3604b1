"""Secret links (DESIGN §10): the URL, the keys derived from its fragment (and a password),
the sealed capability, and the link-target block the owner's home node enforces.

URL: `<node url>/secret/<owner key hash text>/<label>#<key>`, label 16 random bytes and key 32,
both unpadded base64url. The fragment never reaches a node; the node holds only
sha256(proof), so it can check a reader knows the key (and password) without learning them.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Final

import nacl.bindings as sodium

from protocols import cbor, crypto
from protocols.bats import BAT_ID_BYTES, MAX_BATS_PER_BLOCK, hashed_id
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.cryptree import Capability
from protocols.errors import AuthFailed, Corrupted, MalformedInput, TooLarge
from protocols.names import MAX_PASSWORD_BYTES

LABEL_BYTES: Final = 16  # random: 2^128 labels, not guessable, distinct per link
KEY_BYTES: Final = 32  # the fragment's secret
PROOF_BYTES: Final = 32
MAX_URL_CHARS: Final = 2048  # a long node URL and the three fixed-length parts, with room
PATH_WORD: Final = "secret"
LINK_CONTEXT: Final = b"pyrgos/link/1"
CAP_CONTEXT: Final = b"pyrgos/link-cap/1"  # followed by the label: a sealed cap cannot move
PROOF_CONTEXT: Final = b"pyrgos/link-proof/1"
# A link password is stretched by the client only: t=3 and 64 MiB keep a phone able to open a
# link in about a second, while each offline guess costs an attacker as much.
LINK_KDF_OPSLIMIT: Final = 3
LINK_KDF_MEMLIMIT: Final = 64 * 1024 * 1024
CAP_PAD: Final = 256  # read-only and writable capabilities seal to the same length
MAX_SEALED_CAP: Final = 1024
MAX_TARGET_BYTES: Final = 2048
MAX_USES: Final = 2**32 - 1
TARGET_VERSION: Final = 1
_B64URL: Final = re.compile(r"^[A-Za-z0-9_-]*$")
# Only hashed BAT ids: an inline id would put its secret in the block for anyone to use.
_HASHED_ID_PREFIX: Final = hashed_id(bytes(32))[:2]


def encode_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_b64(text: str, size: int, what: str) -> bytes:
    """Exactly `size` bytes from unpadded base64url, one spelling only."""
    if len(text) != (size * 4 + 2) // 3 or not _B64URL.match(text):
        raise MalformedInput(f"the link's {what} must be {size} bytes of unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(data) != size or encode_b64(data) != text:
        raise MalformedInput(f"the link's {what} must be {size} bytes of unpadded base64url")
    return data


@dataclass(frozen=True)
class LinkUrl:
    """A parsed secret link: the node to ask, the owner, the label and the secret key."""

    node: str  # scheme://host[:port][/base path], without a trailing slash
    owner: CID
    label: bytes
    key: bytes = field(repr=False)

    def text(self) -> str:
        return (
            f"{self.node}/{PATH_WORD}/{self.owner.text}/{encode_b64(self.label)}"
            f"#{encode_b64(self.key)}"
        )

    @property
    def id(self) -> str:
        """The link's id as its owner lists it: the label's text."""
        return encode_b64(self.label)


def format_url(node: str, owner: CID, label: bytes, key: bytes) -> str:
    """The URL of a link (checks every part as `parse_url` would)."""
    url = LinkUrl(node.rstrip("/"), owner, label, key).text()
    parse_url(url)
    return url


def parse_url(url: str) -> LinkUrl:
    """A secret link's parts; MalformedInput naming what is wrong with a bad or hostile URL."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise MalformedInput(f"a secret link is a URL of at most {MAX_URL_CHARS} characters")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise MalformedInput("a secret link is printable ASCII without spaces")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MalformedInput("a secret link starts with http:// or https:// and a node address")
    if "@" in parts.netloc:
        raise MalformedInput("a secret link must not carry a user name or password before @")
    if parts.query or "?" in url:
        raise MalformedInput("a secret link has no query (?...)")
    if url.count("#") != 1 or not parts.fragment:
        raise MalformedInput("a secret link ends with #KEY (the part after # is its key)")
    segments = parts.path.split("/")
    if len(segments) < 4 or segments[-3] != PATH_WORD:
        raise MalformedInput("a secret link's path ends with /secret/OWNER/LABEL")
    base = "/".join(segments[:-3])
    if any(s in (".", "..") for s in segments) or "//" in parts.path or "%" in parts.path:
        raise MalformedInput("a secret link's path must be plain (no '.', '..', '//' or '%')")
    try:
        owner = CID.from_text(segments[-2])
    except MalformedInput as exc:
        raise MalformedInput("a secret link's OWNER is not a key hash") from exc
    if not owner.is_identity or owner.codec != CODEC_DAG_CBOR:
        raise MalformedInput("a secret link's OWNER is not a key hash")
    label = decode_b64(segments[-1], LABEL_BYTES, "label")
    key = decode_b64(parts.fragment, KEY_BYTES, "key")
    return LinkUrl(f"{parts.scheme}://{parts.netloc}{base}", owner, label, key)


@dataclass(frozen=True)
class LinkKeys:
    """What the fragment (and the password) give: the capability's key and the node's proof."""

    cap_key: bytes = field(repr=False)
    proof: bytes = field(repr=False)

    @property
    def verifier(self) -> bytes:
        """What the node stores: sha256(proof), useless to open the capability."""
        return crypto.sha256(self.proof)


def derive(key: bytes, password: str | None, *, test_kdf: bool = False) -> LinkKeys:
    """The link's keys. A password is stretched with Argon2id under the fixed client constants
    (LINK_KDF_*; `test_kdf`, the client's own test opt-in, uses the small test profile); the
    salt is key[:16], so each link stretches its password differently."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise MalformedInput(f"a link key is {KEY_BYTES} bytes")
    if password is None:
        derived = crypto.hmac_sha256(key, LINK_CONTEXT)
    else:
        try:
            secret = password.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise MalformedInput("a link password must be valid text") from exc
        if not 1 <= len(secret) <= MAX_PASSWORD_BYTES:
            raise MalformedInput(f"a link password is 1-{MAX_PASSWORD_BYTES} bytes")
        ops, mem = (
            (crypto.KDF_TEST_OPSLIMIT, crypto.KDF_TEST_MEMLIMIT)
            if test_kdf
            else (LINK_KDF_OPSLIMIT, LINK_KDF_MEMLIMIT)
        )
        stretched = sodium.crypto_pwhash_alg(
            crypto.KEY_BYTES, secret, key[: crypto.KDF_SALT_BYTES], ops, mem, crypto.KDF_ALG
        )
        derived = crypto.hmac_sha256(key, stretched + LINK_CONTEXT)
    return LinkKeys(
        cap_key=crypto.hmac_sha256(derived, CAP_CONTEXT),
        proof=crypto.hmac_sha256(derived, PROOF_CONTEXT),
    )


def seal_capability(cap_key: bytes, label: bytes, capability: Capability) -> bytes:
    """The capability padded to CAP_PAD and sealed under cap_key, bound to the label."""
    padded = crypto.pad(cbor.encode(capability.to_cbor()), CAP_PAD)
    return crypto.seal(cap_key, padded, CAP_CONTEXT + label)


def open_capability(cap_key: bytes, label: bytes, sealed: bytes) -> Capability:
    """Undo `seal_capability`; AuthFailed for a wrong key or password."""
    try:
        padded = crypto.open_sealed(cap_key, sealed, CAP_CONTEXT + label)
    except Corrupted as exc:
        raise AuthFailed("wrong link password, or a damaged link") from exc
    return Capability.from_cbor(cbor.decode(crypto.unpad(padded), limit=MAX_SEALED_CAP))


def lookup_key(label: bytes) -> bytes:
    """The key of a link target in its owner's links CHAMP."""
    return crypto.sha256(label)


def _optional_int(
    value: object, low: int, high: int, what: str, of: str = "a link target"
) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise MalformedInput(f"{of}'s {what} must be null or an integer in [{low}, {high}]")
    return value


@dataclass(frozen=True)
class LinkTarget:
    """The block a link's label finds (dag-cbor, at most 2 KiB): `{link: 1, bats, cap,
    verifier, password, expiry, max}`. `bats` names the owner's mirror BAT, so only the owner
    and the home node read it: a reader must go through `link.get`, which counts uses."""

    bats: list[bytes]
    cap: bytes
    verifier: bytes
    password: bool
    expiry: int | None = None  # ms since the epoch, checked against the node's clock
    max_uses: int | None = None

    def to_cbor(self) -> dict[str, object]:
        return {
            "link": TARGET_VERSION,
            "bats": list(self.bats),
            "cap": self.cap,
            "verifier": self.verifier,
            "password": self.password,
            "expiry": self.expiry,
            "max": self.max_uses,
        }

    def encode(self) -> bytes:
        data = cbor.encode(self.to_cbor())
        if len(data) > MAX_TARGET_BYTES:
            raise TooLarge(f"a link target is at most {MAX_TARGET_BYTES} bytes")
        return data

    @classmethod
    def decode(cls, data: bytes) -> LinkTarget:
        if len(data) > MAX_TARGET_BYTES:
            raise TooLarge(f"a link target is at most {MAX_TARGET_BYTES} bytes")
        value = cbor.decode(data, limit=MAX_TARGET_BYTES)
        fields = {"link", "bats", "cap", "verifier", "password", "expiry", "max"}
        if not isinstance(value, dict) or set(value) != fields:
            raise MalformedInput(f"a link target is a map of exactly {sorted(fields)}")
        if type(value["link"]) is not int or value["link"] != TARGET_VERSION:
            raise MalformedInput("a link target of an unknown version")
        bats = value["bats"]
        if (
            not isinstance(bats, list)
            or not 1 <= len(bats) <= MAX_BATS_PER_BLOCK
            or not all(
                type(b) is bytes and len(b) == BAT_ID_BYTES and b[:2] == _HASHED_ID_PREFIX
                for b in bats
            )
        ):
            raise MalformedInput("a link target names 1-4 hashed BAT ids (the owner's mirror BAT)")
        cap, verifier, password = value["cap"], value["verifier"], value["password"]
        if type(cap) is not bytes or not crypto.SEAL_OVERHEAD < len(cap) <= MAX_SEALED_CAP:
            raise MalformedInput(
                f"a link target's cap is a sealed value of at most {MAX_SEALED_CAP} bytes"
            )
        if type(verifier) is not bytes or len(verifier) != crypto.HASH_BYTES:
            raise MalformedInput("a link target's verifier is 32 bytes")
        if type(password) is not bool:
            raise MalformedInput("a link target's password flag is a boolean")
        return cls(
            bats=bats,
            cap=cap,
            verifier=verifier,
            password=password,
            expiry=_optional_int(value["expiry"], 0, 2**63 - 1, "expiry"),
            max_uses=_optional_int(value["max"], 1, MAX_USES, "max"),
        )


# -- the owner's records of its links (`/<me>/.pyrgos/links`, in the owner's encrypted space) --

RECORDS_VERSION: Final = 1
MAX_LINKS: Final = 1000  # links one user keeps at once: `link list` stays one small file
# A record is at most ~4.3 KiB (a path of up to 4096 bytes and fixed-size fields).
MAX_RECORDS_BYTES: Final = MAX_LINKS * 4400
_MAX_RECORD_ITEMS: Final = MAX_LINKS * 20
_RECORD_FIELDS: Final = frozenset(
    {"label", "path", "cap_key", "created", "expiry", "max", "writable", "password", "verifier"}
)
DURATION_UNITS: Final = {"m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S: Final = 3650 * 86400  # ten years: longer is "no expiry", said plainly


@dataclass(frozen=True)
class LinkRecord:
    """What the owner keeps of one link: its label, the path it was made for, the key its
    capability is sealed under and the node's verifier (so that a rotation of the item can
    rebuild its target around the new capability; never the fragment's key or the
    password), and its limits as made."""

    label: bytes
    path: str
    cap_key: bytes = field(repr=False)
    created: int  # ms since the epoch
    expiry: int | None
    max_uses: int | None
    writable: bool
    password: bool
    verifier: bytes

    @property
    def id(self) -> str:
        return encode_b64(self.label)

    def target(self, bats: list[bytes], capability: Capability) -> LinkTarget:
        """The link's target around `capability` (a rotated item's new one)."""
        return LinkTarget(
            bats=bats,
            cap=seal_capability(self.cap_key, self.label, capability),
            verifier=self.verifier,
            password=self.password,
            expiry=self.expiry,
            max_uses=self.max_uses,
        )

    def to_cbor(self) -> dict[str, object]:
        return {
            "label": self.label,
            "path": self.path,
            "cap_key": self.cap_key,
            "created": self.created,
            "expiry": self.expiry,
            "max": self.max_uses,
            "writable": self.writable,
            "password": self.password,
            "verifier": self.verifier,
        }

    @classmethod
    def from_cbor(cls, value: object) -> LinkRecord:
        if not isinstance(value, dict) or set(value) != _RECORD_FIELDS:
            raise MalformedInput(f"a link record is a map of exactly {sorted(_RECORD_FIELDS)}")
        label, path, cap_key = value["label"], value["path"], value["cap_key"]
        if type(label) is not bytes or len(label) != LABEL_BYTES:
            raise MalformedInput(f"a link record's label is {LABEL_BYTES} bytes")
        if not isinstance(path, str) or not path.startswith("/") or len(path) > 4096:
            raise MalformedInput("a link record's path is an absolute path")
        if type(cap_key) is not bytes or len(cap_key) != crypto.KEY_BYTES:
            raise MalformedInput(f"a link record's cap_key is {crypto.KEY_BYTES} bytes")
        created = _optional_int(value["created"], 0, 2**63 - 1, "creation time", "a link record")
        if created is None:
            raise MalformedInput("a link record's creation time is an integer")
        writable, password = value["writable"], value["password"]
        if type(writable) is not bool or type(password) is not bool:
            raise MalformedInput("a link record's writable and password flags are booleans")
        verifier = value["verifier"]
        if type(verifier) is not bytes or len(verifier) != crypto.HASH_BYTES:
            raise MalformedInput("a link record's verifier is 32 bytes")
        return cls(
            label=label,
            path=path,
            cap_key=cap_key,
            created=created,
            expiry=_optional_int(value["expiry"], 0, 2**63 - 1, "expiry", "a link record"),
            max_uses=_optional_int(value["max"], 1, MAX_USES, "max", "a link record"),
            writable=writable,
            password=password,
            verifier=verifier,
        )


def encode_records(records: dict[bytes, LinkRecord]) -> bytes:
    """The records file: `{v: 1, links: [record, ...]}` in label order."""
    if len(records) > MAX_LINKS:
        raise TooLarge(f"at most {MAX_LINKS} links at once: revoke some (`pyrgos link revoke`)")
    ordered = [records[label].to_cbor() for label in sorted(records)]
    return cbor.encode({"v": RECORDS_VERSION, "links": ordered})


def decode_records(data: bytes) -> dict[bytes, LinkRecord]:
    if len(data) > MAX_RECORDS_BYTES:
        raise TooLarge(f"a links file is at most {MAX_RECORDS_BYTES} bytes")
    value = cbor.decode(data, limit=MAX_RECORDS_BYTES, max_items=_MAX_RECORD_ITEMS)
    if not isinstance(value, dict) or set(value) != {"v", "links"}:
        raise MalformedInput("a links file is a map of exactly v and links")
    if type(value["v"]) is not int or value["v"] != RECORDS_VERSION:
        raise MalformedInput("a links file of an unknown version")
    items = value["links"]
    if not isinstance(items, list) or len(items) > MAX_LINKS:
        raise MalformedInput(f"a links file lists at most {MAX_LINKS} links")
    records: dict[bytes, LinkRecord] = {}
    for item in items:
        record = LinkRecord.from_cbor(item)
        if record.label in records:
            raise MalformedInput("a links file lists a label twice")
        records[record.label] = record
    return records


def parse_duration(text: str) -> int:
    """Seconds in a duration such as 30m, 12h or 7d (1 to MAX_DURATION_S)."""
    unit = DURATION_UNITS.get(text[-1:]) if isinstance(text, str) else None
    digits = text[:-1] if unit is not None else ""
    if unit is None or not digits.isascii() or not digits.isdigit() or len(digits) > 8:
        raise MalformedInput(
            f"a duration is a number and m, h or d, such as 30m, 12h or 7d: {text!r}"[:200]
        )
    seconds = int(digits) * unit
    if not 1 <= seconds <= MAX_DURATION_S:
        raise MalformedInput("a link lasts from one minute to 3650 days")
    return seconds
