"""Garbage collection and usage (DESIGN §9): mark from every current pointer and every open
upload, sweep the rest; a user's usage is the size of what their pointers reach, what their
open uploads pin, and every block they put since the last collection.

A collection runs in phases so that writers never wait for all of it: `Collection(...)`
(a snapshot of the roots, under the node's write lock), `mark` (no lock: blocks are only ever
deleted by the collection itself, so what the snapshot's roots reach stays put), then `step`
(under the lock, repeatedly: mark what was written meanwhile, delete one short batch) and
`finish` (under the lock: drop expired pins and the put records it has decided, set usage).
Only blocks that arrived before the snapshot can be deleted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from node.store import Batch, Space, Store, owner_prefix
from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR, encode_varint
from protocols.errors import MalformedInput, TooLarge
from protocols.methods import UPLOAD_ID_BYTES
from protocols.pointers import PointerUpdate
from protocols.structured import structured_links

log = logging.getLogger(__name__)
_UPLOAD_ID = UPLOAD_ID_BYTES
_SWEEP_BATCH = 1000  # blocks deleted per locked step: a writer waits for one step at most
_NO_OWNER = b""  # pointers of writers no local user owns (mirrored users)


def stored_links(store: Store, cid: CID) -> list[CID]:
    """The links of the stored block `cid` (none for raw, missing or unknown blocks)."""
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


def mark(store: Store, roots: Iterable[CID], seen: set[bytes] | None = None) -> set[bytes]:
    """Raw CIDs of the stored blocks reachable from `roots` and not already in `seen` (which
    grows by them). Identity CIDs are not blocks."""
    seen = set() if seen is None else seen
    found: set[bytes] = set()
    stack = [cid for cid in roots if not cid.is_identity]
    while stack:
        cid = stack.pop()
        if cid.raw in seen or not store.has_block(cid.raw):
            continue
        seen.add(cid.raw)
        found.add(cid.raw)
        stack.extend(link for link in stored_links(store, cid) if not link.is_identity)
    return found


def stored_key(owner: CID, cid: CID) -> bytes:
    """The STORED key recording that `owner` put `cid`."""
    return owner_prefix(owner.raw) + cid.raw


def stored_record(size: int) -> bytes:
    return encode_varint(size)


def _split_stored(key: bytes) -> tuple[bytes, bytes]:
    """(owner raw, CID raw) of a STORED key."""
    return key[1 : 1 + key[0]], key[1 + key[0] :]


def _pointer_roots(store: Store) -> dict[bytes, list[CID]]:
    """Current pointer targets by owner (raw key hash)."""
    roots: dict[bytes, list[CID]] = {}
    for writer, update in store.items(Space.POINTERS):
        owner = store.get(Space.WRITERS, writer) or _NO_OWNER
        roots.setdefault(owner, []).append(PointerUpdate.decode(update).new)
    return roots


def _upload_roots(store: Store, now: int) -> tuple[dict[bytes, list[CID]], list[bytes]]:
    """(pinned CIDs of live uploads by owner, keys of expired uploads to drop)."""
    pinned: dict[bytes, list[CID]] = {}
    expired: list[bytes] = []
    live: dict[bytes, bytes] = {}
    for key, value in store.items(Space.UPLOADS):
        if len(key) == _UPLOAD_ID:
            upload_owner, expiry = cbor.decode(value)
            if expiry < now:
                expired.append(key)
            else:
                live[key] = upload_owner.raw
    for key in store.keys(Space.UPLOADS):
        if len(key) > _UPLOAD_ID:
            owner = live.get(key[:_UPLOAD_ID])
            if owner is not None:
                pinned.setdefault(owner, []).append(CID.from_bytes(key[_UPLOAD_ID:]))
            else:
                expired.append(key)
    return pinned, expired


def reachable_bytes(store: Store, owner: CID, now: int) -> int:
    """A user's exact usage: bytes of the blocks their pointers reach, their open uploads pin,
    and they put since the last collection (until it decides them)."""
    pinned, _ = _upload_roots(store, now)
    live = mark(store, _pointer_roots(store).get(owner.raw, []))
    live |= {cid.raw for cid in pinned.get(owner.raw, [])}
    records = store.keys(Space.STORED, owner_prefix(owner.raw))
    live |= {cid for _, cid in map(_split_stored, records)}
    return sum(store.block_size(raw) for raw in live)


class Collection:
    """One garbage collection. Create it, and call `step` and `finish`, under the node's write
    lock; `mark` and `plan` run without it. Writes made meanwhile are reported with `note_put`
    and `note_root` (under the lock), so that nothing they keep or link is deleted."""

    def __init__(self, store: Store, now: int) -> None:
        self.store = store
        self.now = now
        self.first_new = store.next_sequence()  # blocks from here on arrived during the run
        self.roots = _pointer_roots(store)
        self.pins, _ = _upload_roots(store, now)
        self.live: set[bytes] = set()
        self.reach: dict[bytes, int] = {}  # owner -> usage at the snapshot
        self.charged: Counter[bytes] = Counter()  # owner -> bytes charged during the run
        self.rescued: Counter[bytes] = Counter()  # owner -> old bytes their new roots reach
        self.recounted: set[bytes] = set()  # owners counted exactly during the run
        self.touched: set[bytes] = set()  # blocks put during the run
        self._pending: list[tuple[bytes, CID]] = []  # (owner, root) written during the run
        self._doomed: list[bytes] = []
        self._stale_records: list[bytes] = []
        self.deleted = self.freed = 0

    def note_put(self, owner: CID, cids: Iterable[CID], charged: int) -> None:
        """Blocks put (or put again) during the run: each is kept, as an upload pins it."""
        for cid in cids:
            self.touched.add(cid.raw)
        self.charged[owner.raw] += charged

    def note_root(self, owner: CID, root: CID) -> None:
        """A pointer set during the run: everything it reaches is kept."""
        self._pending.append((owner.raw, root))

    def note_recount(self, owner: CID) -> None:
        """The owner's usage was counted exactly during the run: `finish` leaves it as it is."""
        self.recounted.add(owner.raw)

    def mark(self) -> None:
        """Mark from the snapshot's roots, owner by owner (each owner's size is their usage)."""
        seen_links: set[bytes] = set()
        for owner in self.roots.keys() | self.pins.keys():
            own = mark(self.store, self.roots.get(owner, []))
            own |= {cid.raw for cid in self.pins.get(owner, [])}
            self.reach[owner] = sum(self.store.block_size(raw) for raw in own)
            seen_links |= own
        self.live |= seen_links

    def plan(self) -> None:
        """List the sweep's candidates: blocks that arrived before the snapshot and that no
        snapshot root reaches, and the put records of such old blocks."""
        self._doomed = [
            cid
            for cid, sequence, _ in self.store.block_entries()
            if sequence < self.first_new and cid not in self.live
        ]
        self._doomed.reverse()  # popped from the end: oldest first
        for key in self.store.keys(Space.STORED):
            sequence = self.store.block_sequence(_split_stored(key)[1])
            if sequence is None or sequence < self.first_new:
                self._stale_records.append(key)

    def _mark_pending(self) -> None:
        while self._pending:
            owner, root = self._pending.pop()
            for raw in mark(self.store, [root], self.live):
                if raw not in self.touched:
                    self.rescued[owner] += self.store.block_size(raw)

    def step(self) -> bool:
        """Delete one batch of unreachable blocks; False once none remain."""
        self._mark_pending()
        with self.store.batch() as batch:
            for _ in range(min(_SWEEP_BATCH, len(self._doomed))):
                raw = self._doomed.pop()
                if raw in self.live or raw in self.touched:
                    continue
                self.freed += self.store.block_size(raw)
                self.store.delete_block(batch, raw)
                self.deleted += 1
        return bool(self._doomed)

    def finish(self) -> dict[str, int]:
        """Drop expired pins and the put records this run decided; set every usage record."""
        self._mark_pending()
        _, expired = _upload_roots(self.store, self.now)  # again: a put may have renewed one
        with self.store.batch(sync=True) as batch:
            for key in expired:
                batch.delete(Space.UPLOADS, key)
            for key in self._stale_records:
                if _split_stored(key)[1] not in self.touched:
                    batch.delete(Space.STORED, key)
            self._set_usage(batch)
        log.info("garbage collection deleted %d blocks (%d bytes)", self.deleted, self.freed)
        return {"deleted": self.deleted, "freed": self.freed, "live": len(self.live)}

    def _set_usage(self, batch: Batch) -> None:
        for owner, record in self.store.items(Space.USAGE):
            if owner in self.recounted or owner not in self.reach:
                continue  # counted exactly meanwhile, or a user who signed up during the run
            usage = cbor.decode(record)
            usage["reachable"] = self.reach[owner] + self.rescued[owner]
            usage["added"] = self.charged[owner]
            batch.put(Space.USAGE, owner, cbor.encode(usage))


def collect_garbage(store: Store, now: int) -> dict[str, int]:
    """A whole collection at once, for a node that serves nothing meanwhile (`pyrgos node gc`)."""
    run = Collection(store, now)
    run.mark()
    run.plan()
    while run.step():
        pass
    stats = run.finish()
    if stats["deleted"]:
        store.compact()
    return stats
