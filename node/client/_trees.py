"""Writer trees (DESIGN §4): one writer's signed pointer, its WriterData and CHAMP, read and
committed by compare-and-swap; several trees of one owner can be committed in one step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from node.client import _typed
from node.client._api import NodeApi, Route
from node.client._blocks import Blocks, new_upload_id, put_blocks
from protocols import methods
from protocols.cid import CID
from protocols.crypto import SigningKey, VerifyKey
from protocols.errors import Corrupted, Denied, MalformedInput, NotFound, TooLarge
from protocols.pointers import CONTEXT as POINTER_CONTEXT
from protocols.pointers import PointerUpdate
from protocols.writerdata import WriterData

MAX_TREES_PER_COMMIT: Final = 16  # what one pointer.cas of a node accepts


@dataclass(frozen=True)
class TreeRoot:
    """A writer tree as read: its verified pointer and the WriterData it names."""

    pointer: PointerUpdate
    data: WriterData


@dataclass(frozen=True)
class WriterTree:
    """One writer's tree of the owner `route` names.

    `signer` is the writer's key (None: the tree is read-only to us); `mirror_id` is the
    owner's mirror BAT id, which every node this writer writes carries (None: unknown, so
    nothing can be written).
    """

    writer: CID
    route: Route
    signer: SigningKey | None = None
    mirror_id: bytes | None = None

    @property
    def owner(self) -> CID:
        return self.route.owner

    @property
    def is_identity(self) -> bool:
        return self.writer == self.route.owner

    async def read(self, blocks: Blocks) -> TreeRoot:
        """The current root: the pointer (its signature checked with the writer's key) and
        its WriterData (whose controller must be the writer)."""
        call = methods.PointerGet(self.writer, self.owner)
        raw = (await _typed.request(blocks.api, call, methods.PointerGetReply)).update
        if raw is None:
            if self.is_identity:
                raise NotFound("this account has no root: was the signup completed?")
            raise NotFound(f"the writer {self.writer} has no root")
        try:
            pointer = PointerUpdate.decode(raw)
        except (MalformedInput, TooLarge) as exc:
            raise Corrupted(f"the node returned a malformed pointer: {exc.message}") from exc
        VerifyKey.from_key_hash(self.writer).verify(
            pointer.signed_part, pointer.signature, POINTER_CONTEXT
        )
        try:
            data = WriterData.decode(await blocks.get(pointer.new))
        except (MalformedInput, TooLarge) as exc:
            raise Corrupted(f"a writer root is malformed: {exc.message}") from exc
        if data.controller != self.writer:
            raise Corrupted("a writer's pointer names a root controlled by another writer")
        return TreeRoot(pointer, data)

    def writable(self) -> SigningKey:
        """The signer, or Denied when this tree cannot be written by us."""
        if self.signer is None or self.mirror_id is None:
            raise Denied("this item is read-only to you: you hold no write access to it")
        return self.signer


@dataclass(frozen=True)
class TreeUpdate:
    """One tree's part of a commit: the root it was read at (None: a new writer's first
    root) and its new CHAMP root, or a whole new WriterData (`data`, required for a first
    root)."""

    tree: WriterTree
    root: TreeRoot | None
    new_tree: CID
    data: WriterData | None = None
    # Who signs the puts of this tree's new blocks (None: its writer). A writer is registered
    # only by the commit that lists its owner proof, so its first blocks are put by the owner.
    put_by: SigningKey | None = None


async def commit_trees(
    api: NodeApi, blocks: Blocks, updates: Sequence[TreeUpdate], uploads: Sequence[bytes] = ()
) -> None:
    """Write the staged blocks each new root reaches (signed by its writer), then swap every
    pointer in one pointer.cas: all the trees change, or none (StaleRoot when one has moved)."""
    if not updates or len(updates) > MAX_TREES_PER_COMMIT:
        raise MalformedInput(f"a commit updates 1 to {MAX_TREES_PER_COMMIT} writer trees")
    owner = updates[0].tree.owner
    if any(update.tree.owner != owner for update in updates):
        raise MalformedInput("one commit updates the trees of one owner")
    upload = new_upload_id()
    pairs: list[tuple[CID, PointerUpdate]] = []
    for update in updates:
        signer = update.tree.writable()
        data = update.data
        if data is None:
            if update.root is None:
                raise MalformedInput("a new writer's first root needs its WriterData")
            data = replace(update.root.data, tree=update.new_tree)
        root = await blocks.put(data.encode())
        staged = [(cid, blocks.staged[cid]) for cid in blocks.reachable_staged(root)]
        await put_blocks(api, owner, update.put_by or signer, staged, upload)
        pointer = None if update.root is None else update.root.pointer
        previous, sequence = (None, 1) if pointer is None else (pointer.new, pointer.sequence + 1)
        signed = PointerUpdate.create(signer, previous, root, sequence)
        pairs.append((update.tree.writer, signed))
    call = methods.PointerCas(owner, tuple(pairs), (upload, *uploads))
    await _typed.request(api, call, methods.Done)
