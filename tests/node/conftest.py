"""An in-process node on 127.0.0.1 port 0, in test mode, for client tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from node.client import TEST_KDF_ENV, FileSystem, NodeApi, Session, signup
from node.net import serve_api
from node.server import NodeService
from node.store import Store
from simulations.swarm import new_node

PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def test_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test nodes run in test mode; their clients opt in to the small KDF profile."""
    monkeypatch.setenv(TEST_KDF_ENV, "1")


@dataclass
class RunningNode:
    service: NodeService
    url: str
    store: Store


@pytest.fixture
async def running_node(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[RunningNode]:
    store = Store(tmp_path / "db")
    service = new_node(store, default_quota=4 * 1024**3)
    url = await nursery.start(serve_api, service, "127.0.0.1", 0)
    yield RunningNode(service, url, store)
    nursery.cancel_scope.cancel()


@pytest.fixture
async def api(running_node: RunningNode) -> AsyncIterator[NodeApi]:
    async with NodeApi(running_node.url) as client:
        yield client


@pytest.fixture
async def alice(api: NodeApi) -> Session:
    return await signup(api, "alice", PASSWORD)


@pytest.fixture
def fs(alice: Session) -> FileSystem:
    return FileSystem(alice)
