"""The PKI log (DESIGN §7): username claims and node records in one hash-chained, signed log.

Pure rules, no storage: `apply_entry` holds every acceptance rule and says what an entry
changes; `verify_served` checks what a PKI node serves a mirror (head signature, links, forks)
before anything of it is applied. The same rules order the log at the PKI node and check it
everywhere else, so every honest node builds the same index from the same entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final, NamedTuple, Protocol, TypeAlias

from protocols import cbor, crypto
from protocols.cid import CID, CODEC_DAG_CBOR, MH_SHA2_256
from protocols.crypto import SIGNATURE_BYTES, SigningKey, VerifyKey
from protocols.errors import (
    Conflict,
    Corrupted,
    Denied,
    InvalidSignature,
    MalformedInput,
    RateLimited,
)
from protocols.names import check_username
from protocols.peerid import check_peer_id, peer_id_of, peer_key

CONTEXT: Final = b"pyrgos/pki-claim/1"  # a claim, signed by the identity it names
KEY_CHANGE_CONTEXT: Final = b"pyrgos/pki-key-change/1"  # the same claim, signed by the old key
NODE_CONTEXT: Final = b"pyrgos/pki-node/1"  # a node record, signed by the node's key
HEAD_CONTEXT: Final = b"pyrgos/pki-head/1"  # a head, signed by the PKI node's key
CLAIM_LIFETIME: Final = 365 * 24 * 3600  # seconds; renewed by the client before it runs out
# Client clocks run ahead of the PKI node's; a day of slack, but no squatting for decades.
MAX_CLAIM_LIFETIME: Final = CLAIM_LIFETIME + 24 * 3600
MAX_CLOCK_SKEW: Final = 300  # seconds an entry may be dated ahead of a mirror's clock (as logins)
MAX_NODE_ID: Final = 128
MAX_MIRRORS: Final = 8  # nodes that mirror a user (DESIGN §11); more buys no availability
MAX_ADDRS: Final = 16  # listen addresses in a node record
MAX_ADDR_CHARS: Final = 256
MAX_SEQ: Final = 2**63 - 1  # fits LevelDB keys of 8 bytes and every CBOR reader
MAX_ENTRY_BYTES: Final = 8 * 1024  # a node record with 16 long addresses is about 4.5 KiB


class ForkDetected(Conflict):
    """The PKI node served a history that differs from one it served before."""


class BrokenChain(Corrupted):
    """Entries that do not follow each other: a gap in sequence numbers or a broken hash link."""


# ================================================================================================
# records


def _node_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NODE_ID:
        raise MalformedInput(f"malformed {what}")
    return value


def _signature(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != SIGNATURE_BYTES:
        raise MalformedInput(f"malformed {what} signature")
    return value


def _entry_cid(value: object, what: str) -> CID | None:
    if value is None:
        return None
    if not isinstance(value, CID) or value.codec != CODEC_DAG_CBOR or value.mh_code != MH_SHA2_256:
        raise MalformedInput(f"{what} is the sha2-256 dag-cbor CID of an entry, or null")
    return value


def _count(value: object, low: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_SEQ:
        raise MalformedInput(f"malformed {what}")
    return value


@dataclass(frozen=True)
class Claim:
    """`username` belongs to the `identity` key and is homed on node `home` until `expiry`.

    Signed by `identity`. A key change also names the `previous` key and carries its
    `handover` signature over the same bytes; `mirrors` are nodes that mirror the user.
    """

    username: str
    identity: CID
    home: str
    expiry: int
    signature: bytes
    mirrors: tuple[str, ...] = ()
    previous: CID | None = None
    handover: bytes | None = field(default=None, repr=False)

    @cached_property
    def signed_part(self) -> bytes:
        return _claim_body(
            self.username, self.identity, self.home, self.expiry, self.mirrors, self.previous
        )

    @classmethod
    def create(
        cls,
        identity: SigningKey,
        username: str,
        home: str,
        expiry: int,
        *,
        mirrors: Sequence[str] = (),
        previous: SigningKey | None = None,
    ) -> Claim:
        """A claim signed by `identity`; with `previous`, a key change handed over by that key."""
        key_hash = identity.public.key_hash()
        old = None if previous is None else previous.public.key_hash()
        body = _claim_body(username, key_hash, home, expiry, tuple(mirrors), old)
        handover = None if previous is None else previous.sign(body, KEY_CHANGE_CONTEXT)
        signature = identity.sign(body, CONTEXT)
        return cls(username, key_hash, home, expiry, signature, tuple(mirrors), old, handover)

    def verify(self) -> None:
        """Raise unless the claim is well formed and signed by every key it names."""
        check_username(self.username)
        body = self.signed_part
        VerifyKey.from_key_hash(self.identity).verify(body, self.signature, CONTEXT)
        if self.previous is not None:
            if self.handover is None:
                raise MalformedInput("a key change needs the old key's handover signature")
            VerifyKey.from_key_hash(self.previous).verify(body, self.handover, KEY_CHANGE_CONTEXT)

    @cached_property
    def encoded(self) -> bytes:
        """The canonical CBOR of `to_cbor()`."""
        return cbor.encode(self.to_cbor())

    def to_cbor(self) -> dict[str, object]:
        value: dict[str, object] = {
            "username": self.username,
            "identity": self.identity,
            "home": self.home,
            "expiry": self.expiry,
            "sig": self.signature,
        }
        if self.mirrors:  # omitted when empty: one claim, one encoding
            value["mirrors"] = list(self.mirrors)
        if self.previous is not None:
            value["previous"] = self.previous
            value["handover"] = self.handover
        return value

    @classmethod
    def from_cbor(cls, value: object) -> Claim:
        required = {"username", "identity", "home", "expiry", "sig"}
        if (
            not isinstance(value, dict)
            or not required <= set(value)
            or not set(value) <= required | {"mirrors", "previous", "handover"}
            or ("previous" in value) != ("handover" in value)
        ):
            raise MalformedInput(
                "a claim is {username, identity, home, expiry, sig, mirrors?, previous?, "
                "handover?} (previous and handover together)"
            )
        username, identity = value["username"], value["identity"]
        if not isinstance(username, str) or not isinstance(identity, CID):
            raise MalformedInput("malformed claim username or identity")
        home = _node_id(value["home"], "claim home node id")
        expiry = value["expiry"]
        if not isinstance(expiry, int) or isinstance(expiry, bool) or expiry < 0:
            raise MalformedInput("malformed claim expiry")
        signature = _signature(value["sig"], "claim")
        mirrors: list[str] = []
        if "mirrors" in value:  # present only when not empty
            listed = value["mirrors"]
            if not isinstance(listed, list) or not 0 < len(listed) <= MAX_MIRRORS:
                raise MalformedInput(f"claim mirrors are a list of 1-{MAX_MIRRORS} node ids")
            mirrors = [_node_id(m, "claim mirror node id") for m in listed]
        if len(set(mirrors)) != len(mirrors) or home in mirrors:
            raise MalformedInput("claim mirrors must be distinct nodes other than the home")
        previous, handover = None, None
        if "previous" in value:  # present only in a key change
            previous = value["previous"]
            if not isinstance(previous, CID) or previous == identity:
                raise MalformedInput("a key change names the previous key, not the new one")
            handover = _signature(value["handover"], "key change")
        return cls(username, identity, home, expiry, signature, tuple(mirrors), previous, handover)


def _claim_body(
    username: str,
    identity: CID,
    home: str,
    expiry: int,
    mirrors: tuple[str, ...],
    previous: CID | None,
) -> bytes:
    return cbor.encode([username, identity, home, expiry, list(mirrors), previous])


def next_expiry(current: Claim | None, now: int) -> int:
    """The expiry a client puts in a new claim, update or renewal: a year from now, and always
    later than the claim it replaces (the log refuses an update that does not extend it)."""
    fresh = now + CLAIM_LIFETIME
    return fresh if current is None else max(fresh, current.expiry + 1)


@dataclass(frozen=True)
class NodeRecord:
    """Node `node` (a peer id) listens on `addrs`; `seq` orders a node's records."""

    node: str
    addrs: tuple[str, ...]
    seq: int
    signature: bytes

    @cached_property
    def signed_part(self) -> bytes:
        return cbor.encode([self.node, list(self.addrs), self.seq])

    @classmethod
    def create(cls, node_key: SigningKey, addrs: Sequence[str], seq: int) -> NodeRecord:
        node = peer_id_of(node_key.public)
        body = cbor.encode([node, list(addrs), seq])
        return cls(node, tuple(addrs), seq, node_key.sign(body, NODE_CONTEXT))

    def verify(self) -> None:
        """Raise unless signed by the key the node id carries."""
        peer_key(self.node).verify(self.signed_part, self.signature, NODE_CONTEXT)

    @cached_property
    def encoded(self) -> bytes:
        """The canonical CBOR of `to_cbor()`."""
        return cbor.encode(self.to_cbor())

    def to_cbor(self) -> dict[str, object]:
        return {
            "node": self.node,
            "addrs": list(self.addrs),
            "seq": self.seq,
            "sig": self.signature,
        }

    @classmethod
    def from_cbor(cls, value: object) -> NodeRecord:
        if not isinstance(value, dict) or set(value) != {"node", "addrs", "seq", "sig"}:
            raise MalformedInput("a node record is {node, addrs, seq, sig}")
        node = _node_id(value["node"], "node record id")
        addrs = value["addrs"]
        if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS:
            raise MalformedInput(f"node addresses are a list of at most {MAX_ADDRS}")
        for addr in addrs:
            if (
                not isinstance(addr, str)
                or not 1 < len(addr) <= MAX_ADDR_CHARS
                or not addr.startswith("/")
                or not addr.isascii()
                or not addr.isprintable()
                or " " in addr
            ):
                raise MalformedInput("a node address is a multiaddr in text form (/ip4/...)")
        if len(set(addrs)) != len(addrs):
            raise MalformedInput("node addresses must be distinct")
        seq = _count(value["seq"], 1, "node record seq")
        return cls(node, tuple(addrs), seq, _signature(value["sig"], "node record"))


