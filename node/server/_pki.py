"""The PKI log at a node (DESIGN §7): entries, heads and the lookup index in the PKI keyspace.

The PKI node appends (first come, first served; one durable batch per entry). Every other node
mirrors: it checks all it is served with protocols.pki before one batch applies any of it, and
keeps what it has when the served history is forged, broken or forked, recording why.
Methods are synchronous and serialise their writes; callers run them in a worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from node.store import Space, Store
from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import SigningKey
from protocols.errors import (
    Conflict,
    Denied,
    InvalidSignature,
    MalformedInput,
    PyrgosError,
    TooLarge,
)
from protocols.peerid import check_peer_id, peer_id_of
from protocols.pki import (
    BrokenChain,
    Claim,
    Entry,
    ForkDetected,
    IndexOverlay,
    KeyUse,
    NodeRecord,
    PkiIndex,
    Record,
    SignedHead,
    Tip,
    apply_entry,
    next_entry,
    verify_served,
)

log = logging.getLogger(__name__)

# Keys inside Space.PKI. Each starts with an upper-case letter, so none can meet the lower-case
# usernames that single-node signup stored directly under the keyspace.
_ENTRY: Final = b"E"  # ‖ seq (8 bytes, big-endian) -> the entry's canonical CBOR
_HEAD_SIG: Final = b"S"  # ‖ seq -> the PKI node's signature of the head at that entry
_TIP: Final = b"T"  # -> [seq, CID, time] of the last entry
_NAME: Final = b"U"  # ‖ username -> [current claim, seq of its entry]
_KEY: Final = b"K"  # ‖ identity key hash -> [username, retired]
_NODE: Final = b"N"  # ‖ node id -> [current node record, seq of its entry]
_ORIGIN: Final = b"O"  # -> the id of the PKI node this log follows
_SYNCED: Final = b"L"  # -> time of the last sync that verified (a mirror)
_REFUSAL: Final = b"R"  # ‖ number (8 bytes) -> a Refusal

MAX_REFUSALS: Final = 100  # kept for `pki status`; every refusal is also in the node's log
MAX_PAGE_ENTRIES: Final = 1000  # per sync call: ~0.2 s of verifying at the mirror
MAX_PAGE_BYTES: Final = 512 * 1024  # a page fits one RPC frame with room to spare

Role = Literal["root", "mirror"]


def _seq_key(prefix: bytes, seq: int) -> bytes:
    return prefix + seq.to_bytes(8, "big")


def _with_seq(record: bytes, seq: int) -> bytes:
    """`cbor.encode([record's value, seq])` from the record's canonical CBOR: an array of two
    (0x82), then its items as they encode alone."""
    return b"\x82" + record + cbor.encode_uint(seq)


def _key_use(use: KeyUse) -> bytes:
    """`cbor.encode([use.username, use.retired])`: an array of two, the name's text, and
    true (0xf5) or false (0xf4)."""
    return b"\x82" + cbor.encode(use.username) + (b"\xf5" if use.retired else b"\xf4")


@dataclass(frozen=True)
class Refusal:
    """Something the PKI node served that this node refused (`count` times in a row)."""

    time: int
    first: int
    kind: str  # fork, forged, broken, malformed or rule
    reason: str
    count: int

    def to_cbor(self) -> dict[str, object]:
        return {
            "time": self.time,
            "first": self.first,
            "kind": self.kind,
            "reason": self.reason,
            "count": self.count,
        }


@dataclass(frozen=True)
class SyncResult:
    """What `apply_from_mirror` did: `applied` new entries, the log now ends at `seq`."""

    applied: int
    seq: int
    head_seq: int  # the served head; above `seq` means there is more to fetch
    refusal: Refusal | None

    @property
    def behind(self) -> bool:
        return self.refusal is None and self.head_seq > self.seq


@dataclass(frozen=True)
class Page:
    """Consecutive entries (canonical CBOR, as sent) and the signed head of the last one."""

    entries: list[bytes]
    head: SignedHead | None

    def to_cbor(self) -> dict[str, object]:
        return {"entries": self.entries, "head": None if self.head is None else self.head.to_cbor()}


@dataclass(frozen=True)
class PkiStatus:
    role: Role
    pki_node: str
    seq: int
    hash: CID | None
    last_sync: int | None
    refusals: tuple[Refusal, ...]

    def to_cbor(self) -> dict[str, object]:
        return {
            "role": self.role,
            "pki_node": self.pki_node,
            "seq": self.seq,
            "hash": self.hash,
            "last_sync": self.last_sync,
            "refusals": [refusal.to_cbor() for refusal in self.refusals],
        }


class _StoreIndex:
    """The index the PKI rules read, as stored (protocols.pki.PkiIndex)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # The tip last read, with its stored bytes: read again, the same bytes are not decoded
        # again (every pull and page reads the tip a few times). One tuple, swapped whole.
        self._last_tip: tuple[bytes, Tip] | None = None

    def tip(self) -> Tip | None:
        raw = self._store.get(Space.PKI, _TIP)
        if raw is None:
            return None
        last = self._last_tip
        if last is not None and last[0] == raw:
            return last[1]
        seq, entry_hash, moment = cbor.decode(raw)
        tip = Tip(seq, entry_hash, moment)
        self._last_tip = (raw, tip)
        return tip

    def entry_bytes(self, seq: int) -> bytes | None:
        return self._store.get(Space.PKI, _seq_key(_ENTRY, seq))

    def entries_between(self, start: int, stop: int) -> Iterator[bytes]:
        """The stored entries from seq `start` up to `stop`, in order, in one pass of the
        store, ending at the first missing one."""
        held = self._store.items_between(Space.PKI, _seq_key(_ENTRY, start), _seq_key(_ENTRY, stop))
        for seq, (key, stored) in enumerate(held, start):
            if key != _seq_key(_ENTRY, seq):
                return
            yield stored

    def entry_hash(self, seq: int) -> CID | None:
        raw = self.entry_bytes(seq)
        return None if raw is None else CID.of(CODEC_DAG_CBOR, raw)

    def claim_and_seq(self, username: str) -> tuple[Claim, int] | None:
        raw = self._store.get(Space.PKI, _NAME + username.encode())
        if raw is None:
            return None
        claim, seq = cbor.decode(raw)
        return Claim.from_cbor(claim), seq

    def claim(self, username: str) -> Claim | None:
        found = self.claim_and_seq(username)
        return None if found is None else found[0]

    def key_use(self, identity: CID) -> KeyUse | None:
        raw = self._store.get(Space.PKI, _KEY + identity.raw)
        if raw is None:
            return None
        username, retired = cbor.decode(raw)
        return KeyUse(username, retired)

    def node_and_seq(self, node_id: str) -> tuple[NodeRecord, int] | None:
        raw = self._store.get(Space.PKI, _NODE + node_id.encode())
        if raw is None:
            return None
        record, seq = cbor.decode(raw)
        return NodeRecord.from_cbor(record), seq

    def node(self, node_id: str) -> NodeRecord | None:
        found = self.node_and_seq(node_id)
        return None if found is None else found[0]


