"""Which writers belong to which owner (keyspace WRITERS), kept from owner proofs.

A user's identity writer is registered at signup; every other writer W of owner O is
registered when the home node accepts a pointer update of O's identity writer whose new
WriterData lists W's owner proof in `owned`, and unregistered (its pointer deleted with it)
when a later one drops it. All the writer rules of one `pointer.cas` are in `check_updates`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from node.store import Batch, Space, Store
from protocols.cid import CID
from protocols.errors import Denied, MalformedInput, TooLarge
from protocols.owners import OwnerProof, owned_writers
from protocols.pointers import PointerUpdate
from protocols.writerdata import WriterData

NOT_OURS = "this writer does not belong to a user homed on this node"


@dataclass
class Registration:
    """What one accepted commit changes in WRITERS (applied in the commit's batch)."""

    owner: CID
    identity: bool = False  # the owner's identity writer is among the updates
    added: set[CID] = field(default_factory=set)
    dropped: set[CID] = field(default_factory=set)

    def owner_of(self, store: Store, writer: CID) -> CID | None:
        """The owner of `writer` as it will be once this commit is applied."""
        if writer in self.added:
            return self.owner
        if writer in self.dropped:
            return None
        raw = store.get(Space.WRITERS, writer.raw)
        return None if raw is None else CID.from_bytes(raw)

    def apply(self, batch: Batch) -> None:
        """Register the added writers; unregister the dropped ones and delete their pointers,
        so their trees are no longer reachable and the next collection frees them."""
        for writer in self.added:
            batch.put(Space.WRITERS, writer.raw, self.owner.raw)
        for writer in self.dropped:
            batch.delete(Space.WRITERS, writer.raw)
            batch.delete(Space.POINTERS, writer.raw)


def _owned(store: Store, owner: CID, root: CID | None, *, check: bool) -> set[CID]:
    """The writers the identity WriterData at `root` lists (proofs verified when `check`)."""
    if root is None:
        return set()
    data = store.get_block(root.raw)
    if data is None:
        return set()
    writer_data = WriterData.decode(data)
    if check:
        return set(owned_writers(owner, writer_data.owned))
    found: set[CID] = set()
    for proof in writer_data.owned:  # accepted (and verified) when that root was set
        try:
            found.add(OwnerProof.decode(proof).writer)
        except (MalformedInput, TooLarge):
            continue
    return found


def registration(
    store: Store, owner: CID, current: PointerUpdate | None, new_root: CID
) -> Registration:
    """The WRITERS changes that setting `owner`'s identity root to `new_root` makes: every
    proof in its `owned` is verified (MalformedInput, InvalidSignature), a writer registered to
    another owner is Denied, and writers the current root lists but the new one does not are
    dropped. Nothing is written here."""
    new = _owned(store, owner, new_root, check=True)
    old = _owned(store, owner, None if current is None else current.new, check=False)
    change = Registration(owner, identity=True)
    for writer in new:
        raw = store.get(Space.WRITERS, writer.raw)
        if raw is None:
            change.added.add(writer)
        elif raw != owner.raw:
            raise Denied(f"writer {writer} already belongs to another user: nothing was changed")
    for writer in old - new:
        if store.get(Space.WRITERS, writer.raw) == owner.raw:
            change.dropped.add(writer)
    return change


def _check_owner(found: CID | None, owner: CID) -> None:
    if found is None:
        raise Denied(NOT_OURS)
    if found != owner:
        raise Denied("this writer does not belong to that owner")


def check_updates(
    store: Store,
    owner: CID,
    updates: list[tuple[CID, PointerUpdate]],
    check_pointer: Callable[[CID, PointerUpdate], None],
    current: Callable[[CID], PointerUpdate | None],
) -> Registration:
    """Every writer rule of one atomic commit of `owner`, in order; raises unless all pass.

    1. The owner's identity writer (writer == owner), if among the updates, is checked first
       (the pointer rule), and the owner proofs its new root lists are verified: a writer it
       adds can have its first pointer set in the same commit.
    2. Every other writer must belong to `owner` once the proofs are applied (Denied), and its
       update must pass the pointer rule.
    `check_pointer` is the node's pointer rule; `current` reads a stored pointer.
    """
    change = Registration(owner)
    for writer, update in updates:
        if writer == owner:
            _check_owner(change.owner_of(store, writer), owner)
            check_pointer(writer, update)
            change = registration(store, owner, current(owner), update.new)
    for writer, update in updates:
        if writer == owner:
            continue
        _check_owner(change.owner_of(store, writer), owner)
        check_pointer(writer, update)
    return change
