"""Cryptree (DESIGN §6): capabilities, encrypted filesystem nodes, chunks and fragments.

A file or directory is a chain of nodes, one per 5 MiB chunk (500 children for directories),
each stored in its writer's CHAMP under a 32-byte label. Chunk i's label and BAT follow from
chunk 0's by hashing with a stream secret derived from the read key, so a reader holding a
capability finds any chunk with local hashes and one CHAMP lookup. Every field is padded and
AEAD-sealed with a context naming the field and the node's label.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Final

from protocols import bats, cbor, crypto
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.errors import Corrupted, InvalidName, MalformedInput, TooLarge
from protocols.names import check_file_name

MiB: Final = 1024 * 1024
CHUNK_BYTES: Final = 5 * MiB  # hides file sizes above 5 MiB in whole chunks; DESIGN §6
FRAGMENT_BYTES: Final = MiB  # plaintext per raw fragment block
MAX_BLOCK_BYTES: Final = MiB + 8 * 1024  # a fragment plus its padding spill, tag and BAT header
INLINE_BYTES: Final = crypto.PAD_CONTENT  # padded payloads up to this size live in the node
MAX_CHILDREN_PER_CHUNK: Final = 500  # bounds a directory chunk; `ls` reads one node per 500
BASE_BYTES: Final = 256  # key block, padded to a fixed size so optional fields do not show
META_BYTES: Final = 1024  # metadata, fixed size: name ≤ 255 bytes and MIME ≤ 127 always fit
MAX_MIME_BYTES: Final = 127
LABEL_BYTES: Final = 32
NODE_VERSION: Final = 1
MAX_NODE_BYTES: Final = 16 * 1024

_CTX_BASE: Final = b"pyrgos/cryptree/base/1"
_CTX_META: Final = b"pyrgos/cryptree/meta/1"
_CTX_INLINE: Final = b"pyrgos/cryptree/inline/1"
_CTX_FRAGMENT: Final = b"pyrgos/cryptree/fragment/1"
_CTX_WRITE_LINK: Final = b"pyrgos/cryptree/write-link/1"
_CTX_WRITER: Final = b"pyrgos/cryptree/writer/1"
_STREAM: Final = b"pyrgos/stream/1"
CAP_TEXT_PREFIX: Final = "pyrgos-cap:"


def _bytes32(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise MalformedInput(f"{what} must be 32 bytes")
    return value


def _key_hash(value: object, what: str) -> CID:
    if not isinstance(value, CID) or value.codec != CODEC_DAG_CBOR:
        raise MalformedInput(f"{what} must be a public-key hash")
    return value


def stream_secret(read_key: bytes) -> bytes:
    """The secret that chains a file's or directory's chunk labels and BATs."""
    return crypto.hmac_sha256(read_key, _STREAM)


def chunk_location(label: bytes, bat: bytes, read_key: bytes, index: int) -> tuple[bytes, bytes]:
    """(label, BAT) of chunk `index`: `index` local hashes, no I/O."""
    secret = stream_secret(read_key)
    for _ in range(index):
        label = crypto.sha256(secret + label)
        bat = crypto.sha256(secret + bat)
    return label, bat


def chunk_labels(label: bytes, read_key: bytes) -> Iterator[bytes]:
    """The labels of chunks 0, 1, 2, … of a chain, without end: one hash each."""
    secret = stream_secret(read_key)
    while True:
        yield label
        label = crypto.sha256(secret + label)


@dataclass(frozen=True)
class Capability:
    """Where a file or directory is and the keys to read (and maybe write) it."""

    owner: CID
    writer: CID
    label: bytes
    bat: bytes
    read_key: bytes
    write_key: bytes | None = None

    @property
    def writable(self) -> bool:
        return self.write_key is not None

    def read_only(self) -> Capability:
        return Capability(self.owner, self.writer, self.label, self.bat, self.read_key)

    def chunk(self, index: int) -> tuple[bytes, bytes]:
        return chunk_location(self.label, self.bat, self.read_key, index)

    def to_cbor(self) -> dict[str, object]:
        value: dict[str, object] = {
            "o": self.owner,
            "w": self.writer,
            "l": self.label,
            "b": self.bat,
            "r": self.read_key,
        }
        if self.write_key is not None:
            value["x"] = self.write_key
        return value

    @classmethod
    def from_cbor(cls, value: object) -> Capability:
        if not isinstance(value, dict) or not {"o", "w", "l", "b", "r"} <= set(value):
            raise MalformedInput("a capability is {o, w, l, b, r[, x]}")
        if set(value) - {"o", "w", "l", "b", "r", "x"}:
            raise MalformedInput("unknown capability fields")
        write_key = value.get("x")
        return cls(
            owner=_key_hash(value["o"], "capability owner"),
            writer=_key_hash(value["w"], "capability writer"),
            label=_bytes32(value["l"], "capability label"),
            bat=_bytes32(value["b"], "capability BAT"),
            read_key=_bytes32(value["r"], "capability read key"),
            write_key=None if write_key is None else _bytes32(write_key, "capability write key"),
        )

    def to_text(self) -> str:
        """A form to paste: `pyrgos-cap:` then base64url of the CBOR, no padding."""
        return CAP_TEXT_PREFIX + cbor.encode_text(self.to_cbor())

    @classmethod
    def from_text(cls, text: str) -> Capability:
        if not text.startswith(CAP_TEXT_PREFIX) or len(text) > 1024:
            raise MalformedInput(f"a capability starts with {CAP_TEXT_PREFIX!r}")
        try:
            return cls.from_cbor(cbor.decode_text(text[len(CAP_TEXT_PREFIX) :], limit=700))
        except TooLarge as exc:
            raise MalformedInput("a capability is at most 1024 characters") from exc

    def __repr__(self) -> str:
        return f"Capability(owner={self.owner}, writable={self.writable})"


@dataclass(frozen=True)
class Entry:
    """A directory's child: its name and a capability relative to the directory's."""

    name: str
    is_dir: bool
    label: bytes
    bat: bytes
    read_key: bytes
    write_link: bytes | None  # the child's write key sealed under the directory's write key
    writer: CID | None = None  # the child's writer, only when it is not the directory's

    def to_cbor(self) -> list[object]:
        value: list[object] = [
            self.name, self.is_dir, self.label, self.bat, self.read_key, self.write_link
        ]  # fmt: skip
        if self.writer is not None:
            value.append(self.writer)
        return value

    @classmethod
    def from_cbor(cls, value: object) -> Entry:
        if not isinstance(value, list) or len(value) not in (6, 7):
            raise MalformedInput(
                "a directory entry is [name, is_dir, label, bat, key, link[, writer]]"
            )
        name, is_dir, label, bat, read_key, write_link = value[:6]
        if not isinstance(is_dir, bool):
            raise MalformedInput("directory entry kind must be a boolean")
        if write_link is not None and not isinstance(write_link, bytes):
            raise MalformedInput("directory entry write link must be bytes")
        return cls(
            name=check_file_name(name),  # checked again on read: a writer may be hostile
            is_dir=is_dir,
            label=_bytes32(label, "entry label"),
            bat=_bytes32(bat, "entry BAT"),
            read_key=_bytes32(read_key, "entry key"),
            write_link=write_link,
            writer=_key_hash(value[6], "entry writer") if len(value) == 7 else None,
        )

    @classmethod
    def link(cls, name: str, is_dir: bool, child: Capability, parent: Capability) -> Entry:
        write_link = None
        if child.write_key is not None and parent.write_key is not None:
            write_link = crypto.seal(
                parent.write_key, child.write_key, _CTX_WRITE_LINK + child.label
            )
        writer = child.writer if child.writer != parent.writer else None
        return cls(
            check_file_name(name), is_dir, child.label, child.bat, child.read_key, write_link,
            writer,
        )  # fmt: skip

    def capability(self, parent: Capability) -> Capability:
        write_key = None
        if self.write_link is not None and parent.write_key is not None:
            write_key = crypto.open_sealed(
                parent.write_key, self.write_link, _CTX_WRITE_LINK + self.label
            )
        return Capability(
            parent.owner, self.writer or parent.writer, self.label, self.bat, self.read_key,
            write_key,
        )  # fmt: skip

    def renamed(self, name: str) -> Entry:
        return replace(self, name=check_file_name(name))


@dataclass(frozen=True)
class DirEntries:
    """A directory chunk's children: valid entries, and items that are not, kept as read."""

    entries: list[Entry]
    unreadable: list[object]  # re-encoded as they were, so a rewrite loses nothing of them


