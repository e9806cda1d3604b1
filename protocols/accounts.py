"""Accounts (DESIGN §7): login data, requests authenticated by a signed current time, node
sessions and the throttling of failed logins.

Login data (identity and boxing secrets, home capability, mirror BAT) is padded to 4096 and
sealed under the password-derived login root key; the node keeps it and hands it only to a
request signed by the password-derived login key within five minutes of its clock.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from protocols import cbor, crypto
from protocols.crypto import SigningKey, VerifyKey
from protocols.cryptree import Capability
from protocols.errors import AuthFailed, Corrupted, InvalidSignature, MalformedInput, RateLimited

LOGIN: Final = b"pyrgos/login/1"
UPDATE_LOGIN: Final = b"pyrgos/login-update/1"
USAGE: Final = b"pyrgos/usage/1"
SOCIAL: Final = b"pyrgos/social/1"  # social.list and social.remove: the owner reads its inbox
MAX_SKEW_MS: Final = 5 * 60 * 1000  # signed times are good for ±5 minutes
MAX_LOGIN_DATA: Final = 16 * 1024
_DATA_CONTEXT: Final = b"pyrgos/login-data/1"
LOGIN_DATA_VERSION: Final = 1

SESSION_TOKEN_BYTES: Final = 32  # random: a token cannot be guessed, only stolen
SESSION_LIFETIME: Final = 30 * 24 * 3600  # seconds; a device logs in again after a month
MAX_SESSIONS: Final = 64  # live sessions per user; a new login past it ends the oldest

# Failed logins (DESIGN §7): the first few are free (typos), then each further one doubles the
# wait, up to a cap that still lets the owner in within a quarter of an hour; a key with no
# failure for a day starts afresh. Counted per username (at its home) and per source (the
# HTTP client's address or the calling peer), in memory: a restart forgets them.
FREE_FAILURES: Final = 5
FIRST_DELAY: Final = 1.0  # seconds after the first failure past the free ones
MAX_DELAY: Final = 15 * 60.0  # seconds: at most ~100 guesses a day per username or source
FORGET_AFTER: Final = 24 * 3600.0  # seconds without a failure after which a key is forgotten
MAX_THROTTLED_KEYS: Final = 100_000  # bounds the memory; the least recent keys go first


def session_id(token: object) -> bytes:
    """What the node stores for a session token: its hash, so a copy of the store (a backup, a
    stolen disk) holds no token that could be presented."""
    if not isinstance(token, bytes) or len(token) != SESSION_TOKEN_BYTES:
        raise MalformedInput(f"a session token is {SESSION_TOKEN_BYTES} bytes")
    return hashlib.sha256(b"pyrgos/session/1" + token).digest()


class LoginThrottle:
    """Failed logins per key, and when each key may try again (sans I/O: the caller gives the
    time). `check` before verifying a login, then `failed` or `succeeded` after."""

    def __init__(self, free: int = FREE_FAILURES, max_keys: int = MAX_THROTTLED_KEYS) -> None:
        self._free = free
        self._max_keys = max_keys
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (n, last)

    def wait(self, key: str, now: float) -> float:
        """Seconds `key` must wait before its next attempt (0: it may try now)."""
        entry = self._failures.get(key)
        if entry is None:
            return 0.0
        count, last = entry
        if now - last >= FORGET_AFTER:
            del self._failures[key]
            return 0.0
        if count < self._free:
            return 0.0
        delay = min(FIRST_DELAY * 2.0 ** (count - self._free), MAX_DELAY)
        return max(0.0, last + delay - now)

    def check(self, keys: list[str], now: float, what: str) -> None:
        """Raise RateLimited, naming the wait, when any of `keys` must still wait."""
        wait = max((self.wait(key, now) for key in keys), default=0.0)
        if wait > 0:
            raise RateLimited(
                f"too many failed logins {what}: try again in {math.ceil(wait)} seconds"
            )

    def failed(self, keys: list[str], now: float) -> None:
        for key in keys:
            self.wait(key, now)  # forgets a key quiet for FORGET_AFTER
            count = self._failures.pop(key, (0, now))[0]
            self._failures[key] = (count + 1, now)  # moved to the end: the most recent
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, keys: list[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)


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

    def to_cbor(self) -> dict[str, object]:
        return {
            "v": LOGIN_DATA_VERSION,
            "identity": self.identity.seed,
            "boxing": self.boxing.seed,
            "home": self.home.to_cbor(),
            "mirror": self.mirror_bat,
        }

    def seal(self, root_key: bytes, username: str) -> bytes:
        padded = crypto.pad(cbor.encode(self.to_cbor()), crypto.PAD_CONTENT)
        return crypto.seal(root_key, padded, _DATA_CONTEXT + username.encode())

    @classmethod
    def open(cls, root_key: bytes, username: str, sealed: bytes) -> LoginData:
        try:
            plain = crypto.open_sealed(root_key, sealed, _DATA_CONTEXT + username.encode())
        except Corrupted as exc:
            raise AuthFailed("wrong password (the login data does not decrypt)") from exc
        return cls.from_cbor(cbor.decode(crypto.unpad(plain), limit=MAX_LOGIN_DATA))

    @classmethod
    def from_cbor(cls, value: object) -> LoginData:
        if not isinstance(value, dict) or type(value.get("v")) is not int:
            raise Corrupted("login data of an unknown version")
        if value["v"] != LOGIN_DATA_VERSION:
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
