"""The PKI log over a node's store (node/server/_pki.py): appends at the PKI node, first come
first served under races, durable state, syncing mirrors, and refusals that change nothing."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from node.server._pki import MAX_PAGE_ENTRIES, MAX_REFUSALS, PkiLog, _key_use, _with_seq
from node.store import Space, Store
from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import SigningKey
from protocols.errors import Conflict, Denied, InvalidName, InvalidSignature, MalformedInput
from protocols.peerid import peer_id_of
from protocols.pki import (
    CLAIM_LIFETIME,
    Claim,
    Entry,
    IndexOverlay,
    KeyUse,
    NodeRecord,
    Record,
    SignedHead,
    apply_entry,
    next_entry,
    verify_head,
)

T0 = 1_700_000_000
ROOT = SigningKey.from_seed(b"pki root key, for tests only....")
ROOT_ID = peer_id_of(ROOT.public)


@functools.cache
def key(n: int) -> SigningKey:
    return SigningKey.from_seed(n.to_bytes(32, "big"))


HOME = peer_id_of(key(10_000_001).public)


def claim(
    username: str, who: int, expiry: int = T0 + CLAIM_LIFETIME, previous: int | None = None
) -> Claim:
    old = None if previous is None else key(previous)
    return Claim.create(key(who), username, HOME, expiry, previous=old)


def node_record(seq: int, addrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/4001",)) -> NodeRecord:
    return NodeRecord.create(key(10_000_001), addrs, seq)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[dict[str, Store]]:
    opened: dict[str, Store] = {}

    class Opener(dict[str, Store]):
        def __missing__(self, name: str) -> Store:
            opened[name] = self[name] = Store(tmp_path / name)
            return opened[name]

    yield Opener()
    for store in opened.values():
        store.close()


@pytest.fixture
def root(stores: dict[str, Store]) -> PkiLog:
    return PkiLog(stores["root"], ROOT_ID, ROOT)


@pytest.fixture
def mirror(stores: dict[str, Store]) -> PkiLog:
    return PkiLog(stores["mirror"], ROOT_ID)


def pki_state(store: Store) -> list[tuple[bytes, bytes]]:
    """Everything of the PKI keyspace but the refusals a mirror records."""
    return [(k, v) for k, v in store.items(Space.PKI) if not k.startswith(b"R")]


def sync(mirror: PkiLog, source: PkiLog, limit: int = MAX_PAGE_ENTRIES, now: int = T0) -> int:
    """Pull pages from `source` until caught up; the number of entries applied."""
    applied = 0
    while True:
        page = source.page(mirror.seq(), limit)
        assert page.head is not None
        result = mirror.apply_from_mirror(page.entries, page.head.to_cbor(), now=now)
        assert result.refusal is None, result.refusal
        applied += result.applied
        if not result.behind and result.applied == 0:
            return applied


def fill(root: PkiLog, n: int, first: int = 0) -> list[Entry]:
    return [root.append(claim(f"user{first + i}", 100 + first + i), now=T0) for i in range(n)]


# ================================================================================================
# the PKI node


def test_append_lookup_and_head(root: PkiLog) -> None:
    head = root.head()
    assert head is not None
    assert (head.seq, head.hash) == (0, None)
    verify_head(head, ROOT_ID)
    entry = root.append(claim("alice", 1), now=T0)
    assert (entry.seq, entry.prev, entry.time) == (1, None, T0)
    assert root.lookup("alice") == claim("alice", 1)
    assert root.lookup("bob") is None
    assert root.owner(key(1).public.key_hash()) == "alice"
    assert root.owner(key(2).public.key_hash()) is None
    head = root.head()
    assert head is not None
    assert (head.seq, head.hash) == (1, entry.hash)
    verify_head(head, ROOT_ID)
    second = root.append(node_record(1), now=T0 + 5)
    assert second.prev == entry.hash
    assert root.node_record(HOME) == node_record(1)
    assert root.entries(0, 10) == [entry, second]
    assert root.entries(1, 10) == [second]
    assert root.entries(0, 1) == [entry]
    assert root.entries(2, 10) == []
    first = root.head_at(1)
    assert first is not None
    assert (first.seq, first.hash) == (1, entry.hash)
    verify_head(first, ROOT_ID)
    assert root.head_at(3) is None
    status = root.status()
    assert (status.role, status.seq, status.hash, status.last_sync) == (
        "root",
        2,
        second.hash,
        None,
    )


def test_a_clock_that_steps_back_does_not_stop_the_pki_node(root: PkiLog) -> None:
    later = root.append(claim("alice", 1), now=T0 + 3600)
    entry = root.append(claim("bob", 2), now=T0)
    assert entry.time == later.time


def test_appends_are_durable(stores: dict[str, Store], tmp_path: Path) -> None:
    root = PkiLog(stores["root"], ROOT_ID, ROOT)
    first = root.append(claim("alice", 1), now=T0)
    stores["root"].close()
    store = Store(tmp_path / "root")
    try:
        again = PkiLog(store, ROOT_ID, ROOT)
        assert again.lookup("alice") == claim("alice", 1)
        assert again.append(claim("bob", 2), now=T0).prev == first.hash
    finally:
        store.close()


def test_refused_appends_change_nothing(root: PkiLog, stores: dict[str, Store]) -> None:
    root.append(claim("alice", 1, expiry=T0 + 100), now=T0)
    before = pki_state(stores["root"])
    for record, error in (
        (claim("alice", 2), Conflict),  # taken
        (claim("bob", 1), Conflict),  # the key serves alice
        (claim("alice", 1, expiry=T0 + 99), Conflict),  # an older expiry
        (replace(claim("bob", 2), signature=bytes(64)), InvalidSignature),
        (claim("admin", 3), InvalidName),
        (claim("bob", 2, expiry=T0), MalformedInput),  # expired already
        (replace(node_record(1), seq=2), InvalidSignature),
    ):
        with pytest.raises(error):
            root.append(record, now=T0)
        assert pki_state(stores["root"]) == before


def test_the_same_record_again_is_answered_with_its_entry(root: PkiLog) -> None:
    first = root.append(claim("alice", 1), now=T0)
    root.append(claim("bob", 2), now=T0)
    assert root.append(claim("alice", 1), now=T0 + 10) == first  # a retried signup
    assert root.seq() == 2
    record = node_record(3)
    held = root.append(record, now=T0)
    assert root.append(record, now=T0) == held
    # A record that is no longer the current one is a replay, and refused.
    root.append(claim("alice", 1, expiry=T0 + CLAIM_LIFETIME + 1), now=T0)
    with pytest.raises(Conflict):
        root.append(claim("alice", 1), now=T0)


def race(root: PkiLog, records: Sequence[Claim]) -> tuple[list[Claim], list[Conflict]]:
    """Append `records` from one thread each, released together; (accepted, refusals)."""
    barrier = threading.Barrier(len(records))
    won: list[Claim] = []
    lost: list[Conflict] = []

    def contend(record: Claim) -> None:
        barrier.wait()
        try:
            root.append(record, now=T0)
            won.append(record)
        except Conflict as exc:
            lost.append(exc)

    threads = [threading.Thread(target=contend, args=(record,)) for record in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won, lost


@pytest.mark.parametrize("contenders", [2, 8])
def test_a_race_for_one_name_has_one_winner(root: PkiLog, contenders: int) -> None:
    for round_ in range(10):
        name = f"race{round_}"
        base = 1000 + round_ * contenders
        won, lost = race(root, [claim(name, base + i) for i in range(contenders)])
        assert len(won) == 1
        assert len(lost) == contenders - 1
        assert root.lookup(name) == won[0]
    assert root.seq() == 10


def test_key_changes_expiry_and_renewal_through_the_store(
    root: PkiLog, mirror: PkiLog, stores: dict[str, Store]
) -> None:
    root.append(claim("alice", 1, expiry=T0 + 100), now=T0)
    root.append(claim("alice", 2, previous=1, expiry=T0 + 200), now=T0 + 1)
    root.append(claim("alice", 3, previous=2, expiry=T0 + 300), now=T0 + 2)
    assert root.owner(key(3).public.key_hash()) == "alice"
    assert root.owner(key(1).public.key_hash()) is None
    before = pki_state(stores["root"])
    for old in (1, 2):
        with pytest.raises(Conflict):
            root.append(claim("alice", old, expiry=T0 + 400), now=T0 + 3)
        with pytest.raises(Conflict):
            root.append(claim("alice", old, previous=3, expiry=T0 + 400), now=T0 + 3)
    with pytest.raises(Conflict):  # still alice's
        root.append(claim("alice", 4, expiry=T0 + 400), now=T0 + 299)
    assert pki_state(stores["root"]) == before
    renewed = claim("alice", 3, expiry=T0 + 250 + CLAIM_LIFETIME)
    root.append(renewed, now=T0 + 250)
    with pytest.raises(Conflict):
        root.append(claim("alice", 4, expiry=T0 + 400 + CLAIM_LIFETIME), now=T0 + 400)
    # Expired: the name goes to the first new key; the old one retires.
    root.append(claim("alice", 4, expiry=T0 + 2 * CLAIM_LIFETIME), now=renewed.expiry)
    assert root.owner(key(3).public.key_hash()) is None
    assert sync(mirror, root, now=renewed.expiry) == 5
    assert mirror.lookup("alice") == root.lookup("alice")


# ================================================================================================
# roles


def test_roles_and_the_followed_pki_node(stores: dict[str, Store], root: PkiLog) -> None:
    mirror = PkiLog(stores["mirror"], ROOT_ID)
    assert mirror.role == "mirror"
    assert mirror.head() is None
    with pytest.raises(Denied):
        mirror.append(claim("alice", 1))
    with pytest.raises(Denied):
        root.apply_from_mirror([], {})
    with pytest.raises(MalformedInput):
        PkiLog(stores["other"], ROOT_ID, key(5))  # a key that is not the PKI node's
    with pytest.raises(MalformedInput):
        PkiLog(stores["other"], "test-node")
    with pytest.raises(Conflict):  # this database follows another PKI node
        PkiLog(stores["mirror"], peer_id_of(key(6).public))


# ================================================================================================
# mirrors


def test_a_mirror_syncs_everything_in_pages(root: PkiLog, mirror: PkiLog) -> None:
    fill(root, 30)
    root.append(node_record(1), now=T0)
    root.append(claim("user3", 500, previous=103, expiry=T0 + CLAIM_LIFETIME + 1), now=T0)
    root.append(node_record(2, addrs=[]), now=T0)
    assert sync(mirror, root, limit=7) == 33
    for i in range(30):
        assert mirror.lookup(f"user{i}") == root.lookup(f"user{i}")
    assert mirror.node_record(HOME) == node_record(2, addrs=[])
    assert mirror.owner(key(500).public.key_hash()) == "user3"
    assert mirror.head() == root.head()
    assert mirror.entries(0, 100) == root.entries(0, 100)
    status = mirror.status()
    assert (status.role, status.seq, status.last_sync, status.refusals) == ("mirror", 33, T0, ())
    assert status.hash == root.entries(32, 1)[0].hash
    # Nothing new: a sync that only checks the head.
    assert sync(mirror, root, now=T0 + 60) == 0
    assert mirror.status().last_sync == T0 + 60


def test_mirrors_serve_mirrors(root: PkiLog, mirror: PkiLog, stores: dict[str, Store]) -> None:
    fill(root, 25)
    sync(mirror, root, limit=10)  # the mirror holds the PKI node's heads at 10, 20 and 25
    second = PkiLog(stores["second"], ROOT_ID)
    assert sync(second, mirror, limit=3) == 25  # pages stretch to the heads the mirror holds
    assert second.head() == root.head()
    third = PkiLog(stores["third"], ROOT_ID)
    assert sync(third, mirror, limit=1000) == 25


def test_pages_keep_to_their_limits(root: PkiLog) -> None:
    entries = fill(root, 5)
    page = root.page(0, limit=1000, max_bytes=1)
    assert page.entries == [entries[0].encoded]  # at least one entry, whatever the budget
    assert page.head is not None
    assert (page.head.seq, page.head.hash) == (1, entries[0].hash)
    page = root.page(1, limit=2)
    assert page.entries == [e.encoded for e in entries[1:3]]
    page = root.page(5)
    assert page.entries == []
    assert page.head == root.head()
    assert root.page(-7, limit=0).entries == [entries[0].encoded]
    assert set(root.page(0).to_cbor()) == {"entries", "head"}


# ------------------------------------------------------------------------------------------------
# what a mirror refuses


def rogue(entries: Sequence[Entry], *records: Record, pki_key: SigningKey = ROOT) -> list[Entry]:
    """A history signed with `pki_key` that continues `entries` with `records`, unchecked."""
    out = list(entries)
    for record in records:
        prev = out[-1].hash if out else None
        out.append(Entry(len(out) + 1, prev, T0, record))
    return out


def head_of(entries: Sequence[Entry], pki_key: SigningKey = ROOT) -> dict[str, object]:
    last = entries[-1]
    return SignedHead.create(pki_key, last.seq, last.hash).to_cbor()


def wire(entries: Sequence[Entry]) -> list[object]:
    return [entry.encoded for entry in entries]


@pytest.fixture
def synced(root: PkiLog, mirror: PkiLog) -> list[Entry]:
    """A mirror holding entries 1-5 of the PKI node's log."""
    entries = fill(root, 5)
    sync(mirror, root)
    return entries