def encode_dir_chunk(entries: Sequence[Entry], unreadable: Sequence[object] = ()) -> bytes:
    """A directory chunk's plaintext: its entries, then any unreadable items carried over."""
    return cbor.encode([*(entry.to_cbor() for entry in entries), *unreadable])


def decode_dir_chunk(plain: bytes) -> DirEntries:
    """The entries of a directory chunk's plaintext.

    Directories are written by other writers too, so one item that is not a valid entry (its
    shape, a key, or a name breaking the name rules) is set aside, never fatal to its
    siblings. A chunk that is not a CBOR list of items is Corrupted as a whole.
    """
    try:
        listed = cbor.decode(plain, limit=len(plain))
    except (MalformedInput, TooLarge) as exc:
        raise Corrupted(f"a directory chunk is malformed: {exc.message}") from exc
    if not isinstance(listed, list):
        raise Corrupted("a directory chunk is malformed: it is not a list of entries")
    entries: list[Entry] = []
    unreadable: list[object] = []
    for item in listed:
        try:
            entries.append(Entry.from_cbor(item))
        except (MalformedInput, InvalidName):
            unreadable.append(item)
    return DirEntries(entries, unreadable)


@dataclass(frozen=True)
class Properties:
    """A node's metadata (chunk 0 only): name, kind, size, times, MIME, chunk count."""

    name: str
    is_dir: bool
    size: int  # bytes of a file; entries of a directory
    modified: int  # milliseconds since the epoch
    created: int
    mime: str = ""
    chunks: int = 1
    parent: bytes | None = None  # the parent directory's label

    def to_cbor(self) -> dict[str, object]:
        value: dict[str, object] = {
            "n": self.name,
            "d": self.is_dir,
            "s": self.size,
            "t": self.modified,
            "c": self.created,
            "m": self.mime,
            "k": self.chunks,
        }
        if self.parent is not None:
            value["p"] = self.parent
        return value

    @classmethod
    def from_cbor(cls, value: object) -> Properties:
        if not isinstance(value, dict) or not {"n", "d", "s", "t", "c", "m", "k"} <= set(value):
            raise MalformedInput("malformed node properties")
        ints = [value[key] for key in ("s", "t", "c", "k")]
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ints):
            raise MalformedInput("node sizes and times must be non-negative integers")
        mime, is_dir, parent = value["m"], value["d"], value.get("p")
        if not isinstance(mime, str) or len(mime.encode()) > MAX_MIME_BYTES:
            raise MalformedInput("malformed MIME type")
        if not isinstance(is_dir, bool):
            raise MalformedInput("node kind must be a boolean")
        return cls(
            name=check_file_name(value["n"]),
            is_dir=is_dir,
            size=value["s"],
            modified=value["t"],
            created=value["c"],
            mime=mime,
            chunks=max(1, value["k"]),
            parent=None if parent is None else _bytes32(parent, "parent label"),
        )