Record: TypeAlias = Claim | NodeRecord


def record_to_cbor(record: Record) -> dict[str, object]:
    """A record tagged with its kind: `{claim: ...}` or `{node: ...}` (in entries, submissions)."""
    return {"claim" if isinstance(record, Claim) else "node": record.to_cbor()}


def record_from_cbor(value: object) -> Record:
    if not isinstance(value, dict) or len(value) != 1:
        raise MalformedInput("a PKI record is {claim: ...} or {node: ...}")
    ((kind, body),) = value.items()
    if kind == "claim":
        return Claim.from_cbor(body)
    if kind == "node":
        return NodeRecord.from_cbor(body)
    raise MalformedInput(f"unknown PKI record kind {kind!r}")


# ================================================================================================
# entries and heads


@dataclass(frozen=True)
class Entry:
    """One link of the log: `record` at position `seq`, after the entry whose CID is `prev`,
    appended at `time` (the PKI node's clock, in seconds; it decides when claims expire)."""

    seq: int
    prev: CID | None
    time: int
    record: Record

    def to_cbor(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "prev": self.prev,
            "time": self.time,
            "record": record_to_cbor(self.record),
        }

    @cached_property
    def encoded(self) -> bytes:
        return cbor.encode(self.to_cbor())

    @cached_property
    def hash(self) -> CID:
        """The CID the next entry links to: sha2-256 over the canonical CBOR of this one."""
        return CID.of(CODEC_DAG_CBOR, self.encoded)

    @classmethod
    def from_cbor(cls, value: object) -> Entry:
        if not isinstance(value, dict) or set(value) != {"seq", "prev", "time", "record"}:
            raise MalformedInput("a PKI entry is {seq, prev, time, record}")
        seq = _count(value["seq"], 1, "entry seq")
        prev = _entry_cid(value["prev"], "an entry's prev")
        if (prev is None) != (seq == 1):
            raise MalformedInput("only the first entry has no prev")
        time = _count(value["time"], 0, "entry time")
        return cls(seq, prev, time, record_from_cbor(value["record"]))

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        # In a simulation, the many nodes of one process parse each entry once between them
        # (crypto.shared_results): an Entry is immutable, and a function of these bytes alone.
        memo = crypto.shared_memo()
        if memo is not None:
            known = memo.get("pki-entry", bytes(data))
            if isinstance(known, Entry):
                return known
        entry = cls.from_cbor(cbor.decode(data, limit=MAX_ENTRY_BYTES))
        # cbor.decode accepted only canonical bytes, so these are the bytes `encoded` would make.
        entry.__dict__["encoded"] = bytes(data)
        if memo is not None:
            memo.put("pki-entry", entry.encoded, entry)
        return entry