def refuse(
    mirror: PkiLog, store: Store, entries: Sequence[object], head: object, kind: str
) -> None:
    before = pki_state(store)
    result = mirror.apply_from_mirror(entries, head, now=T0)
    assert result.refusal is not None
    assert result.refusal.kind == kind, result.refusal
    assert (result.applied, result.seq) == (0, 5)
    assert not result.behind
    assert pki_state(store) == before
    assert mirror.status().refusals[-1] == result.refusal


def test_a_forged_record_is_refused(
    synced: list[Entry], mirror: PkiLog, stores: dict[str, Store]
) -> None:
    forged = replace(claim("mallory", 66), signature=bytes(64))
    served = rogue(synced, claim("eve", 65), forged)
    # Even when the PKI node's own key signs the head over it.
    refuse(mirror, stores["mirror"], wire(served[5:]), head_of(served), "forged")
    # A relay that swaps a record under a genuine head.
    honest = rogue(synced, claim("eve", 65))
    swapped = rogue(synced, claim("eve", 67))
    refuse(mirror, stores["mirror"], wire(swapped[5:]), head_of(honest), "forged")
    # A head signed by another key.
    refuse(mirror, stores["mirror"], wire(honest[5:]), head_of(honest, key(68)), "forged")
    # A record the rules refuse: a taken name.
    stolen = rogue(synced, claim("user0", 69))
    refuse(mirror, stores["mirror"], wire(stolen[5:]), head_of(stolen), "rule")


