"""Sharing across nodes (DESIGN §6, §10): read and writable shares read and written at the
owner's paths through the reader's own node, revocation by key rotation, and bad input."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from node.client import FileSystem, NodeApi, Session, sharing, signup, social
from node.client._resolve import Listing
from node.net import serve_api
from node.store import Store
from protocols.cryptree import Capability
from protocols.errors import Denied, NotFound
from simulations.swarm import LocalNetwork, new_node
from tests.node.conftest import PASSWORD

TIMEOUT = 60


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


async def befriend(users: Users, owner: str, follower: str) -> None:
    """`follower` follows `owner`, who accepts."""
    await social.follow(users.fs(follower), owner)
    await social.requests(users.fs(owner))
    await social.accept(users.fs(owner), follower)
    assert (await social.requests(users.fs(follower))).accepted == [owner]


async def read_all(fs: FileSystem, path: str) -> bytes:
    async with fs.read(path) as pieces:
        return b"".join([piece async for piece in pieces])


async def test_share_read_then_write_then_unshare(users: Users) -> None:
    with trio.fail_after(TIMEOUT):
        alice = users.fs("alice")
        await alice.mkdir("photos")
        await alice.write_file("photos/x.jpg", io.BytesIO(b"picture"))
        await alice.write_file("notes.txt", io.BytesIO(b"private"))
        await befriend(users, "alice", "bob")
        await befriend(users, "alice", "carol")

        # Read: bob reads /alice/photos through his own node; nothing else of alice's.
        await sharing.share(users.fs("alice"), "photos", "bob")
        await sharing.share(users.fs("alice"), "/alice/photos", "carol")
        bob = users.fs("bob")
        assert await bob.listdir("/alice") == [Listing("photos", True)]
        assert await bob.listdir("/alice/photos") == [Listing("x.jpg", False)]
        assert await read_all(bob, "/alice/photos/x.jpg") == b"picture"
        with pytest.raises(NotFound, match="not shared"):
            await users.fs("bob").stat("/alice/notes.txt")
        with pytest.raises(Denied, match="read-only"):
            await users.fs("bob").write_file("/alice/photos/y.jpg", io.BytesIO(b"y"))

        # Write: the item becomes its own writer; bob writes, alice reads it; carol keeps her
        # read access through the new capability.
        item = await sharing.share(users.fs("alice"), "photos", "bob", write=True)
        assert item.writable
        assert item.cap.writer != users.sessions["alice"].owner
        await users.fs("bob").write_file("/alice/photos/y.jpg", io.BytesIO(b"from bob"))
        await users.fs("bob").mkdir("/alice/photos/trip")
        assert await read_all(users.fs("alice"), "photos/y.jpg") == b"from bob"
        assert await read_all(users.fs("carol"), "/alice/photos/y.jpg") == b"from bob"
        with pytest.raises(NotFound, match="not shared"):
            await users.fs("bob").write_file("/alice/z.txt", io.BytesIO(b"z"))
        listed = await sharing.shared(users.fs("alice"))
        assert [(name, i.path, i.writable) for name, i in listed.mine] == [
            ("bob", "/alice/photos", True),
            ("carol", "/alice/photos", False),
        ]
        theirs = await sharing.shared(users.fs("bob"))
        assert [(name, i.path) for name, i in theirs.with_me] == [("alice", "/alice/photos")]
        assert not theirs.problems

        # Unshare for bob: his old capability finds nothing, carol reads the new version.
        old = item.cap
        await sharing.unshare(users.fs("alice"), "photos", "bob")
        await users.fs("alice").write_file("photos/x.jpg", io.BytesIO(b"new version"))
        assert await read_all(users.fs("carol"), "/alice/photos/x.jpg") == b"new version"
        with pytest.raises(NotFound, match="not shared"):
            await users.fs("bob").listdir("/alice/photos")
        assert await users.fs("bob").listdir("/alice") == []
        route = users.sessions["alice"].route
        with pytest.raises((NotFound, Denied)):
            await users.fs("bob").contents_of(old, route)
        with pytest.raises((NotFound, Denied)):
            await users.fs("bob").write_file("/alice/photos/w.txt", io.BytesIO(b"w"))
        # Nor can bob fetch the new blocks with what he held: they need the new BATs.
        new = await users.fs("alice").capability("photos/x.jpg")
        bad = Capability(new.owner, new.writer, new.label, old.bat, new.read_key)
        with pytest.raises((NotFound, Denied)):
            await users.fs("bob").read_capability(bad, route, 1000)
        assert await users.fs("carol").listdir("/alice/photos") == [
            Listing("trip", True), Listing("x.jpg", False), Listing("y.jpg", False)
        ]  # fmt: skip
