"""Node ids (DESIGN §1): libp2p peer ids of Ed25519 keys, read and written without libp2p.

A peer id is base58btc over the identity multihash of the libp2p protobuf `PublicKey`
`{Type: Ed25519, Data: 32 bytes}`, so the id carries the key that signs for the node.
"""

from __future__ import annotations

import functools
from typing import Final

from protocols.crypto import SIGN_PUBLIC_BYTES, VerifyKey
from protocols.errors import MalformedInput

BASE58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_INDEX: Final = {char: i for i, char in enumerate(BASE58_ALPHABET)}
# identity multihash (0x00), length 36, then protobuf field 1 (varint) = 1 (Ed25519) and
# field 2 (bytes) of length 32: the one form libp2p gives every Ed25519 key.
ED25519_PEER_PREFIX: Final = bytes([0x00, 0x24, 0x08, 0x01, 0x12, SIGN_PUBLIC_BYTES])
MAX_PEER_ID_CHARS: Final = 64  # an Ed25519 peer id is 52; bounds the big-integer work


def base58_encode(data: bytes) -> str:
    """Bitcoin-alphabet base58: each leading zero byte is a '1', the rest a base-58 number."""
    zeros = len(data) - len(data.lstrip(b"\x00"))
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(BASE58_ALPHABET[digit])
    return "1" * zeros + "".join(reversed(digits))


def base58_decode(text: str) -> bytes:
    """Undo `base58_encode` (a bijection, so every text has exactly one meaning)."""
    number = 0
    for char in text:
        digit = _BASE58_INDEX.get(char)
        if digit is None:
            raise MalformedInput(f"{char!r} is not a base58 character")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * zeros + number.to_bytes((number.bit_length() + 7) // 8, "big")


def peer_id_of(key: VerifyKey) -> str:
    """The libp2p peer id of a node's Ed25519 key."""
    return base58_encode(ED25519_PEER_PREFIX + key.raw)


def peer_key(peer_id: str) -> VerifyKey:
    """The Ed25519 key a peer id carries; MalformedInput for anything else (RSA, CIDs, junk)."""
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= MAX_PEER_ID_CHARS:
        raise MalformedInput("a node id is a base58 libp2p peer id of an Ed25519 key")
    return _peer_key(peer_id)


@functools.lru_cache(maxsize=4096)  # a PKI sync meets the same few home nodes again and again
def _peer_key(peer_id: str) -> VerifyKey:
    raw = base58_decode(peer_id)
    if len(raw) != len(ED25519_PEER_PREFIX) + SIGN_PUBLIC_BYTES or not raw.startswith(
        ED25519_PEER_PREFIX
    ):
        raise MalformedInput(f"{peer_id!r} is not the peer id of an Ed25519 node key")
    return VerifyKey(raw[len(ED25519_PEER_PREFIX) :])


def check_peer_id(peer_id: str) -> str:
    """Return `peer_id` if it names an Ed25519 node key, else raise MalformedInput."""
    peer_key(peer_id)
    return peer_id
