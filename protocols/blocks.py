"""Signed block writes (DESIGN §4): a writer signs the CID of every block it puts."""

from __future__ import annotations

from typing import Final

from protocols.cid import CID
from protocols.crypto import SigningKey, VerifyKey

PUT_CONTEXT: Final = b"pyrgos/block-put/1"
MAX_BLOCKS_PER_PUT: Final = 64  # bounds the work of one signed put


def sign_put(writer: SigningKey, cid: CID) -> bytes:
    return writer.sign(cid.raw, PUT_CONTEXT)


def verify_put(writer: VerifyKey, cid: CID, signature: bytes) -> None:
    """Raise InvalidSignature unless `writer` signed the put of `cid`."""
    writer.verify(cid.raw, signature, PUT_CONTEXT)
