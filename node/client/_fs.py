"""The encrypted filesystem from a user's side: paths, directories, streaming file I/O.

Every change is one commit: new blocks staged or uploaded (pinned by an upload id), the
CHAMP updated, a new WriterData, and a compare-and-swap of the writer's pointer. A commit that
loses a race re-reads the root and redoes its change; uploaded file data is never sent twice.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import math
import mimetypes
import os
import random
import secrets
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Final

import trio

from node.client._api import check_block
from node.client._blocks import (
    MAX_KEYS_PER_LOOKUP,
    Blocks,
    Uploader,
    new_upload_id,
    open_tasks,
    put_blocks,
    stage_dir_chunk,
)
from node.client._session import Session, now_ms
from protocols import accounts, champ, crypto
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.cryptree import (
    CHUNK_BYTES,
    FRAGMENT_BYTES,
    MAX_CHILDREN_PER_CHUNK,
    Capability,
    Entry,
    KeyBlock,
    OpenedNode,
    Properties,
    SealedPayload,
    build_node,
    chunk_labels,
    decode_dir_chunk,
    open_fragment,
    open_inline,
    open_node,
    payload_data,
    payload_key,
    seal_data,
)
from protocols.errors import (
    Conflict,
    Corrupted,
    Denied,
    MalformedInput,
    NotFound,
    StaleRoot,
    TooLarge,
)
from protocols.names import check_file_name, split_path
from protocols.pointers import CONTEXT as POINTER_CONTEXT
from protocols.pointers import PointerUpdate
from protocols.writerdata import WriterData

MAX_COMMIT_ATTEMPTS: Final = 8
FRAGMENTS_IN_FLIGHT: Final = 4  # fragment reads kept in flight while downloading
GC_EVERY_CHUNKS: Final = 16  # collect young cyclic garbage this often in long transfers
CHUNKS_AHEAD: Final = 2  # decrypted chunks held ahead of the reader: bounds memory
FILES_PER_COMMIT: Final = 2000  # bounds a folder upload's staged state
Progress = Callable[[int], None]
Opener = Callable[[], contextlib.AbstractContextManager[BinaryIO]]  # opens a file's bytes


@dataclass
class DirChunk:
    """One chunk of a directory as read: where it is and the entries it holds."""

    index: int
    node: CID | None  # None until first written
    keys: KeyBlock
    props: Properties | None
    entries: list[Entry]
    unreadable: list[object] = field(default_factory=list)  # kept until `rm --bad` drops them


@dataclass
class Directory:
    cap: Capability
    chunks: list[DirChunk]

    @property
    def props(self) -> Properties:
        props = self.chunks[0].props
        if props is None:
            raise Corrupted("a directory's first chunk has no metadata")
        return props

    def entries(self) -> list[Entry]:
        return [entry for chunk in self.chunks for entry in chunk.entries]

    def unreadable(self) -> int:
        return sum(len(chunk.unreadable) for chunk in self.chunks)

    def find(self, name: str) -> tuple[DirChunk, Entry] | None:
        for chunk in self.chunks:
            for entry in chunk.entries:
                if entry.name == name:
                    return chunk, entry
        return None


@dataclass(frozen=True)
class Listing:
    name: str
    is_dir: bool
    props: Properties | None = None


@dataclass(frozen=True)
class Contents:
    """A directory's readable entries, and how many of its entries were skipped as unreadable."""

    items: list[Listing]
    unreadable: int


# What a bad entry (another writer's, or damaged) raises when its node is read: its node is
# missing, refuses the entry's BAT, or fails to decrypt. The entry is skipped, not fatal.
UNREADABLE_ENTRY: Final = (Corrupted, Denied, NotFound)


def _chunk_count(props: Properties) -> int:
    if props.is_dir:
        return props.chunks
    return max(1, math.ceil(props.size / CHUNK_BYTES))


def _guess_mime(name: str) -> str:
    mime = mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
    return mime[:127]


def new_capability(parent: Capability) -> Capability:
    """Fresh random location and keys for a new file or directory under `parent`."""
    return Capability(
        owner=parent.owner,
        writer=parent.writer,
        label=crypto.random_bytes(32),
        bat=crypto.random_bytes(32),
        read_key=crypto.random_key(),
        write_key=crypto.random_key(),
    )


