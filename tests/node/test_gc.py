"""Garbage collection: what no pointer reaches goes, what an open upload pinned stays."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.client import FileSystem, NodeApi, Session
from node.client._blocks import new_upload_id, put_blocks
from node.server import collect_garbage
from node.server._gc import Collection, mark
from node.store import Space, Store
from protocols import cbor
from protocols.blocks import sign_put
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW
from protocols.crypto import SigningKey
from protocols.errors import MalformedInput, TooLarge
from protocols.pointers import PointerUpdate
from protocols.writerdata import WriterData
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


# -- a collection never holds writers for its length, and never loses what a write keeps ------


def _signed_put(user: Session, blocks: list[tuple[CID, bytes]]) -> dict[str, object]:
    return {
        "owner": user.owner,
        "writer": user.owner,
        "blocks": [[cid.codec, data] for cid, data in blocks],
        "sigs": [sign_put(user.identity, cid) for cid, _ in blocks],
    }


def _block(codec: int, data: bytes) -> tuple[CID, bytes]:
    return CID.of(codec, data), data


def _champ_linking(value: CID) -> tuple[CID, bytes]:
    """A one-entry CHAMP node whose value is `value`."""
    node = cbor.encode([(1 << 31).to_bytes(4, "big"), bytes(4), [[[bytes(32), value]]], []])
    return _block(CODEC_DAG_CBOR, node)


@pytest.fixture
def slow_mark(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[trio.Event, threading.Event]]:
    """Make a collection's mark wait until released: (marking began, release)."""
    began, release = trio.Event(), threading.Event()
    real_mark = Collection.mark

    def mark(self: Collection) -> None:
        trio.from_thread.run_sync(began.set)
        assert release.wait(20)
        real_mark(self)

    monkeypatch.setattr(Collection, "mark", mark)
    yield began, release
    release.set()


async def test_writes_complete_while_a_collection_marks(
    running_node: RunningNode,
    api: NodeApi,
    alice: Session,
    slow_mark: tuple[trio.Event, threading.Event],
) -> None:
    began, release = slow_mark
    store = running_node.store
    old = _block(CODEC_RAW, os.urandom(5000))  # put before the collection, linked by no one
    again = _block(CODEC_RAW, os.urandom(5000))  # put before, and put again during it
    with trio.fail_after(30):
        await api.call("block.put", _signed_put(alice, [old, again]))
        current = PointerUpdate.decode(await api.call("pointer.get", {"writer": alice.owner}))
        writer_data = WriterData.decode(store.get_block(current.new.raw) or b"")
        tree = _champ_linking(old[0])
        root = _block(CODEC_DAG_CBOR, replace(writer_data, tree=tree[0]).encode())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(running_node.service.collect_garbage)
            await began.wait()
            # The collection is marking: a put and a commit go through meanwhile.
            await api.call("block.put", _signed_put(alice, [tree, root, again]))
            update = PointerUpdate.create(
                alice.identity, current.new, root[0], current.sequence + 1
            )
            await api.call(
                "pointer.cas", {"owner": alice.owner, "updates": [[alice.owner, update.encode()]]}
            )
            assert not release.is_set()  # both answered before the mark could end
            release.set()
    for cid, _ in (old, again, tree, root):
        assert store.has_block(cid.raw)  # the new root links `old`; `again` was put anew
    record = cbor.decode(store.get(Space.USAGE, alice.owner.raw) or b"")
    assert record["reachable"] + record["added"] >= len(old[1]) + len(again[1])
    assert (await running_node.service.collect_garbage())["deleted"] >= 1  # the old tree
    assert store.has_block(old[0].raw)
    assert not store.has_block(current.new.raw)
    assert not store.has_block(again[0].raw)  # nothing keeps it once its put is decided


CRAFTED = {
    "owned of many entries": {"owned": [b""] * 10_000},
    "owned entry too long": {"owned": [bytes(1024)]},
    "owned entry not bytes": {"owned": [[]]},
    "unknown WriterData field": {"extra": [[]] * 100},
}