@dataclass(frozen=True)
class KeyBlock:
    """The base block: the data key (file) or parent key (directory), maybe a writer secret."""

    key: bytes
    writer_secret: bytes | None = None  # sealed under the write key when the subtree has its own


@dataclass(frozen=True)
class Node:
    """A cryptree node block as stored: BATs in clear, every other field sealed."""

    bats: list[bytes]
    base: bytes
    meta: bytes
    data: bytes | list[CID]  # inline sealed payload, or links to raw fragments

    def encode(self) -> bytes:
        return cbor.encode(
            {"v": NODE_VERSION, "bats": self.bats, "base": self.base, "meta": self.meta,
             "data": self.data}
        )  # fmt: skip

    @classmethod
    def decode(cls, block: bytes) -> Node:
        value = cbor.decode(block, limit=MAX_NODE_BYTES)
        if not isinstance(value, dict) or set(value) != {"v", "bats", "base", "meta", "data"}:
            raise MalformedInput("not a cryptree node")
        if type(value["v"]) is not int or value["v"] != NODE_VERSION:
            raise MalformedInput(f"unknown cryptree node version {value['v']!r}")
        base, meta, data = value["base"], value["meta"], value["data"]
        if not isinstance(base, bytes) or not isinstance(meta, bytes):
            raise MalformedInput("cryptree node fields must be bytes")
        if isinstance(data, list):
            if not data or any(not isinstance(c, CID) or c.codec != CODEC_RAW for c in data):
                raise MalformedInput("cryptree node data must link raw fragments")
        elif not isinstance(data, bytes):
            raise MalformedInput("cryptree node data must be bytes or fragment links")
        bat_ids = value["bats"]
        if not isinstance(bat_ids, list) or not all(isinstance(b, bytes) for b in bat_ids):
            raise MalformedInput("cryptree node BATs must be a list of ids")
        return cls(bat_ids, base, meta, data)


