"""The merkle-CHAMP: a persistent, canonical hash-array-mapped prefix trie from byte keys to CIDs.

Pure: blocks come and go only through the `BlockSource` / `BlockSink` protocols. The rules
(DESIGN §5), all of them in this module:

- Hash: `KeyHashing.IDENTITY` uses a 32-byte random label as its own 256-bit hash;
  `KeyHashing.BLAKE2B` hashes a key of 1..64 bytes with BLAKE2b-256. The slot at depth d is
  bits [5d, 5d+5) of the hash read most-significant-bit first (32-way); the last level, depth
  51, has only the one remaining bit.
- Node: the dag-cbor list `[datamap, nodemap, buckets, children]`; the maps are 4-byte
  big-endian bit sets. Bit i of datamap (nodemap)
  says slot i holds a bucket (a child); the two are disjoint. Buckets come in ascending slot
  order, each a list of 1..3 `[key, value CID]` pairs sorted by key bytes; children are
  sha2-256 dag-cbor links in ascending slot order. The empty map has two zero bitmaps and no
  buckets or children.
- Canonical: a child node exists only when its subtree holds more than MAX_BUCKET entries. A
  4th entry in a bucket pushes the bucket down into a child (recursively while they collide);
  a removal that leaves a child's subtree with MAX_BUCKET entries or fewer folds it back into
  a bucket. So the same contents give the same root whatever the history.
- Put and remove are compare-and-swap on the key's current value (`_check_expected`); a
  mismatch raises Conflict and writes nothing. They write only the new nodes of the changed
  path. Their batch forms (`put_many`, `remove_many`) walk the union of the keys' paths once
  and give the same root as one key at a time.
- Decoding validates a node fully (`_decode_node`) and raises only MalformedInput; every
  fetched block is checked against its CID (Corrupted otherwise).
- A batch lookup walks shared prefixes once: one fetch per distinct node on the union of the
  paths, and the same walk yields those blocks as a proof (`lookup_blocks`).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol, TypeAlias

from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR, MH_SHA2_256
from protocols.errors import Conflict, Corrupted, MalformedInput, NotFound, TooLarge

BIT_WIDTH: Final = 5  # 32-way fan-out: a 10,000-entry map is three levels deep
MAX_BUCKET: Final = 3  # entries in a bucket before it is pushed down into a child node
HASH_BITS: Final = 256
MAX_DEPTH: Final = (HASH_BITS - 1) // BIT_WIDTH  # 51: the last level, holding the last bit
# A lookup path of 12 nodes means four keys share 55 bits: never by chance for random labels
# (a map of 10^12 entries has paths of about 9), only in a map built to make walks expensive.
MAX_PATH_NODES: Final = 12
LABEL_SIZE: Final = 32  # a random label is its own hash under IDENTITY
MAX_KEY: Final = 64  # longest key BLAKE2B accepts; bounds the node size
# A full node: 32 slots x 3 entries x (64-byte key + 41-byte CID + CBOR headers) < 12 KiB.
MAX_NODE_SIZE: Final = 16 * 1024

Entry: TypeAlias = tuple[bytes, CID]
Bucket: TypeAlias = tuple[Entry, ...]


class BlockSource(Protocol):
    """Where the CHAMP reads its nodes from."""

    async def get(self, cid: CID) -> bytes:
        """The block named `cid`; raises NotFound when it is not held."""
        ...


class BlockSink(BlockSource, Protocol):
    """Where the CHAMP writes the nodes a put or remove creates."""

    async def put(self, data: bytes) -> CID:
        """Store a dag-cbor block; return `CID.of(CODEC_DAG_CBOR, data)`."""
        ...


class KeyHashing(enum.Enum):
    """How a key becomes the 256-bit hash whose bits pick its slots."""

    IDENTITY = "identity"  # keys are random 32-byte labels, already uniform
    BLAKE2B = "blake2b"  # keys of 1..64 bytes that are not random (names, small ints)


BITMAP_BYTES: Final = 4  # fixed width: a node's length shows how much it holds, not where
EMPTY_NODE: Final = cbor.encode([bytes(BITMAP_BYTES), bytes(BITMAP_BYTES), [], []])
EMPTY_ROOT: Final = CID.of(CODEC_DAG_CBOR, EMPTY_NODE)


def _key_hash(key: bytes, hashing: KeyHashing) -> int:
    if hashing is KeyHashing.IDENTITY:
        if len(key) != LABEL_SIZE:
            raise MalformedInput(
                f"a CHAMP key under identity hashing must be {LABEL_SIZE} bytes, not {len(key)}"
            )
        digest = key
    else:
        if not 1 <= len(key) <= MAX_KEY:
            raise MalformedInput(f"a CHAMP key must be 1 to {MAX_KEY} bytes, not {len(key)}")
        digest = hashlib.blake2b(key, digest_size=32).digest()
    return int.from_bytes(digest, "big")


def _width(depth: int) -> int:
    return min(BIT_WIDTH, HASH_BITS - BIT_WIDTH * depth)


def _slot(key_hash: int, depth: int) -> int:
    width = _width(depth)
    return (key_hash >> (HASH_BITS - BIT_WIDTH * depth - width)) & ((1 << width) - 1)


def _slots_of(bitmap: int) -> list[int]:
    return [slot for slot in range(bitmap.bit_length()) if bitmap >> slot & 1]


def _entry_key(entry: Entry) -> bytes:
    return entry[0]


class _At(NamedTuple):
    """Where a node sits: its depth, the hash bits above it, and how keys hash (None: unchecked)."""

    hashing: KeyHashing | None
    depth: int = 0
    prefix: int = 0

    def child(self, slot: int) -> _At:
        return _At(self.hashing, self.depth + 1, (self.prefix << _width(self.depth)) | slot)


@dataclass(frozen=True, slots=True)
class _Node:
    buckets: dict[int, Bucket]
    children: dict[int, CID]

    @property
    def size(self) -> int:
        """Entries held directly in buckets (not in children)."""
        return sum(len(bucket) for bucket in self.buckets.values())

    def with_bucket(self, slot: int, bucket: Bucket) -> _Node:
        buckets = dict(self.buckets)
        children = dict(self.children)
        children.pop(slot, None)
        if bucket:
            buckets[slot] = bucket
        else:
            buckets.pop(slot, None)
        return _Node(buckets, children)

    def with_child(self, slot: int, child: CID) -> _Node:
        buckets = dict(self.buckets)
        children = dict(self.children)
        buckets.pop(slot, None)
        children[slot] = child
        return _Node(buckets, children)


def _bitmap(slots: Iterable[int]) -> bytes:
    return sum(1 << slot for slot in slots).to_bytes(BITMAP_BYTES, "big")


def _encode_node(node: _Node) -> bytes:
    buckets = [[[key, value] for key, value in node.buckets[slot]] for slot in sorted(node.buckets)]
    children = [node.children[slot] for slot in sorted(node.children)]
    return cbor.encode([_bitmap(node.buckets), _bitmap(node.children), buckets, children])


def _decode_node(data: bytes, at: _At | None) -> _Node:
    """Decode and validate one node; `at` adds the checks that need its place in the trie."""
    if len(data) > MAX_NODE_SIZE:
        raise MalformedInput(f"CHAMP node of {len(data)} bytes is over {MAX_NODE_SIZE}")
    value = cbor.decode(data, limit=MAX_NODE_SIZE)
    if not isinstance(value, list) or len(value) != 4:
        raise MalformedInput("CHAMP node must be a list [datamap, nodemap, buckets, children]")
    raw_datamap, raw_nodemap, raw_buckets, raw_children = value
    slot_count = 1 << (_width(at.depth) if at is not None else BIT_WIDTH)
    for bitmap in (raw_datamap, raw_nodemap):
        if type(bitmap) is not bytes or len(bitmap) != BITMAP_BYTES:
            raise MalformedInput(f"CHAMP bitmap must be {BITMAP_BYTES} bytes")
    datamap = int.from_bytes(raw_datamap, "big")
    nodemap = int.from_bytes(raw_nodemap, "big")
    for bitmap in (datamap, nodemap):
        if bitmap >= 1 << slot_count:
            raise MalformedInput(f"CHAMP bitmap has bits at or above {slot_count}")
    if datamap & nodemap:
        raise MalformedInput("CHAMP slot marked as both a bucket and a child")
    if not isinstance(raw_buckets, list) or len(raw_buckets) != datamap.bit_count():
        raise MalformedInput("CHAMP bucket count does not match the datamap")
    if not isinstance(raw_children, list) or len(raw_children) != nodemap.bit_count():
        raise MalformedInput("CHAMP child count does not match the nodemap")

    buckets: dict[int, Bucket] = {}
    for slot, raw_bucket in zip(_slots_of(datamap), raw_buckets, strict=True):
        if not isinstance(raw_bucket, list) or not 1 <= len(raw_bucket) <= MAX_BUCKET:
            raise MalformedInput(f"CHAMP bucket must hold 1 to {MAX_BUCKET} entries")
        entries: list[Entry] = []
        for raw_entry in raw_bucket:
            if not isinstance(raw_entry, list) or len(raw_entry) != 2:
                raise MalformedInput("CHAMP entry must be a pair [key, value]")
            key, entry_value = raw_entry
            if type(key) is not bytes or not 1 <= len(key) <= MAX_KEY:
                raise MalformedInput(f"CHAMP key must be a byte string of 1 to {MAX_KEY} bytes")
            if not isinstance(entry_value, CID):
                raise MalformedInput("CHAMP value must be a CID link")
            if entries and key <= entries[-1][0]:
                raise MalformedInput("CHAMP bucket keys must be strictly ascending")
            if at is not None and at.hashing is not None:
                width = _width(at.depth)
                above = _key_hash(key, at.hashing) >> (HASH_BITS - BIT_WIDTH * at.depth - width)
                if above != (at.prefix << width) | slot:
                    raise MalformedInput("CHAMP key is in the wrong slot for its hash")
            entries.append((key, entry_value))
        buckets[slot] = tuple(entries)

    children: dict[int, CID] = {}
    for slot, child in zip(_slots_of(nodemap), raw_children, strict=True):
        if (
            not isinstance(child, CID)
            or child.codec != CODEC_DAG_CBOR
            or child.mh_code != MH_SHA2_256
        ):
            raise MalformedInput("CHAMP child must be a sha2-256 dag-cbor link")
        children[slot] = child

    node = _Node(buckets, children)
    if at is not None and at.depth > 0:
        if at.depth == MAX_DEPTH and children:
            raise MalformedInput("CHAMP node at the last level cannot have children")
        if not children and node.size <= MAX_BUCKET:
            raise MalformedInput(
                f"CHAMP child node with {MAX_BUCKET} entries or fewer should be a bucket"
            )
    return node


def check_node(data: bytes) -> None:
    """Raise MalformedInput unless `data` is a well-formed CHAMP node (checks that need no
    place in the trie: a node stores it at put, before anything links it)."""
    _decode_node(data, None)


def _check_root(root: CID) -> None:
    if root.codec != CODEC_DAG_CBOR or root.mh_code != MH_SHA2_256:
        raise MalformedInput("a CHAMP root must be a sha2-256 dag-cbor CID")


async def _fetch(source: BlockSource, cid: CID) -> bytes:
    if cid == EMPTY_ROOT:  # every empty map starts here; no store needs to hold it
        return EMPTY_NODE
    data = await source.get(cid)
    if not cid.matches(data):
        raise Corrupted(f"block {cid} does not match its hash")
    return data


def _check_expected(current: CID | None, expected: CID | None, action: str) -> None:
    """The compare-and-swap rule of put and remove: the key's value must be the expected one."""
    if current == expected:
        return
    if expected is None:
        raise Conflict(f"CHAMP {action} expected the key to be absent, but it maps to {current}")
    if current is None:
        raise Conflict(f"CHAMP {action} expected the key to map to {expected}, but it is absent")
    raise Conflict(
        f"CHAMP {action} expected the key to map to {expected}, but it maps to {current}"
    )


