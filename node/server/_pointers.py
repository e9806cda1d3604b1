"""Pointers and writers: each writer's signed pointer update and the owner each writer belongs
to. Owns Space.POINTERS (writer -> signed update) and Space.WRITERS (writer -> owner; the
sub-writers' entries kept from owner proofs by node/server/_writers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.server import _writers
from node.server._blocks import close_uploads
from node.store import Space, Store
from protocols.cid import CID
from protocols.crypto import VerifyKey
from protocols.errors import Denied
from protocols.methods import Done, PointerCas, PointerGet, PointerGetReply
from protocols.pointers import PointerUpdate, check_update
from protocols.writerdata import controller_of

if TYPE_CHECKING:
    from node.server._service import NodeService


class Pointers:
    """Pointer reads and compare-and-swap writes, and the writer -> owner registry."""

    def __init__(self, node: NodeService) -> None:
        self.node = node
        self.store: Store = node.store

    def pointer(self, writer: CID) -> PointerUpdate | None:
        raw = self.store.get(Space.POINTERS, writer.raw)
        return None if raw is None else PointerUpdate.decode(raw)

    def owner_of(self, writer: CID) -> CID:
        owner = self.store.get(Space.WRITERS, writer.raw)
        if owner is None:
            raise Denied("this writer does not belong to a user homed on this node")
        return CID.from_bytes(owner)

    def check_pointer(self, writer: CID, update: PointerUpdate) -> None:
        """The pointer rules (protocols.pointers.check_update) against what is stored."""
        target = self.store.get_block(update.new.raw)
        check_update(
            VerifyKey.from_key_hash(writer),
            self.pointer(writer),
            update,
            None if target is None else controller_of(target),
        )

    # -- calls --------------------------------------------------------------------------------

    async def pointer_get(self, request: PointerGet, requester: bytes) -> PointerGetReply:
        update = self.pointer(request.writer)
        return PointerGetReply(None if update is None else update.encode())

    async def pointer_cas(self, request: PointerCas, requester: bytes) -> Done:
        """Move the pointers of one owner's writers at once, all or none, durably.

        The identity writer's update and the owner proofs of its new root are checked first,
        so one commit can register a sub-writer and set its first pointer
        (node/server/_writers.py). The session is needed only when the identity writer is in
        the commit: a sub-writer's commit is authorised by its signatures.
        """
        node, owner = self.node, request.owner
        async with node.write_lock:
            node.migration.check_writable(owner)
            registered = _writers.check_updates(
                self.store, owner, list(request.updates), self.check_pointer, self.pointer
            )
            if registered.identity:
                node.accounts.check_session(owner, request.session)
            with self.store.batch(sync=True) as batch:  # durable before the reply
                for writer, update in request.updates:
                    batch.put(Space.POINTERS, writer.raw, update.encode())
                registered.apply(batch)
                close_uploads(self.store, batch, request.uploads)
            node.blocks.pointer_moved(owner)
            if node.collection is not None:
                for _, update in request.updates:
                    node.collection.note_root(owner, update.new)
        return Done()