def seal_key_block(read_key: bytes, label: bytes, keys: KeyBlock) -> bytes:
    plain = cbor.encode({"k": keys.key, "w": keys.writer_secret})
    return crypto.seal(read_key, crypto.pad_to(plain, BASE_BYTES), _CTX_BASE + label)


def open_key_block(read_key: bytes, label: bytes, sealed: bytes) -> KeyBlock:
    plain = crypto.unpad(crypto.open_sealed(read_key, sealed, _CTX_BASE + label))
    value = _decode_padded_cbor(plain)
    if not isinstance(value, dict) or set(value) != {"k", "w"}:
        raise Corrupted("malformed key block")
    node_key, writer_secret = value["k"], value["w"]
    if not isinstance(node_key, bytes) or len(node_key) != 32:
        raise Corrupted("malformed node key")
    if writer_secret is not None and not isinstance(writer_secret, bytes):
        raise Corrupted("malformed writer secret")
    return KeyBlock(node_key, writer_secret)


def seal_writer_secret(write_key: bytes, label: bytes, seed: bytes) -> bytes:
    return crypto.seal(write_key, seed, _CTX_WRITER + label)


def open_writer_secret(write_key: bytes, label: bytes, sealed: bytes) -> bytes:
    return crypto.open_sealed(write_key, sealed, _CTX_WRITER + label)


def seal_meta(key: bytes, label: bytes, props: Properties | None) -> bytes:
    """Metadata of chunk 0, or the empty metadata of later chunks: the same size either way."""
    plain = cbor.encode(props.to_cbor() if props is not None else {})
    return crypto.seal(key, crypto.pad_to(plain, META_BYTES), _CTX_META + label)


def open_meta(key: bytes, label: bytes, sealed: bytes) -> Properties | None:
    plain = crypto.unpad(crypto.open_sealed(key, sealed, _CTX_META + label))
    value = _decode_padded_cbor(plain)
    if value == {}:
        return None
    try:
        return Properties.from_cbor(value)
    except (MalformedInput, InvalidName) as exc:  # a hostile writer's name is checked on read
        raise Corrupted(f"malformed metadata: {exc.message}") from exc


def _decode_padded_cbor(plain: bytes) -> object:
    try:
        return cbor.decode(plain, limit=META_BYTES)
    except MalformedInput as exc:
        raise Corrupted(f"sealed field holds invalid CBOR: {exc.message}") from exc


def fragment_ranges(padded_length: int) -> list[tuple[int, int]]:
    """Split a padded payload into ≤ 1 MiB pieces; a padding-only spill joins the piece before.

    So a full 5 MiB chunk (5 MiB + 4096 padded) is exactly 5 fragments.
    """
    starts = list(range(0, padded_length, FRAGMENT_BYTES))
    if not starts:
        return []
    if len(starts) > 1 and padded_length - starts[-1] <= crypto.PAD_CONTENT:
        starts.pop()
    ends = [*starts[1:], padded_length]
    return list(zip(starts, ends, strict=True))


def fragment_context(label: bytes, index: int) -> bytes:
    return _CTX_FRAGMENT + label + struct.pack(">I", index)


@dataclass(frozen=True)
class SealedPayload:
    """A chunk's encrypted payload: inline in the node, or raw fragment blocks and their CIDs
    (hashed once, where they are sealed)."""

    inline: bytes | None
    fragments: list[bytes]
    links: list[CID]

    @classmethod
    def of_fragments(cls, fragments: list[bytes]) -> SealedPayload:
        return cls(None, fragments, [CID.of(CODEC_RAW, fragment) for fragment in fragments])