def test_a_broken_chain_is_refused(
    synced: list[Entry], mirror: PkiLog, stores: dict[str, Store]
) -> None:
    served = rogue(synced, claim("eve", 65), claim("frank", 66), claim("grace", 67))
    relinked = [served[5], replace(served[6], prev=served[4].hash), served[7]]
    refuse(mirror, stores["mirror"], wire(relinked), head_of(relinked), "broken")
    gap = [served[5], served[7]]
    refuse(mirror, stores["mirror"], wire(gap), head_of(gap), "broken")
    refuse(mirror, stores["mirror"], wire(served[6:]), head_of(served), "broken")  # skips 6


def test_a_fork_is_refused_and_reported(
    synced: list[Entry], mirror: PkiLog, stores: dict[str, Store], root: PkiLog
) -> None:
    fork = rogue(synced[:3], claim("eve", 65), claim("frank", 66), claim("grace", 67))
    assert fork[3] != synced[3]
    refuse(mirror, stores["mirror"], [], head_of(fork[:4]), "fork")  # a head for entry 4
    refuse(mirror, stores["mirror"], wire(fork[3:5]), head_of(fork[:5]), "fork")
    refuse(mirror, stores["mirror"], wire(fork[5:]), head_of(fork), "fork")  # builds on it
    refusals = mirror.status().refusals
    assert [r.kind for r in refusals] == ["fork"] * 3
    # The same refusal again is counted, not repeated.
    refuse(mirror, stores["mirror"], wire(fork[5:]), head_of(fork), "fork")
    again = mirror.status().refusals
    assert len(again) == 3
    assert again[-1].count == 2
    # The mirror kept its history, and takes the honest continuation.
    assert mirror.lookup("user3") == claim("user3", 103)
    assert mirror.lookup("eve") is None
    fill(root, 2, first=5)
    assert sync(mirror, root) == 2


