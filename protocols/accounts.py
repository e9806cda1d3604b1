"""Accounts (DESIGN §7): login data, and requests authenticated by a signed current time.

Login data (identity and boxing secrets, home capability, mirror BAT) is padded to 4096 and
sealed under the password-derived login root key; the node keeps it and hands it only to a
request signed by the password-derived login key within five minutes of its clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocols import cbor, crypto
from protocols.crypto import SigningKey, VerifyKey
from protocols.cryptree import Capability
from protocols.errors import AuthFailed, Corrupted, InvalidSignature, MalformedInput

LOGIN: Final = b"pyrgos/login/1"
UPDATE_LOGIN: Final = b"pyrgos/login-update/1"
USAGE: Final = b"pyrgos/usage/1"
MAX_SKEW_MS: Final = 5 * 60 * 1000  # signed times are good for ±5 minutes
MAX_LOGIN_DATA: Final = 16 * 1024
_DATA_CONTEXT: Final = b"pyrgos/login-data/1"
LOGIN_DATA_VERSION: Final = 1


def sign_timed(key: SigningKey, context: bytes, payload: list[object], now_ms: int) -> bytes:
    """A signature over `payload` and the signer's current time, for a one-shot request."""
    return key.sign(cbor.encode([*payload, now_ms]), context)


def check_timed(
    key: VerifyKey,
    context: bytes,
    payload: list[object],
    signed_ms: int,
    signature: bytes,
    now_ms: int,
) -> None:
    """Raise AuthFailed unless `signature` signs `payload` at a time within ±5 minutes of now."""
    if not isinstance(signed_ms, int) or isinstance(signed_ms, bool):
        raise MalformedInput("signed time must be an integer of milliseconds")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise MalformedInput("signature must be 64 bytes")
    if abs(now_ms - signed_ms) > MAX_SKEW_MS:
        raise AuthFailed("the request's signed time is more than 5 minutes off: check the clock")
    try:
        key.verify(cbor.encode([*payload, signed_ms]), signature, context)
    except InvalidSignature as exc:
        raise AuthFailed("wrong password (the login signature does not verify)") from exc


@dataclass(frozen=True)
class LoginData:
    """What a password unlocks."""

    identity: SigningKey
    boxing: crypto.BoxingKey
    home: Capability
    mirror_bat: bytes

    def seal(self, root_key: bytes, username: str) -> bytes:
        plain = cbor.encode(
            {
                "v": LOGIN_DATA_VERSION,
                "identity": self.identity.seed,
                "boxing": self.boxing.seed,
                "home": self.home.to_cbor(),
                "mirror": self.mirror_bat,
            }
        )
        padded = crypto.pad(plain, crypto.PAD_CONTENT)
        return crypto.seal(root_key, padded, _DATA_CONTEXT + username.encode())

    @classmethod
    def open(cls, root_key: bytes, username: str, sealed: bytes) -> LoginData:
        try:
            plain = crypto.open_sealed(root_key, sealed, _DATA_CONTEXT + username.encode())
        except Corrupted as exc:
            raise AuthFailed("wrong password (the login data does not decrypt)") from exc
        value = cbor.decode(crypto.unpad(plain), limit=MAX_LOGIN_DATA)
        version = value.get("v") if isinstance(value, dict) else None
        if type(version) is not int or version != LOGIN_DATA_VERSION:
            raise Corrupted("login data of an unknown version")
        try:
            return cls(
                identity=SigningKey.from_seed(value["identity"]),
                boxing=crypto.BoxingKey.from_seed(value["boxing"]),
                home=Capability.from_cbor(value["home"]),
                mirror_bat=value["mirror"],
            )
        except (KeyError, TypeError, ValueError, MalformedInput) as exc:
            raise Corrupted("malformed login data") from exc