def _find(bucket: Bucket, key: bytes) -> CID | None:
    for entry_key, value in bucket:
        if entry_key == key:
            return value
    return None


async def _walk(
    source: BlockSource,
    root: CID,
    keys: Iterable[bytes],
    hashing: KeyHashing,
    blocks: list[bytes] | None,
    max_nodes: int | None = None,
) -> dict[bytes, CID | None]:
    """Look up many keys level by level, fetching each node once; collect blocks if asked.
    More than `max_nodes` distinct nodes on the paths is TooLarge."""
    _check_root(root)
    hashes = {key: _key_hash(key, hashing) for key in keys}
    found: dict[bytes, CID | None] = dict.fromkeys(hashes)
    fetched: dict[CID, bytes] = {}
    level: list[tuple[CID, _At, list[bytes]]] = [(root, _At(hashing), list(hashes))]
    while level and hashes:
        next_level: list[tuple[CID, _At, list[bytes]]] = []
        for cid, at, group in level:
            data = fetched.get(cid)
            if data is None:
                if max_nodes is not None and len(fetched) >= max_nodes:
                    raise TooLarge(f"a lookup may visit at most {max_nodes} CHAMP nodes")
                data = fetched[cid] = await _fetch(source, cid)
                if blocks is not None:
                    blocks.append(data)
            node = _decode_node(data, at)
            below: dict[int, list[bytes]] = {}
            for key in group:
                slot = _slot(hashes[key], at.depth)
                if slot in node.children:
                    below.setdefault(slot, []).append(key)
                else:
                    found[key] = _find(node.buckets.get(slot, ()), key)
            next_level.extend(
                (node.children[slot], at.child(slot), below[slot]) for slot in sorted(below)
            )
        level = next_level
    return found


