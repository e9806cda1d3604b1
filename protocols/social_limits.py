"""The sizes and limits of the follow-request inbox (DESIGN §10) that a node enforces.

A sealed follow request is its plaintext padded to exactly FOLLOW_PLAIN_BYTES, boxed with
`crypto.box` (X-Wing ciphertext, nonce, tag): every stored request has the same length.
"""

from __future__ import annotations

from typing import Final

from protocols import crypto

FOLLOW_PLAIN_BYTES: Final = 1024  # a multiple of PAD_FOLLOW (512) that every valid request fits
# 1120 (X-Wing ciphertext) + 24 (nonce) + 1024 + 16 (tag) = 2184 bytes
FOLLOW_SEALED_BYTES: Final = (
    crypto.XWING_CIPHERTEXT_BYTES + crypto.SEAL_OVERHEAD + FOLLOW_PLAIN_BYTES
)
INBOX_ID_BYTES: Final = 16  # sha256(request)[:16]: 2^64 work to collide two requests
MAX_PENDING: Final = 1000  # requests waiting per target: bounds what strangers can store
# Sends a day from one client address (a person follows a few people a day), and from one
# calling node, which relays the sends of all its users.
SENDS_PER_SOURCE: Final = 200
SENDS_PER_PEER: Final = 2000
