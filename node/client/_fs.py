"""The encrypted filesystem from a user's side: paths, directories, streaming file I/O.

Every change is one commit: new blocks staged or uploaded (pinned by an upload id), the
CHAMP updated, a new WriterData, and a compare-and-swap of the writer's pointer. A commit that
loses a race re-reads the root and redoes its change; uploaded file data is never sent twice.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import itertools
import math
import mimetypes
import os
import secrets
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Final

import trio

from node import threads
from node.client import _typed
from node.client._api import NodeApi, Route, check_block
from node.client._blocks import (
    MAX_KEYS_PER_LOOKUP,
    BlockCache,
    Blocks,
    Uploader,
    open_tasks,
    stage_dir_chunk,
)
from node.client._resolve import HomeResolver, Listing, Resolved, Resolver
from node.client._session import Session
from node.client._trees import (
    MAX_TREES_PER_COMMIT,
    TreeRoot,
    TreeUpdate,
    WriterTree,
    commit_trees,
)
from protocols import accounts, champ, crypto, methods
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.cryptree import (
    CHUNK_BYTES,
    FRAGMENT_BYTES,
    MAX_CHILDREN_PER_CHUNK,
    Capability,
    Entry,
    KeyBlock,
    Node,
    OpenedNode,
    Properties,
    SealedPayload,
    build_node,
    chunk_labels,
    decode_dir_chunk,
    encode_dir_chunk,
    open_fragment,
    open_inline,
    open_node,
    open_writer_secret,
    payload_data,
    payload_key,
    seal_data,
    seal_writer_secret,
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
from protocols.owners import OwnerProof
from protocols.writerdata import MAX_OWNED, WriterData

MAX_COMMIT_ATTEMPTS: Final = 8
FRAGMENTS_IN_FLIGHT: Final = 4  # fragment reads kept in flight while downloading
FILES_AT_ONCE: Final = 8  # files of a folder downloaded at a time (each a few round trips)
GC_EVERY_CHUNKS: Final = 16  # collect young cyclic garbage this often in long transfers
CHUNKS_AHEAD: Final = 2  # decrypted chunks held ahead of the reader: bounds memory
FILES_PER_COMMIT: Final = 2000  # bounds a folder upload's staged state
REWRITES: Final = 4  # files a rotation rewrites side by side (each holds at most one chunk)
# Small files are rewritten more at a time: their round trips overlap, while what they hold
# (SMALL_REWRITES x SMALL_FILE_BYTES = 2 MiB) stays below one chunk.
SMALL_FILE_BYTES: Final = 64 * 1024
SMALL_REWRITES: Final = 32
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


def hidden(name: str) -> bool:
    """Names starting with "." (the client's own state, such as `.pyrgos`) are not listed
    unless asked for."""
    return name.startswith(".")


class _Trees:
    """The writer trees one operation reads, each pointer read once."""

    def __init__(self, blocks: Blocks) -> None:
        self.blocks = blocks
        self.roots: dict[CID, TreeRoot] = {}

    async def root(self, writer: CID) -> TreeRoot:
        if writer not in self.roots:
            self.roots[writer] = await WriterTree(writer, self.blocks.route).read(self.blocks)
        return self.roots[writer]

    async def tree(self, writer: CID) -> CID:
        return (await self.root(writer)).data.tree


@dataclass
class _Found:
    """Where a path led: the item's capability, the directories walked (the start first),
    the entry naming the item (None: the start itself), and the directory the item's writer
    subtree starts at, with the names from there (how a commit walks to it again)."""

    blocks: Blocks
    trees: _Trees
    cap: Capability
    is_dir: bool
    dirs: list[Directory]
    entry: Entry | None
    base: Capability
    names: list[str]
    rest: list[str]  # names not found (a partial walk only)


@dataclass(frozen=True)
class Folder:
    """A directory read once (`FileSystem.open_folder`), through the writer trees read
    for it, which its entries are then reached through."""

    found: _Found
    directory: Directory

    def entries(self) -> list[Entry]:
        """Every readable entry, hidden ones too, by name."""
        return sorted(self.directory.entries(), key=lambda entry: entry.name)

    def child(self, entry: Entry) -> _Found:
        """Where `entry` of this directory leads, as a walk to it would find."""
        here, directory = self.found, self.directory
        cap = entry.capability(directory.cap)
        if cap.writer != directory.cap.writer:  # the entry has a writer of its own
            base, names = cap, []
        else:
            base, names = here.base, [*here.names, entry.name]
        # The walked directories end with the one holding the item (for the start itself,
        # `dirs` is that directory already).
        dirs = here.dirs if here.entry is None else [*here.dirs, directory]
        return _Found(here.blocks, here.trees, cap, entry.is_dir, dirs, entry, base, names, [])


def _same_writer(entry: Entry, parent: Directory) -> Capability:
    """The capability of `entry`, which a change inside `parent`'s writer tree may enter only
    when it has the same writer."""
    cap = entry.capability(parent.cap)
    if cap.writer != parent.cap.writer:
        raise Conflict(
            f"{entry.name} has a writer of its own: a change cannot cross into it "
            "(moving items between writers is not supported)"
        )
    return cap


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
    """The encrypted filesystem as one user (or, without a session, anyone) sees it.

    A path starts with a username (`/alice/a/b`), which `resolver` turns into a capability,
    the route to its owner's data and the names below it; relative paths are relative to the
    session user's home. Without a session only reads work. One FileSystem serves one
    command: every block it reads is kept in its cache, so its reads and commits fetch each
    block at most once.
    """

    def __init__(
        self,
        api: NodeApi | Session,
        resolver: Resolver | None = None,
        session: Session | None = None,
    ) -> None:
        if isinstance(api, Session):  # FileSystem(session): the user's own home
            session, api = api, api.api
        if resolver is None:
            if session is None:
                raise ValueError("a FileSystem without a session needs a resolver")
            resolver = HomeResolver(session)
        self.api = api
        self.session = session
        self.resolver = resolver
        self.cache = BlockCache()

    def require_session(self) -> Session:
        """The logged-in session, or Denied: writes and relative paths need one."""
        if self.session is None:
            raise Denied("this needs a login: run `pyrgos login USER` first")
        return self.session

    # -- reading ------------------------------------------------------------------------

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

    def _split(self, path: str) -> tuple[str, list[str]]:
        """(username, names below it); relative paths start at the session user's home."""
        names = split_path(path)
        if path.startswith("/") and names:
            return names[0], names[1:]
        return self.require_session().username, names

    async def _find(self, path: str) -> _Found:
        username, names = self._split(path)
        return await self._walk_from(await self.resolver.resolve(username, names))

    async def _walk_from(self, start: Resolved, partial: bool = False) -> _Found:
        """Walk `start.names` from `start.cap`, reading each writer's tree the walk enters.

        With `partial`, the walk stops at the first name that does not exist or is a file
        with names below it (the names left are `_Found.rest`); otherwise that is NotFound.
        """
        blocks = Blocks(self.api, start.route, self.cache)
        trees = _Trees(blocks)
        cap, names = start.cap, start.names
        base, base_depth, is_dir = cap, 0, True
        dirs: list[Directory] = []
        if names:
            dirs.append(await self._read_dir(blocks, await trees.tree(cap.writer), cap))
        else:  # a capability given directly may name a file
            is_dir, directory = await self._open_start(blocks, await trees.tree(cap.writer), cap)
            dirs += [directory] if directory is not None else []
        entry: Entry | None = None
        for depth, name in enumerate(names):
            found = dirs[-1].find(name)
            if found is None:
                if partial:
                    return _Found(blocks, trees, cap, is_dir, dirs, entry, base,
                                  names[base_depth:depth], names[depth:])  # fmt: skip
                raise NotFound(f"no such file or directory: {'/'.join(names[: depth + 1])}")
            entry = found[1]
            cap, is_dir = entry.capability(dirs[-1].cap), entry.is_dir
            if cap.writer != dirs[-1].cap.writer:  # the item has a writer of its own
                base, base_depth = cap, depth + 1
            if depth < len(names) - 1:
                if not entry.is_dir:
                    if partial:  # the caller tells a file in the way (is_dir False, rest)
                        walked, rest = names[base_depth : depth + 1], names[depth + 1 :]
                        return _Found(blocks, trees, cap, False, dirs, entry, base, walked, rest)
                    raise NotFound(f"not a directory: {'/'.join(names[: depth + 1])}")
                dirs.append(await self._read_dir(blocks, await trees.tree(cap.writer), cap))
        return _Found(blocks, trees, cap, is_dir, dirs, entry, base, names[base_depth:], [])

    async def _open_start(
        self, blocks: Blocks, tree: CID, cap: Capability
    ) -> tuple[bool, Directory | None]:
        """Whether `cap` names a directory (and the directory read), or a file: a capability
        does not say, and a node opens under the keys of its own kind only."""
        ((_, block),) = await self._nodes(blocks, tree, cap, [0])
        try:
            opened = open_node(cap, 0, True, block)
        except Corrupted:
            open_node(cap, 0, False, block)  # Corrupted unless it is a file
            return False, None
        if opened.props is None or not opened.props.is_dir:
            raise Corrupted("a first chunk has no metadata")
        return True, await self._read_dir(blocks, tree, cap)

    async def _item_dir(self, found: _Found, shown: str) -> Directory:
        """The directory `found` names (Conflict if it is a file, `shown` by that name)."""
        if not found.is_dir:
            raise Conflict(f"not a directory: {shown}")
        if found.entry is None:
            return found.dirs[0]
        return await self._read_dir(
            found.blocks, await found.trees.tree(found.cap.writer), found.cap
        )

    async def _walk(
        self, blocks: Blocks, tree: CID, start: Capability, names: list[str]
    ) -> tuple[list[Directory], Entry | None]:
        """The directories along `names` (`start` first) and the final entry (None: `start`),
        all in one writer's `tree`: how a commit finds again what it changes."""
        dirs = [await self._read_dir(blocks, tree, start)]
        entry: Entry | None = None
        for depth, name in enumerate(names):
            found = dirs[-1].find(name)
            if found is None:
                raise NotFound(f"no such file or directory: {'/'.join(names[: depth + 1])}")
            entry = found[1]
            if depth < len(names) - 1:
                if not entry.is_dir:
                    raise NotFound(f"not a directory: {'/'.join(names[: depth + 1])}")
                dirs.append(await self._read_dir(blocks, tree, _same_writer(entry, dirs[-1])))
        return dirs, entry

    async def listdir(
        self, path: str = "", *, long: bool = False, all: bool = False
    ) -> list[Listing]:
        """The readable entries of a directory (or the one file `path` names)."""
        return (await self.contents(path, long=long, all=all)).items

    async def contents(self, path: str = "", *, long: bool = False, all: bool = False) -> Contents:
        """A directory's entries, sorted by name, and the count of those skipped as unreadable;
        names starting with "." only with `all`.

        A short listing reads only the directory, so it skips the entries that fail to decode;
        a long one reads every child's first node and also skips those it cannot read.
        """
        top = await self.top_listing(path)
        if top is not None:
            items = sorted((i for i in top if all or not hidden(i.name)), key=lambda i: i.name)
            if not long:  # a short listing is names and kinds, wherever it comes from
                items = [Listing(i.name, i.is_dir) for i in items]
            return Contents(items, 0)
        return await self._contents(await self._find(path), long=long, all=all)

    async def top_listing(self, path: str) -> list[Listing] | None:
        """When `path` is `/username` and that is no one directory (another user's shares),
        what `ls` shows there; None when `path` names one item."""
        username, names = self._split(path)
        return None if names else await self.resolver.list_top(username)

    async def open_folder(self, path: str) -> Folder:
        """The directory at `path`, read once: its entries are then opened from it
        (`open_subfolder`, `read_entry`) without walking from the root again."""
        found = await self._find(path)
        return Folder(found, await self._item_dir(found, path))

    async def open_subfolder(self, parent: Folder, entry: Entry) -> Folder:
        found = parent.child(entry)
        return Folder(found, await self._item_dir(found, entry.name))

    @contextlib.asynccontextmanager
    async def read_entry(
        self, parent: Folder, entry: Entry
    ) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        """`read` of a file in a folder already open."""
        found = parent.child(entry)
        if found.is_dir:
            raise Conflict(f"{entry.name} is a directory")
        async with self._read_found(found, 0, None) as pieces:
            yield pieces

    async def contents_of(
        self, cap: Capability, route: Route, *, long: bool = False, all: bool = False
    ) -> Contents:
        """`contents` of the item a capability names (a share, a link), read through `route`."""
        return await self._contents(await self._walk_from(Resolved(cap, route, [])), long, all)

    async def open_capability(self, cap: Capability, route: Route) -> Listing:
        """The item a capability names, with its properties: checks that it can be read."""
        found = await self._walk_from(Resolved(cap, route, []))
        props = await self._found_props(found)
        return Listing(props.name, props.is_dir, props)

    async def _contents(self, found: _Found, long: bool = False, all: bool = False) -> Contents:
        if not found.is_dir:
            props = await self._found_props(found)
            name = props.name if found.entry is None else found.entry.name
            return Contents([Listing(name, False, props)], 0)
        directory = await self._item_dir(found, "this item")
        entries = sorted(
            (e for e in directory.entries() if all or not hidden(e.name)), key=lambda e: e.name
        )
        if not long:
            return Contents([Listing(e.name, e.is_dir) for e in entries], directory.unreadable())
        tree = await found.trees.tree(directory.cap.writer)
        children = await self._children(found.blocks, tree, directory.cap, entries, found.trees)
        items = [Listing(e.name, e.is_dir, props) for e, props in children if props is not None]
        return Contents(items, directory.unreadable() + len(entries) - len(items))

    async def _children(
        self,
        blocks: Blocks,
        tree: CID,
        parent: Capability,
        entries: Sequence[Entry],
        trees: _Trees | None = None,
    ) -> list[tuple[Entry, Properties | None]]:
        """Each entry with its first node's properties, None where that node cannot be read:
        one CHAMP lookup per 64 entries, their nodes fetched in parallel. An entry with a
        writer of its own is looked up in that writer's tree (read through `trees`; without
        them, it counts as unreadable)."""
        result: list[tuple[Entry, Properties | None]] = []
        for start in range(0, len(entries), MAX_KEYS_PER_LOOKUP):
            batch = entries[start : start + MAX_KEYS_PER_LOOKUP]
            own = [e.label for e in batch if e.writer in (None, parent.writer)]
            found = await blocks.lookup(tree, own) if own else {}
            for entry in batch:
                if entry.writer not in (None, parent.writer) and trees is not None:
                    with contextlib.suppress(*UNREADABLE_ENTRY):
                        other = await trees.tree(entry.writer)
                        found.update(await blocks.lookup(other, [entry.label]))
            props: list[Properties | None] = [None] * len(batch)
            async with open_tasks() as nursery:
                for slot, entry in enumerate(batch):
                    cid = found.get(entry.label)
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

    async def _props(self, blocks: Blocks, tree: CID, cap: Capability, is_dir: bool) -> Properties:
        ((_, block),) = await self._nodes(blocks, tree, cap, [0])
        props = open_node(cap, 0, is_dir, block).props
        if props is None:
            raise Corrupted("a first chunk has no metadata")
        return props

    async def _found_props(self, found: _Found) -> Properties:
        if found.is_dir and found.entry is None:
            return found.dirs[0].props
        tree = await found.trees.tree(found.cap.writer)
        return await self._props(found.blocks, tree, found.cap, found.is_dir)

    async def stat(self, path: str) -> Properties:
        return await self._found_props(await self._find(path))

    async def capability(self, path: str) -> Capability:
        """The capability of the item at `path`: writable when we hold its write key."""
        return (await self._find(path)).cap

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
        found = await self._find(path)
        if found.is_dir:
            raise Conflict(f"{path} is a directory")
        async with self._read_found(found, offset, length) as pieces:
            yield pieces

    @contextlib.asynccontextmanager
    async def _read_found(
        self, found: _Found, offset: int, length: int | None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        cap, blocks = found.cap, found.blocks
        tree = await found.trees.tree(cap.writer)
        if length is None:
            props = await self._props(blocks, tree, cap, False)
            length = max(0, props.size - offset)
        send, receive = trio.open_memory_channel[bytes](2)
        async with open_tasks() as nursery:
            nursery.start_soon(self._produce, send, blocks, tree, cap, offset, offset + length)
            async with receive:
                yield receive
            nursery.cancel_scope.cancel()  # the reader stopped early

    async def read_bytes(self, path: str, limit: int) -> bytes:
        """The whole of a small file (state files): TooLarge when it is over `limit` bytes."""
        return await self._read_small(await self._find(path), path, limit)

    async def read_capability(
        self, cap: Capability, route: Route, limit: int, names: Sequence[str] = ()
    ) -> bytes:
        """`read_bytes` of the file a capability names (or the file at `names` below the
        directory it names), read through `route`."""
        found = await self._walk_from(Resolved(cap, route, list(names)))
        return await self._read_small(found, "/".join(names) or "this file", limit)

    async def _read_small(self, found: _Found, shown: str, limit: int) -> bytes:
        if found.is_dir:
            raise Conflict(f"{shown} is a directory")
        props = await self._found_props(found)
        if props.size > limit:
            raise TooLarge(f"{shown} is {props.size} bytes, over the {limit} expected")
        parts = []
        async with self._read_found(found, 0, props.size) as pieces:
            async for piece in pieces:
                parts.append(piece)
        return b"".join(parts)

    async def write_bytes(self, path: str, data: bytes) -> None:
        """Write a small file whole (state files), replacing any file of that name."""
        await self.write_file(path, io.BytesIO(data))

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
            plain[i] = await threads.run_sync(_open_fragment, links[i], key, label, i,
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

    async def _writable(self, found: _Found) -> tuple[WriterTree, TreeRoot]:
        """The writer tree holding what `found` names, with the key to sign for it: the
        session's identity for the user's own home tree; for a subtree with a writer of its
        own, the writer secret sealed in its root node under the item's write key. Denied
        when we cannot write there. A writable capability needs no session (a writable secret
        link's holder writes without an account)."""
        session, base, blocks = self.session, found.base, found.blocks
        root = await found.trees.root(base.writer)
        own = session is not None and base.owner == session.owner
        if base.writer == base.owner:
            if session is None or not own:
                if base.write_key is None:
                    raise Denied("this item is read-only to you: you hold no write access to it")
                raise Denied("only its owner writes outside a shared item's subtree")
            return WriterTree(base.writer, blocks.route, session.identity, session.mirror_id), root
        if base.write_key is None:
            raise Denied("this item is read-only to you: you hold no write access to it")
        is_dir = found.is_dir or bool(found.names)
        ((_, block),) = await self._nodes(blocks, root.data.tree, base, [0])
        sealed = open_node(base, 0, is_dir, block).keys.writer_secret
        if sealed is None:
            raise Denied("this item's writer key is not held with it: it is read-only to you")
        signer = crypto.SigningKey.from_seed(open_writer_secret(base.write_key, base.label, sealed))
        if signer.public.key_hash() != base.writer:
            raise Corrupted("an item's writer secret is not the key of its writer")
        if session is not None and own:
            mirror = session.mirror_id
        else:  # a sharee or link holder copies the owner's mirror BAT id from the node
            bat_ids = Node.decode(block).bats
            if len(bat_ids) < 2:
                raise Corrupted("an item's node names no mirror BAT")
            mirror = bat_ids[1]
        return WriterTree(base.writer, blocks.route, signer, mirror), root

    async def _commit(
        self,
        tree: WriterTree,
        first: TreeRoot,
        change: Callable[[Blocks, CID], Awaitable[CID | None]],
        uploads: Sequence[bytes] = (),
    ) -> None:
        """Apply `change` to `tree` (first at `first`, the root the operation read) and swap
        its pointer; on a lost race, re-read the pointer and redo it: the blocks already read
        come from the cache, so only what changed is fetched. A change that returns None has
        nothing to do: no commit is made."""
        tree.writable()
        root = first
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            blocks = Blocks(self.api, tree.route, self.cache)
            if attempt:
                root = await tree.read(blocks)
            new_tree = await change(blocks, root.data.tree)
            if new_tree is None:
                return
            try:
                await commit_trees(self.api, blocks, [TreeUpdate(tree, root, new_tree)], uploads)
                return
            except StaleRoot:
                await trio.sleep(crypto.random_fraction() * 0.02 * 2**attempt)
        raise Conflict("the tree kept changing under this operation; try again")

    async def _save_dir(
        self, blocks: Blocks, tree: CID, directory: Directory, dirty: set[int], mirror_id: bytes
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
            modified=self.api.now_ms(),
        )
        chunks[0].props = props
        dirty.add(0)
        for chunk in chunks:
            if chunk.index in dirty:
                tree = await stage_dir_chunk(
                    blocks, tree, directory.cap, chunk.index, chunk.keys,
                    chunk.props if chunk.index == 0 else None, chunk.entries, chunk.node,
                    mirror_id, chunk.unreadable,
                )  # fmt: skip
        return tree

    async def _new_dir(
        self, blocks: Blocks, tree: CID, parent: Capability, name: str, mirror_id: bytes
    ) -> tuple[CID, Entry]:
        cap = new_capability(parent)
        stamp = self.api.now_ms()
        props = Properties(name, True, 0, stamp, stamp, parent=parent.label)
        keys = KeyBlock(crypto.random_key())
        tree = await stage_dir_chunk(blocks, tree, cap, 0, keys, props, [], None, mirror_id)
        return tree, Entry.link(name, True, cap, parent)

    async def _dir_at(
        self, blocks: Blocks, tree: CID, start: Capability, names: list[str]
    ) -> Directory:
        dirs, entry = await self._walk(blocks, tree, start, names)
        if entry is None:
            return dirs[0]
        if not entry.is_dir:
            raise Conflict(f"not a directory: {'/'.join(names)}")
        return await self._read_dir(blocks, tree, _same_writer(entry, dirs[-1]))

    async def _parent(self, path: str) -> tuple[_Found, str, list[str]]:
        """The directory holding the item at `path`, its name there, and the names from the
        start of the directory's writer subtree to it (how a commit finds it again)."""
        username, names = self._split(path)
        if not names:
            raise Conflict(f"/{username} is not an item of a directory")
        found = await self._walk_from(await self.resolver.resolve(username, names[:-1]))
        if not found.is_dir:
            raise Conflict(f"not a directory: {'/'.join(names[:-1])}")
        return found, names[-1], found.names

    async def mkdir(self, path: str, *, parents: bool = False) -> None:
        username, names = self._split(path)
        if not names:
            raise Conflict("the home directory already exists")
        found = await self._walk_from(await self.resolver.resolve(username, names), True)
        if not found.rest:
            if not parents:
                raise Conflict(f"{path} already exists")
            if not found.is_dir:
                raise Conflict(f"not a directory: {'/'.join(names)}")
            return
        if not found.is_dir:
            raise Conflict(f"not a directory: {'/'.join(names[: len(names) - len(found.rest)])}")
        if len(found.rest) > 1 and not parents:
            raise NotFound(
                f"no such directory: {'/'.join(names[: len(names) - len(found.rest) + 1])}"
            )
        tree, first = await self._writable(found)
        mirror_id = tree.mirror_id or b""
        rel = found.names + found.rest  # from the start of the writer's subtree
        shown = names[: len(names) - len(rel)]

        async def change(blocks: Blocks, root: CID) -> CID:
            directory = await self._read_dir(blocks, root, found.base)
            for depth, name in enumerate(rel):
                at = "/".join([*shown, *rel[: depth + 1]])
                existing = directory.find(name)
                last = depth == len(rel) - 1
                if existing is not None:
                    if last and not parents:
                        raise Conflict(f"{path} already exists")
                    if not existing[1].is_dir:
                        raise Conflict(f"not a directory: {at}")
                    directory = await self._read_dir(
                        blocks, root, _same_writer(existing[1], directory)
                    )
                    continue
                if not last and not parents:
                    raise NotFound(f"no such directory: {at}")
                root, entry = await self._new_dir(blocks, root, directory.cap, name, mirror_id)
                directory.chunks[-1].entries.append(entry)
                root = await self._save_dir(
                    blocks, root, directory, {len(directory.chunks) - 1}, mirror_id
                )
                directory = await self._read_dir(blocks, root, entry.capability(directory.cap))
            return root

        await self._commit(tree, first, change)

    async def _labels(
        self, blocks: Blocks, tree: CID, parent: Capability, entry: Entry
    ) -> dict[bytes, CID]:
        """Every chunk label of `entry`'s subtree with its current node, for removal.

        Only locations are needed, so no write key is opened. A node that cannot be read (a
        bad entry) still has its chunks found by their labels; what lies below a directory
        that cannot be read cannot be found, and stays in the tree. An item with a writer of
        its own is in that writer's tree, not this one: nothing of it is found here.
        """
        if entry.writer not in (None, parent.writer):
            return {}
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
        return await champ.remove_many(blocks, tree, labels)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file or directory. An item with a writer of its own is unlinked from its
        directory; its writer's tree is left as it is."""
        if not self._split(path)[1]:
            raise Conflict("the home directory cannot be removed")
        found, name, rel = await self._parent(path)
        tree, first = await self._writable(found)
        mirror_id = tree.mirror_id or b""

        async def change(blocks: Blocks, root: CID) -> CID:
            parent = await self._dir_at(blocks, root, found.base, rel)
            located = parent.find(name)
            if located is None:
                raise NotFound(f"no such file or directory: {path}")
            chunk, entry = located
            if entry.is_dir and not recursive:
                child_cap = entry.capability(parent.cap)
                try:
                    child_tree = root
                    if child_cap.writer != parent.cap.writer:
                        child_tree = await _Trees(blocks).tree(child_cap.writer)
                    child = await self._read_dir(blocks, child_tree, child_cap)
                except UNREADABLE_ENTRY:
                    raise Conflict(f"{path} is a directory that cannot be read (use -r)") from None
                if child.entries() or child.unreadable():
                    raise Conflict(f"{path} is a directory that is not empty (use -r)")
            root = await self._unlink(
                blocks, root, await self._labels(blocks, root, parent.cap, entry)
            )
            chunk.entries.remove(entry)
            return await self._save_dir(blocks, root, parent, {chunk.index}, mirror_id)

        await self._commit(tree, first, change)

    async def remove_unreadable(self, path: str) -> int:
        """Remove the entries of the directory `path` that cannot be read (see `contents`, long
        form), and the chunks they name that can be found; return how many were removed.
        Entries with a writer of their own are left alone (they are read from another tree)."""
        found = await self._find(path)
        if not found.is_dir:
            raise Conflict(f"not a directory: {path}")
        tree, first = await self._writable(found)
        mirror_id = tree.mirror_id or b""
        removed = 0

        async def change(blocks: Blocks, root: CID) -> CID | None:
            nonlocal removed
            directory = await self._dir_at(blocks, root, found.base, found.names)
            dirty = {chunk.index for chunk in directory.chunks if chunk.unreadable}
            removed = directory.unreadable()
            gone: dict[bytes, CID] = {}  # the removed entries' nodes, unlinked in one pass
            for chunk in directory.chunks:
                chunk.unreadable = []
                own = [e for e in chunk.entries if e.writer in (None, directory.cap.writer)]
                for entry, props in await self._children(blocks, root, directory.cap, own):
                    if props is None:
                        gone.update(await self._labels(blocks, root, directory.cap, entry))
                        chunk.entries.remove(entry)
                        dirty.add(chunk.index)
                        removed += 1
            if not dirty:
                return None
            root = await self._unlink(blocks, root, gone)
            return await self._save_dir(blocks, root, directory, dirty, mirror_id)

        await self._commit(tree, first, change)
        return removed

    async def move(self, source: str, target: str) -> None:
        """Move or rename an item within one writer's tree (Conflict across writers)."""
        src_user, src = self._split(source)
        dst_user, dst = self._split(target)
        if not src:
            raise Conflict("the home directory cannot be moved")
        if dst_user != src_user:
            raise Conflict("an item cannot be moved to another user's space")
        found, _, rel = await self._parent(source)
        offset = len(src) - 1 - len(rel)  # names before the writer subtree's start
        if dst[:offset] != src[:offset]:
            raise Conflict("an item cannot be moved out of its writer's subtree")
        dst_rel = dst[offset:]
        tree, first = await self._writable(found)
        mirror_id = tree.mirror_id or b""

        async def change(blocks: Blocks, root: CID) -> CID:
            start = found.base
            src_parent = await self._dir_at(blocks, root, start, rel)
            located = src_parent.find(src[-1])
            if located is None:
                raise NotFound(f"no such file or directory: {source}")
            src_chunk, entry = located
            if entry.writer not in (None, src_parent.cap.writer):
                raise Conflict(f"{source} has a writer of its own: it cannot be moved yet")
            dst_names, name = await self._destination(blocks, root, start, dst_rel, src[-1])
            if entry.is_dir and dst_names[: len(rel) + 1] == [*rel, src[-1]]:
                raise Conflict("a directory cannot be moved into itself")
            dst_parent = (
                src_parent
                if dst_names == rel
                else await self._dir_at(blocks, root, start, dst_names)
            )
            if dst_parent.find(name) is not None:
                raise Conflict(f"{'/'.join([*dst[:offset], *dst_names, name])} already exists")
            root = await self._rename_node(
                blocks, root, src_parent.cap, entry, name, dst_parent.cap, mirror_id
            )
            src_chunk.entries.remove(entry)
            moved = Entry.link(name, entry.is_dir, entry.capability(src_parent.cap), dst_parent.cap)
            if dst_parent is src_parent:
                src_chunk.entries.append(moved)
                return await self._save_dir(blocks, root, src_parent, {src_chunk.index}, mirror_id)
            root = await self._save_dir(blocks, root, src_parent, {src_chunk.index}, mirror_id)
            dst_parent = await self._dir_at(blocks, root, start, dst_names)
            dst_parent.chunks[-1].entries.append(moved)
            return await self._save_dir(
                blocks, root, dst_parent, {len(dst_parent.chunks) - 1}, mirror_id
            )

        await self._commit(tree, first, change)

    async def _destination(
        self, blocks: Blocks, tree: CID, start: Capability, names: list[str], name: str
    ) -> tuple[list[str], str]:
        """(directory, name) a move to `names` lands at: into it when it is a directory."""
        try:
            _, entry = await self._walk(blocks, tree, start, names)
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
        mirror_id: bytes,
    ) -> CID:
        """Rewrite chunk 0's metadata with the new name and parent; the data is untouched."""
        cap = entry.capability(old_parent)
        ((cid, block),) = await self._nodes(blocks, tree, cap, [0])
        opened = open_node(cap, 0, entry.is_dir, block)
        if opened.props is None:
            raise Corrupted("a first chunk has no metadata")
        props = replace(
            opened.props, name=name, parent=new_parent.label, modified=self.api.now_ms()
        )
        node = build_node(cap, 0, opened.keys, entry.is_dir, props, opened.data, mirror_id)
        return await champ.put(blocks, tree, cap.label, cid, await blocks.put(node))

    # -- rotation -----------------------------------------------------------------------

    async def rotate(self, path: str, *, own_writer: bool | None = None) -> Capability:
        """Rewrite the item at `path` and its whole subtree under fresh labels, BATs, read
        and write keys (DESIGN §6), in one atomic commit; return its new (writable)
        capability. Whoever held an old capability then finds nothing: the old nodes are
        removed from their writer's tree (or that writer is dropped whole), and the new ones
        need new BATs.

        `own_writer`: True puts the subtree in a new sub-writer (its owner proof added to the
        owner's identity root in the same commit); False in the parent's writer; None keeps
        the kind (an item with a writer of its own gets a fresh one). An item with a writer of
        its own inside the subtree gets a fresh one too, in the same commit. Only the owner
        rotates.
        Cost: every node and fragment of the subtree, read and written once, a chunk at a time.
        """
        session = self.require_session()
        username, names = self._split(path)
        if username != session.username:
            raise Denied("only its owner can rotate the keys of an item")
        if not names:
            raise Conflict("the home directory cannot be rotated: choose a folder in it")
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            try:
                return await self._rotate_once(names, own_writer)
            except StaleRoot:
                await trio.sleep(crypto.random_fraction() * 0.02 * 2**attempt)
        raise Conflict("the tree kept changing under this rotation; try again")

    async def _rotate_once(self, names: list[str], own_writer: bool | None) -> Capability:
        session = self.require_session()
        found_parent, name, rel = await self._parent("/".join(["", session.username, *names]))
        parent_tree, parent_root = await self._writable(found_parent)
        blocks = Blocks(self.api, session.route, self.cache)
        parent = await self._dir_at(blocks, parent_root.data.tree, found_parent.base, rel)
        located = parent.find(name)
        if located is None:
            raise NotFound(f"no such file or directory: {'/'.join(names)}")
        chunk, entry = located
        old_cap = entry.capability(parent.cap)
        had_own = old_cap.writer != parent.cap.writer
        new_own = had_own if own_writer is None else own_writer
        job = _Rewrite(blocks, _Trees(blocks), parent.cap.writer, session.mirror_id)
        source = parent_root.data.tree
        if had_own:
            job.dropped.append(old_cap.writer)
            source = await job.trees.tree(old_cap.writer)
        signer = crypto.SigningKey.generate() if new_own else None
        new_cap = new_capability(parent.cap)
        if signer is not None:
            job.writers.append(signer)
            new_cap = replace(new_cap, writer=signer.public.key_hash())
        async with open_tasks() as nursery:
            job.uploader = Uploader(self.api, session.owner, session.identity, nursery)
            try:
                await self._rewrite(
                    job, source, old_cap, entry.is_dir, new_cap, parent.cap.label, signer
                )
            except UNREADABLE_ENTRY as exc:  # not NotFound: the item itself is there
                raise Corrupted(
                    f"something inside {'/'.join(names)} cannot be read ({exc.message}): remove"
                    " it (`pyrgos rm --bad DIR` removes unreadable entries); nothing was changed"
                ) from exc
            await job.uploader.finish()
        if len(job.writers) + 2 > MAX_TREES_PER_COMMIT:
            raise TooLarge(
                f"{'/'.join(names)} holds more than {MAX_TREES_PER_COMMIT - 2} items with a"
                " writer of their own: unshare some of them first; nothing was changed"
            )

        # The parent's tree: the old nodes that were in it out, the new ones that stay in it
        # in, and the entry relinked to the new capability.
        tree = await self._unlink(blocks, parent_root.data.tree, job.old)
        tree = await champ.put_many(blocks, tree, job.new.get(parent.cap.writer, {}))
        chunk.entries[chunk.entries.index(entry)] = Entry.link(
            name, entry.is_dir, new_cap, parent.cap
        )
        tree = await self._save_dir(blocks, tree, parent, {chunk.index}, session.mirror_id)
        updates: list[TreeUpdate] = []
        identity = WriterTree(session.owner, session.route, session.identity, session.mirror_id)
        if not job.writers and not job.dropped:
            updates.append(TreeUpdate(parent_tree, parent_root, tree))
        else:  # the owner's identity root changes its owned writers in the same commit
            id_root = parent_root if parent_tree.is_identity else await identity.read(blocks)
            owned = [
                proof for proof in id_root.data.owned
                if OwnerProof.decode(proof).writer not in job.dropped
            ]  # fmt: skip
            owned += [OwnerProof.create(w, session.owner).encode() for w in job.writers]
            if len(owned) > MAX_OWNED:
                raise TooLarge(f"a user owns at most {MAX_OWNED} writers: unshare a writable item")
            if parent_tree.is_identity:
                data = replace(id_root.data, tree=tree, owned=owned)
                updates.append(TreeUpdate(identity, id_root, tree, data))
            else:
                updates.append(TreeUpdate(parent_tree, parent_root, tree))
                data = replace(id_root.data, owned=owned)
                updates.append(TreeUpdate(identity, id_root, id_root.data.tree, data))
        for writer in job.writers:
            key = writer.public.key_hash()
            new_tree = await champ.put_many(blocks, champ.EMPTY_ROOT, job.new.get(key, {}))
            sub = WriterTree(key, session.route, writer, session.mirror_id)
            updates.append(TreeUpdate(sub, None, new_tree, WriterData(key, new_tree)))
        # The owner puts every block: a new writer is registered only by this very commit.
        updates = [replace(u, put_by=session.identity) for u in updates]
        await commit_trees(self.api, blocks, updates, [job.uploader.upload])
        return new_cap

    async def _rewrite(
        self,
        job: _Rewrite,
        source: CID,
        old: Capability,
        is_dir: bool,
        new: Capability,
        parent_label: bytes,
        signer: crypto.SigningKey | None,
        small: bool = False,
    ) -> None:
        """Stage `old`'s subtree (read from the CHAMP `source`) again as `new`, its root
        carrying `signer`'s seed (sealed under the new write key) when it starts a writer.
        A sub-writer inside gets a fresh writer too (its old one is dropped whole)."""
        secret = None
        if signer is not None:
            assert new.write_key is not None
            secret = seal_writer_secret(new.write_key, new.label, signer.seed)
        keys = KeyBlock(crypto.random_key(), secret)
        new_nodes = job.new.setdefault(new.writer, {})
        if not is_dir:
            await self._rewrite_file(job, source, old, new, keys, parent_label, small)
            return
        directory = await self._read_dir(job.blocks, source, old)
        for dir_chunk in directory.chunks:
            assert dir_chunk.node is not None
            # Each child's first node, fetched in batches into the cache: the walk below then
            # reads them without a round trip each.
            # Their sizes pick the limiter: small files go many at a time.
            listed = await self._children(job.blocks, source, old, dir_chunk.entries, job.trees)
            smalls = [props is not None and props.size <= SMALL_FILE_BYTES for _, props in listed]
            if old.writer == job.parent_writer:
                job.old[old.chunk(dir_chunk.index)[0]] = dir_chunk.node
            entries: list[Entry | None] = [None] * len(dir_chunk.entries)

            async def rewrite_child(
                out: list[Entry | None], slot: int, child: Entry, small: bool
            ) -> None:
                child_old = child.capability(old)
                child_new, child_signer, child_source = new_capability(new), None, source
                if child_old.writer != old.writer:  # a sub-writer inside: a fresh one too
                    child_signer = crypto.SigningKey.generate()
                    job.writers.append(child_signer)
                    job.dropped.append(child_old.writer)
                    child_new = replace(child_new, writer=child_signer.public.key_hash())
                    child_source = await job.trees.tree(child_old.writer)
                await self._rewrite(job, child_source, child_old, child.is_dir, child_new,
                                    new.label, child_signer, small)  # fmt: skip
                out[slot] = Entry.link(child.name, child.is_dir, child_new, new)

            # Siblings are rewritten side by side (files bounded by the job's limiter), so
            # a folder of small files costs round trips in parallel, not one after another.
            async with open_tasks() as nursery:
                for slot, child in enumerate(dir_chunk.entries):
                    nursery.start_soon(rewrite_child, entries, slot, child, smalls[slot])
            props = dir_chunk.props
            if props is not None:
                props = replace(props, parent=parent_label)
            payload = seal_data(new, dir_chunk.index, keys, True,
                                encode_dir_chunk([e for e in entries if e is not None],
                                                 dir_chunk.unreadable),
                                job.mirror_id)  # fmt: skip
            job.blocks.stage_fragments(payload)
            node = build_node(new, dir_chunk.index, keys, True, props,
                              payload_data(payload), job.mirror_id)  # fmt: skip
            new_nodes[new.chunk(dir_chunk.index)[0]] = await job.blocks.put(node)

    async def _rewrite_file(
        self,
        job: _Rewrite,
        source: CID,
        old: Capability,
        new: Capability,
        keys: KeyBlock,
        parent_label: bytes,
        small: bool,
    ) -> None:
        """Every chunk of a file opened and sealed again under `new`, one chunk at a time."""
        async with job.small if small else job.files:
            ((first_cid, block),) = await self._nodes(job.blocks, source, old, [0])
            first = open_node(old, 0, False, block)
            if first.props is None:
                raise Corrupted("a first chunk has no metadata")
            count = _chunk_count(first.props)
            labels = [old.chunk(i)[0] for i in range(count)]
            found: dict[bytes, CID | None] = {labels[0]: first_cid}
            if count > 1:  # a one-chunk file (most of them) needs no second walk of the CHAMP
                found.update(await job.blocks.lookup(source, labels[1:]))
            new_nodes = job.new.setdefault(new.writer, {})
            for index in range(count):
                cid = found[labels[index]]
                if cid is None:
                    raise NotFound(f"{first.props.name} is missing a chunk")
                if old.writer == job.parent_writer:
                    job.old[labels[index]] = cid
                opened = first
                if index:
                    block = await job.blocks.fetch(cid, old.chunk(index)[1])
                    opened = open_node(old, index, False, block)
                plain = await self._payload(job.blocks, old, index, opened, False)
                payload, fragments = await threads.run_sync(
                    _seal_file_chunk, new, index, keys, plain, job.mirror_id
                )
                del plain
                await job.uploader.add(fragments)
                props = replace(first.props, parent=parent_label) if index == 0 else None
                node = build_node(
                    new, index, keys, False, props, payload_data(payload), job.mirror_id
                )
                new_nodes[new.chunk(index)[0]] = await job.blocks.put(node)

    # -- files --------------------------------------------------------------------------

    async def _upload_file(
        self,
        uploader: Uploader,
        parent: Capability,
        name: str,
        source: BinaryIO,
        progress: Progress | None,
        mirror_id: bytes,
    ) -> _Prepared:
        """Encrypt and send every chunk of `source`; nothing points at them until the commit."""
        cap = new_capability(parent)
        keys = KeyBlock(crypto.random_key())
        nodes: dict[bytes, CID] = {}
        first: SealedPayload | None = None
        size = 0
        for index in itertools.count():
            data = await threads.run_sync(_read_chunk, source)
            if not data and index > 0:
                break
            payload, fragments = await threads.run_sync(
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
        stamp = self.api.now_ms()
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
        """Upload files into `directory` (overwriting files of the same names) in one commit.

        The directory is read once (its writer's pointer and the nodes on the way), and the
        commit works from what was read: a commit that loses its race re-reads the pointer.
        """
        for name, _ in files:
            check_file_name(name)
        if len({name for name, _ in files}) != len(files):
            raise Conflict("the same file name is given twice in one upload")
        names = self._split(directory)[1]
        found = await self._find(directory)
        parent = await self._item_dir(found, "/".join(names))
        tree, first = await self._writable(found)
        signer, mirror_id = tree.writable(), tree.mirror_id or b""
        rel = found.names
        for name, _ in files:
            existing = parent.find(name)
            if existing is not None and existing[1].is_dir:
                raise Conflict(f"{'/'.join([*names, name])} is a directory")
            if existing is not None and existing[1].writer not in (None, parent.cap.writer):
                raise Conflict(f"{name} has a writer of its own: remove it before replacing it")
        prepared: list[_Prepared] = []
        async with open_tasks() as nursery:
            uploader = Uploader(self.api, tree.owner, signer, nursery)
            for name, opener in files:
                with opener() as source:
                    prepared.append(
                        await self._upload_file(
                            uploader, parent.cap, name, source, progress, mirror_id
                        )
                    )
            await uploader.finish()

        async def change(blocks: Blocks, root: CID) -> CID:
            target = await self._dir_at(blocks, root, found.base, rel)
            labels = [label for item in prepared for label in item.nodes]
            await blocks.lookup(root, labels)  # the CHAMP paths in few round trips
            existing = {e.name: (chunk, e) for chunk in target.chunks for e in chunk.entries}
            dirty: set[int] = set()
            gone: dict[bytes, CID] = {}  # the replaced files' nodes, unlinked in one pass
            for item in prepared:
                located = existing.pop(item.entry.name, None)
                if located is not None:
                    chunk, old = located
                    if old.is_dir:
                        raise Conflict(f"{item.entry.name} is a directory")
                    if old.writer not in (None, target.cap.writer):
                        raise Conflict(f"{old.name} has a writer of its own: remove it first")
                    gone.update(await self._labels(blocks, root, target.cap, old))
                    chunk.entries.remove(old)
                    dirty.add(chunk.index)
                target.chunks[-1].entries.append(item.entry)
                dirty.add(target.chunks[-1].index)
            root = await self._unlink(blocks, root, gone)
            new_nodes = {label: cid for item in prepared for label, cid in item.nodes.items()}
            root = await champ.put_many(blocks, root, new_nodes)
            return await self._save_dir(blocks, root, target, dirty, mirror_id)

        await self._commit(tree, first, change, uploads=[uploader.upload])

    async def write_file(
        self, path: str, source: BinaryIO, *, progress: Progress | None = None
    ) -> None:
        """Upload one file from a binary stream, in bounded memory whatever its size."""
        username, names = self._split(path)
        if not names:
            raise Conflict("the home directory is not a file")
        await self.write_files(
            "/".join(["", username, *names[:-1]]),
            [(names[-1], lambda: contextlib.nullcontext(source))],
            progress=progress,
        )

    async def usage(self) -> tuple[int, int]:
        """(bytes used, quota) of this user at the home node."""
        session = self.require_session()
        signed = self.api.now_ms()
        owner = session.owner
        sig = accounts.sign_timed(session.identity, accounts.USAGE, [owner], signed)
        call = methods.UsageGet(owner, signed, sig)
        reply = await _typed.request(self.api, call, methods.UsageGetReply)
        return reply.used, reply.quota


@dataclass
class _Rewrite:
    """One rotation's work: the old nodes to remove from the parent's writer tree (label ->
    CID; a sub-writer's old tree is dropped whole instead), the new nodes by the writer whose
    tree gets them, the new sub-writers (outermost first), the old ones dropped, and the
    uploader of the new fragments."""

    blocks: Blocks
    trees: _Trees
    parent_writer: CID
    mirror_id: bytes
    old: dict[bytes, CID] = field(default_factory=dict)
    new: dict[CID, dict[bytes, CID]] = field(default_factory=dict)
    writers: list[crypto.SigningKey] = field(default_factory=list)
    dropped: list[CID] = field(default_factory=list)
    uploader: Uploader = field(init=False)
    # Files rewritten at once: round trips overlap, while memory stays at a few chunks.
    files: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(REWRITES))
    small: trio.CapacityLimiter = field(
        default_factory=lambda: trio.CapacityLimiter(SMALL_REWRITES)
    )


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
    return payload, list(zip(payload.links, payload.fragments, strict=True))


async def put_tree(fs: FileSystem, local: Path, remote: str, progress: Progress | None) -> None:
    """Upload the folder `local` as the directory `remote` (created, parents must exist):
    one commit per directory, whatever the number of files in it."""
    await fs.mkdir(remote, parents=True)
    files, folders = await threads.run_sync(_scan, local)
    for start in range(0, len(files), FILES_PER_COMMIT):
        await fs.write_files(remote, files[start : start + FILES_PER_COMMIT], progress=progress)
    for folder in folders:
        await put_tree(fs, folder, _child_path(remote, check_file_name(folder.name)), progress)


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


OpenPieces = Callable[[], contextlib.AbstractAsyncContextManager[trio.MemoryReceiveChannel[bytes]]]


async def _download(
    open_pieces: OpenPieces,
    folder: int,
    name: str,
    shown: Path,
    progress: Progress | None,
    size: int | None,
) -> None:
    """Write a file's pieces to `name` in `folder`: into a new file of a random name, created
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
            async with open_pieces() as pieces:
                async for piece in pieces:
                    await threads.run_sync(out.write, piece)
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
        await _download(functools.partial(fs.read, remote), folder, name, local, progress, size)


async def get_tree(fs: FileSystem, remote: str, local: Path, progress: Progress | None) -> int:
    """Download the directory `remote` into the folder `local` (created if missing); return
    how many entries were skipped as unreadable (the rest is downloaded all the same).

    Each directory is read once, and up to FILES_AT_ONCE files are downloaded at a time, each
    reached from its directory rather than walked to from the root.
    Every folder below `local` is made and opened without following links, so a link planted
    inside the download (as a sub-folder or a file name) cannot send a write elsewhere.
    """
    name = _local_name(local)
    with _parent_folder(local) as parent:
        folder = _open_folder(parent, name, local)
    files = trio.Semaphore(FILES_AT_ONCE)
    try:
        top = await fs.top_listing(remote)
        if top is None:
            return await _get_folder(
                fs, await fs.open_folder(remote), folder, local, progress, files
            )
        skipped = 0  # another user's top level: the items they share, each reached by its path
        for item in sorted(top, key=lambda item: item.name):
            name = check_file_name(item.name)
            path = _child_path(remote, name)
            try:
                if not item.is_dir:
                    opener = functools.partial(fs.read, path)
                    await _download(opener, folder, name, local / name, progress, None)
                    continue
                at = await fs.open_folder(path)
                skipped += await _get_subfolder(fs, at, folder, name, local, progress, files)
            except UNREADABLE_ENTRY:
                skipped += 1
        return skipped
    finally:
        os.close(folder)


async def _get_folder(
    fs: FileSystem,
    at: Folder,
    folder: int,
    shown: Path,
    progress: Progress | None,
    files: trio.Semaphore,
) -> int:
    skipped = at.directory.unreadable()

    async def download(entry: Entry, name: str) -> None:
        nonlocal skipped
        try:
            opener = functools.partial(fs.read_entry, at, entry)
            await _download(opener, folder, name, shown / name, progress, None)
        except UNREADABLE_ENTRY:
            skipped += 1
        finally:
            files.release()

    async with open_tasks() as nursery:
        for entry in at.entries():
            name = check_file_name(entry.name)  # a hostile writer cannot plant '..' or '/'
            if not entry.is_dir:
                await files.acquire()
                nursery.start_soon(download, entry, name)
                continue
            try:
                below = await fs.open_subfolder(at, entry)
            except UNREADABLE_ENTRY:
                skipped += 1
                continue
            skipped += await _get_subfolder(fs, below, folder, name, shown, progress, files)
    return skipped


async def _get_subfolder(
    fs: FileSystem,
    at: Folder,
    parent: int,
    name: str,
    shown: Path,
    progress: Progress | None,
    files: trio.Semaphore,
) -> int:
    """`_get_folder` of `at` into the folder `name` of `parent` (made, never through a link)."""
    sub = _open_folder(parent, name, shown / name)
    try:
        return await _get_folder(fs, at, sub, shown / name, progress, files)
    finally:
        os.close(sub)


def _child_path(remote: str, name: str) -> str:
    """The path of `name` in the directory `remote`; "" and "/" are the home directory."""
    base = remote.rstrip("/")
    return f"{base}/{name}" if base else name


async def tree_size(fs: FileSystem, remote: str) -> int:
    """Total bytes of the readable files under `remote` (for a progress bar)."""
    total = 0
    for item in await fs.listdir(remote, long=True, all=True):
        if item.is_dir:
            with contextlib.suppress(*UNREADABLE_ENTRY):
                total += await tree_size(fs, _child_path(remote, item.name))
        elif item.props is not None:
            total += item.props.size
    return total
