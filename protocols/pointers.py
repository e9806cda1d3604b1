"""Signed mutable pointers (DESIGN §4): one per writer, updated by compare-and-swap.

An update is `[previous CID | null, new CID, sequence]` signed by the writer. Every rule a node
applies before storing one is in `check_update`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import SigningKey, VerifyKey
from protocols.errors import Conflict, MalformedInput, StaleRoot

CONTEXT: Final = b"pyrgos/pointer/1"
MAX_SEQUENCE: Final = 2**63 - 1


@dataclass(frozen=True)
class PointerUpdate:
    """A signed pointer update as stored and sent: CBOR `[[previous, new, sequence], signature]`."""

    previous: CID | None
    new: CID
    sequence: int
    signature: bytes

    @property
    def signed_part(self) -> bytes:
        return cbor.encode([self.previous, self.new, self.sequence])

    @classmethod
    def create(
        cls, writer: SigningKey, previous: CID | None, new: CID, sequence: int
    ) -> PointerUpdate:
        body = cbor.encode([previous, new, sequence])
        return cls(previous, new, sequence, writer.sign(body, CONTEXT))

    def to_cbor(self) -> list[object]:
        return [[self.previous, self.new, self.sequence], self.signature]

    def encode(self) -> bytes:
        return cbor.encode(self.to_cbor())

    @classmethod
    def from_cbor(cls, value: object) -> PointerUpdate:
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)):
            raise MalformedInput("a pointer update is [[previous, new, sequence], signature]")
        body, signature = value
        if len(body) != 3:
            raise MalformedInput("a pointer update is [[previous, new, sequence], signature]")
        previous, new, sequence = body
        if previous is not None and not isinstance(previous, CID):
            raise MalformedInput("pointer previous must be a CID or null")
        if not isinstance(new, CID) or new.codec != CODEC_DAG_CBOR or new.is_identity:
            raise MalformedInput("pointer target must be a dag-cbor CID")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise MalformedInput("pointer sequence must be an integer")
        if not 1 <= sequence <= MAX_SEQUENCE:
            raise MalformedInput("pointer sequence must be at least 1")
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise MalformedInput("pointer signature must be 64 bytes")
        return cls(previous, new, sequence, signature)

    @classmethod
    def decode(cls, data: bytes) -> PointerUpdate:
        return cls.from_cbor(cbor.decode(data, limit=512))


def check_update(
    writer: VerifyKey,
    current: PointerUpdate | None,
    proposed: PointerUpdate,
    target_controller: CID | None,
) -> None:
    """All the rules of a pointer write, in one place; raises unless `proposed` may be stored.

    1. The signature verifies with the writer's key.
    2. Compare-and-swap: `previous` equals the stored target (null for a first write); checked
       before the sequence, so a writer that lost a race is told to re-read and retry.
    3. The sequence strictly increases (a replayed or reordered update is refused).
    4. The new target is a WriterData block already stored whose `controller` is the writer
       (`target_controller` is what the node read from it, None if it is not stored).
    """
    writer.verify(proposed.signed_part, proposed.signature, CONTEXT)
    stored_target = current.new if current is not None else None
    stored_sequence = current.sequence if current is not None else 0
    if proposed.previous != stored_target:
        raise StaleRoot("pointer compare-and-swap failed: the pointer has moved on (stale root)")
    if proposed.sequence <= stored_sequence:
        raise Conflict(
            f"pointer update sequence {proposed.sequence} is not after {stored_sequence}: "
            "replayed or out of order"
        )
    if target_controller is None:
        raise Conflict("the pointer target is not a stored WriterData block")
    if target_controller != writer.key_hash():
        raise Conflict("the pointer target's controller is not this writer")