@dataclass(frozen=True)
class SignedHead:
    """The PKI node's word that entry `seq` of its log has CID `hash` (seq 0: the empty log)."""

    seq: int
    hash: CID | None
    signature: bytes

    @property
    def signed_part(self) -> bytes:
        return cbor.encode([self.seq, self.hash])

    @classmethod
    def create(cls, pki_key: SigningKey, seq: int, entry_hash: CID | None) -> SignedHead:
        return cls(seq, entry_hash, pki_key.sign(cbor.encode([seq, entry_hash]), HEAD_CONTEXT))

    def to_cbor(self) -> dict[str, object]:
        return {"seq": self.seq, "hash": self.hash, "sig": self.signature}

    @classmethod
    def from_cbor(cls, value: object) -> SignedHead:
        if not isinstance(value, dict) or set(value) != {"seq", "hash", "sig"}:
            raise MalformedInput("a PKI head is {seq, hash, sig}")
        seq = _count(value["seq"], 0, "head seq")
        head_hash = _entry_cid(value["hash"], "a head's hash")
        if (head_hash is None) != (seq == 0):
            raise MalformedInput("a head names the CID of its entry (null for the empty log)")
        return cls(seq, head_hash, _signature(value["sig"], "head"))


def verify_head(head: SignedHead, pki_node: str) -> None:
    """Raise InvalidSignature unless `head` is signed by the PKI node `pki_node` (a peer id)."""
    peer_key(pki_node).verify(head.signed_part, head.signature, HEAD_CONTEXT)


