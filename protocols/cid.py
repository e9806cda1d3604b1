"""Content identifiers: CIDv1 over sha2-256 or identity multihashes, and unsigned varints.

A CID is immutable and compares by its binary form. Text form is multibase base32 lower
(`b` prefix), the IPFS default.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

from protocols.errors import MalformedInput

CODEC_RAW: Final = 0x55  # encrypted fragments
CODEC_DAG_CBOR: Final = 0x71  # every structured block
MH_IDENTITY: Final = 0x00
MH_SHA2_256: Final = 0x12
MAX_IDENTITY_DIGEST: Final = 36  # longer keys are hashed; see DESIGN §1
_CODECS: Final = frozenset({CODEC_RAW, CODEC_DAG_CBOR})
_SHA256_PREFIXES: Final = frozenset(bytes([1, codec, MH_SHA2_256, 32]) for codec in _CODECS)
_KEY_HASH_PREFIX: Final = bytes([1, CODEC_DAG_CBOR, MH_IDENTITY, MAX_IDENTITY_DIGEST])


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128, as multiformats and our frame lengths use."""
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | memoryview, offset: int = 0, max_bytes: int = 9) -> tuple[int, int]:
    """Decode a minimal unsigned varint at `offset`; return (value, next offset)."""
    value = 0
    for i in range(max_bytes):
        if offset + i >= len(data):
            raise MalformedInput("truncated varint")
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise MalformedInput("non-minimal varint")
            return value, offset + i + 1
    raise MalformedInput("varint too long")


class CID:
    """A CIDv1: codec plus multihash, held as its binary form."""

    __slots__ = ("_hash", "codec", "digest", "mh_code", "raw")

    def __init__(self, codec: int, mh_code: int, digest: bytes) -> None:
        if codec not in _CODECS:
            raise MalformedInput(f"unsupported CID codec 0x{codec:x}")
        if mh_code == MH_SHA2_256:
            if len(digest) != 32:
                raise MalformedInput("sha2-256 digest must be 32 bytes")
        elif mh_code == MH_IDENTITY:
            if len(digest) > MAX_IDENTITY_DIGEST:
                raise MalformedInput("identity digest too long")
        else:
            raise MalformedInput(f"unsupported multihash 0x{mh_code:x}")
        self.codec = codec
        self.mh_code = mh_code
        self.digest = bytes(digest)
        self.raw = (
            b"\x01"
            + encode_varint(codec)
            + encode_varint(mh_code)
            + encode_varint(len(digest))
            + self.digest
        )
        self._hash = hash(self.raw)

    @classmethod
    def of(cls, codec: int, data: bytes | memoryview) -> CID:
        """The sha2-256 CID of `data` under `codec`."""
        return cls(codec, MH_SHA2_256, hashlib.sha256(data).digest())

    @classmethod
    def from_bytes(cls, raw: bytes) -> CID:
        if len(raw) == 36 and raw[:4] in _SHA256_PREFIXES:  # the common case, parsed at a glance
            cid = cls.__new__(cls)
            cid.codec, cid.mh_code, cid.digest = raw[1], MH_SHA2_256, raw[4:]
            cid.raw, cid._hash = raw, hash(raw)
            return cid
        if len(raw) == 40 and raw[:4] == _KEY_HASH_PREFIX:  # an inlined key (key hashes)
            cid = cls.__new__(cls)
            cid.codec, cid.mh_code, cid.digest = CODEC_DAG_CBOR, MH_IDENTITY, raw[4:]
            cid.raw, cid._hash = raw, hash(raw)
            return cid
        version, pos = decode_varint(raw)
        if version != 1:
            raise MalformedInput("only CIDv1 is supported")
        codec, pos = decode_varint(raw, pos)
        mh_code, pos = decode_varint(raw, pos)
        length, pos = decode_varint(raw, pos)
        if len(raw) - pos != length:
            raise MalformedInput("CID digest length mismatch")
        return cls(codec, mh_code, raw[pos:])

    @classmethod
    def from_text(cls, text: str) -> CID:
        if not text.startswith("b") or len(text) > 200:
            raise MalformedInput("CID text must be multibase base32 (prefix 'b')")
        body = text[1:].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError as exc:
            raise MalformedInput("CID text is not valid base32") from exc
        cid = cls.from_bytes(raw)
        if cid.text != text:  # upper case, padding or stray trailing bits: one CID, one text
            raise MalformedInput("CID text must be base32 lower case without padding")
        return cid

    @property
    def text(self) -> str:
        return "b" + base64.b32encode(self.raw).decode("ascii").rstrip("=").lower()

    @property
    def is_identity(self) -> bool:
        return self.mh_code == MH_IDENTITY

    def matches(self, data: bytes | memoryview) -> bool:
        """True when `data` is the content this CID names (constant-time digest compare)."""
        if self.mh_code == MH_IDENTITY:
            return hmac.compare_digest(self.digest, bytes(data))
        return hmac.compare_digest(self.digest, hashlib.sha256(data).digest())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CID) and other.raw == self.raw

    def __hash__(self) -> int:
        return self._hash

    def __lt__(self, other: CID) -> bool:
        return self.raw < other.raw

    def __repr__(self) -> str:
        return f"CID({self.text})"

    def __str__(self) -> str:
        return self.text
