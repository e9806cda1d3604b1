"""Username claims (DESIGN §7): a username bound to an identity key and a home node.

A claim is signed by the identity key it names. This node orders claims first come, first
served; the replicated, hash-chained log of claims is built on these records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocols import cbor
from protocols.cid import CID
from protocols.crypto import SigningKey, VerifyKey
from protocols.errors import MalformedInput
from protocols.names import check_username

CONTEXT: Final = b"pyrgos/pki-claim/1"
CLAIM_LIFETIME: Final = 365 * 24 * 3600  # seconds; renewed by the client before it runs out
MAX_NODE_ID: Final = 128


@dataclass(frozen=True)
class Claim:
    """`username` belongs to the `identity` key and is homed on node `home` until `expiry`."""

    username: str
    identity: CID
    home: str
    expiry: int
    signature: bytes

    @property
    def signed_part(self) -> bytes:
        return cbor.encode([self.username, self.identity, self.home, self.expiry])

    @classmethod
    def create(cls, identity: SigningKey, username: str, home: str, expiry: int) -> Claim:
        key_hash = identity.public.key_hash()
        body = cbor.encode([username, key_hash, home, expiry])
        return cls(username, key_hash, home, expiry, identity.sign(body, CONTEXT))

    def verify(self) -> None:
        """Raise unless the claim is well formed and signed by the identity it names."""
        check_username(self.username)
        VerifyKey.from_key_hash(self.identity).verify(self.signed_part, self.signature, CONTEXT)

    def to_cbor(self) -> dict[str, object]:
        return {
            "username": self.username,
            "identity": self.identity,
            "home": self.home,
            "expiry": self.expiry,
            "sig": self.signature,
        }

    @classmethod
    def from_cbor(cls, value: object) -> Claim:
        keys = {"username", "identity", "home", "expiry", "sig"}
        if not isinstance(value, dict) or set(value) != keys:
            raise MalformedInput("a claim is {username, identity, home, expiry, sig}")
        username, identity, home = value["username"], value["identity"], value["home"]
        expiry, signature = value["expiry"], value["sig"]
        if not isinstance(username, str) or not isinstance(identity, CID):
            raise MalformedInput("malformed claim username or identity")
        if not isinstance(home, str) or not 0 < len(home) <= MAX_NODE_ID:
            raise MalformedInput("malformed claim home node id")
        if not isinstance(expiry, int) or isinstance(expiry, bool) or expiry < 0:
            raise MalformedInput("malformed claim expiry")
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise MalformedInput("malformed claim signature")
        return cls(username, identity, home, expiry, signature)