def test_garbage_is_refused(synced: list[Entry], mirror: PkiLog, stores: dict[str, Store]) -> None:
    served = rogue(synced, claim("eve", 65))
    head = head_of(served)
    refuse(mirror, stores["mirror"], ["not bytes"], head, "malformed")
    refuse(mirror, stores["mirror"], [b"\xff\x00"], head, "malformed")
    refuse(mirror, stores["mirror"], wire(served[5:]), {"seq": 6}, "malformed")
    refuse(mirror, stores["mirror"], wire(served[5:]), None, "malformed")
    refuse(mirror, stores["mirror"], [b""] * (MAX_PAGE_ENTRIES + 1), head, "malformed")
    refuse(mirror, stores["mirror"], [served[5].encoded + bytes(9000)], head, "malformed")


def test_entries_from_the_future_wait_for_the_clock(
    root: PkiLog, mirror: PkiLog, stores: dict[str, Store]
) -> None:
    fill(root, 3)
    page = root.page(0)
    assert page.head is not None
    result = mirror.apply_from_mirror(page.entries, page.head, now=T0 - 3600)
    assert result.refusal is not None
    assert result.refusal.kind == "malformed"
    assert "clock" in result.refusal.reason
    assert mirror.seq() == 0
    assert mirror.apply_from_mirror(page.entries, page.head, now=T0).applied == 3