@pytest.mark.parametrize("change", CRAFTED.values(), ids=CRAFTED.keys())
async def test_crafted_structured_blocks_are_refused_at_put(
    running_node: RunningNode, api: NodeApi, alice: Session, change: dict[str, object]
) -> None:
    current = PointerUpdate.decode(await api.call("pointer.get", {"writer": alice.owner}))
    good = WriterData.decode(running_node.store.get_block(current.new.raw) or b"").to_cbor()
    crafted = [
        _block(CODEC_DAG_CBOR, cbor.encode({**good, **change})),
        _block(CODEC_DAG_CBOR, cbor.encode([[]] * 100_000)),  # a large list of empty lists
        _block(CODEC_DAG_CBOR, cbor.encode({"x": 1})),  # no known kind
        _block(CODEC_DAG_CBOR, cbor.encode([bytes(4), bytes(4), [], [], []])),
    ]
    before = len(list(running_node.store.block_cids()))
    with trio.fail_after(30):
        for block in crafted:
            with pytest.raises((MalformedInput, TooLarge)):
                await api.call("block.put", _signed_put(alice, [block]))
    assert len(list(running_node.store.block_cids())) == before


# -- a model of a collection racing writes --------------------------------------------------

OWNER = SigningKey.from_seed(bytes(32))
OPS = st.lists(
    st.tuples(
        st.sampled_from(["raw", "node", "reput", "pin", "cas", "start", "mark", "step", "finish"]),
        st.integers(0, 1000),
        st.integers(0, 1000),
    ),
    min_size=20,
    max_size=40,
)


def _node_linking(values: list[CID]) -> bytes:
    entries = [[bytes([i]) * 32, value] for i, value in enumerate(values)]
    return cbor.encode([(1 << 31).to_bytes(4, "big"), bytes(4), [entries], []])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_collection_racing_writes_keeps_what_the_pointer_reaches(
    ops: list[tuple[str, int, int]],
) -> None:
    """Writes interleaved with every phase of a collection: whatever the pointer reaches (a
    commit links only blocks stored at that moment, as a client does) is never deleted."""
    owner = OWNER.public.key_hash()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "db")
        known: list[CID] = []  # every block ever stored, in order
        pointer: PointerUpdate | None = None
        run: Collection | None = None
        phase = ""
        pinned: set[bytes] = set()  # blocks put again under an open upload
        upload = bytes(16)
        store.put(Space.WRITERS, owner.raw, owner.raw)
        store.put(Space.UPLOADS, upload, cbor.encode([owner, 2**40]))

        def put(cid: CID, data: bytes, pin: bool = False) -> None:
            with store.batch() as batch:
                if not store.has_block(cid.raw):
                    store.put_block(batch, cid.raw, data)
                if pin:
                    batch.put(Space.UPLOADS, upload + cid.raw, b"")
                    pinned.add(cid.raw)
            if run is not None:
                run.note_put(owner, [cid], len(data))
            if cid not in known:
                known.append(cid)

        def reach(root: CID) -> set[bytes]:
            return mark(store, [root]) if store.has_block(root.raw) else {b"missing"}

        for op, a, b in ops:
            stored = [cid for cid in known if store.has_block(cid.raw)]
            if op == "raw":
                data = a.to_bytes(2, "big") + b.to_bytes(2, "big")
                put(CID.of(CODEC_RAW, data), data)
            elif op == "node" and stored:
                put(*_block(CODEC_DAG_CBOR, _node_linking([stored[a % len(stored)]])))
            elif op in ("reput", "pin") and stored:
                cid = stored[a % len(stored)]
                put(cid, store.get_block(cid.raw) or b"", pin=op == "pin")
            elif op == "cas":
                nodes = [cid for cid in stored if cid.codec == CODEC_DAG_CBOR]
                # A client commits a root whose blocks are all stored now.
                if nodes and b"missing" not in reach(target := nodes[a % len(nodes)]):
                    sequence = 1 if pointer is None else pointer.sequence + 1
                    previous = None if pointer is None else pointer.new
                    pointer = PointerUpdate.create(OWNER, previous, target, sequence)
                    store.put(Space.POINTERS, owner.raw, pointer.encode())
                    if run is not None:
                        run.note_root(owner, target)
            elif op == "start" and run is None:
                run, phase = Collection(store, now=0), "started"
            elif op == "mark" and run is not None and phase == "started":
                run.mark()
                run.plan()
                phase = "marked"
            elif op == "step" and run is not None and phase == "marked":
                run.step()
            elif op == "finish" and run is not None and phase == "marked":
                while run.step():
                    pass
                run.finish()
                run, phase = None, ""
            assert all(store.has_block(raw) for raw in pinned)
            if pointer is not None:
                assert b"missing" not in reach(pointer.new)
                assert all(store.has_block(raw) for raw in reach(pointer.new))
        store.close()
