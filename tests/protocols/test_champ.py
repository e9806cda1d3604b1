"""Tests of the merkle-CHAMP: a dict model, canonical roots, CAS, batch lookups, proofs, fuzzing."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor, champ
from protocols.champ import EMPTY_NODE, EMPTY_ROOT, KeyHashing, MemoryBlocks
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW, MH_IDENTITY
from protocols.errors import Conflict, Corrupted, MalformedInput, NotFound

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALUES = [CID.of(CODEC_RAW, bytes([i])) for i in range(5)]


def _identity_pool() -> list[bytes]:
    """Labels that collide a lot: deep ones share 252 hash bits, so a few of them go 51 deep."""
    rng = random.Random(5)
    deep = [bytes(31) + bytes([i]) for i in range(10)]
    shared = [bytes(rng.choice((1, 2, 4))) + rng.randbytes(32) for _ in range(14)]
    return deep + [key[:32] for key in shared] + [rng.randbytes(32) for _ in range(14)]


POOLS = {
    KeyHashing.IDENTITY: _identity_pool(),
    KeyHashing.BLAKE2B: [b"k%d" % i for i in range(40)] + [b"\x00", b"x" * 64],
}


class CountingBlocks(MemoryBlocks):
    """MemoryBlocks that records every get and put."""

    def __init__(self, blocks: list[bytes] | None = None) -> None:
        super().__init__(blocks or ())
        self.gets: list[CID] = []
        self.puts = 0

    async def get(self, cid: CID) -> bytes:
        self.gets.append(cid)
        return await super().get(cid)

    async def put(self, data: bytes) -> CID:
        self.puts += 1
        return await super().put(data)


def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return trio.run(fn, *args)


async def contents(source: champ.BlockSource, root: CID, hashing: KeyHashing) -> dict[bytes, CID]:
    found: dict[bytes, CID] = {}
    async for key, value in champ.items(source, root, hashing):
        assert key not in found
        found[key] = value
    return found


async def insert_all(
    sink: champ.BlockSink, keys: list[bytes], hashing: KeyHashing, root: CID = EMPTY_ROOT
) -> CID:
    for key in keys:
        root = await champ.put(sink, root, key, None, VALUES[key[-1] % len(VALUES)], hashing)
    return root


def value_of(key: bytes) -> CID:
    return VALUES[key[-1] % len(VALUES)]


# -- the model test ---------------------------------------------------------------------------

OPS = st.lists(
    st.tuples(
        # Grow the map enough to push down; remove_many takes a batch of the present keys.
        st.sampled_from(["put", "put", "put", "remove", "remove_many"]),
        st.integers(0, 41),  # key index (modulo the pool)
        st.integers(0, len(VALUES) - 1),  # new value
        st.sampled_from(["right", "right", "right", "wrong", "absent"]),  # what to expect
    ),
    min_size=10,
    max_size=80,
)


async def _model_run(hashing: KeyHashing, ops: list[tuple[str, int, int, str]]) -> None:
    pool = POOLS[hashing]
    store = CountingBlocks()
    model: dict[bytes, CID] = {}
    root = EMPTY_ROOT
    for action, key_index, value_index, expect in ops:
        if action == "remove_many":
            root = await _model_remove_many(store, model, root, hashing, key_index, expect)
            continue
        key = pool[key_index % len(pool)]
        value = VALUES[value_index]
        current = model.get(key)
        expected: CID | None
        if expect == "right":
            expected = current
        elif expect == "absent" and action == "put":
            expected = None
        else:
            expected = next(v for v in VALUES if v != current)
        if action == "remove" and expected is None:
            expected = VALUES[value_index]  # remove always names a value; the key is absent
        blocks_before, puts_before = dict(store.blocks), store.puts
        if expected != current:
            if action == "put":
                with pytest.raises(Conflict, match="expected the key"):
                    await champ.put(store, root, key, expected, value, hashing)
            else:
                assert expected is not None
                with pytest.raises(Conflict, match="expected the key"):
                    await champ.remove(store, root, key, expected, hashing)
            assert store.blocks == blocks_before
            assert store.puts == puts_before
            continue
        if action == "put":
            new_root = await champ.put(store, root, key, expected, value, hashing)
            unchanged = current == value
            model[key] = value
        else:
            assert expected is not None
            new_root = await champ.remove(store, root, key, expected, hashing)
            unchanged = False
            del model[key]
        # Only the nodes on the key's new path are written, and nothing for a no-op.
        path = await champ.lookup_blocks(store, new_root, [key], hashing)
        assert store.puts - puts_before == (0 if unchanged else len(path))
        assert (new_root == root) == unchanged
        root = new_root
        assert await contents(store, root, hashing) == model
        assert await champ.get(store, root, key, hashing) == model.get(key)
        assert root == await champ.build(MemoryBlocks(), model, hashing)


async def _model_remove_many(
    store: CountingBlocks,
    model: dict[bytes, CID],
    root: CID,
    hashing: KeyHashing,
    pick: int,
    expect: str,
) -> CID:
    """Remove a batch of the present keys (every (pick % 4 + 1)th, from pick on) at once;
    with a wrong or absent expectation among them, nothing is written."""
    present = sorted(model)
    step = pick % 4 + 1
    batch = {key: model[key] for key in present[pick % step :: step]}
    if expect == "wrong" and batch:
        key = next(iter(batch))
        batch[key] = next(v for v in VALUES if v != model[key])
    elif expect == "absent":
        absent = [key for key in POOLS[hashing] if key not in model]
        batch[absent[pick % len(absent)]] = VALUES[0]
    blocks_before, puts_before = dict(store.blocks), store.puts
    if expect in ("wrong", "absent") and batch:
        with pytest.raises(Conflict, match="expected the key"):
            await champ.remove_many(store, root, batch, hashing)
        assert store.blocks == blocks_before
        assert store.puts == puts_before
        return root
    new_root = await champ.remove_many(store, root, batch, hashing)
    scratch, one_by_one = MemoryBlocks(store.blocks.values()), root
    for key, value in batch.items():
        one_by_one = await champ.remove(scratch, one_by_one, key, value, hashing)
    for key in batch:
        del model[key]
    # The same root as one key at a time; only the nodes on the keys' new paths are written.
    assert new_root == one_by_one
    path = await champ.lookup_blocks(store, new_root, batch, hashing) if batch else []
    assert store.puts - puts_before == len(path)
    assert await contents(store, new_root, hashing) == model
    assert new_root == await champ.build(MemoryBlocks(), model, hashing)
    return new_root


@pytest.mark.parametrize("hashing", list(KeyHashing))
@FAST
@given(ops=OPS)
def test_matches_a_dict_model(hashing: KeyHashing, ops: list[tuple[str, int, int, str]]) -> None:
    run(_model_run, hashing, ops)


def test_deep_collisions_push_down_to_the_last_level_and_fold_back() -> None:
    async def scenario() -> None:
        store = MemoryBlocks()
        deep = POOLS[KeyHashing.IDENTITY][:10]
        root = await insert_all(store, deep, KeyHashing.IDENTITY)
        # 10 keys sharing 252 bits: a chain of 50 single-child nodes, then pairs at depth 50.
        assert len(await champ.lookup_blocks(store, root, deep[:1])) == 51
        assert await contents(store, root, KeyHashing.IDENTITY) == {k: value_of(k) for k in deep}
        for key in deep[3:]:
            root = await champ.remove(store, root, key, value_of(key))
        assert len(await champ.lookup_blocks(store, root, deep[:1])) == 1
        assert root == await champ.build(MemoryBlocks(), {k: value_of(k) for k in deep[:3]})
        for key in deep[:3]:
            root = await champ.remove(store, root, key, value_of(key))
        assert root == EMPTY_ROOT

    run(scenario)


def test_remove_many_folds_deep_chains_in_one_pass() -> None:
    async def scenario() -> None:
        store = CountingBlocks()
        deep = POOLS[KeyHashing.IDENTITY][:10]
        root = await insert_all(store, deep, KeyHashing.IDENTITY)
        store.gets.clear()
        puts = store.puts
        root = await champ.remove_many(store, root, {k: value_of(k) for k in deep[3:]})
        # The 51-node chain is read once and folds back into one root bucket.
        assert len(store.gets) == len(set(store.gets)) == 51
        assert store.puts - puts == 1
        assert root == await champ.build(MemoryBlocks(), {k: value_of(k) for k in deep[:3]})
        assert await champ.remove_many(store, root, {}) == root
        with pytest.raises(MalformedInput, match="32 bytes"):
            await champ.remove_many(store, root, {b"short": VALUES[0]})

    run(scenario)


# -- canonical form ---------------------------------------------------------------------------


@pytest.mark.parametrize("hashing", list(KeyHashing))
@FAST
@given(data=st.data())
def test_same_contents_same_root_whatever_the_history(
    hashing: KeyHashing, data: st.DataObject
) -> None:
    pool = POOLS[hashing]
    keys = data.draw(st.lists(st.sampled_from(pool), unique=True, max_size=30))
    shuffled = data.draw(st.permutations(keys))
    extra = data.draw(st.lists(st.sampled_from([k for k in pool if k not in keys]), unique=True))
    removal_order = data.draw(st.permutations(extra))

    async def scenario() -> None:
        first = await insert_all(MemoryBlocks(), keys, hashing)
        store = MemoryBlocks()
        second = await insert_all(store, shuffled + extra, hashing)
        for key in removal_order:
            second = await champ.remove(store, second, key, value_of(key), hashing)
        assert first == second
        assert first == await champ.build(MemoryBlocks(), {k: value_of(k) for k in keys}, hashing)

    run(scenario)


def test_empty_map() -> None:
    assert bytes.fromhex("844400000000440000000080" + "80") == EMPTY_NODE
    assert CID.of(CODEC_DAG_CBOR, EMPTY_NODE) == EMPTY_ROOT

    async def scenario() -> None:
        store = CountingBlocks()  # does not even hold the empty node
        assert await champ.get(store, EMPTY_ROOT, bytes(32)) is None
        assert await contents(store, EMPTY_ROOT, KeyHashing.IDENTITY) == {}
        assert await champ.build(store, {}) == EMPTY_ROOT
        assert await champ.lookup_blocks(store, EMPTY_ROOT, [bytes(32)]) == [EMPTY_NODE]
        assert await champ.get_many(store, EMPTY_ROOT, []) == {}
        assert store.gets == []

    run(scenario)


# -- compare-and-swap -------------------------------------------------------------------------


async def test_cas_conflicts_raise_and_change_nothing() -> None:
    store = MemoryBlocks()
    key, other = bytes(range(32)), bytes(range(1, 33))
    root = await champ.put(store, EMPTY_ROOT, key, None, VALUES[0])
    held = dict(store.blocks)
    with pytest.raises(Conflict, match="expected the key to be absent"):
        await champ.put(store, root, key, None, VALUES[1])
    with pytest.raises(Conflict, match="but it maps to"):
        await champ.put(store, root, key, VALUES[2], VALUES[1])
    with pytest.raises(Conflict, match="but it is absent"):
        await champ.put(store, root, other, VALUES[0], VALUES[1])
    with pytest.raises(Conflict, match="but it maps to"):
        await champ.remove(store, root, key, VALUES[1])
    with pytest.raises(Conflict, match="but it is absent"):
        await champ.remove(store, root, other, VALUES[0])
    assert store.blocks == held
    assert await champ.get(store, root, key) == VALUES[0]
    # Setting the value it already has is a no-op that writes nothing.
    assert await champ.put(store, root, key, VALUES[0], VALUES[0]) == root
    assert store.blocks == held
    replaced = await champ.put(store, root, key, VALUES[0], VALUES[1])
    assert await champ.get(store, replaced, key) == VALUES[1]


# -- batch lookups and proofs -----------------------------------------------------------------


@pytest.mark.parametrize("hashing", list(KeyHashing))
@FAST
@given(data=st.data())
def test_get_many_fetches_each_node_once_and_proofs_replay(
    hashing: KeyHashing, data: st.DataObject
) -> None:
    pool = POOLS[hashing]
    present = data.draw(st.lists(st.sampled_from(pool), unique=True, min_size=1))
    asked = data.draw(st.lists(st.sampled_from(pool), min_size=1))

    async def scenario() -> None:
        store = CountingBlocks()
        root = await champ.build(store, {k: value_of(k) for k in present}, hashing)
        store.gets.clear()
        found = await champ.get_many(store, root, asked, hashing)
        fetched = list(store.gets)
        assert len(fetched) == len(set(fetched))
        assert found == {k: (value_of(k) if k in present else None) for k in asked}
        for key in set(asked):
            assert await champ.get(store, root, key, hashing) == found[key]

        proof = await champ.lookup_blocks(store, root, asked, hashing)
        assert [CID.of(CODEC_DAG_CBOR, block) for block in proof] == fetched
        verifier = CountingBlocks(proof)
        assert await champ.get_many(verifier, root, asked, hashing) == found
        assert len(verifier.gets) == len(proof)

    run(scenario)


async def test_a_proof_does_not_answer_other_keys() -> None:
    keys = [bytes([i]) + bytes(31) for i in range(0, 256, 2)]
    store = MemoryBlocks()
    root = await champ.build(store, {k: value_of(k) for k in keys})
    proof = await champ.lookup_blocks(store, root, keys[:1])
    with pytest.raises(NotFound):
        await champ.get_many(MemoryBlocks(proof), root, keys)


async def test_a_block_that_does_not_match_its_cid_is_rejected() -> None:
    store = MemoryBlocks()
    root = await champ.put(store, EMPTY_ROOT, bytes(32), None, VALUES[0])
    store.blocks[root] = EMPTY_NODE
    with pytest.raises(Corrupted):
        await champ.get(store, root, bytes(32))


# -- key hashing ------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
async def test_identity_hashing_needs_32_byte_keys(length: int) -> None:
    store = MemoryBlocks()
    key = b"k" * length
    with pytest.raises(MalformedInput, match="32 bytes"):
        await champ.put(store, EMPTY_ROOT, key, None, VALUES[0])
    with pytest.raises(MalformedInput, match="32 bytes"):
        await champ.get(store, EMPTY_ROOT, key)
    with pytest.raises(MalformedInput, match="32 bytes"):
        await champ.get_many(store, EMPTY_ROOT, [bytes(32), key])
    with pytest.raises(MalformedInput, match="32 bytes"):
        await champ.remove(store, EMPTY_ROOT, key, VALUES[0])
    with pytest.raises(MalformedInput, match="32 bytes"):
        await champ.build(store, {key: VALUES[0]})


async def test_blake2b_hashing_takes_short_keys() -> None:
    store = MemoryBlocks()
    names = [b"alice", b"bob", b"c", b"d" * 64] + [b"user%d" % i for i in range(100)]
    root = await champ.build(store, {n: value_of(n) for n in names}, KeyHashing.BLAKE2B)
    assert await champ.get(store, root, b"alice", KeyHashing.BLAKE2B) == value_of(b"alice")
    assert await champ.get(store, root, b"mallory", KeyHashing.BLAKE2B) is None
    for bad in (b"", b"d" * 65):
        with pytest.raises(MalformedInput, match="1 to 64 bytes"):
            await champ.put(store, root, bad, None, VALUES[0], KeyHashing.BLAKE2B)
    # Reading the map with the wrong hashing is caught, not answered wrongly.
    with pytest.raises(MalformedInput):
        await champ.get(store, root, bytes(32), KeyHashing.IDENTITY)


# -- decoding: every rule, then fuzzing ------------------------------------------------------

LINK = CID.of(CODEC_DAG_CBOR, b"child")
K1, K2 = b"\x01" * 32, b"\x02" * 32
GOOD = [1, 2, [[[K1, VALUES[0]], [K2, VALUES[1]]]], [LINK]]


def _bitmap(value: Any) -> Any:
    """Integers become the 4-byte bit sets nodes carry; anything else is passed as it is."""
    if type(value) is int and 0 <= value < 1 << 32:
        return value.to_bytes(4, "big")
    return value


def _node(*parts: Any) -> bytes:
    return cbor.encode([_bitmap(parts[0]), _bitmap(parts[1]), *parts[2:]])


BAD_NODES = {
    "not a list": cbor.encode({"a": 1}),
    "an integer": cbor.encode(5),
    "three fields": _node(0, 0, []),
    "bool bitmap": _node(True, 0, [[[K1, VALUES[0]]]], []),
    "negative bitmap": _node(-1, 0, [], []),
    "bitmap too wide": _node(b"\x01" + bytes(4), 0, [[[K1, VALUES[0]]]], []),
    "integer bitmap": cbor.encode([1, 0, [[[K1, VALUES[0]]]], []]),
    "maps overlap": _node(1, 1, [[[K1, VALUES[0]]]], [LINK]),
    "bucket count": _node(3, 0, [[[K1, VALUES[0]]]], []),
    "child count": _node(0, 3, [], [LINK]),
    "buckets not a list": _node(0, 0, {}, []),
    "empty bucket": _node(1, 0, [[]], []),
    "four entries": _node(1, 0, [[[bytes([i]) * 32, VALUES[0]] for i in range(4)]], []),
    "entry of three": _node(1, 0, [[[K1, VALUES[0], 1]]], []),
    "text key": _node(1, 0, [[["k", VALUES[0]]]], []),
    "empty key": _node(1, 0, [[[b"", VALUES[0]]]], []),
    "long key": _node(1, 0, [[[b"k" * 65, VALUES[0]]]], []),
    "bytes value": _node(1, 0, [[[K1, b"v"]]], []),
    "null value": _node(1, 0, [[[K1, None]]], []),
    "unsorted keys": _node(1, 0, [[[K2, VALUES[0]], [K1, VALUES[0]]]], []),
    "duplicate keys": _node(1, 0, [[[K1, VALUES[0]], [K1, VALUES[1]]]], []),
    "raw child": _node(0, 1, [], [VALUES[0]]),
    "identity child": _node(0, 1, [], [CID(CODEC_DAG_CBOR, MH_IDENTITY, b"x")]),
    "bytes child": _node(0, 1, [], [b"x"]),
    "non-canonical integer": bytes([0x84, 0x18, 0x00, 0x00, 0x80, 0x80]),
    "trailing bytes": EMPTY_NODE + b"\x00",
    "oversized": _node(0, 0, [], [], b"x" * champ.MAX_NODE_SIZE),
}


def test_a_good_node_decodes() -> None:
    assert champ.node_links(_node(*GOOD)) == [LINK, VALUES[0], VALUES[1]]
    assert champ.node_links(EMPTY_NODE) == []


@pytest.mark.parametrize("name", sorted(BAD_NODES))
def test_malformed_nodes_are_rejected(name: str) -> None:
    with pytest.raises(MalformedInput):
        champ.node_links(BAD_NODES[name])


async def _rejected_in_place(blocks: list[bytes], root: CID, key: bytes) -> None:
    store = MemoryBlocks(blocks)
    with pytest.raises(MalformedInput):
        await champ.get(store, root, key)
    with pytest.raises(MalformedInput):
        await contents(store, root, KeyHashing.IDENTITY)


async def test_place_rules_are_checked_during_a_walk() -> None:
    zero = bytes(32)  # slot 0 at every depth
    # A key filed under slot 5 although its hash picks slot 0.
    misplaced = _node(1 << 5, 0, [[[zero, VALUES[0]]]], [])
    await _rejected_in_place([misplaced], CID.of(CODEC_DAG_CBOR, misplaced), zero)
    # A child node with only two entries should have been a bucket in its parent.
    small = _node(1, 0, [[[zero, VALUES[0]], [bytes(31) + b"\x01", VALUES[0]]]], [])
    parent = _node(0, 1, [], [CID.of(CODEC_DAG_CBOR, small)])
    await _rejected_in_place([small, parent], CID.of(CODEC_DAG_CBOR, parent), zero)
    # A child holding a key whose top bits say it belongs under another slot of the root.
    stray = b"\x08" + bytes(31)  # root slot 1
    keys = [bytes(31) + bytes([i]) for i in range(3)]
    child = _node(1, 0, [[[k, VALUES[0]] for k in [*keys, stray]]], [])
    parent = _node(0, 1, [], [CID.of(CODEC_DAG_CBOR, child)])
    await _rejected_in_place([child, parent], CID.of(CODEC_DAG_CBOR, parent), zero)
    # The last level (depth 51) has two slots and no children.
    for last in (_node(0, 1, [], [LINK]), _node(4, 0, [[[zero, VALUES[0]]]], [])):
        chain = [last]
        for _ in range(champ.MAX_DEPTH):
            chain.append(_node(0, 1, [], [CID.of(CODEC_DAG_CBOR, chain[-1])]))
        await _rejected_in_place(chain, CID.of(CODEC_DAG_CBOR, chain[-1]), zero)


async def test_root_must_be_a_dag_cbor_link() -> None:
    with pytest.raises(MalformedInput):
        await champ.get(MemoryBlocks(), VALUES[0], bytes(32))


CBOR_LEAF = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.binary(max_size=70),
    st.text(max_size=4),
    st.booleans(),
    st.none(),
    st.sampled_from([*VALUES, LINK]),
)
CBOR_VALUE = st.recursive(CBOR_LEAF, lambda inner: st.lists(inner, max_size=5), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=200), CBOR_VALUE.map(cbor.encode)))
def test_decode_fuzz_random(data: bytes) -> None:
    with contextlib.suppress(MalformedInput):
        champ.node_links(data)


def _sample_nodes() -> list[bytes]:
    async def make() -> list[bytes]:
        store = MemoryBlocks()
        keys = POOLS[KeyHashing.IDENTITY]
        root = await insert_all(store, keys, KeyHashing.IDENTITY)
        return await champ.lookup_blocks(store, root, keys)

    nodes: list[bytes] = trio.run(make)
    return nodes


SAMPLES = _sample_nodes()


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, bytes]:
    index = draw(st.integers(0, len(SAMPLES) - 1))
    data = bytearray(SAMPLES[index])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 3))]
        else:
            del data[at:]
    return index, bytes(data)


@settings(max_examples=300, deadline=None)
@given(case=mutated())
def test_decode_fuzz_mutated(case: tuple[int, bytes]) -> None:
    index, data = case
    with contextlib.suppress(MalformedInput):
        champ.node_links(data)

    async def walk() -> None:
        # The mutated block stands in for a node of the real map: a walk through it must
        # answer, or reject it, or miss a block, and nothing else.
        blocks = [data if i == index else block for i, block in enumerate(SAMPLES)]
        store = MemoryBlocks(blocks)
        root = CID.of(CODEC_DAG_CBOR, blocks[0])
        try:
            await champ.get_many(store, root, POOLS[KeyHashing.IDENTITY])
            await contents(store, root, KeyHashing.IDENTITY)
        except (MalformedInput, NotFound):
            pass

    run(walk)


# -- node_links and scale ---------------------------------------------------------------------


async def test_node_links_walk_reaches_every_node_and_value() -> None:
    rng = random.Random(1)
    entries = {rng.randbytes(32): CID.of(CODEC_RAW, rng.randbytes(8)) for _ in range(500)}
    store = MemoryBlocks()
    root = await champ.build(store, entries)
    seen_nodes, values, todo = set(), set(), [root]
    while todo:
        cid = todo.pop()
        seen_nodes.add(cid)
        for link in champ.node_links(store.blocks[cid]):
            if link.codec == CODEC_DAG_CBOR:
                todo.append(link)
            else:
                values.add(link)
    assert seen_nodes == set(store.blocks)
    assert values == set(entries.values())


async def test_ten_thousand_entries() -> None:
    rng = random.Random(2)
    entries = {rng.randbytes(32): CID.of(CODEC_RAW, rng.randbytes(8)) for _ in range(10_000)}
    keys = list(entries)
    store = CountingBlocks()
    root = await champ.build(store, entries)
    absent = [rng.randbytes(32) for _ in range(100)]
    found = await champ.get_many(store, root, keys + absent)
    assert found == {**entries, **dict.fromkeys(absent)}
    assert len(store.gets) == len(store.blocks)  # every node once, none twice
    assert await contents(store, root, KeyHashing.IDENTITY) == entries
    for key in keys[:150]:
        root = await champ.remove(store, root, key, entries.pop(key))
    for key in absent[:50]:
        entries[key] = VALUES[0]
        root = await champ.put(store, root, key, None, VALUES[0])
    assert root == await champ.build(MemoryBlocks(), entries)
    assert await champ.get_many(store, root, keys[140:160]) == {
        k: entries.get(k) for k in keys[140:160]
    }


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(st.binary(min_size=32, max_size=32), st.sampled_from(VALUES), max_size=60),
    st.dictionaries(st.binary(min_size=32, max_size=32), st.sampled_from(VALUES), max_size=60),
)
def test_put_many_equals_puts_one_by_one(before: dict[bytes, CID], added: dict[bytes, CID]) -> None:
    added = {k: v for k, v in added.items() if k not in before}

    async def check() -> None:
        blocks = MemoryBlocks()
        root = await champ.build(blocks, before)
        one_by_one = root
        for key, value in added.items():
            one_by_one = await champ.put(blocks, one_by_one, key, None, value)
        assert await champ.put_many(blocks, root, added) == one_by_one
        if before:
            written = len(blocks.blocks)
            with pytest.raises(Conflict):
                await champ.put_many(blocks, root, {**added, next(iter(before)): VALUES[0]})
            assert len(blocks.blocks) == written

    trio.run(check)