# ================================================================================================
# the index the rules read, and what an entry changes in it


# Immutable values the rules make for every entry a mirror checks: named tuples, which cost
# half of what a frozen dataclass does to make.


class Tip(NamedTuple):
    """The last entry of a log: where the next one must link."""

    seq: int
    hash: CID
    time: int


class KeyUse(NamedTuple):
    """The one username an identity key ever served; `retired` once replaced or expired away."""

    username: str
    retired: bool


class Changes(NamedTuple):
    """What one accepted entry does to the index."""

    tip: Tip
    claim: Claim | None = None  # the username's new current claim
    keys: tuple[tuple[CID, KeyUse], ...] = ()
    node: NodeRecord | None = None  # the node's new current record


class PkiIndex(Protocol):
    """The state the rules read: a store-backed index at a node, dicts in tests and sims."""

    def tip(self) -> Tip | None: ...
    def entry_hash(self, seq: int) -> CID | None: ...
    def claim(self, username: str) -> Claim | None: ...
    def key_use(self, identity: CID) -> KeyUse | None: ...
    def node(self, node_id: str) -> NodeRecord | None: ...


class IndexOverlay:
    """Entries accepted but not yet stored, over a base index (None: an in-memory index).

    Verifying a batch applies each entry here, so later entries see earlier ones, and the
    caller writes all of it at once, or drops it and the base is untouched.
    """

    def __init__(self, base: PkiIndex | None = None) -> None:
        self._base = base
        self._tip = None if base is None else base.tip()
        self.entries: dict[int, Entry] = {}
        self.claims: dict[str, tuple[Claim, int]] = {}  # username -> (claim, seq of its entry)
        self.keys: dict[CID, KeyUse] = {}
        self.nodes: dict[str, tuple[NodeRecord, int]] = {}

    def tip(self) -> Tip | None:
        return self._tip

    def entry_hash(self, seq: int) -> CID | None:
        entry = self.entries.get(seq)
        if entry is not None:
            return entry.hash
        return None if self._base is None else self._base.entry_hash(seq)

    def claim(self, username: str) -> Claim | None:
        if username in self.claims:
            return self.claims[username][0]
        return None if self._base is None else self._base.claim(username)

    def key_use(self, identity: CID) -> KeyUse | None:
        if identity in self.keys:
            return self.keys[identity]
        return None if self._base is None else self._base.key_use(identity)

    def node(self, node_id: str) -> NodeRecord | None:
        if node_id in self.nodes:
            return self.nodes[node_id][0]
        return None if self._base is None else self._base.node(node_id)

    def apply(self, entry: Entry, changes: Changes) -> None:
        self.entries[entry.seq] = entry
        self._tip = changes.tip
        if changes.claim is not None:
            self.claims[changes.claim.username] = (changes.claim, entry.seq)
        self.keys.update(changes.keys)
        if changes.node is not None:
            self.nodes[changes.node.node] = (changes.node, entry.seq)