def _refusal_kind(exc: PyrgosError) -> str:
    if isinstance(exc, ForkDetected):
        return "fork"
    if isinstance(exc, InvalidSignature):
        return "forged"
    if isinstance(exc, BrokenChain):
        return "broken"
    if isinstance(exc, MalformedInput | TooLarge):
        return "malformed"
    return "rule"


class PkiLog:
    """This node's copy of the PKI log: the PKI node's own (with `signer`) or a mirror of it."""

    def __init__(self, store: Store, pki_node: str, signer: SigningKey | None = None) -> None:
        check_peer_id(pki_node)
        if signer is not None and peer_id_of(signer.public) != pki_node:
            raise MalformedInput("only the PKI node's own key signs its heads")
        followed = store.get(Space.PKI, _ORIGIN)
        if followed is None:
            store.put(Space.PKI, _ORIGIN, pki_node.encode(), sync=True)
        elif followed != pki_node.encode():
            raise Conflict(
                f"this node's PKI log follows {followed.decode(errors='replace')}, not "
                f"{pki_node}: a node cannot change PKI without a fresh database"
            )
        self.pki_node = pki_node
        self.role: Role = "mirror" if signer is None else "root"
        self._store = store
        self._signer = signer
        self._index = _StoreIndex(store)
        self._lock = threading.Lock()  # one writer: appends and syncs see a stable tip

    # -- reads ----------------------------------------------------------------------------------

    def seq(self) -> int:
        tip = self._index.tip()
        return 0 if tip is None else tip.seq

    def head(self) -> SignedHead | None:
        """The signed head of the last entry held (the PKI node signs its empty log too)."""
        tip = self._index.tip()
        if tip is None:
            return None if self._signer is None else SignedHead.create(self._signer, 0, None)
        signature = self._store.get(Space.PKI, _seq_key(_HEAD_SIG, tip.seq))
        return None if signature is None else SignedHead(tip.seq, tip.hash, signature)

    def head_at(self, seq: int) -> SignedHead | None:
        """The PKI node's signed head for entry `seq`, if this node holds it."""
        entry_hash = self._index.entry_hash(seq)
        signature = self._store.get(Space.PKI, _seq_key(_HEAD_SIG, seq))
        if entry_hash is None or signature is None:
            return None
        return SignedHead(seq, entry_hash, signature)

    def entries(self, after_seq: int, limit: int) -> list[Entry]:
        """Up to `limit` entries after `after_seq`, in order."""
        last = min(self.seq(), after_seq + max(0, limit))
        found = []
        for seq in range(max(0, after_seq) + 1, last + 1):
            raw = self._index.entry_bytes(seq)
            if raw is None:
                break
            found.append(Entry.decode(raw))
        return found

    def page(
        self, after_seq: int, limit: int = MAX_PAGE_ENTRIES, max_bytes: int = MAX_PAGE_BYTES
    ) -> Page:
        """What a node serves a mirror asking for entries after `after_seq`: consecutive entries
        (at least one when there are any, within `limit` and `max_bytes` otherwise) ending at a
        head this node holds the PKI node's signature for, and that head."""
        tip_seq = self.seq()
        start = max(0, after_seq) + 1
        if start > tip_seq:
            return Page([], self.head())
        limit = max(1, min(limit, MAX_PAGE_ENTRIES))
        raw: list[bytes] = []
        size = 0
        stop = min(tip_seq, start + limit - 1) + 1
        for stored in self._index.entries_between(start, stop):  # a page: up to a thousand
            if raw and size + len(stored) > max_bytes:
                break
            raw.append(stored)
            size += len(stored)
        if not raw:
            return Page([], self.head())
        # The PKI node signs every head; a mirror holds one where each of its syncs ended. End
        # the page at the last such head inside it, or else run on to the next one.
        last = start + len(raw) - 1
        end = next((seq for seq in range(last, start - 1, -1) if self._has_head(seq)), None)
        if end is None:
            end = next((seq for seq in range(last + 1, tip_seq + 1) if self._has_head(seq)), None)
            for seq in range(last + 1, (end or last) + 1):
                data = self._index.entry_bytes(seq)
                if data is None:
                    end = None
                    break
                raw.append(data)
        signature = None if end is None else self._store.get(Space.PKI, _seq_key(_HEAD_SIG, end))
        if end is None or signature is None:  # changed under us: serve nothing rather than junk
            return Page([], self.head())
        raw = raw[: end - start + 1]
        return Page(raw, SignedHead(end, CID.of(CODEC_DAG_CBOR, raw[-1]), signature))

    def _has_head(self, seq: int) -> bool:
        return self._store.has(Space.PKI, _seq_key(_HEAD_SIG, seq))

    def lookup(self, username: str) -> Claim | None:
        """The current claim of `username` (expired or not), or None if it was never claimed."""
        return self._index.claim(username)

    def owner(self, identity: CID) -> str | None:
        """The username whose current key is `identity`, if any."""
        use = self._index.key_use(identity)
        return None if use is None or use.retired else use.username

    def node_record(self, node_id: str) -> NodeRecord | None:
        return self._index.node(node_id)

    @property
    def index(self) -> PkiIndex:
        """The index the rules read (protocols.pki), as stored."""
        return self._index

    def holds(self, record: Record) -> bool:
        """Whether `record` is the current one of its name or node (a resend appends nothing)."""
        return self._holding(record) is not None

    def status(self) -> PkiStatus:
        tip = self._index.tip()
        synced = self._store.get(Space.PKI, _SYNCED)
        return PkiStatus(
            role=self.role,
            pki_node=self.pki_node,
            seq=0 if tip is None else tip.seq,
            hash=None if tip is None else tip.hash,
            last_sync=None if synced is None else cbor.decode(synced),
            refusals=tuple(refusal for _, refusal in self._refusals()),
        )

    # -- the PKI node ---------------------------------------------------------------------------

    def append(self, record: Record, now: int | None = None) -> Entry:
        """Append `record` if the rules allow it (first come, first served), durably, with a
        signed head; the same record sent again returns the entry that holds it."""
        if self._signer is None:
            raise Denied(f"only the PKI node {self.pki_node} appends to the PKI: submit it there")
        moment = int(time.time()) if now is None else now
        with self._lock:
            held = self._holding(record)
            if held is not None:
                return held
            pending = IndexOverlay(self._index)
            entry = next_entry(pending, record, moment)
            # The PKI node's own clock dates the entry: only mirrors check it against theirs.
            pending.apply(entry, apply_entry(pending, entry, entry.time))
            self._write(pending, SignedHead.create(self._signer, entry.seq, entry.hash), None)
        return entry

    def _holding(self, record: Record) -> Entry | None:
        """The entry holding `record` when it is exactly the current one of its name or node."""
        if isinstance(record, Claim):
            found: tuple[Record, int] | None = self._index.claim_and_seq(record.username)
        else:
            found = self._index.node_and_seq(record.node)
        if found is None or found[0] != record:
            return None
        raw = self._index.entry_bytes(found[1])
        return None if raw is None else Entry.decode(raw)

    # -- mirrors --------------------------------------------------------------------------------

    def apply_from_mirror(
        self, entries: Sequence[object], head: object, now: int | None = None
    ) -> SyncResult:
        """Check what the PKI node served (entries as canonical CBOR bytes, the signed head of
        the last of them as its CBOR map) and apply all of it in one batch, or none of it: a
        forged record or head, a broken chain or a fork is refused and recorded, and this
        node keeps the log it has."""
        if self._signer is not None:
            raise Denied("the PKI node orders its own log; it mirrors no one")
        moment = int(time.time()) if now is None else now
        with self._lock:
            served_seq = 0
            try:
                served = head if isinstance(head, SignedHead) else SignedHead.from_cbor(head)
                served_seq = served.seq
                if len(entries) > MAX_PAGE_ENTRIES:
                    raise TooLarge(f"at most {MAX_PAGE_ENTRIES} PKI entries per sync")
                parsed = []
                for raw in entries:
                    if not isinstance(raw, bytes):
                        raise MalformedInput("PKI entries are sent as CBOR bytes")
                    parsed.append(Entry.decode(raw))
                pending = verify_served(self._index, parsed, served, self.pki_node, moment)
            except PyrgosError as exc:
                return SyncResult(0, self.seq(), served_seq, self._refuse(exc, moment))
            tip = pending.tip()
            held_seq = 0 if tip is None else tip.seq
            keep_head = served if 0 < served.seq <= held_seq else None
            self._write(pending, keep_head, moment)
        return SyncResult(len(pending.entries), held_seq, served.seq, None)

    def _refusals(self) -> list[tuple[int, Refusal]]:
        found = []
        for key, value in self._store.items(Space.PKI, _REFUSAL):
            item = cbor.decode(value)
            number = int.from_bytes(key[len(_REFUSAL) :], "big")
            found.append((number, Refusal(**item)))
        return found

    def _refuse(self, exc: PyrgosError, now: int) -> Refusal:
        kind = _refusal_kind(exc)
        log.error("refused what the PKI node %s served (%s): %s", self.pki_node, kind, exc.message)
        kept = self._refusals()
        last = kept[-1] if kept else None
        with self._store.batch(sync=True) as batch:
            if last is not None and (last[1].kind, last[1].reason) == (kind, exc.message):
                number, first, count = last[0], last[1].first, last[1].count + 1
            else:
                number, first, count = (last[0] + 1 if last else 1), now, 1
                for old, _ in kept[: max(0, len(kept) + 1 - MAX_REFUSALS)]:
                    batch.delete(Space.PKI, _seq_key(_REFUSAL, old))
            refusal = Refusal(now, first, kind, exc.message, count)
            batch.put(Space.PKI, _seq_key(_REFUSAL, number), cbor.encode(refusal.to_cbor()))
        return refusal

    # -- writing --------------------------------------------------------------------------------

    def _write(self, pending: IndexOverlay, head: SignedHead | None, synced: int | None) -> None:
        """Everything verified in `pending`, in one durable batch."""
        with self._store.batch(sync=True) as batch:
            put, space = batch.put, Space.PKI  # a mirror's sync writes three keys an entry
            for seq, entry in pending.entries.items():
                put(space, _seq_key(_ENTRY, seq), entry.encoded)
            for username, (claim, seq) in pending.claims.items():
                put(space, _NAME + username.encode(), _with_seq(claim.encoded, seq))
            for identity, use in pending.keys.items():
                put(space, _KEY + identity.raw, _key_use(use))
            for node_id, (record, seq) in pending.nodes.items():
                put(space, _NODE + node_id.encode(), _with_seq(record.encoded, seq))
            tip = pending.tip()
            if pending.entries and tip is not None:
                batch.put(Space.PKI, _TIP, cbor.encode([tip.seq, tip.hash, tip.time]))
            if head is not None:
                batch.put(Space.PKI, _seq_key(_HEAD_SIG, head.seq), head.signature)
            if synced is not None:
                batch.put(Space.PKI, _SYNCED, cbor.encode(synced))
