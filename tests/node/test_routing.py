"""A client talking to a node that is not the user's home: calls are forwarded, blocks relayed."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from node.client import FileSystem, NodeApi, login, signup
from node.server import NodeService
from node.store import Space
from tests.node.conftest import PASSWORD, start_swarm


class Pair:
    def __init__(self, nodes: dict[str, NodeService], urls: dict[str, str]) -> None:
        self.nodes = nodes
        self.urls = urls


@pytest.fixture
async def pair(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Pair]:
    nodes, urls = await start_swarm(tmp_path, nursery, ["home", "other"])
    yield Pair(nodes, urls)
    nursery.cancel_scope.cancel()


async def test_a_user_works_through_a_node_that_is_not_home(pair: Pair) -> None:
    content = os.urandom(7 * 1024 * 1024)
    with trio.fail_after(60):
        async with NodeApi(pair.urls["home"]) as api:
            await signup(api, "alice", PASSWORD)
        async with NodeApi(pair.urls["other"]) as api:
            fs = FileSystem(await login(api, "alice", PASSWORD))
            await fs.mkdir("docs")
            await fs.write_file("docs/big.bin", io.BytesIO(content))
            async with fs.read("docs/big.bin") as pieces:
                assert b"".join([piece async for piece in pieces]) == content
            assert await fs.usage() != (0, 0)
    home, other = pair.nodes["home"], pair.nodes["other"]
    assert other.stats["forwarded"] > 0
    assert other.stats["blocks_relayed"] > 0
    assert not list(other.store.keys(Space.WRITERS))  # nothing of alice's is owned there
    assert home.stats["blocks_stored"] > 0
    # Whatever the other node cached, no pointer there reaches it: collection drops it.
    await other.collect_garbage()
    assert not list(other.store.block_cids())