async def get(
    source: BlockSource, root: CID, key: bytes, hashing: KeyHashing = KeyHashing.IDENTITY
) -> CID | None:
    """The value of `key` in the map at `root`, or None when absent."""
    return (await _walk(source, root, [key], hashing, None))[key]


async def get_many(
    source: BlockSource,
    root: CID,
    keys: Iterable[bytes],
    hashing: KeyHashing = KeyHashing.IDENTITY,
) -> dict[bytes, CID | None]:
    """The value (or None) of every key, fetching each node on their paths once."""
    return await _walk(source, root, keys, hashing, None)


async def lookup_blocks(
    source: BlockSource,
    root: CID,
    keys: Iterable[bytes],
    hashing: KeyHashing = KeyHashing.IDENTITY,
    max_nodes: int | None = None,
) -> list[bytes]:
    """The encoded nodes on the union of the keys' lookup paths, root first, each once.

    A client holding only these blocks can redo the lookup (and checks them against `root`),
    so a server can answer a batch lookup in one round trip. A server walks what a writer
    built: it bounds the walk (`max_nodes`, e.g. MAX_PATH_NODES per key), else TooLarge.
    """
    blocks: list[bytes] = []
    await _walk(source, root, keys, hashing, blocks, max_nodes)
    return blocks