def test_refusals_are_bounded(synced: list[Entry], mirror: PkiLog) -> None:
    for n in range(MAX_REFUSALS + 20):
        fork = rogue(synced[:4], claim(f"eve{n}", 1000 + n))
        result = mirror.apply_from_mirror([], head_of(fork))
        assert result.refusal is not None
    refusals = mirror.status().refusals
    assert len(refusals) == MAX_REFUSALS
    assert "eve" not in refusals[0].reason  # reasons name entries, never what they hold
    assert all(r.kind == "fork" for r in refusals)


# ================================================================================================
# scale


def test_ten_thousand_claims_sync_quickly(root: PkiLog, stores: dict[str, Store]) -> None:
    n = 10_000
    records = [claim(f"u{i}", 20_000 + i) for i in range(n)]
    started = time.perf_counter()
    for record in records:
        root.append(record, now=T0)
    appended = time.perf_counter() - started
    fresh = PkiLog(stores["fresh"], ROOT_ID)
    started = time.perf_counter()
    assert sync(fresh, root) == n
    synced = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(0, n, 10):
        assert fresh.lookup(f"u{i}") is not None
    lookup = (time.perf_counter() - started) / (n // 10)
    print(
        f"\nPKI: {n / appended:,.0f} appends/s at the PKI node, {n / synced:,.0f} entries/s "
        f"synced to a fresh mirror, lookup {lookup * 1e6:.0f} us at {n:,} users"
    )
    assert n / synced > 1000
    assert lookup < 0.001
    assert fresh.head() == root.head()


def test_the_pure_rules_and_the_store_agree(root: PkiLog) -> None:
    entries = fill(root, 10)
    index = IndexOverlay()
    for entry in entries:
        index.apply(entry, apply_entry(index, entry, T0))
    following = next_entry(index, claim("zed", 999), T0)
    assert root.append(claim("zed", 999), now=T0) == following
    assert index.tip() is not None
    assert CID.of(CODEC_DAG_CBOR, following.encoded) == following.hash


def test_the_index_stores_each_record_with_its_seq_as_cbor_of_the_pair(root: PkiLog) -> None:
    mirrored = Claim.create(key(7), "mirrored", HOME, T0 + CLAIM_LIFETIME, mirrors=[ROOT_ID])
    for record in (claim("alice", 1), mirrored, node_record(3)):
        entry = root.append(record, T0)
        found = (
            root.index.claim_and_seq(record.username)  # type: ignore[attr-defined]
            if isinstance(record, Claim)
            else root.index.node_and_seq(record.node)  # type: ignore[attr-defined]
        )
        assert found == (record, entry.seq)
        assert _with_seq(record.encoded, entry.seq) == cbor.encode([record.to_cbor(), entry.seq])


@pytest.mark.parametrize("username", ["a", "alice", "x" * 32])
@pytest.mark.parametrize("retired", [False, True])
def test_a_key_use_is_stored_as_cbor_of_its_pair(username: str, retired: bool) -> None:
    assert _key_use(KeyUse(username, retired)) == cbor.encode([username, retired])
