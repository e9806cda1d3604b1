"""An in-process node on 127.0.0.1 port 0, in test mode, for client tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from node.client import TEST_KDF_ENV, FileSystem, NodeApi, Session, sharing, signup
from node.net import serve_api
from node.server import NodeService
from node.store import Store
from simulations.swarm import LocalNetwork, new_node

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


class Users:
    """alice, bob and carol, each homed on a node of their own, each with its own client."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.sessions: dict[str, Session] = {}

    def fs(self, name: str) -> FileSystem:
        return sharing.filesystem(self.sessions[name])


@pytest.fixture
async def users(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Users]:
    swarm = LocalNetwork()
    root = new_node(Store(tmp_path / "n1"), default_quota=1024**3)
    nodes = [root] + [
        new_node(Store(tmp_path / f"n{i}"), pki_node=root.settings.node_id) for i in (2, 3)
    ]
    urls = []
    for service in nodes:
        swarm.add(service)
        urls.append(await nursery.start(serve_api, service, "127.0.0.1", 0))
    result = Users(urls)
    async with NodeApi(urls[0]) as a, NodeApi(urls[1]) as b, NodeApi(urls[2]) as c:
        for name, api in (("alice", a), ("bob", b), ("carol", c)):
            result.sessions[name] = await signup(api, name, PASSWORD)
        yield result
    nursery.cancel_scope.cancel()


async def start_swarm(
    tmp_path: Path, nursery: trio.Nursery, names: list[str]
) -> tuple[dict[str, NodeService], dict[str, str]]:
    """Nodes by name, the first the PKI node and the others following it, each serving its
    API on 127.0.0.1, linked by one in-memory network: (services, API URLs)."""
    swarm = LocalNetwork()
    root = new_node(Store(tmp_path / names[0]))
    nodes = {names[0]: root}
    for name in names[1:]:
        nodes[name] = new_node(Store(tmp_path / name), pki_node=root.settings.node_id)
    urls = {}
    for name, service in nodes.items():
        swarm.add(service)
        urls[name] = await nursery.start(serve_api, service, "127.0.0.1", 0)
    return nodes, urls
