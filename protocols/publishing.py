"""Publishing (DESIGN §10): the public-entry block of the identity WriterData's `public` CHAMP.

The CHAMP is keyed by blake2b-256 of the published path (normalised: "/alice/public/x"); each
value is a public-entry block `{public: 1, path, cap}` (at most 2 KiB) naming a read-only
capability, so anyone can read the published item without an account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocols import cbor, crypto
from protocols.cryptree import Capability
from protocols.errors import InvalidName, MalformedInput, TooLarge
from protocols.names import check_username, split_path

ENTRY_VERSION: Final = 1
MAX_ENTRY_BYTES: Final = 2048  # a path of a few hundred bytes and a read-only capability


def normalise(path: str) -> str:
    """The one spelling of a published path: "/" + names joined by "/", the first a username."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidName("a published path is absolute: /USER/...")
    names = split_path(path)
    if not names:
        raise InvalidName("a published path names a user and an item: /USER/...")
    check_username(names[0])
    return "/" + "/".join(names)


def path_key(path: str) -> bytes:
    """The key of a published path in the `public` CHAMP."""
    return crypto.blake2b_256(normalise(path).encode("utf-8"))


@dataclass(frozen=True)
class PublicEntry:
    """A published item: its normalised path and a read-only capability."""

    path: str
    cap: Capability

    def to_cbor(self) -> dict[str, object]:
        return {"public": ENTRY_VERSION, "path": self.path, "cap": self.cap.to_cbor()}

    def encode(self) -> bytes:
        data = cbor.encode(self.to_cbor())
        if len(data) > MAX_ENTRY_BYTES:
            raise TooLarge(f"a public entry is at most {MAX_ENTRY_BYTES} bytes")
        return data

    @classmethod
    def decode(cls, data: bytes) -> PublicEntry:
        if len(data) > MAX_ENTRY_BYTES:
            raise TooLarge(f"a public entry is at most {MAX_ENTRY_BYTES} bytes")
        value = cbor.decode(data, limit=MAX_ENTRY_BYTES)
        if not isinstance(value, dict) or set(value) != {"public", "path", "cap"}:
            raise MalformedInput("a public entry is a map of exactly public, path and cap")
        if type(value["public"]) is not int or value["public"] != ENTRY_VERSION:
            raise MalformedInput("a public entry of an unknown version")
        path = value["path"]
        try:
            valid = isinstance(path, str) and normalise(path) == path
        except InvalidName:
            valid = False
        if not valid:
            raise MalformedInput("a public entry's path must be normalised (/USER/...)")
        cap = Capability.from_cbor(value["cap"])
        if cap.writable:
            raise MalformedInput("a public entry's capability must be read-only")
        return cls(path, cap)