async def _write_subtree(sink: BlockSink, entries: list[tuple[int, Entry]], at: _At) -> CID:
    """Write the canonical subtree holding `entries` (each with its key hash) at `at`."""
    if at.depth > MAX_DEPTH:
        raise ValueError(f"more than {MAX_BUCKET} CHAMP keys share one 256-bit hash")
    groups: dict[int, list[tuple[int, Entry]]] = {}
    for key_hash, entry in entries:
        groups.setdefault(_slot(key_hash, at.depth), []).append((key_hash, entry))
    node = _Node({}, {})
    for slot, group in groups.items():
        if len(group) > MAX_BUCKET:
            node = node.with_child(slot, await _write_subtree(sink, group, at.child(slot)))
        else:
            node = node.with_bucket(slot, tuple(sorted((e for _, e in group), key=_entry_key)))
    return await sink.put(_encode_node(node))


async def build(
    sink: BlockSink, entries: Mapping[bytes, CID], hashing: KeyHashing = KeyHashing.IDENTITY
) -> CID:
    """Write a whole map at once; the root equals that of putting the entries one by one."""
    hashed = [(_key_hash(key, hashing), (key, value)) for key, value in entries.items()]
    return await _write_subtree(sink, hashed, _At(hashing))


async def _put_at(
    sink: BlockSink,
    cid: CID,
    at: _At,
    hashing: KeyHashing,
    key: bytes,
    key_hash: int,
    expected: CID | None,
    value: CID,
) -> CID | None:
    """Put below the node `cid`; return its replacement, or None when nothing changed."""
    node = _decode_node(await _fetch(sink, cid), at)
    slot = _slot(key_hash, at.depth)
    child = node.children.get(slot)
    if child is not None:
        new_child = await _put_at(
            sink, child, at.child(slot), hashing, key, key_hash, expected, value
        )
        if new_child is None:
            return None
        node = node.with_child(slot, new_child)
    else:
        bucket = node.buckets.get(slot, ())
        current = _find(bucket, key)
        _check_expected(current, expected, "put")
        if current == value:
            return None
        entries = sorted([e for e in bucket if e[0] != key] + [(key, value)], key=_entry_key)
        if len(entries) > MAX_BUCKET:
            hashed = [(_key_hash(k, hashing), (k, v)) for k, v in entries]
            node = node.with_child(slot, await _write_subtree(sink, hashed, at.child(slot)))
        else:
            node = node.with_bucket(slot, tuple(entries))
    return await sink.put(_encode_node(node))


