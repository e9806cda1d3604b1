"""Mirroring (DESIGN §11): the token a user hands a mirror node, and the mirror's proof that it
holds that token when it asks the user's home for the login record.

A token is `pyrgos-mirror-1:` then unpadded base64url of the CBOR `[1, username, mirror BAT]`.
The mirror BAT is the secret whose sha2-256 id (protocols/bats.py `hashed_id`) every block of
the user names, so the token reads every block of the user and nothing else.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Final

from protocols import bats, cbor
from protocols.errors import Denied, MalformedInput, TooLarge
from protocols.names import check_username

TOKEN_PREFIX: Final = "pyrgos-mirror-1:"
TOKEN_VERSION: Final = 1
MAX_TOKEN_CHARS: Final = 200  # a 32-character name and a 32-byte secret take about 100
ACCOUNT_CONTEXT: Final = b"pyrgos/mirror-account/1"
MAX_AUTH_TTL: Final = bats.MAX_AUTH_TTL  # seconds a mirror's proof may run ahead
MAX_SKEW: Final = 30  # seconds of clock difference between mirror and home


@dataclass(frozen=True)
class MirrorToken:
    """What `pyrgos mirror token` prints: the user and their mirror BAT (a secret)."""

    username: str
    secret: bytes = field(repr=False)

    @property
    def bat_id(self) -> bytes:
        return bats.hashed_id(self.secret)

    def to_text(self) -> str:
        return TOKEN_PREFIX + cbor.encode_text([TOKEN_VERSION, self.username, self.secret])

    @classmethod
    def from_text(cls, text: str) -> MirrorToken:
        """Parse a token, refusing anything that is not exactly one of the current version."""
        text = text.strip()
        if len(text) > MAX_TOKEN_CHARS or not text.startswith(TOKEN_PREFIX):
            raise MalformedInput(
                f"not a mirror token (it starts with {TOKEN_PREFIX!r}; the user makes one "
                "with `pyrgos mirror token`)"
            )
        try:
            value = cbor.decode_text(text[len(TOKEN_PREFIX) :], limit=MAX_TOKEN_CHARS)
        except TooLarge as exc:
            raise MalformedInput("not a mirror token: too long") from exc
        except MalformedInput as exc:
            raise MalformedInput(f"not a mirror token: {exc.message}") from exc
        if not (isinstance(value, list) and len(value) == 3 and value[0] == TOKEN_VERSION):
            raise MalformedInput("not a mirror token of version 1: [1, username, secret]")
        _, username, secret = value
        if not isinstance(username, str) or not isinstance(secret, bytes):
            raise MalformedInput("a mirror token holds a username and a 32-byte secret")
        check_username(username)
        if len(secret) != bats.BAT_BYTES:
            raise MalformedInput("a mirror token's secret is 32 bytes")
        return cls(username, secret)


def _account_mac(
    secret: bytes, username: str, requester: bytes, server: bytes, expiry: int
) -> bytes:
    return bats.bound_mac(secret, ACCOUNT_CONTEXT, (username.encode(), requester, server), expiry)


def account_auth(
    token: MirrorToken, requester: bytes, server: bytes, now: int
) -> tuple[bytes, int, bytes]:
    """(BAT id, expiry, mac) proving to `server` that node `requester` holds `token`."""
    expiry = now + MAX_AUTH_TTL
    mac = _account_mac(token.secret, token.username, requester, server, expiry)
    return token.bat_id, expiry, mac


def check_account_auth(
    secret: bytes | None,
    username: str,
    expiry: int,
    mac: bytes,
    *,
    requester: bytes,
    server: bytes,
    now: int,
) -> None:
    """Every rule of a mirror's login-record request, but whose BAT it is (the home checks
    that the user's blocks name it). Raises Denied unless:

    1. the request comes from a node (Noise authenticated it): a login record never goes to an
       anonymous client, who could try passwords against it offline;
    2. the BAT is one the home registered (`secret` found);
    3. the proof has not expired and does not run more than MAX_AUTH_TTL (+ skew) ahead;
    4. its mac verifies (constant time) under that secret, for this requester and this server.
    """
    if not requester:
        raise Denied("only a node that mirrors the user may ask for their login record")
    if secret is None:
        raise Denied("unknown mirror BAT")
    if expiry < now - MAX_SKEW or expiry > now + MAX_AUTH_TTL + MAX_SKEW:
        raise Denied("the mirror's proof has expired or runs too far ahead")
    expected = _account_mac(secret, username, requester, server, expiry)
    if not hmac.compare_digest(expected, mac):
        raise Denied("the mirror's proof does not verify")