# ================================================================================================
# the rules


def next_entry(index: PkiIndex, record: Record, now: int) -> Entry:
    """The entry the PKI node appends for `record`: after its tip, dated now (never earlier
    than the tip, should its clock step back)."""
    tip = index.tip()
    if tip is None:
        return Entry(1, None, now, record)
    return Entry(tip.seq + 1, tip.hash, max(now, tip.time), record)


def apply_entry(index: PkiIndex, entry: Entry, now: int) -> Changes:
    """Every rule of the PKI log, in one place: what `entry` changes, or a typed error.

    `now` is this node's clock (seconds). Rules read only the index and the entry (and the
    entry's own time), so every node reaches the same verdict on the same log.

    The chain
      1. Entry seq is the tip's seq + 1 (1 for the first); prev is the tip's CID (null first).
      2. Time never goes back, and is at most MAX_CLOCK_SKEW ahead of this node's clock.
    Claims
      3. The username follows the rules; the claim is signed by its identity key and, for a
         key change, by the previous key; home and mirrors are Ed25519 node ids.
      4. The expiry lies after the entry's time, by at most MAX_CLAIM_LIFETIME.
      5. A key serves one username, ever, and once replaced never comes back.
      6. A free name goes to the first valid claim (first come, first served).
      7. The current key updates (home, mirrors) and renews; each update extends the expiry,
         so an old claim can never be replayed over a newer one.
      8. A key change names the current key as previous and carries its handover signature.
      9. Any other key is refused while the current claim lasts; once it has expired, the name
         is free again to a key that has never been used, and the old key retires.
    Node records
     10. Signed by the key the node id carries; each record's seq exceeds the last one's.
    """
    tip = index.tip()
    due = 1 if tip is None else tip.seq + 1
    if entry.seq != due:  # 1
        raise BrokenChain(f"PKI entry {entry.seq} arrived where entry {due} was due")
    if entry.prev != (None if tip is None else tip.hash):
        raise BrokenChain(f"PKI entry {entry.seq} does not link to entry {entry.seq - 1}")
    if tip is not None and entry.time < tip.time:  # 2
        raise BrokenChain(f"PKI entry {entry.seq} is dated before the entry it follows")
    if entry.time > now + MAX_CLOCK_SKEW:
        raise MalformedInput(
            f"PKI entry {entry.seq} is dated {entry.time - now} s in the future: "
            "check this node's clock"
        )
    new_tip = Tip(entry.seq, entry.hash, entry.time)
    record = entry.record

    if isinstance(record, NodeRecord):
        record.verify()  # 10
        last = index.node(record.node)
        if last is not None and record.seq <= last.seq:
            raise Conflict(
                f"node record {record.seq} of {record.node} is not after record {last.seq}"
            )
        return Changes(new_tip, node=record)

    claim, name = record, record.username
    claim.verify()  # 3
    check_peer_id(claim.home)
    for mirror in claim.mirrors:
        check_peer_id(mirror)
    if not entry.time < claim.expiry <= entry.time + MAX_CLAIM_LIFETIME:  # 4
        raise MalformedInput(
            f"a claim must expire within {MAX_CLAIM_LIFETIME} s of being logged, not before"
        )
    current = index.claim(name)
    use = index.key_use(claim.identity)
    if use is not None and (use.username != name or use.retired):  # 5
        raise Conflict(
            "this identity key serves another username"
            if use.username != name
            else f"this identity key was replaced as the key of {name!r} and cannot come back"
        )
    fresh = ((claim.identity, KeyUse(name, retired=False)),)
    if current is None:  # 6
        if claim.previous is not None:
            raise Conflict(f"{name!r} has no key to hand over from: claim it without one")
        return Changes(new_tip, claim=claim, keys=fresh)
    retire = ((current.identity, KeyUse(name, retired=True)),)
    if claim.identity == current.identity:  # 7
        if claim.previous is not None:
            raise Conflict("a key change must name a new key")
        if claim.expiry <= current.expiry:
            raise Conflict(
                f"an update of {name!r} must expire later than the claim it replaces "
                f"({current.expiry}); this may be a replayed claim"
            )
        return Changes(new_tip, claim=claim)
    if claim.previous is not None:  # 8
        if claim.previous != current.identity:
            raise Conflict(f"the key change does not start from the current key of {name!r}")
        if claim.expiry <= current.expiry:
            raise Conflict(f"a key change of {name!r} must expire later than the current claim")
        return Changes(new_tip, claim=claim, keys=retire + fresh)
    if current.expiry > entry.time:  # 9
        raise Conflict(f"the username {name!r} is taken")
    return Changes(new_tip, claim=claim, keys=retire + fresh)