async def put(
    sink: BlockSink,
    root: CID,
    key: bytes,
    expected: CID | None,
    value: CID,
    hashing: KeyHashing = KeyHashing.IDENTITY,
) -> CID:
    """Set `key` to `value` if it currently maps to `expected` (None: absent); the new root.

    Raises Conflict, writing nothing, when the current value is not `expected`.
    """
    _check_root(root)
    key_hash = _key_hash(key, hashing)
    new_root = await _put_at(sink, root, _At(hashing), hashing, key, key_hash, expected, value)
    return root if new_root is None else new_root


async def _insert_at(
    sink: BlockSink, cid: CID, at: _At, hashing: KeyHashing, new: list[tuple[int, Entry]]
) -> CID:
    """Insert absent keys below the node `cid`, rewriting each node on their paths once."""
    node = _decode_node(await _fetch(sink, cid), at)
    groups: dict[int, list[tuple[int, Entry]]] = {}
    for key_hash, entry in new:
        groups.setdefault(_slot(key_hash, at.depth), []).append((key_hash, entry))
    for slot, group in groups.items():
        child = node.children.get(slot)
        if child is not None:
            node = node.with_child(
                slot, await _insert_at(sink, child, at.child(slot), hashing, group)
            )
            continue
        entries = [*node.buckets.get(slot, ()), *(entry for _, entry in group)]
        if len(entries) > MAX_BUCKET:
            hashed = [(_key_hash(k, hashing), (k, v)) for k, v in entries]
            node = node.with_child(slot, await _write_subtree(sink, hashed, at.child(slot)))
        else:
            node = node.with_bucket(slot, tuple(sorted(entries, key=_entry_key)))
    return await sink.put(_encode_node(node))


async def put_many(
    sink: BlockSink,
    root: CID,
    entries: Mapping[bytes, CID],
    hashing: KeyHashing = KeyHashing.IDENTITY,
) -> CID:
    """Insert keys that must all be absent, in one pass; the root equals that of one-by-one puts.

    Raises Conflict, writing nothing, when any key is present.
    """
    _check_root(root)
    if not entries:
        return root
    hashed = [(_key_hash(key, hashing), (key, value)) for key, value in entries.items()]
    for current in (await get_many(sink, root, entries, hashing)).values():
        _check_expected(current, None, "put")
    return await _insert_at(sink, root, _At(hashing), hashing, hashed)


async def _remove_at(
    sink: BlockSink, cid: CID, at: _At, key: bytes, key_hash: int, expected: CID
) -> _Node:
    """Remove below the node `cid`; return its replacement, not yet written."""
    node = _decode_node(await _fetch(sink, cid), at)
    slot = _slot(key_hash, at.depth)
    child = node.children.get(slot)
    if child is not None:
        new_child = await _remove_at(sink, child, at.child(slot), key, key_hash, expected)
        if not new_child.children and new_child.size <= MAX_BUCKET:
            # The subtree no longer needs a node of its own: fold it back into a bucket.
            entries = [e for bucket in new_child.buckets.values() for e in bucket]
            return node.with_bucket(slot, tuple(sorted(entries, key=_entry_key)))
        return node.with_child(slot, await sink.put(_encode_node(new_child)))
    bucket = node.buckets.get(slot, ())
    _check_expected(_find(bucket, key), expected, "remove")
    return node.with_bucket(slot, tuple(e for e in bucket if e[0] != key))


async def remove(
    sink: BlockSink,
    root: CID,
    key: bytes,
    expected: CID,
    hashing: KeyHashing = KeyHashing.IDENTITY,
) -> CID:
    """Remove `key` if it currently maps to `expected`; the new root.

    Raises Conflict, writing nothing, when the key is absent or maps to another value.
    """
    _check_root(root)
    key_hash = _key_hash(key, hashing)
    new_root = await _remove_at(sink, root, _At(hashing), key, key_hash, expected)
    return await sink.put(_encode_node(new_root))


