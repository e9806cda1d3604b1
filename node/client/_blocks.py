"""A client's block work for one operation: verified reads, CHAMP lookups in one round trip,
new blocks staged in memory and written, signed, in the commit that makes them reachable.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Final

import trio

from node.client import _typed
from node.client._api import NodeApi, Route
from protocols import cbor, champ, crypto, methods
from protocols.blocks import MAX_BLOCKS_PER_PUT, sign_put
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import SigningKey
from protocols.cryptree import (
    Capability,
    Entry,
    KeyBlock,
    Properties,
    SealedPayload,
    build_node,
    encode_dir_chunk,
    payload_data,
    seal_data,
)
from protocols.errors import Corrupted, MalformedInput, PyrgosError

PUT_BATCH_BYTES: Final = 2 * 1024 * 1024  # per put: a fragment and small blocks; bounds node memory
MAX_KEYS_PER_LOOKUP: Final = 64


@contextlib.asynccontextmanager
async def open_tasks() -> AsyncIterator[trio.Nursery]:
    """A nursery whose failure surfaces as the first typed error, not an exception group,
    so callers (and the CLI's one-line errors) see what went wrong."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        first = _first_error(group)
        if first is None:
            raise
        raise first from None


def _first_error(group: BaseExceptionGroup[BaseException]) -> PyrgosError | None:
    for error in group.exceptions:
        if isinstance(error, PyrgosError):
            return error
        if isinstance(error, BaseExceptionGroup):
            nested = _first_error(error)
            if nested is not None:
                return nested
    return None


def new_upload_id() -> bytes:
    return crypto.random_bytes(16)


CACHE_BYTES: Final = 32 * 1024 * 1024  # one command's verified blocks: a few thousand nodes


class BlockCache:
    """Verified blocks by CID, least recently used first out once CACHE_BYTES are held.

    A CID names its bytes forever, so whatever one command read stays true for it; only
    pointers change, and they are never cached. File data fragments are not kept (see
    `Blocks.fetch`), so memory stays flat whatever the size of the files moved.
    """

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._blocks: OrderedDict[CID, bytes] = OrderedDict()

    def get(self, cid: CID) -> bytes | None:
        data = self._blocks.get(cid)
        if data is not None:
            self._blocks.move_to_end(cid)
        return data

    def add(self, cid: CID, data: bytes) -> None:
        """Keep `data`, which the caller has checked is what `cid` names."""
        if cid in self._blocks or len(data) > self.limit:
            return
        self._blocks[cid] = data
        self.size += len(data)
        while self.size > self.limit:
            _, dropped = self._blocks.popitem(last=False)
            self.size -= len(dropped)


class _Missing(Exception):
    """A CHAMP node that the cache does not hold (internal: ends a local-only lookup)."""


class _CachedOnly:
    """A CHAMP block source that reads only what is staged or cached."""

    def __init__(self, blocks: Blocks) -> None:
        self._blocks = blocks

    async def get(self, cid: CID) -> bytes:
        data = self._blocks.staged.get(cid) or self._blocks.cache.get(cid)
        if data is None:
            raise _Missing
        return data


class Blocks:
    """Blocks seen and made during one operation on one owner's trees (`route`). Also the
    CHAMP's block source and sink. Reads go through `cache`, shared by every operation of one
    command, so each block is fetched at most once."""

    def __init__(self, api: NodeApi, route: Route, cache: BlockCache | None = None) -> None:
        self.api = api
        self.route = route
        self.cache = BlockCache() if cache is None else cache
        self.staged: dict[CID, bytes] = {}
        # Lookups already answered: a root names fixed contents, so an answer stays true. Held
        # for one operation, it grows with the keys that operation looks up.
        self._found: dict[tuple[CID, bytes], CID | None] = {}

    async def get(self, cid: CID) -> bytes:
        """A public block (CHAMP node, WriterData): staged, cached, or fetched."""
        data = self.staged.get(cid) or self.cache.get(cid)
        if data is None:
            data = await self.api.get_block(cid, route=self.route)
            self.cache.add(cid, data)
        return data

    async def put(self, data: bytes) -> CID:
        cid = CID.of(CODEC_DAG_CBOR, data)
        self.staged[cid] = data
        return cid

    def stage_fragments(self, payload: SealedPayload) -> None:
        self.staged.update(zip(payload.links, payload.fragments, strict=True))

    async def fetch(self, cid: CID, bat: bytes, *, verify: bool = True) -> bytes:
        """A private block, proving knowledge of its BAT to the node (see NodeApi.get_block).

        Blocks verified here are cached; `verify=False` (file data, hashed by the caller in a
        worker thread) is neither verified nor kept.
        """
        data = self.staged.get(cid) or self.cache.get(cid)
        if data is None:
            data = await self.api.get_block(cid, bat, route=self.route, verify=verify)
            if verify:
                self.cache.add(cid, data)
        return data

    async def lookup(self, root: CID, keys: Iterable[bytes]) -> dict[bytes, CID | None]:
        """Values of `keys` in the CHAMP at `root`: from the cache when it holds every node on
        their paths, else one round trip per 64 keys."""
        wanted = list(dict.fromkeys(keys))
        known = {key: self._found[root, key] for key in wanted if (root, key) in self._found}
        if len(known) == len(wanted):
            return known
        found = await self._lookup(root, wanted)
        self._found.update(((root, key), value) for key, value in found.items())
        return found

    async def _lookup(self, root: CID, wanted: list[bytes]) -> dict[bytes, CID | None]:
        try:
            return await champ.get_many(_CachedOnly(self), root, wanted)
        except _Missing:
            pass
        except MalformedInput as exc:
            raise Corrupted(f"a CHAMP node is malformed: {exc.message}") from exc
        if root not in self.staged:
            for start in range(0, len(wanted), MAX_KEYS_PER_LOOKUP):
                batch = wanted[start : start + MAX_KEYS_PER_LOOKUP]
                call = methods.ChampGet(root, tuple(batch), self.route.owner)
                proof = await _typed.request(self.api, call, methods.ChampGetReply)
                for block in proof.blocks:
                    self.cache.add(CID.of(CODEC_DAG_CBOR, block), block)
        try:
            return await champ.get_many(self, root, wanted)
        except MalformedInput as exc:
            raise Corrupted(f"a CHAMP node is malformed: {exc.message}") from exc

    def reachable_staged(self, root: CID) -> list[CID]:
        """Staged blocks reachable from `root` through staged blocks, parents first."""
        order: list[CID] = []
        seen: set[CID] = set()
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid in seen or cid not in self.staged:
                continue
            seen.add(cid)
            order.append(cid)
            if cid.codec == CODEC_DAG_CBOR:
                stack.extend(cbor.iter_links(cbor.decode(self.staged[cid])))
        return order


def _batch_full(batch: list[tuple[CID, bytes]], size: int, adding: int) -> bool:
    return bool(batch) and (size + adding > PUT_BATCH_BYTES or len(batch) >= MAX_BLOCKS_PER_PUT)


async def put_blocks(
    api: NodeApi,
    owner: CID,
    writer: SigningKey,
    blocks: list[tuple[CID, bytes]],
    upload: bytes,
) -> None:
    """Write blocks signed by `writer`, pinned by `upload` until the commit that links them."""
    batch: list[tuple[CID, bytes]] = []
    size = 0
    for cid, data in blocks:
        if _batch_full(batch, size, len(data)):
            await _put_batch(api, owner, writer, batch, upload)
            batch, size = [], 0
        batch.append((cid, data))
        size += len(data)
    if batch:
        await _put_batch(api, owner, writer, batch, upload)


async def _put_batch(
    api: NodeApi,
    owner: CID,
    writer: SigningKey,
    batch: list[tuple[CID, bytes]],
    upload: bytes,
) -> None:
    call = methods.BlockPut(
        owner,
        writer.public.key_hash(),
        tuple((cid.codec, data) for cid, data in batch),
        tuple(sign_put(writer, cid) for cid, _ in batch),
        upload,
    )
    await _typed.request(api, call, methods.BlockPutReply)


async def stage_dir_chunk(
    blocks: Blocks,
    tree: CID,
    cap: Capability,
    index: int,
    keys: KeyBlock,
    props: Properties | None,
    entries: list[Entry],
    old: CID | None,
    mirror_id: bytes,
    unreadable: Sequence[object] = (),
) -> CID:
    """Stage chunk `index` of a directory holding `entries` (and the `unreadable` items it
    held, carried over unchanged); return the tree pointing at it."""
    plain = encode_dir_chunk(entries, unreadable)
    payload = seal_data(cap, index, keys, True, plain, mirror_id)
    blocks.stage_fragments(payload)
    node = build_node(cap, index, keys, True, props, payload_data(payload), mirror_id)
    return await champ.put(blocks, tree, cap.chunk(index)[0], old, await blocks.put(node))


class Uploader:
    """Sends blocks in puts of up to PUT_BATCH_BYTES from a few tasks, pinned under one upload
    id.

    `add` waits while the queue is full, so memory stays bounded whatever the file size.
    """

    def __init__(
        self,
        api: NodeApi,
        owner: CID,
        writer: SigningKey,
        nursery: trio.Nursery,
        *,
        parallel: int = 4,
    ) -> None:
        self.upload = new_upload_id()
        self._api, self._owner, self._writer = api, owner, writer
        self._pending: list[tuple[CID, bytes]] = []
        self._size = 0
        self._send, receive = trio.open_memory_channel[list[tuple[CID, bytes]]](1)
        for _ in range(parallel):
            nursery.start_soon(self._work, receive.clone())
        receive.close()

    async def _work(self, receive: trio.MemoryReceiveChannel[list[tuple[CID, bytes]]]) -> None:
        async with receive:
            async for batch in receive:
                await _put_batch(self._api, self._owner, self._writer, batch, self.upload)

    async def add(self, blocks: list[tuple[CID, bytes]]) -> None:
        for cid, data in blocks:
            if _batch_full(self._pending, self._size, len(data)):
                await self._send.send(self._pending)
                self._pending, self._size = [], 0
            self._pending.append((cid, data))
            self._size += len(data)

    async def finish(self) -> None:
        """Send what is left; the workers end once the queue is drained."""
        if self._pending:
            await self._send.send(self._pending)
            self._pending, self._size = [], 0
        await self._send.aclose()