class FileSystem:
    """A user's files, through the session's node."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.api = session.api

    # -- reading ------------------------------------------------------------------------

    async def _root(self) -> tuple[PointerUpdate, WriterData, Blocks]:
        owner = self.session.owner
        raw = await self.api.call("pointer.get", {"writer": owner, "owner": owner})
        if not isinstance(raw, bytes):
            raise NotFound("this account has no root: was the signup completed?")
        pointer = PointerUpdate.decode(raw)
        self.session.identity.public.verify(pointer.signed_part, pointer.signature, POINTER_CONTEXT)
        blocks = Blocks(self.api)
        try:
            writer_data = WriterData.decode(await blocks.get(pointer.new))
        except MalformedInput as exc:
            raise Corrupted(f"the account root is malformed: {exc.message}") from exc
        return pointer, writer_data, blocks

    async def _nodes(
        self, blocks: Blocks, tree: CID, cap: Capability, indices: Sequence[int]
    ) -> list[tuple[CID, bytes]]:
        """The node CIDs and blocks of chunks `indices` of `cap`."""
        return await self._fetch_nodes(blocks, tree, [cap.chunk(i) for i in indices])

    async def _fetch_nodes(
        self, blocks: Blocks, tree: CID, locations: Sequence[tuple[bytes, bytes]]
    ) -> list[tuple[CID, bytes]]:
        """The nodes at (label, BAT) `locations`: one CHAMP lookup, then parallel fetches."""
        found = await blocks.lookup(tree, [label for label, _ in locations])
        results: list[tuple[CID, bytes]] = [None] * len(locations)  # type: ignore[list-item]

        async def fetch(slot: int, label: bytes, bat: bytes) -> None:
            cid = found[label]
            if cid is None:
                raise NotFound("a file or directory node is missing")
            results[slot] = (cid, await blocks.fetch(cid, bat))

        async with open_tasks() as nursery:
            for slot, (label, bat) in enumerate(locations):
                nursery.start_soon(fetch, slot, label, bat)
        return results

    async def _payload(
        self, blocks: Blocks, cap: Capability, index: int, opened: OpenedNode, is_dir: bool
    ) -> bytes:
        key = payload_key(cap, opened.keys, is_dir)
        label, bat = cap.chunk(index)
        if isinstance(opened.data, bytes):
            return open_inline(key, label, opened.data)
        fragments = opened.data
        parts = [b""] * len(fragments)

        async def fetch(i: int) -> None:
            block = await blocks.fetch(fragments[i], bat)
            parts[i] = open_fragment(key, label, i, i == len(fragments) - 1, block)

        async with open_tasks() as nursery:
            for i in range(len(fragments)):
                nursery.start_soon(fetch, i)
        return b"".join(parts)

    async def _read_dir(self, blocks: Blocks, tree: CID, cap: Capability) -> Directory:
        first = await self._nodes(blocks, tree, cap, [0])
        opened = open_node(cap, 0, True, first[0][1])
        if opened.props is None:
            raise Corrupted("a directory's first chunk has no metadata")
        nodes = first
        if opened.props.chunks > 1:
            nodes = first + await self._nodes(blocks, tree, cap, range(1, opened.props.chunks))
        chunks: list[DirChunk | None] = [None] * len(nodes)

        async def open_chunk(index: int) -> None:
            cid, block = nodes[index]
            node = opened if index == 0 else open_node(cap, index, True, block)
            listed = decode_dir_chunk(await self._payload(blocks, cap, index, node, True))
            chunks[index] = DirChunk(
                index, cid, node.keys, node.props, listed.entries, listed.unreadable
            )

        async with open_tasks() as nursery:
            for index in range(len(nodes)):
                nursery.start_soon(open_chunk, index)
        return Directory(cap, [chunk for chunk in chunks if chunk is not None])

    def _split(self, path: str) -> list[str]:
        """Names from the home directory down; absolute paths start with the username."""
        names = split_path(path)
        if path.startswith("/"):
            if not names:
                return []
            if names[0] != self.session.username:
                raise NotFound(f"/{names[0]} is not this user's home (/{self.session.username})")
            return names[1:]
        return names

    async def _walk(
        self, blocks: Blocks, tree: CID, names: list[str]
    ) -> tuple[list[Directory], Entry | None]:
        """The directories along `names` (home first) and the final entry (None: home)."""
        dirs = [await self._read_dir(blocks, tree, self.session.home)]
        entry: Entry | None = None
        for depth, name in enumerate(names):
            found = dirs[-1].find(name)
            if found is None:
                raise NotFound(f"no such file or directory: {'/'.join(names[: depth + 1])}")
            entry = found[1]
            if depth < len(names) - 1:
                if not entry.is_dir:
                    raise NotFound(f"not a directory: {'/'.join(names[: depth + 1])}")
                dirs.append(await self._read_dir(blocks, tree, entry.capability(dirs[-1].cap)))
        return dirs, entry

    async def listdir(self, path: str = "", *, long: bool = False) -> list[Listing]:
        """The readable entries of a directory (or the one file `path` names)."""
        return (await self.contents(path, long=long)).items

    async def contents(self, path: str = "", *, long: bool = False) -> Contents:
        """A directory's entries, sorted by name, and the count of those skipped as unreadable.

        A short listing reads only the directory, so it skips the entries that fail to decode;
        a long one reads every child's first node and also skips those it cannot read.
        """
        _, writer_data, blocks = await self._root()
        dirs, entry = await self._walk(blocks, writer_data.tree, self._split(path))
        if entry is not None and not entry.is_dir:
            props = await self._props(blocks, writer_data.tree, dirs[-1].cap, entry)
            return Contents([Listing(entry.name, False, props)], 0)
        directory = dirs[-1]
        if entry is not None:
            directory = await self._read_dir(
                blocks, writer_data.tree, entry.capability(directory.cap)
            )
        entries = sorted(directory.entries(), key=lambda e: e.name)
        if not long:
            return Contents([Listing(e.name, e.is_dir) for e in entries], directory.unreadable())
        children = await self._children(blocks, writer_data.tree, directory.cap, entries)
        items = [Listing(e.name, e.is_dir, props) for e, props in children if props is not None]
        return Contents(items, directory.unreadable() + len(entries) - len(items))

    async def _children(
        self, blocks: Blocks, tree: CID, parent: Capability, entries: Sequence[Entry]
    ) -> list[tuple[Entry, Properties | None]]:
        """Each entry with its first node's properties, None where that node cannot be read:
        one CHAMP lookup per 64 entries, their nodes fetched in parallel."""
        result: list[tuple[Entry, Properties | None]] = []
        for start in range(0, len(entries), MAX_KEYS_PER_LOOKUP):
            batch = entries[start : start + MAX_KEYS_PER_LOOKUP]
            found = await blocks.lookup(tree, [entry.label for entry in batch])
            props: list[Properties | None] = [None] * len(batch)
            async with open_tasks() as nursery:
                for slot, entry in enumerate(batch):
                    cid = found[entry.label]
                    nursery.start_soon(self._child, blocks, parent, entry, cid, props, slot)
            result += zip(batch, props, strict=True)
        return result

    async def _child(
        self,
        blocks: Blocks,
        parent: Capability,
        entry: Entry,
        cid: CID | None,
        out: list[Properties | None],
        slot: int,
    ) -> None:
        """Set out[slot] to `entry`'s properties if its first node `cid` can be read."""
        if cid is None:
            return
        with contextlib.suppress(*UNREADABLE_ENTRY):
            block = await blocks.fetch(cid, entry.bat)
            out[slot] = open_node(entry.capability(parent), 0, entry.is_dir, block).props

    async def _props(
        self, blocks: Blocks, tree: CID, parent: Capability, entry: Entry
    ) -> Properties:
        cap = entry.capability(parent)
        ((_, block),) = await self._nodes(blocks, tree, cap, [0])
        props = open_node(cap, 0, entry.is_dir, block).props
        if props is None:
            raise Corrupted("a first chunk has no metadata")
        return props

    async def stat(self, path: str) -> Properties:
        _, writer_data, blocks = await self._root()
        dirs, entry = await self._walk(blocks, writer_data.tree, self._split(path))
        if entry is None:
            return dirs[0].props
        return await self._props(blocks, writer_data.tree, dirs[-1].cap, entry)

    @contextlib.asynccontextmanager
    async def read(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        """Bytes [offset, offset + length) of a file, as a channel of pieces in order.

        Chunk i is found with i local hashes and one CHAMP lookup: no chunk before the range is
        read. Fragments of the next chunks are fetched while earlier ones are consumed.
        """
        if offset < 0 or (length is not None and length < 0):
            raise MalformedInput("offset and length must not be negative")
        _, writer_data, blocks = await self._root()
        dirs, entry = await self._walk(blocks, writer_data.tree, self._split(path))
        if entry is None or entry.is_dir:
            raise Conflict(f"{path} is a directory")
        cap = entry.capability(dirs[-1].cap)
        if length is None:
            props = await self._props(blocks, writer_data.tree, dirs[-1].cap, entry)
            length = max(0, props.size - offset)
        send, receive = trio.open_memory_channel[bytes](2)
        async with open_tasks() as nursery:
            nursery.start_soon(
                self._produce, send, blocks, writer_data.tree, cap, offset, offset + length
            )
            async with receive:
                yield receive
            nursery.cancel_scope.cancel()  # the reader stopped early

    async def _produce(
        self,
        send: trio.MemorySendChannel[bytes],
        blocks: Blocks,
        tree: CID,
        cap: Capability,
        start: int,
        end: int,
    ) -> None:
        async with send:
            if end <= start:
                return
            indices = list(range(start // CHUNK_BYTES, (end - 1) // CHUNK_BYTES + 1))
            labels = [cap.chunk(i)[0] for i in indices]
            found = await blocks.lookup(tree, labels)
            ready = [trio.Event() for _ in indices]
            pieces: list[list[bytes]] = [[] for _ in indices]
            fragments = trio.Semaphore(FRAGMENTS_IN_FLIGHT)

            async def fetch(slot: int) -> None:
                index = indices[slot]
                cid = found[labels[slot]]
                if cid is not None:
                    lo = max(start - index * CHUNK_BYTES, 0)
                    hi = min(end - index * CHUNK_BYTES, CHUNK_BYTES)
                    pieces[slot] = await self._chunk_range(
                        blocks, cap, index, cid, lo, hi, fragments
                    )
                ready[slot].set()

            async with open_tasks() as nursery:
                # A sliding window: chunk i + CHUNKS_AHEAD starts when chunk i is handed on,
                # so neither buffers nor tasks grow with the file.
                for slot in range(min(CHUNKS_AHEAD, len(indices))):
                    nursery.start_soon(fetch, slot)
                for slot in range(len(indices)):
                    await ready[slot].wait()
                    if found[labels[slot]] is None:
                        nursery.cancel_scope.cancel()  # the file ends before the range does
                        return
                    for piece in pieces[slot]:
                        await send.send(piece)
                    pieces[slot] = []
                    if slot % GC_EVERY_CHUNKS == GC_EVERY_CHUNKS - 1:
                        gc.collect()  # task and stream cycles would otherwise pile up
                    if slot + CHUNKS_AHEAD < len(indices):
                        nursery.start_soon(fetch, slot + CHUNKS_AHEAD)

    async def _chunk_range(
        self,
        blocks: Blocks,
        cap: Capability,
        index: int,
        cid: CID,
        lo: int,
        hi: int,
        limit: trio.Semaphore,
    ) -> list[bytes]:
        """Plaintext bytes [lo, hi) of chunk `index`, fetching only the fragments they span."""
        label, bat = cap.chunk(index)
        opened = open_node(cap, index, False, await blocks.fetch(cid, bat))
        key = opened.keys.key
        if isinstance(opened.data, bytes):
            return [open_inline(key, label, opened.data)[lo:hi]]
        links = opened.data
        last = len(links) - 1
        wanted = range(min(lo // FRAGMENT_BYTES, last), min((hi - 1) // FRAGMENT_BYTES, last) + 1)
        plain: dict[int, bytes] = {}

        async def fetch(i: int) -> None:
            async with limit:
                block = await blocks.fetch(links[i], bat, verify=False)
            # One worker-thread hop hashes and decrypts: hashlib and libsodium release the GIL,
            # so this runs beside the next transfers.
            plain[i] = await trio.to_thread.run_sync(_open_fragment, links[i], key, label, i,
                                                     i == last, block)  # fmt: skip

        async with open_tasks() as nursery:
            for i in wanted:
                nursery.start_soon(fetch, i)
        out = []
        for i in wanted:
            base = i * FRAGMENT_BYTES
            piece = plain.pop(i)[max(lo - base, 0) : max(hi - base, 0)]
            if piece:
                out.append(piece)
        return out

    # -- writing ------------------------------------------------------------------------

    async def _commit(
        self,
        change: Callable[[Blocks, CID], Awaitable[CID | None]],
        uploads: Sequence[bytes] = (),
    ) -> None:
        """Apply `change` to the current tree and swap the pointer; on a lost race, redo it.
        A change that returns None has nothing to do: no commit is made."""
        session = self.session
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            pointer, writer_data, blocks = await self._root()
            tree = await change(blocks, writer_data.tree)
            if tree is None:
                return
            root = await blocks.put(replace(writer_data, tree=tree).encode())
            staged = [(cid, blocks.staged[cid]) for cid in blocks.reachable_staged(root)]
            upload = new_upload_id()
            await put_blocks(self.api, session.owner, session.identity, staged, upload)
            update = PointerUpdate.create(session.identity, pointer.new, root, pointer.sequence + 1)
            try:
                await self.api.call(
                    "pointer.cas",
                    {
                        "owner": session.owner,
                        "updates": [[session.owner, update.encode()]],
                        "uploads": [upload, *uploads],
                    },
                )
                return
            except StaleRoot:
                await trio.sleep(random.uniform(0, 0.02 * 2**attempt))
        raise Conflict("the tree kept changing under this operation; try again")

    async def _save_dir(
        self, blocks: Blocks, tree: CID, directory: Directory, dirty: set[int]
    ) -> CID:
        """Write the chunks of `directory` that changed, and chunk 0 with its new metadata.

        Entries fill chunks of at most 500; empty trailing chunks are dropped.
        """
        chunks = directory.chunks
        while len(chunks) > 1 and not chunks[-1].entries and not chunks[-1].unreadable:
            gone = chunks.pop()
            if gone.node is not None:
                label = directory.cap.chunk(gone.index)[0]
                tree = await champ.remove(blocks, tree, label, gone.node)
        for index, chunk in enumerate(chunks):  # `chunks` may grow while this runs
            if len(chunk.entries) > MAX_CHILDREN_PER_CHUNK:
                if index == len(chunks) - 1:
                    chunks.append(DirChunk(index + 1, None, chunk.keys, None, []))
                chunks[index + 1].entries[:0] = chunk.entries[MAX_CHILDREN_PER_CHUNK:]
                del chunk.entries[MAX_CHILDREN_PER_CHUNK:]
                dirty.update({index, index + 1})
        props = replace(
            directory.props,
            size=sum(len(c.entries) + len(c.unreadable) for c in chunks),
            chunks=len(chunks),
            modified=now_ms(),
        )
        chunks[0].props = props
        dirty.add(0)
        for chunk in chunks:
            if chunk.index in dirty:
                tree = await stage_dir_chunk(
                    blocks, tree, directory.cap, chunk.index, chunk.keys,
                    chunk.props if chunk.index == 0 else None, chunk.entries, chunk.node,
                    self.session.mirror_id, chunk.unreadable,
                )  # fmt: skip
        return tree

    async def _new_dir(
        self, blocks: Blocks, tree: CID, parent: Capability, name: str
    ) -> tuple[CID, Entry]:
        cap = new_capability(parent)
        stamp = now_ms()
        props = Properties(name, True, 0, stamp, stamp, parent=parent.label)
        keys = KeyBlock(crypto.random_key())
        tree = await stage_dir_chunk(
            blocks, tree, cap, 0, keys, props, [], None, self.session.mirror_id
        )
        return tree, Entry.link(name, True, cap, parent)

    async def _dir_at(self, blocks: Blocks, tree: CID, names: list[str]) -> Directory:
        dirs, entry = await self._walk(blocks, tree, names)
        if entry is None:
            return dirs[0]
        if not entry.is_dir:
            raise Conflict(f"not a directory: {'/'.join(names)}")
        return await self._read_dir(blocks, tree, entry.capability(dirs[-1].cap))

    async def mkdir(self, path: str, *, parents: bool = False) -> None:
        names = self._split(path)
        if not names:
            raise Conflict("the home directory already exists")

        async def change(blocks: Blocks, tree: CID) -> CID:
            directory = await self._read_dir(blocks, tree, self.session.home)
            for depth, name in enumerate(names):
                found = directory.find(name)
                last = depth == len(names) - 1
                if found is not None:
                    if last and not parents:
                        raise Conflict(f"{path} already exists")
                    if not found[1].is_dir:
                        raise Conflict(f"not a directory: {'/'.join(names[: depth + 1])}")
                    directory = await self._read_dir(
                        blocks, tree, found[1].capability(directory.cap)
                    )
                    continue
                if not last and not parents:
                    raise NotFound(f"no such directory: {'/'.join(names[: depth + 1])}")
                tree, entry = await self._new_dir(blocks, tree, directory.cap, name)
                directory.chunks[-1].entries.append(entry)
                tree = await self._save_dir(blocks, tree, directory, {len(directory.chunks) - 1})
                directory = await self._read_dir(blocks, tree, entry.capability(directory.cap))
            return tree

        await self._commit(change)

    async def _labels(
        self, blocks: Blocks, tree: CID, parent: Capability, entry: Entry
    ) -> dict[bytes, CID]:
        """Every chunk label of `entry`'s subtree with its current node, for removal.

        Only locations are needed, so no write key is opened. A node that cannot be read (a
        bad entry) still has its chunks found by their labels; what lies below a directory
        that cannot be read cannot be found, and stays in the tree.
        """
        cap = Capability(parent.owner, parent.writer, entry.label, entry.bat, entry.read_key)
        try:
            ((first_cid, first),) = await self._nodes(blocks, tree, cap, [0])
            props = open_node(cap, 0, entry.is_dir, first).props
            if props is None:
                raise Corrupted("a first chunk has no metadata")
        except UNREADABLE_ENTRY:
            return await self._chain(blocks, tree, cap)
        count = _chunk_count(props)
        labels = {cap.label: first_cid}
        if count > 1:
            rest = [cap.chunk(i)[0] for i in range(1, count)]
            found = await blocks.lookup(tree, rest)
            labels.update({label: cid for label, cid in found.items() if cid is not None})
        if entry.is_dir:
            try:
                directory = await self._read_dir(blocks, tree, cap)
            except UNREADABLE_ENTRY:
                return labels
            for child in directory.entries():
                labels.update(await self._labels(blocks, tree, cap, child))
        return labels

    async def _chain(self, blocks: Blocks, tree: CID, cap: Capability) -> dict[bytes, CID]:
        """The chunks of `cap` in the tree, from chunk 0 to the first one missing: how a node
        whose chunk count cannot be read is found whole."""
        labels: dict[bytes, CID] = {}
        chain = chunk_labels(cap.label, cap.read_key)
        while True:
            batch = list(itertools.islice(chain, MAX_KEYS_PER_LOOKUP))
            found = await blocks.lookup(tree, batch)
            for key in batch:
                cid = found[key]
                if cid is None:
                    return labels
                labels[key] = cid

    async def _unlink(self, blocks: Blocks, tree: CID, labels: dict[bytes, CID]) -> CID:
        for label, cid in labels.items():
            tree = await champ.remove(blocks, tree, label, cid)
        return tree

    async def _locate(
        self, blocks: Blocks, tree: CID, names: list[str], path: str
    ) -> tuple[Directory, DirChunk, Entry]:
        """The parent directory of `names`, and the chunk and entry that name it."""
        parent = await self._dir_at(blocks, tree, names[:-1])
        found = parent.find(names[-1])
        if found is None:
            raise NotFound(f"no such file or directory: {path}")
        return parent, *found

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        names = self._split(path)
        if not names:
            raise Conflict("the home directory cannot be removed")

        async def change(blocks: Blocks, tree: CID) -> CID:
            parent, chunk, entry = await self._locate(blocks, tree, names, path)
            if entry.is_dir and not recursive:
                try:
                    child = await self._read_dir(blocks, tree, entry.capability(parent.cap))
                except UNREADABLE_ENTRY:
                    raise Conflict(f"{path} is a directory that cannot be read (use -r)") from None
                if child.entries() or child.unreadable():
                    raise Conflict(f"{path} is a directory that is not empty (use -r)")
            tree = await self._unlink(
                blocks, tree, await self._labels(blocks, tree, parent.cap, entry)
            )
            chunk.entries.remove(entry)
            return await self._save_dir(blocks, tree, parent, {chunk.index})

        await self._commit(change)

    async def remove_unreadable(self, path: str) -> int:
        """Remove the entries of the directory `path` that cannot be read (see `contents`, long
        form), and the chunks they name that can be found; return how many were removed."""
        names = self._split(path)
        removed = 0

        async def change(blocks: Blocks, tree: CID) -> CID | None:
            nonlocal removed
            directory = await self._dir_at(blocks, tree, names)
            dirty = {chunk.index for chunk in directory.chunks if chunk.unreadable}
            removed = directory.unreadable()
            for chunk in directory.chunks:
                chunk.unreadable = []
                for entry, props in await self._children(
                    blocks, tree, directory.cap, chunk.entries
                ):
                    if props is None:
                        labels = await self._labels(blocks, tree, directory.cap, entry)
                        tree = await self._unlink(blocks, tree, labels)
                        chunk.entries.remove(entry)
                        dirty.add(chunk.index)
                        removed += 1
            if not dirty:
                return None
            return await self._save_dir(blocks, tree, directory, dirty)

        await self._commit(change)
        return removed

    async def move(self, source: str, target: str) -> None:
        src = self._split(source)
        dst = self._split(target)
        if not src:
            raise Conflict("the home directory cannot be moved")

        async def change(blocks: Blocks, tree: CID) -> CID:
            src_parent, src_chunk, entry = await self._locate(blocks, tree, src, source)
            dst_names, name = await self._destination(blocks, tree, dst, src[-1])
            if entry.is_dir and dst_names[: len(src)] == src:
                raise Conflict("a directory cannot be moved into itself")
            dst_parent = (
                src_parent if dst_names == src[:-1] else await self._dir_at(blocks, tree, dst_names)
            )
            if dst_parent.find(name) is not None:
                raise Conflict(f"{'/'.join([*dst_names, name])} already exists")
            tree = await self._rename_node(
                blocks, tree, src_parent.cap, entry, name, dst_parent.cap
            )
            src_chunk.entries.remove(entry)
            moved = Entry.link(name, entry.is_dir, entry.capability(src_parent.cap), dst_parent.cap)
            if dst_parent is src_parent:
                src_chunk.entries.append(moved)
                return await self._save_dir(blocks, tree, src_parent, {src_chunk.index})
            tree = await self._save_dir(blocks, tree, src_parent, {src_chunk.index})
            dst_parent = await self._dir_at(blocks, tree, dst_names)
            dst_parent.chunks[-1].entries.append(moved)
            return await self._save_dir(blocks, tree, dst_parent, {len(dst_parent.chunks) - 1})

        await self._commit(change)

    async def _destination(
        self, blocks: Blocks, tree: CID, names: list[str], name: str
    ) -> tuple[list[str], str]:
        """(directory, name) a move to `names` lands at: into it when it is a directory."""
        try:
            _, entry = await self._walk(blocks, tree, names)
        except NotFound:
            if not names:
                raise
            return names[:-1], names[-1]
        if entry is None or entry.is_dir:
            return names, name
        raise Conflict(f"{'/'.join(names)} already exists")

    async def _rename_node(
        self,
        blocks: Blocks,
        tree: CID,
        old_parent: Capability,
        entry: Entry,
        name: str,
        new_parent: Capability,
    ) -> CID:
        """Rewrite chunk 0's metadata with the new name and parent; the data is untouched."""
        cap = entry.capability(old_parent)
        ((cid, block),) = await self._nodes(blocks, tree, cap, [0])
        opened = open_node(cap, 0, entry.is_dir, block)
        if opened.props is None:
            raise Corrupted("a first chunk has no metadata")
        props = replace(opened.props, name=name, parent=new_parent.label, modified=now_ms())
        node = build_node(
            cap, 0, opened.keys, entry.is_dir, props, opened.data, self.session.mirror_id
        )
        return await champ.put(blocks, tree, cap.label, cid, await blocks.put(node))

    # -- files --------------------------------------------------------------------------

    async def _upload_file(
        self,
        uploader: Uploader,
        parent: Capability,
        name: str,
        source: BinaryIO,
        progress: Progress | None,
    ) -> _Prepared:
        """Encrypt and send every chunk of `source`; nothing points at them until the commit."""
        cap = new_capability(parent)
        keys = KeyBlock(crypto.random_key())
        mirror_id = self.session.mirror_id
        nodes: dict[bytes, CID] = {}
        first: SealedPayload | None = None
        size = 0
        for index in itertools.count():
            data = await trio.to_thread.run_sync(_read_chunk, source)
            if not data and index > 0:
                break
            payload, fragments = await trio.to_thread.run_sync(
                _seal_file_chunk, cap, index, keys, data, mirror_id
            )
            if index == 0:
                first = payload
                await uploader.add(fragments)
            else:
                node = build_node(cap, index, keys, False, None, payload_data(payload), mirror_id)
                cid = CID.of(CODEC_DAG_CBOR, node)
                nodes[cap.chunk(index)[0]] = cid
                await uploader.add([*fragments, (cid, node)])
            size += len(data)
            if progress is not None:
                progress(len(data))
            if len(data) < CHUNK_BYTES:
                break
        assert first is not None
        stamp = now_ms()
        props = Properties(name, False, size, stamp, stamp, _guess_mime(name), parent=parent.label)
        node = build_node(cap, 0, keys, False, props, payload_data(first), mirror_id)
        cid = CID.of(CODEC_DAG_CBOR, node)
        await uploader.add([(cid, node)])
        nodes[cap.label] = cid
        return _Prepared(Entry.link(name, False, cap, parent), nodes)

    async def write_files(
        self,
        directory: str,
        files: Sequence[tuple[str, Opener]],
        *,
        progress: Progress | None = None,
    ) -> None:
        """Upload files into `directory` (overwriting files of the same names) in one commit."""
        names = self._split(directory)
        for name, _ in files:
            check_file_name(name)
        _, writer_data, blocks = await self._root()
        parent = await self._dir_at(blocks, writer_data.tree, names)
        for name, _ in files:
            found = parent.find(name)
            if found is not None and found[1].is_dir:
                raise Conflict(f"{'/'.join([*names, name])} is a directory")
        prepared: list[_Prepared] = []
        async with open_tasks() as nursery:
            uploader = Uploader(self.api, self.session.owner, self.session.identity, nursery)
            for name, opener in files:
                with opener() as source:
                    prepared.append(
                        await self._upload_file(uploader, parent.cap, name, source, progress)
                    )
            await uploader.finish()

        async def change(blocks: Blocks, tree: CID) -> CID:
            target = await self._dir_at(blocks, tree, names)
            labels = [label for item in prepared for label in item.nodes]
            await blocks.lookup(tree, labels)  # fetch the CHAMP paths in few round trips
            existing = {e.name: (chunk, e) for chunk in target.chunks for e in chunk.entries}
            dirty: set[int] = set()
            for item in prepared:
                found = existing.get(item.entry.name)
                if found is not None:
                    chunk, old = found
                    if old.is_dir:
                        raise Conflict(f"{item.entry.name} is a directory")
                    tree = await self._unlink(
                        blocks, tree, await self._labels(blocks, tree, target.cap, old)
                    )
                    chunk.entries.remove(old)
                    dirty.add(chunk.index)
                target.chunks[-1].entries.append(item.entry)
                dirty.add(target.chunks[-1].index)
            new_nodes = {label: cid for item in prepared for label, cid in item.nodes.items()}
            tree = await champ.put_many(blocks, tree, new_nodes)
            return await self._save_dir(blocks, tree, target, dirty)

        await self._commit(change, uploads=[uploader.upload])

    async def write_file(
        self, path: str, source: BinaryIO, *, progress: Progress | None = None
    ) -> None:
        """Upload one file from a binary stream, in bounded memory whatever its size."""
        names = self._split(path)
        if not names:
            raise Conflict("the home directory is not a file")
        await self.write_files(
            "/".join(["", self.session.username, *names[:-1]]),
            [(names[-1], lambda: contextlib.nullcontext(source))],
            progress=progress,
        )

    async def usage(self) -> tuple[int, int]:
        """(bytes used, quota) of this user at the home node."""
        signed = now_ms()
        owner = self.session.owner
        reply = await self.api.call(
            "usage.get",
            {
                "owner": owner,
                "time": signed,
                "sig": accounts.sign_timed(self.session.identity, accounts.USAGE, [owner], signed),
            },
        )
        return int(reply["used"]), int(reply["quota"])

    # -- whole small files and capabilities -----------------------------------------------
    # Minimal versions for the social state (`/<me>/.pyrgos/...`); the general writer-tree
    # filesystem provides the same three methods.

    async def capability(self, path: str) -> Capability:
        """The capability of the file or directory at `path` (the home's for the home)."""
        _, writer_data, blocks = await self._root()
        dirs, entry = await self._walk(blocks, writer_data.tree, self._split(path))
        return dirs[0].cap if entry is None else entry.capability(dirs[-1].cap)

    async def read_bytes(self, path: str, limit: int) -> bytes:
        """The whole file at `path`; TooLarge, before reading it, when it is over `limit`."""
        props = await self.stat(path)
        if props.is_dir:
            raise Conflict(f"{path} is a directory")
        if props.size > limit:
            raise TooLarge(f"{path} is {props.size} bytes, over the limit of {limit}")
        async with self.read(path) as pieces:
            return b"".join([piece async for piece in pieces])

    async def write_bytes(self, path: str, data: bytes) -> None:
        """Write (or overwrite) the file at `path` with `data`, in one commit."""
        await self.write_file(path, io.BytesIO(data))


@dataclass(frozen=True)
class _Prepared:
    """A file uploaded but not yet linked: its directory entry and every chunk's node."""

    entry: Entry
    nodes: dict[bytes, CID]


def _open_fragment(
    cid: CID, key: bytes, label: bytes, index: int, last: bool, block: bytes
) -> bytes:
    check_block(cid, block)
    return open_fragment(key, label, index, last, block)


def _read_chunk(source: BinaryIO) -> bytes:
    """Up to one chunk from `source`, reading until it is full or the stream ends."""
    parts: list[bytes] = []
    size = 0
    while size < CHUNK_BYTES:
        part = source.read(CHUNK_BYTES - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _seal_file_chunk(
    cap: Capability, index: int, keys: KeyBlock, data: bytes, mirror_id: bytes
) -> tuple[SealedPayload, list[tuple[CID, bytes]]]:
    payload = seal_data(cap, index, keys, False, data, mirror_id)
    return payload, [(CID.of(CODEC_RAW, fragment), fragment) for fragment in payload.fragments]


async def put_tree(fs: FileSystem, local: Path, remote: str, progress: Progress | None) -> None:
    """Upload the folder `local` as the directory `remote` (created, parents must exist):
    one commit per directory, whatever the number of files in it."""
    await fs.mkdir(remote, parents=True)
    files, folders = await trio.to_thread.run_sync(_scan, local)
    for start in range(0, len(files), FILES_PER_COMMIT):
        await fs.write_files(remote, files[start : start + FILES_PER_COMMIT], progress=progress)
    for folder in folders:
        await put_tree(fs, folder, f"{remote.rstrip('/')}/{check_file_name(folder.name)}", progress)


def _scan(local: Path) -> tuple[list[tuple[str, Opener]], list[Path]]:
    """The files (name, opener) and sub-folders of a local folder, links skipped."""
    files: list[tuple[str, Opener]] = []
    folders: list[Path] = []
    for child in sorted(local.iterdir()):
        if child.is_symlink():
            continue  # a link could lead outside the folder being uploaded
        if child.is_dir():
            folders.append(child)
        elif child.is_file():
            files.append((check_file_name(child.name), _opener(child)))
    return files, folders


def _opener(path: Path) -> Opener:
    def open_file() -> BinaryIO:
        return path.open("rb")

    return open_file


PART_PREFIX: Final = ".pyrgos-part-"  # then 32 random hex digits: no name to plant a link at
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_EXCL refuses any existing name, a link included; O_NOFOLLOW says so once more.
_PART_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PART_MODE: Final = 0o600  # nobody else reads a download before it is complete


def _local_name(local: Path) -> str:
    name = local.name
    if name in ("", ".", ".."):
        raise Conflict(f"{local} does not name a file or folder to write")
    return name


@contextlib.contextmanager
def _parent_folder(local: Path) -> Iterator[int]:
    """The folder `local` is in, opened as the user named it: links on the way there are the
    user's own choice. What is written below it is reached only through this descriptor."""
    folder = os.open(local.parent, _DIR_FLAGS)
    try:
        yield folder
    finally:
        os.close(folder)


def _open_folder(parent: int, name: str, shown: Path) -> int:
    """Make (if missing) and open the folder `name` in `parent`, never through a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=parent)
    try:
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except NotADirectoryError:
        if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
            raise Conflict(
                f"{shown} is a symbolic link: refusing to write through it (remove it first)"
            ) from None
        raise Conflict(f"{shown} exists and is not a folder") from None


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


async def _download(
    fs: FileSystem,
    remote: str,
    folder: int,
    name: str,
    shown: Path,
    progress: Progress | None,
    size: int | None,
) -> None:
    """Write `remote` to `name` in `folder`: into a new file of a random name, created
    exclusively and mode 0600, then renamed over `name` once complete. The rename replaces a
    link found at `name` rather than writing through it; a failure or Ctrl-C removes the
    temporary file."""
    part = PART_PREFIX + secrets.token_hex(16)
    mode = 0o666 & ~_umask()
    fd = os.open(part, _PART_FLAGS, _PART_MODE, dir_fd=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            if size:
                with contextlib.suppress(OSError):  # not every filesystem can
                    os.posix_fallocate(out.fileno(), 0, size)
            async with fs.read(remote) as pieces:
                async for piece in pieces:
                    await trio.to_thread.run_sync(out.write, piece)
                    if progress is not None:
                        progress(len(piece))
            os.fchmod(out.fileno(), mode)
        try:
            os.rename(part, name, src_dir_fd=folder, dst_dir_fd=folder)
        except IsADirectoryError:
            raise Conflict(f"{shown} is a folder") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part, dir_fd=folder)
        raise


async def get_file(
    fs: FileSystem, remote: str, local: Path, progress: Progress | None, size: int | None = None
) -> None:
    """Download a file to `local` through a temporary file, renamed only once complete.

    Given the size, the file's space is allocated first: filesystems then skip block
    allocation on every write, which otherwise costs more than the copy itself.
    """
    name = _local_name(local)
    with _parent_folder(local) as folder:
        await _download(fs, remote, folder, name, local, progress, size)


async def get_tree(fs: FileSystem, remote: str, local: Path, progress: Progress | None) -> int:
    """Download the directory `remote` into the folder `local` (created if missing); return
    how many entries were skipped as unreadable (the rest is downloaded all the same).

    Every folder below `local` is made and opened without following links, so a link planted
    inside the download (as a sub-folder or a file name) cannot send a write elsewhere.
    """
    name = _local_name(local)
    with _parent_folder(local) as parent:
        folder = _open_folder(parent, name, local)
    try:
        return await _get_tree_at(fs, remote, folder, local, progress)
    finally:
        os.close(folder)


async def _get_tree_at(
    fs: FileSystem, remote: str, folder: int, shown: Path, progress: Progress | None
) -> int:
    contents = await fs.contents(remote)
    skipped = contents.unreadable
    for item in contents.items:
        name = check_file_name(item.name)  # a hostile writer cannot plant '..' or '/'
        path = f"{remote.rstrip('/')}/{name}"
        try:
            if item.is_dir:
                sub = _open_folder(folder, name, shown / name)
                try:
                    skipped += await _get_tree_at(fs, path, sub, shown / name, progress)
                finally:
                    os.close(sub)
            else:
                await _download(fs, path, folder, name, shown / name, progress, None)
        except UNREADABLE_ENTRY:
            skipped += 1
    return skipped


async def tree_size(fs: FileSystem, remote: str) -> int:
    """Total bytes of the readable files under `remote` (for a progress bar)."""
    total = 0
    for item in await fs.listdir(remote, long=True):
        if item.is_dir:
            with contextlib.suppress(*UNREADABLE_ENTRY):
                total += await tree_size(fs, f"{remote.rstrip('/')}/{item.name}")
        elif item.props is not None:
            total += item.props.size
    return total
