"""Garbage collection: what no pointer reaches goes, what an open upload pinned stays."""

from __future__ import annotations

import io
import os
import time

import trio

from node.client import FileSystem, NodeApi, Session
from node.client._blocks import new_upload_id, put_blocks
from node.server import collect_garbage
from node.store import Space
from protocols import cbor
from protocols.cid import CID, CODEC_RAW
from tests.node.conftest import RunningNode


async def test_blocks_of_an_open_upload_survive_collection(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    store = running_node.store
    data = os.urandom(10_000)
    cid = CID.of(CODEC_RAW, data)
    upload = new_upload_id()
    with trio.fail_after(30):
        await put_blocks(api, alice.owner, alice.identity, [(cid, data)], upload)
        await running_node.service.collect_garbage()
    assert store.get_block(cid.raw) == data  # pinned: the commit that links it is still to come
    # An upload that stops for longer than its lifetime is abandoned: its blocks go.
    later = int(time.time()) + 2 * 3600
    stats = collect_garbage(store, later)
    assert stats["deleted"] >= 1
    assert store.get_block(cid.raw) is None
    assert not list(store.keys(Space.UPLOADS))


async def test_collection_keeps_every_reachable_block(
    running_node: RunningNode, fs: FileSystem
) -> None:
    store = running_node.store
    content = os.urandom(6 * 1024 * 1024)
    with trio.fail_after(60):
        await fs.mkdir("kept")
        await fs.write_file("kept/file.bin", io.BytesIO(content))
        await fs.write_file("gone.bin", io.BytesIO(os.urandom(2 * 1024 * 1024)))
        await fs.remove("gone.bin")
        before = len(list(store.block_cids()))
        stats = await running_node.service.collect_garbage()
        assert stats["deleted"] > 0
        assert len(list(store.block_cids())) == before - stats["deleted"]
        async with fs.read("kept/file.bin") as pieces:
            assert b"".join([piece async for piece in pieces]) == content
        again = await running_node.service.collect_garbage()
    assert again["deleted"] == 0  # nothing reachable was taken the first time
    for _, record in store.items(Space.USAGE):
        usage = cbor.decode(record)
        assert usage["added"] == 0
        assert usage["reachable"] >= len(content)
