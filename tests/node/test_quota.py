"""Quota: every block a user puts counts until a collection decides it, whatever the put named."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from node.client import FileSystem, NodeApi, Session, signup
from node.client._blocks import new_upload_id
from node.net import serve_api
from node.server import _blocks as service_module
from node.store import Store
from protocols.blocks import sign_put
from protocols.cid import CID, CODEC_RAW
from protocols.errors import QuotaExceeded
from protocols.pointers import PointerUpdate
from simulations.swarm import new_node
from tests.node.conftest import PASSWORD, RunningNode

QUOTA = 256 * 1024
BLOCK = 64 * 1024


@pytest.fixture
async def small_node(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[RunningNode]:
    store = Store(tmp_path / "db")
    service = new_node(store, default_quota=QUOTA)
    url = await nursery.start(serve_api, service, "127.0.0.1", 0)
    yield RunningNode(service, url, store)
    nursery.cancel_scope.cancel()


@pytest.fixture
async def bob(small_node: RunningNode) -> AsyncIterator[Session]:
    async with NodeApi(small_node.url) as api:
        yield await signup(api, "bob", PASSWORD)


async def _put(user: Session, data: bytes, upload: bytes | None = None) -> CID:
    cid = CID.of(CODEC_RAW, data)
    args = {
        "owner": user.owner,
        "writer": user.owner,
        "blocks": [[CODEC_RAW, data]],
        "sigs": [sign_put(user.identity, cid)],
    }
    if upload is not None:
        args["upload"] = upload
    await user.api.call("block.put", args)
    return cid


async def _close_upload_without_linking(user: Session, upload: bytes) -> None:
    """A pointer.cas naming `upload` that keeps the same root: the upload's blocks stay
    unlinked and lose their pin."""
    raw = await user.api.call("pointer.get", {"writer": user.owner})
    current = PointerUpdate.decode(raw)
    update = PointerUpdate.create(user.identity, current.new, current.new, current.sequence + 1)
    await user.api.call(
        "pointer.cas",
        {"owner": user.owner, "updates": [[user.owner, update.encode()]], "uploads": [upload]},
    )


async def _store_until_refused(user: Session, upload: bytes | None) -> int:
    """Put 64 KiB blocks until refused (4x the quota at most); the bytes accepted."""
    accepted = 0
    for _ in range(4 * QUOTA // BLOCK):
        try:
            await _put(user, os.urandom(BLOCK), upload)
        except QuotaExceeded:
            return accepted
        accepted += BLOCK
        if upload is not None:
            await _close_upload_without_linking(user, upload)
    return accepted


@pytest.mark.parametrize("pinned", [False, True], ids=["no upload id", "upload closed"])
async def test_unlinked_puts_count_until_collected(
    small_node: RunningNode, bob: Session, pinned: bool
) -> None:
    with trio.fail_after(30):
        accepted = await _store_until_refused(bob, new_upload_id() if pinned else None)
        assert 0 < accepted <= QUOTA
        used, quota = await FileSystem(bob).usage()
        assert quota == QUOTA
        assert used >= accepted  # what is stored is reported
        # A collection removes what nothing reaches, and with it the charge.
        stats = await small_node.service.collect_garbage()
        assert stats["deleted"] >= accepted // BLOCK
        used_after, _ = await FileSystem(bob).usage()
        assert used_after < used - accepted + BLOCK
        await _put(bob, os.urandom(BLOCK))


async def test_refused_puts_do_not_each_recount(
    small_node: RunningNode, bob: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exact count (a mark of the user's tree, under the write lock) holds until a pointer
    moves: a user cannot make the node recount with every refused put."""
    counts = []
    real = service_module.reachable_bytes

    def counting(*args: Any) -> int:
        counts.append(1)
        return real(*args)

    monkeypatch.setattr(service_module, "reachable_bytes", counting)
    with trio.fail_after(30):
        await _store_until_refused(bob, None)
        assert len(counts) == 1
        for _ in range(5):
            with pytest.raises(QuotaExceeded):
                await _put(bob, os.urandom(BLOCK))
        assert len(counts) == 1
        upload = new_upload_id()
        await _close_upload_without_linking(bob, upload)  # a pointer moved: count again
        with pytest.raises(QuotaExceeded):
            await _put(bob, os.urandom(BLOCK))
        assert len(counts) == 2


async def test_recounts_take_at_most_a_tenth_of_the_time(
    small_node: RunningNode, bob: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user at the quota who moves a pointer before every put cannot keep the node marking
    their tree: after a count that took 10 s, the next waits 90 s (the running count, which
    only overstates, refuses in between)."""
    now = [1_000_000.0]
    small_node.service.clock = lambda: now[0]
    counts = []
    real = service_module.reachable_bytes

    def slow_count(*args: Any) -> int:
        counts.append(1)
        now[0] += 10  # as if the user's tree took 10 s to mark
        return real(*args)

    monkeypatch.setattr(service_module, "reachable_bytes", slow_count)
    with trio.fail_after(30):
        await _store_until_refused(bob, None)
        assert len(counts) == 1
        for _ in range(3):
            now[0] += 29
            await _close_upload_without_linking(bob, new_upload_id())
            with pytest.raises(QuotaExceeded):
                await _put(bob, os.urandom(BLOCK))
        assert len(counts) == 1  # 87 s after a 10 s count
        now[0] += 3
        await _close_upload_without_linking(bob, new_upload_id())
        with pytest.raises(QuotaExceeded):
            await _put(bob, os.urandom(BLOCK))
        assert len(counts) == 2
