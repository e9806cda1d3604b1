"""Block access tokens (DESIGN §3): which secrets may read a block, and the read-auth check.

A BAT is 32 random bytes. A BAT id is a multihash: identity over the secret (the secret inline
in the block) or sha2-256 of it (a mirror BAT, whose secret the node keeps in a registry).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW, decode_varint, encode_varint
from protocols.errors import Denied, MalformedInput, TooLarge

BAT_BYTES: Final = 32
BAT_ID_BYTES: Final = 34  # multihash code, length, 32-byte digest
_ID_INLINE: Final = b"\x00\x20"
_ID_SHA256: Final = b"\x12\x20"
RAW_MAGIC: Final = bytes.fromhex("70797267bd0a1e55")  # private raw block marker
MAX_BATS_PER_BLOCK: Final = 4
MAX_AUTH_TTL: Final = 300  # seconds an auth may run ahead of the serving node's clock
READ_CONTEXT: Final = b"pyrgos/block-read/1"


def inline_id(secret: bytes) -> bytes:
    """The BAT id that carries its secret in the block (identity multihash)."""
    return _ID_INLINE + _check_secret(secret)


def hashed_id(secret: bytes) -> bytes:
    """The BAT id of a mirror BAT: sha2-256 of the secret, so the block does not reveal it."""
    return _ID_SHA256 + hashlib.sha256(_check_secret(secret)).digest()


def _check_secret(secret: bytes) -> bytes:
    if not isinstance(secret, bytes) or len(secret) != BAT_BYTES:
        raise MalformedInput("a BAT is 32 bytes")
    return secret


def _check_ids(value: object) -> list[bytes]:
    if not isinstance(value, list) or len(value) > MAX_BATS_PER_BLOCK:
        raise MalformedInput("a block names a list of at most 4 BAT ids")
    for bat_id in value:
        if (
            not isinstance(bat_id, bytes)
            or len(bat_id) != BAT_ID_BYTES
            or bat_id[:2] not in (_ID_INLINE, _ID_SHA256)
        ):
            raise MalformedInput("malformed BAT id")
    return value


def raw_prefix(bat_ids: list[bytes]) -> bytes:
    """The header a private raw block starts with: magic, varint length, CBOR list of ids."""
    listed = cbor.encode(_check_ids(bat_ids))
    return RAW_MAGIC + encode_varint(len(listed)) + listed


def split_raw(block: bytes | memoryview) -> tuple[list[bytes], memoryview]:
    """(BAT ids, payload) of a raw block; a block without the magic is public."""
    view = memoryview(block)
    if bytes(view[: len(RAW_MAGIC)]) != RAW_MAGIC:
        return [], view
    length, start = decode_varint(view, len(RAW_MAGIC), max_bytes=2)
    ids = _check_ids(cbor.decode(view[start : start + length]))
    return ids, view[start + length :]


def block_bat_ids(cid: CID, block: bytes | memoryview) -> list[bytes]:
    """The BAT ids a stored block names (empty: the block is public)."""
    if cid.codec == CODEC_RAW:
        return split_raw(block)[0]
    if cid.codec == CODEC_DAG_CBOR:
        value = cbor.decode(block)
        if isinstance(value, dict) and "bats" in value:
            return _check_ids(value["bats"])
        return []
    raise MalformedInput("unknown block codec")


@dataclass(frozen=True)
class ReadAuth:
    """Proof that the requester holds a BAT of a block: {bat_id, expiry, mac}."""

    bat_id: bytes
    expiry: int
    mac: bytes

    def to_cbor(self) -> dict[str, object]:
        return {"id": self.bat_id, "exp": self.expiry, "mac": self.mac}

    def to_text(self) -> str:
        """The form an HTTP block GET carries in its `auth` parameter: base64url of the CBOR."""
        return cbor.encode_text(self.to_cbor())

    @classmethod
    def from_text(cls, text: str) -> ReadAuth:
        if len(text) > 512:
            raise MalformedInput("read auth too long")
        try:
            return cls.from_cbor(cbor.decode_text(text, limit=384))
        except TooLarge as exc:
            raise MalformedInput("read auth too long") from exc

    @classmethod
    def from_cbor(cls, value: object) -> ReadAuth:
        if not isinstance(value, dict) or set(value) != {"id", "exp", "mac"}:
            raise MalformedInput("a read auth is {id, exp, mac}")
        bat_id, expiry, mac = value["id"], value["exp"], value["mac"]
        if not isinstance(expiry, int) or isinstance(expiry, bool) or expiry < 0:
            raise MalformedInput("read auth expiry must be a non-negative integer")
        if not isinstance(mac, bytes) or len(mac) != 32:
            raise MalformedInput("read auth mac must be 32 bytes")
        return cls(_check_ids([bat_id])[0], expiry, mac)


def bound_mac(secret: bytes, context: bytes, fields: Sequence[bytes], expiry: int) -> bytes:
    """HMAC-SHA-256 under `secret` of `context`, each field length-prefixed (so no two field
    lists give one message), and the expiry: a proof bound to what it names."""
    parts = [context]
    for value in fields:
        parts += (encode_varint(len(value)), value)
    parts.append(struct.pack(">Q", expiry))
    return hmac.new(secret, b"".join(parts), hashlib.sha256).digest()


def _mac(secret: bytes, cid: CID, requester: bytes, server: bytes, expiry: int) -> bytes:
    return bound_mac(secret, READ_CONTEXT, (cid.raw, requester, server), expiry)


def make_read_auth(
    secret: bytes, cid: CID, requester: bytes, server: bytes, now: int, *, hashed: bool = False
) -> ReadAuth:
    """An auth for `cid`, good at `server` for `requester` until now + 300 s."""
    bat_id = hashed_id(secret) if hashed else inline_id(secret)
    expiry = now + MAX_AUTH_TTL
    return ReadAuth(bat_id, expiry, _mac(secret, cid, requester, server, expiry))


def check_read_auth(
    cid: CID,
    block_ids: list[bytes],
    auth: ReadAuth | None,
    *,
    requester: bytes,
    server: bytes,
    now: int,
    mirror_secret: Callable[[bytes], bytes | None],
    also: Sequence[bytes] = (),
) -> None:
    """All the rules of a block read, in one place. Raises Denied unless the read is allowed.

    1. A block that names no BAT is public.
    2. Otherwise the auth must name one of the block's BAT ids,
    3. must not have expired and must not run more than 300 s ahead,
    4. and its mac must verify (constant time) under that BAT's secret: inline in the id, or
       found in the node's registry of mirror BATs,
    5. made out to `server`, or to one of `also`: the homes of the users whose copy this node
       keeps and whose mirror BAT the block names (a mirror answers for their home).
    """
    if not block_ids:
        return
    if auth is None:
        raise Denied("this block is private: a read auth (BAT) is required")
    if not any(hmac.compare_digest(auth.bat_id, bat_id) for bat_id in block_ids):
        raise Denied("the BAT presented is not one of this block's")
    if auth.expiry < now:
        raise Denied("the read auth has expired")
    if auth.expiry > now + MAX_AUTH_TTL + 30:  # 30 s of clock skew
        raise Denied("the read auth expires too far in the future")
    if auth.bat_id.startswith(_ID_INLINE):
        secret: bytes | None = auth.bat_id[2:]
    else:
        secret = mirror_secret(auth.bat_id)
        if secret is None:
            raise Denied("unknown mirror BAT")
    assert secret is not None
    for node in (server, *also):
        expected = _mac(secret, cid, requester, node, auth.expiry)
        if hmac.compare_digest(expected, auth.mac):
            return
    raise Denied("the read auth does not verify")
