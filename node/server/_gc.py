"""Garbage collection and usage (DESIGN §9): mark from every current pointer and every open
upload, sweep the rest; a user's usage is the size of what their pointers reach.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from node.store import Space, Store
from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.errors import MalformedInput, TooLarge
from protocols.pointers import PointerUpdate
from protocols.structured import structured_links

log = logging.getLogger(__name__)
_UPLOAD_ID = 16
_SWEEP_BATCH = 1000


def _links(store: Store, cid: CID) -> list[CID]:
    if cid.codec != CODEC_DAG_CBOR:
        return []
    data = store.get_block(cid.raw)
    if data is None:
        return []
    try:
        return structured_links(data)
    except (MalformedInput, TooLarge):
        # Only a block stored before blocks were checked at put can be here.
        log.warning("a stored block is not a known structured block; its links are not followed")
        return []


def mark(store: Store, roots: Iterable[CID]) -> set[bytes]:
    """Raw CIDs of every stored block reachable from `roots` (identity CIDs are not blocks)."""
    seen: set[bytes] = set()
    stack = [cid for cid in roots if not cid.is_identity]
    while stack:
        cid = stack.pop()
        if cid.raw in seen or not store.has_block(cid.raw):
            continue
        seen.add(cid.raw)
        stack.extend(link for link in _links(store, cid) if not link.is_identity)
    return seen


def _pointer_roots(store: Store, owner: CID | None) -> list[CID]:
    roots = []
    for writer, update in store.items(Space.POINTERS):
        if owner is not None and store.get(Space.WRITERS, writer) != owner.raw:
            continue
        roots.append(PointerUpdate.decode(update).new)
    return roots


def _upload_roots(store: Store, owner: CID | None, now: int) -> tuple[list[CID], list[bytes]]:
    """(pinned CIDs of live uploads, keys of expired uploads to drop)."""
    pinned: list[CID] = []
    expired: list[bytes] = []
    live: set[bytes] = set()
    for key, value in store.items(Space.UPLOADS):
        if len(key) == _UPLOAD_ID:
            upload_owner, expiry = cbor.decode(value)
            if expiry < now:
                expired.append(key)
            elif owner is None or upload_owner == owner:
                live.add(key)
    for key in store.keys(Space.UPLOADS):
        if len(key) > _UPLOAD_ID:
            if key[:_UPLOAD_ID] in live:
                pinned.append(CID.from_bytes(key[_UPLOAD_ID:]))
            else:
                expired.append(key)
    return pinned, expired


def reachable_bytes(store: Store, owner: CID, now: int) -> int:
    """Bytes of the blocks one user's pointers and open uploads reach."""
    pinned, _ = _upload_roots(store, owner, now)
    live = mark(store, _pointer_roots(store, owner)) | {cid.raw for cid in pinned}
    return sum(store.block_size(raw) for raw in live)


def collect_garbage(store: Store, now: int) -> dict[str, int]:
    """Delete every block no pointer or open upload reaches; recount every user's usage."""
    pinned, expired = _upload_roots(store, None, now)
    # An upload pins each block it wrote, not what they link: an old root it wrote must not
    # keep a whole stale tree alive.
    live = mark(store, _pointer_roots(store, None)) | {cid.raw for cid in pinned}
    deleted = freed = 0
    doomed = [raw for raw in store.block_cids() if raw not in live]
    for start in range(0, len(doomed), _SWEEP_BATCH):
        with store.batch() as batch:
            for raw in doomed[start : start + _SWEEP_BATCH]:
                freed += store.block_size(raw)
                store.delete_block(batch, raw)
                deleted += 1
    with store.batch(sync=True) as batch:
        for key in expired:
            batch.delete(Space.UPLOADS, key)
        for owner_raw, record in store.items(Space.USAGE):
            usage = cbor.decode(record)
            usage["reachable"] = reachable_bytes(store, CID.from_bytes(owner_raw), now)
            usage["added"] = 0
            batch.put(Space.USAGE, owner_raw, cbor.encode(usage))
    if deleted:
        store.compact()
    log.info("garbage collection deleted %d blocks (%d bytes)", deleted, freed)
    return {"deleted": deleted, "freed": freed, "live": len(live)}
