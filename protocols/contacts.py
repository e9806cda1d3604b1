"""Trusted keys (DESIGN §7): the TOFU keystore of a user's contacts and their safety numbers.

The first identity key seen for a username is trusted; a different one later is reported as
changed, and refused for sharing and accepting until the user compares fingerprints out of
band and verifies it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Final, Literal

from protocols import cbor
from protocols.cid import CID
from protocols.errors import Denied, InvalidName, MalformedInput, TooLarge
from protocols.names import check_username

STORE_VERSION: Final = 1
MAX_CONTACTS: Final = 10_000  # the same bound as the social state's
# A record is under 128 bytes encoded (name, identity key hash, flag, time).
MAX_STORE_BYTES: Final = 2 * 1024 * 1024
_MAX_STORE_ITEMS: Final = 10 * MAX_CONTACTS  # 8 items a record, and the outer map

# Safety numbers, after the scheme Signal established: 5,200 rounds of SHA-512 make a
# brute-force search for a key with a colliding number costly.
FINGERPRINT_VERSION: Final = b"\x00\x01"  # the first bytes hashed: a new scheme gets new numbers
FINGERPRINT_ROUNDS: Final = 5_200
FINGERPRINT_GROUPS: Final = 12  # 12 groups of 5 digits: about 199 bits, shown 5 at a time
FINGERPRINT_GROUP_DIGITS: Final = 5
FINGERPRINT_DIGITS: Final = FINGERPRINT_GROUPS * FINGERPRINT_GROUP_DIGITS  # 60
_GROUP_BYTES: Final = 5  # 40 bits reduced mod 10^5 per group: 60 of the 64 hash bytes

Verdict = Literal["new", "same", "changed"]


def fingerprint(identity: CID) -> str:
    """The safety number of an identity key hash: 60 digits in 12 space-separated groups."""
    key = identity.raw
    digest = hashlib.sha512(FINGERPRINT_VERSION + key).digest()
    for _ in range(FINGERPRINT_ROUNDS):
        digest = hashlib.sha512(digest + key).digest()
    groups = []
    for i in range(FINGERPRINT_GROUPS):
        chunk = int.from_bytes(digest[i * _GROUP_BYTES : (i + 1) * _GROUP_BYTES], "big")
        groups.append(f"{chunk % 10**FINGERPRINT_GROUP_DIGITS:0{FINGERPRINT_GROUP_DIGITS}d}")
    return " ".join(groups)


def normalise_fingerprint(text: str) -> str:
    """The 60 digits of a typed fingerprint, spaces ignored; MalformedInput otherwise."""
    digits = "".join(text.split())
    if len(digits) != FINGERPRINT_DIGITS or not (digits.isascii() and digits.isdigit()):
        raise MalformedInput(
            f"a fingerprint is {FINGERPRINT_DIGITS} digits (spaces between groups are ignored)"
        )
    return digits


def matches(identity: CID, typed: str) -> bool:
    """Whether `typed` (spaces ignored) is the fingerprint of `identity`."""
    return normalise_fingerprint(typed) == fingerprint(identity).replace(" ", "")


@dataclass(frozen=True)
class TrustedKey:
    """The identity key recorded for a contact, whether it was verified out of band, and
    when it was first seen (ms)."""

    identity: CID
    verified: bool
    first_seen: int

    def to_cbor(self) -> dict[str, object]:
        return {"identity": self.identity, "verified": self.verified, "first_seen": self.first_seen}

    @classmethod
    def from_cbor(cls, value: object) -> TrustedKey:
        if not isinstance(value, dict) or set(value) != {"identity", "verified", "first_seen"}:
            raise MalformedInput("a trusted key is {identity, verified, first_seen}")
        identity, verified, first_seen = value["identity"], value["verified"], value["first_seen"]
        if not isinstance(identity, CID) or not identity.is_identity:
            raise MalformedInput("a trusted key's identity must be an identity key hash")
        if not isinstance(verified, bool):
            raise MalformedInput("a trusted key's verified flag must be a boolean")
        if type(first_seen) is not int or first_seen < 0:
            raise MalformedInput("a trusted key's first_seen must be milliseconds")
        return cls(identity, verified, first_seen)


@dataclass(frozen=True)
class KeyStore:
    """username -> TrustedKey; changed only through `check_contact` and `verify`."""

    keys: dict[str, TrustedKey]

    def encode(self) -> bytes:
        return cbor.encode(
            {"v": STORE_VERSION, "keys": {name: key.to_cbor() for name, key in self.keys.items()}}
        )

    @classmethod
    def decode(cls, data: bytes) -> KeyStore:
        value = cbor.decode(data, limit=MAX_STORE_BYTES, max_items=_MAX_STORE_ITEMS)
        if not isinstance(value, dict) or set(value) != {"v", "keys"}:
            raise MalformedInput("a keystore is {v, keys}")
        if type(value["v"]) is not int or value["v"] != STORE_VERSION:
            raise MalformedInput("a keystore of an unknown version")
        keys = value["keys"]
        if not isinstance(keys, dict) or len(keys) > MAX_CONTACTS:
            raise MalformedInput(f"a keystore holds at most {MAX_CONTACTS} keys")
        store: dict[str, TrustedKey] = {}
        for name, record in keys.items():
            try:
                store[check_username(name)] = TrustedKey.from_cbor(record)
            except InvalidName as exc:
                raise MalformedInput(f"a keystore name is not a username: {exc.message}") from None
        return cls(store)


def check_contact(
    store: KeyStore, username: str, identity: CID, now: int
) -> tuple[KeyStore, Verdict]:
    """The TOFU rule, whole: an unknown contact's key is recorded (new, unverified); the
    recorded key is `same`; any other key is `changed` and leaves the store as it was."""
    known = store.keys.get(username)
    if known is None:
        if len(store.keys) >= MAX_CONTACTS:
            raise TooLarge(f"the keystore holds at most {MAX_CONTACTS} contacts")
        added = TrustedKey(identity, verified=False, first_seen=now)
        return KeyStore({**store.keys, username: added}), "new"
    if known.identity == identity:
        return store, "same"
    return store, "changed"


def verify(store: KeyStore, username: str, identity: CID, typed: str, now: int) -> KeyStore:
    """Record `identity` (the key the PKI names now) as verified for `username` when `typed`
    is its fingerprint; Denied, store unchanged, when it is not."""
    if not matches(identity, typed):
        raise Denied(
            f"that fingerprint is not the one of {username}'s current identity key: compare"
            " it again with them, in person or over a channel you trust"
        )
    known = store.keys.get(username)
    if known is not None and known.identity == identity:
        return KeyStore({**store.keys, username: replace(known, verified=True)})
    if known is None and len(store.keys) >= MAX_CONTACTS:
        raise TooLarge(f"the keystore holds at most {MAX_CONTACTS} contacts")
    return KeyStore({**store.keys, username: TrustedKey(identity, True, now)})