def verify_served(
    index: PkiIndex, entries: Sequence[Entry], head: SignedHead, pki_node: str, now: int
) -> IndexOverlay:
    """Check what the PKI node served a mirror, before any of it is applied.

    `entries` are consecutive and `head` is the PKI node's signed head for the last of them
    (or, with no entries, its current head). Raises InvalidSignature for a forged head or
    record (or entries that do not lead to the signed head), ForkDetected when the served
    history differs from the one this node holds, BrokenChain for gaps and broken links, and
    the rule errors of `apply_entry`. Returns the accepted entries over `index`, unstored.
    """
    verify_head(head, pki_node)
    tip = index.tip()
    held = 0 if tip is None else tip.seq
    if 0 < head.seq <= held and index.entry_hash(head.seq) != head.hash:
        raise ForkDetected(
            f"the PKI node signed a head for entry {head.seq} with CID {head.hash}, "
            f"but this node holds {index.entry_hash(head.seq)} there: the PKI forked its history"
        )
    pending = IndexOverlay(index)
    for i, entry in enumerate(entries):
        if i and entry.seq != entries[i - 1].seq + 1:
            raise BrokenChain(f"served PKI entries skip from {entries[i - 1].seq} to {entry.seq}")
        if entry.seq <= held:
            if index.entry_hash(entry.seq) != entry.hash:
                raise ForkDetected(
                    f"the PKI node served a different entry {entry.seq} than it served before: "
                    "it forked its history"
                )
            continue
        if tip is not None and entry.seq == held + 1 and entry.prev != tip.hash:
            raise ForkDetected(
                f"the served entry {entry.seq} follows another entry {held} than this node "
                "holds: the PKI forked its history"
            )
        pending.apply(entry, apply_entry(pending, entry, now))
    if entries and (head.seq != entries[-1].seq or head.hash != entries[-1].hash):
        raise InvalidSignature(
            f"the served entries end at {entries[-1].seq} with CID {entries[-1].hash}, "
            f"which is not the head the PKI node signed ({head.seq}, {head.hash})"
        )
    return pending


# ================================================================================================
# a mirror's view of its PKI node

SYNC_INTERVAL: Final = 2.0  # seconds between a mirror's pulls while its PKI node answers
RETRY_FIRST: Final = 2.0  # seconds before the first retry after a failed pull
# A mirror notices its PKI node's return within a minute, and a PKI node that comes back sees
# at most one pull per mirror per minute meanwhile.
RETRY_CAP: Final = 60.0
# A retry waits between half and all of its backoff, drawn at random, so that mirrors that lost
# the PKI node together do not all come back to it in the same instant.
RETRY_JITTER: Final = 0.5


