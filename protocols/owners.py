"""Owner proofs (DESIGN §4): a sub-writer W's signed statement that it belongs to owner O.

W signs `[O, W]`; O lists the proof in its identity WriterData `owned`, and O's signed pointer
update is O's consent. Both signatures together let a home node register W -> O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import SigningKey, VerifyKey
from protocols.errors import InvalidSignature, MalformedInput, TooLarge
from protocols.writerdata import MAX_OWNED, MAX_OWNER_PROOF

CONTEXT: Final = b"pyrgos/owner-proof/1"


def _key_hash(value: object, what: str) -> CID:
    if not isinstance(value, CID) or not value.is_identity or value.codec != CODEC_DAG_CBOR:
        raise MalformedInput(f"an owner proof's {what} must be a public-key hash")
    return value


@dataclass(frozen=True)
class OwnerProof:
    """CBOR `[[owner, writer], signature]`, the signature by `writer` (at most 256 bytes)."""

    owner: CID
    writer: CID
    signature: bytes

    @classmethod
    def create(cls, writer: SigningKey, owner: CID) -> OwnerProof:
        writer_hash = writer.public.key_hash()
        return cls(owner, writer_hash, writer.sign(cbor.encode([owner, writer_hash]), CONTEXT))

    def encode(self) -> bytes:
        return cbor.encode([[self.owner, self.writer], self.signature])

    @classmethod
    def decode(cls, data: bytes) -> OwnerProof:
        if not isinstance(data, bytes) or len(data) > MAX_OWNER_PROOF:
            raise MalformedInput(f"an owner proof is at most {MAX_OWNER_PROOF} bytes")
        try:
            value = cbor.decode(data, limit=MAX_OWNER_PROOF)
        except TooLarge as exc:
            raise MalformedInput(f"an owner proof is at most {MAX_OWNER_PROOF} bytes") from exc
        if not (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], list)
            and len(value[0]) == 2
        ):
            raise MalformedInput("an owner proof is [[owner, writer], signature]")
        (owner, writer), signature = value
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise MalformedInput("an owner proof's signature must be 64 bytes")
        return cls(_key_hash(owner, "owner"), _key_hash(writer, "writer"), signature)

    def verify(self, owner: CID) -> None:
        """Raise unless this proof says `writer` belongs to `owner`, signed by `writer`."""
        if self.owner != owner:
            raise InvalidSignature("an owner proof names another owner")
        if self.writer == owner:
            raise MalformedInput("an owner does not list itself among the writers it owns")
        try:
            key = VerifyKey.from_key_hash(self.writer)
        except MalformedInput as exc:
            raise MalformedInput("an owner proof's writer must be an Ed25519 key") from exc
        try:
            key.verify(cbor.encode([self.owner, self.writer]), self.signature, CONTEXT)
        except InvalidSignature as exc:
            raise InvalidSignature("an owner proof is not signed by the writer it names") from exc


def owned_writers(owner: CID, owned: list[bytes]) -> list[CID]:
    """The writers a WriterData's `owned` list gives `owner`, each proof decoded and verified
    (MalformedInput or InvalidSignature for any bad one; a writer listed twice is refused)."""
    if len(owned) > MAX_OWNED:
        raise MalformedInput(f"a WriterData owns at most {MAX_OWNED} writers")
    writers: list[CID] = []
    for data in owned:
        proof = OwnerProof.decode(data)
        proof.verify(owner)
        if proof.writer in writers:
            raise MalformedInput("a writer is listed twice among the owned writers")
        writers.append(proof.writer)
    return writers