def seal_payload(
    key: bytes, label: bytes, plaintext: bytes | memoryview, bat_ids: list[bytes]
) -> SealedPayload:
    """Pad to a multiple of 4096, then seal inline (≤ 4096) or as fragments of ≤ 1 MiB."""
    size = memoryview(plaintext).nbytes
    padded_size = crypto.padded_length(size, crypto.PAD_CONTENT)
    if padded_size <= INLINE_BYTES:
        padded = crypto.pad(plaintext, crypto.PAD_CONTENT)
        return SealedPayload(crypto.seal(key, padded, _CTX_INLINE + label), [], [])
    # Only the last fragment holds padding: pad just that piece instead of copying the chunk.
    prefix = bats.raw_prefix(bat_ids)
    view = memoryview(plaintext)
    ranges = fragment_ranges(padded_size)
    blocks = []
    for index, (start, end) in enumerate(ranges):
        if index < len(ranges) - 1:
            piece: bytes | memoryview = view[start:end]
        else:
            piece = crypto.pad_to(view[start:], end - start)
        blocks.append(crypto.seal(key, piece, fragment_context(label, index), prefix=prefix))
    return SealedPayload.of_fragments(blocks)


def open_inline(key: bytes, label: bytes, sealed: bytes) -> bytes:
    return crypto.unpad(crypto.open_sealed(key, sealed, _CTX_INLINE + label))


def open_fragment(key: bytes, label: bytes, index: int, last: bool, block: bytes) -> bytes:
    """The plaintext of fragment `index` (padding removed from the last one)."""
    _, payload = bats.split_raw(block)
    plain = crypto.open_sealed(key, payload, fragment_context(label, index))
    return crypto.unpad(plain) if last else plain


def chunk_bat_ids(cap: Capability, index: int, mirror_id: bytes) -> list[bytes]:
    """The BAT ids chunk `index` and its fragments carry: its own (inline) and the mirror BAT."""
    return [bats.inline_id(cap.chunk(index)[1]), mirror_id]


def payload_key(cap: Capability, keys: KeyBlock, is_dir: bool) -> bytes:
    """Files seal their data under the data key; directories their children under the read key."""
    return cap.read_key if is_dir else keys.key


def meta_key(cap: Capability, keys: KeyBlock, is_dir: bool) -> bytes:
    """Directories seal metadata under the parent key; files under the read key."""
    return keys.key if is_dir else cap.read_key


def seal_data(
    cap: Capability,
    index: int,
    keys: KeyBlock,
    is_dir: bool,
    plaintext: bytes | memoryview,
    mirror_id: bytes,
) -> SealedPayload:
    """Chunk `index`'s payload, sealed; the node can be built later (a file's size comes last)."""
    label, _ = cap.chunk(index)
    return seal_payload(
        payload_key(cap, keys, is_dir), label, plaintext, chunk_bat_ids(cap, index, mirror_id)
    )


def payload_data(payload: SealedPayload) -> bytes | list[CID]:
    """What a node's `data` field holds for a payload: the inline bytes or fragment links."""
    if payload.inline is not None:
        return payload.inline
    return list(payload.links)


def build_node(
    cap: Capability,
    index: int,
    keys: KeyBlock,
    is_dir: bool,
    props: Properties | None,
    data: bytes | list[CID],
    mirror_id: bytes,
) -> bytes:
    """The node block of chunk `index` (props on chunk 0 only) around its sealed data."""
    label, _ = cap.chunk(index)
    return Node(
        bats=chunk_bat_ids(cap, index, mirror_id),
        base=seal_key_block(cap.read_key, label, keys),
        meta=seal_meta(meta_key(cap, keys, is_dir), label, props),
        data=data,
    ).encode()


@dataclass(frozen=True)
class OpenedNode:
    """A chunk node with its key block and metadata opened; the payload still sealed."""

    keys: KeyBlock
    props: Properties | None
    data: bytes | list[CID]


def open_node(cap: Capability, index: int, is_dir: bool, block: bytes) -> OpenedNode:
    """Open chunk `index`'s node; Corrupted if anything fails to authenticate."""
    label, _ = cap.chunk(index)
    try:
        node = Node.decode(block)
    except (MalformedInput, TooLarge) as exc:
        raise Corrupted(f"a filesystem node is malformed: {exc.message}") from exc
    keys = open_key_block(cap.read_key, label, node.base)
    props = open_meta(meta_key(cap, keys, is_dir), label, node.meta)
    if props is not None and props.is_dir != is_dir:
        raise Corrupted("a filesystem node's kind does not match its directory entry")
    return OpenedNode(keys, props, node.data)