@dataclass
class SyncHealth:
    """Whether a mirror reaches its PKI node: the last success, the last error, the failures in
    a row since, and when the next pull is due (times in seconds of the node's clock)."""

    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    failures: int = 0
    next_retry: float | None = None

    @property
    def reachable(self) -> bool | None:
        """None until the first pull ended either way."""
        if self.last_success is None and self.last_error is None:
            return None
        return self.failures == 0

    def succeeded(self, now: float) -> None:
        self.last_success = now
        self.failures = 0

    def failed(self, now: float, message: str) -> None:
        self.last_error = message
        self.last_error_time = now
        self.failures += 1

    def delay(self, jitter: float) -> float:
        """Seconds until the next pull: the interval while the PKI node answers, else a backoff
        doubling from RETRY_FIRST up to RETRY_CAP, shortened by `jitter` (0 to 1) times
        RETRY_JITTER."""
        if self.failures == 0:
            return SYNC_INTERVAL
        backoff = min(RETRY_CAP, RETRY_FIRST * 2.0 ** min(self.failures - 1, 16))
        return backoff * (1.0 - RETRY_JITTER * min(max(jitter, 0.0), 1.0))

    def to_cbor(self) -> dict[str, object]:
        """Whole seconds, as every other time on the wire."""

        def seconds(moment: float | None) -> int | None:
            return None if moment is None else int(moment)

        return {
            "reachable": self.reachable,
            "last_success": seconds(self.last_success),
            "last_error": self.last_error,
            "last_error_time": seconds(self.last_error_time),
            "failures": self.failures,
            "next_retry": seconds(self.next_retry),
        }


# ================================================================================================
# who may submit what to the PKI node (checked there only: mirrors check the log, not its origin)

DAY: Final = 24 * 3600


def check_submission(index: PkiIndex, record: Record, submitter: str, pki_node: str) -> None:
    """Every rule of who may have a record appended, in one place (the PKI node, before
    `apply_entry`); `submitter` is the node that submitted it, as Noise authenticated it ("" for
    an anonymous client), or the PKI node itself for its own signups and record.

      1. A node record is submitted by the node it names.
      2. A claim's home is a node the PKI knows: the PKI node itself or a node with a record.
      3. A claim that gives a name to a key that does not hold it (a new name, or a name
         whose claim expired) is attested by its home: submitted by that node, after a
         signup there. So no name is claimed without an account on a node that answers for it.
      4. The current key's updates, renewals and key changes are signed by that key and may
         come from anyone (a client renews through whatever node it uses).
    """
    if isinstance(record, NodeRecord):
        if submitter not in (record.node, pki_node):  # 1
            raise Denied("a node record is submitted by the node it names")
        return
    if record.home != pki_node and index.node(record.home) is None:  # 2
        raise Denied(
            f"the claim's home {record.home} is not a node the PKI knows: a node publishes its "
            "record when it starts"
        )
    current = index.claim(record.username)
    owner_signed = current is not None and current.identity in (record.identity, record.previous)
    if not owner_signed and submitter != record.home:  # 3, 4
        raise Denied("a new claim is submitted by its home node, when a user signs up there")


@dataclass
class DailyLimit:
    """At most `limit` events per key (a source, a node) in each window of `window` seconds,
    the window starting at the key's first event. Events are taken before the work they allow
    and given back if it fails, so only what succeeded counts. Windows that ended are dropped
    as new keys arrive, so the table holds only the keys of the last window."""

    limit: int
    window: float = DAY
    _used: dict[str, tuple[float, int]] = field(default_factory=dict)

    def take(self, key: str, now: float, what: str) -> None:
        """Count one event for `key`, or raise RateLimited saying when to try again."""
        start, count = self._used.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if count >= self.limit:
            wait = int(start + self.window - now) + 1
            raise RateLimited(f"{what}: at most {self.limit} a day; try again in {wait} s")
        if key not in self._used:
            self._prune(now)
        self._used[key] = (start, count + 1)

    def give_back(self, key: str) -> None:
        start, count = self._used.get(key, (0.0, 0))
        if count > 1:
            self._used[key] = (start, count - 1)
        else:
            self._used.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k, (start, _) in self._used.items() if now - start >= self.window]:
            del self._used[key]

    def __len__(self) -> int:
        return len(self._used)
