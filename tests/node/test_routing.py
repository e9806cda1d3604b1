"""A client talking to a node that is not the user's home: calls are forwarded, blocks relayed."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from node.client import FileSystem, NodeApi, login, signup
from node.net import serve_api
from node.server import NodeService, NodeSettings
from node.store import Space, Store
from simulations.swarm import LocalNetwork
from tests.node.conftest import PASSWORD


class Pair:
    def __init__(self, swarm: LocalNetwork, urls: dict[str, str]) -> None:
        self.swarm = swarm
        self.urls = urls

    def sync_pki(self, source: str, target: str) -> None:
        """Copy the PKI records of one node to another (a stand-in for PKI mirroring)."""
        source_store = self.swarm.nodes[source].store
        target_store = self.swarm.nodes[target].store
        for key, value in source_store.items(Space.PKI):
            target_store.put(Space.PKI, key, value)


@pytest.fixture
async def pair(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Pair]:
    swarm = LocalNetwork()
    urls = {}
    stores = []
    for name in ("home", "other"):
        store = Store(tmp_path / name)
        stores.append(store)
        service = NodeService(store, NodeSettings(node_id=name, test_mode=True))
        swarm.add(service)
        urls[name] = await nursery.start(serve_api, service, "127.0.0.1", 0)
    yield Pair(swarm, urls)
    nursery.cancel_scope.cancel()


async def test_a_user_works_through_a_node_that_is_not_home(pair: Pair) -> None:
    content = os.urandom(7 * 1024 * 1024)
    with trio.fail_after(60):
        async with NodeApi(pair.urls["home"]) as api:
            await signup(api, "alice", PASSWORD)
        pair.sync_pki("home", "other")
        async with NodeApi(pair.urls["other"]) as api:
            fs = FileSystem(await login(api, "alice", PASSWORD))
            await fs.mkdir("docs")
            await fs.write_file("docs/big.bin", io.BytesIO(content))
            async with fs.read("docs/big.bin") as pieces:
                assert b"".join([piece async for piece in pieces]) == content
            assert await fs.usage() != (0, 0)
    home, other = pair.swarm.nodes["home"], pair.swarm.nodes["other"]
    assert other.stats["forwarded"] > 0
    assert other.stats["blocks_relayed"] > 0
    assert not list(other.store.keys(Space.WRITERS))  # nothing of alice's is owned there
    assert home.stats["blocks_stored"] > 0
    # Whatever the other node cached, no pointer there reaches it: collection drops it.
    await other.collect_garbage()
    assert not list(other.store.block_cids())