async def _remove_many_at(
    source: BlockSource,
    cid: CID,
    at: _At,
    group: list[tuple[int, bytes, CID]],
    pending: list[bytes],
) -> _Node:
    """Remove `group` (key hash, key, expected value) below the node `cid`; return its
    replacement, not yet written. Children that stay nodes are encoded into `pending`, to be
    written only once every expected value has been checked."""
    node = _decode_node(await _fetch(source, cid), at)
    groups: dict[int, list[tuple[int, bytes, CID]]] = {}
    for item in group:
        groups.setdefault(_slot(item[0], at.depth), []).append(item)
    for slot, below in groups.items():
        child = node.children.get(slot)
        if child is not None:
            new_child = await _remove_many_at(source, child, at.child(slot), below, pending)
            if not new_child.children and new_child.size <= MAX_BUCKET:
                # Folded bottom-up, so each subtree ends canonical: the same root as removes
                # one by one.
                entries = [e for bucket in new_child.buckets.values() for e in bucket]
                node = node.with_bucket(slot, tuple(sorted(entries, key=_entry_key)))
            else:
                data = _encode_node(new_child)
                pending.append(data)
                node = node.with_child(slot, CID.of(CODEC_DAG_CBOR, data))
            continue
        bucket = node.buckets.get(slot, ())
        for _, key, expected in below:
            _check_expected(_find(bucket, key), expected, "remove")
        gone = {key for _, key, _ in below}
        node = node.with_bucket(slot, tuple(e for e in bucket if e[0] not in gone))
    return node


async def remove_many(
    sink: BlockSink,
    root: CID,
    expected: Mapping[bytes, CID],
    hashing: KeyHashing = KeyHashing.IDENTITY,
) -> CID:
    """Remove every key that maps to its expected value, in one pass over the union of their
    paths (each node decoded and written once); the root equals that of one-by-one removes.

    Raises Conflict, writing nothing, when any key is absent or maps to another value.
    """
    _check_root(root)
    if not expected:
        return root
    group = [(_key_hash(key, hashing), key, value) for key, value in expected.items()]
    pending: list[bytes] = []
    new_root = await _remove_many_at(sink, root, _At(hashing), group, pending)
    for data in pending:
        await sink.put(data)
    return await sink.put(_encode_node(new_root))


async def items(
    source: BlockSource, root: CID, hashing: KeyHashing | None = None
) -> AsyncIterator[tuple[bytes, CID]]:
    """Every entry, in trie order (slot by slot, depth first; keys ascending in a bucket).

    With `hashing`, every key is also checked to sit in the slots its hash picks; without it
    only the structure is validated (enough for a walk that does not look keys up).
    """
    _check_root(root)
    stack: list[tuple[_At, CID | Bucket]] = [(_At(hashing), root)]
    while stack:
        at, top = stack.pop()
        if isinstance(top, CID):
            node = _decode_node(await _fetch(source, top), at)
            parts: list[tuple[_At, CID | Bucket]] = []
            for slot in sorted(node.buckets.keys() | node.children.keys()):
                child = node.children.get(slot)
                parts.append((at, node.buckets[slot]) if child is None else (at.child(slot), child))
            stack.extend(reversed(parts))
        else:
            for entry in top:
                yield entry


def node_links(data: bytes) -> list[CID]:
    """The children, then the values, of an encoded node (validated): for GC and mirroring."""
    node = _decode_node(data, None)
    children = [node.children[slot] for slot in sorted(node.children)]
    values = [value for slot in sorted(node.buckets) for _, value in node.buckets[slot]]
    return children + values


class MemoryBlocks:
    """A dict-backed BlockSink: for tests, and for a client staging the nodes of a change."""

    def __init__(self, blocks: Iterable[bytes] = ()) -> None:
        self.blocks: dict[CID, bytes] = {}
        for data in blocks:
            self.add(data)

    def add(self, data: bytes) -> CID:
        cid = CID.of(CODEC_DAG_CBOR, data)
        self.blocks[cid] = bytes(data)
        return cid

    async def get(self, cid: CID) -> bytes:
        try:
            return self.blocks[cid]
        except KeyError:
            raise NotFound(f"block {cid} is not held") from None

    async def put(self, data: bytes) -> CID:
        return self.add(data)
