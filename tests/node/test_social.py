"""Following from the client's side against two real in-process nodes: alice homed on one,
bob on the other, each talking through the node that is not their home, so every follow
request, list and removal is forwarded to the target's home and every block is relayed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio

from node.client import FileSystem, NodeApi, Route, login, signup, social
from node.server import NodeService
from node.store import Space, owner_prefix
from protocols import contacts
from protocols.contacts import KeyStore, TrustedKey
from protocols.crypto import SigningKey
from protocols.errors import Conflict, Denied, MalformedInput, NotFound
from protocols.social import FOLLOW_SEALED_BYTES, FollowRequest, seal_request
from tests.node.conftest import PASSWORD, start_swarm


@dataclass
class Pair:
    """Two nodes of one swarm ("one" orders the PKI, "two" mirrors it) and their API URLs."""

    nodes: dict[str, NodeService]
    urls: dict[str, str]

    def inbox(self, home: str, user: FileSystem) -> dict[bytes, bytes]:
        """The sealed requests that `user`'s home node stores for them, by inbox key."""
        prefix = owner_prefix(user.require_session().owner.raw)
        return dict(self.nodes[home].store.items(Space.INBOX, prefix))


@pytest.fixture
async def pair(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Pair]:
    nodes, urls = await start_swarm(tmp_path, nursery, ["one", "two"])
    yield Pair(nodes, urls)
    nursery.cancel_scope.cancel()


@asynccontextmanager
async def _user(pair: Pair, username: str, home: str, through: str) -> AsyncIterator[FileSystem]:
    """`username` signed up on node `home`, then logged in through node `through`."""
    async with NodeApi(pair.urls[home]) as api:
        await signup(api, username, PASSWORD)
    async with NodeApi(pair.urls[through]) as api:
        yield FileSystem(await login(api, username, PASSWORD))


@pytest.fixture
async def fa(pair: Pair) -> AsyncIterator[FileSystem]:
    """alice, homed on node one and working through it."""
    async with _user(pair, "alice", "one", "one") as fs:
        yield fs


@pytest.fixture
async def fb(pair: Pair, fa: FileSystem) -> AsyncIterator[FileSystem]:
    """bob, homed on node two, working through node one: alice's requests to him, his
    inbox lists and removals are all forwarded to node two."""
    async with _user(pair, "bob", "two", "one") as fs:
        yield fs


async def _exists(fs: FileSystem, path: str) -> bool:
    try:
        await fs.stat(path)
    except NotFound:
        return False
    return True


def _homes(pair: Pair, fa: FileSystem, fb: FileSystem) -> None:
    """alice is homed on node one, bob on node two; both talk to node one."""
    assert fa.require_session().home_node == pair.nodes["one"].settings.node_id.encode()
    assert fb.require_session().home_node == pair.nodes["two"].settings.node_id.encode()
    assert fa.api.url == fb.api.url == pair.urls["one"]


async def test_follow_accept_gives_the_follower_the_folder(
    pair: Pair, fa: FileSystem, fb: FileSystem
) -> None:
    with trio.fail_after(30):
        _homes(pair, fa, fb)
        forwarded = pair.nodes["one"].stats["forwarded"]
        await social.follow(fa, "bob")
        assert pair.nodes["one"].stats["forwarded"] > forwarded  # sent on to bob's home
        ((name, pending),) = await social.following(fa)
        assert name == "bob"
        assert pending.cap is None
        stored = pair.inbox("two", fb)
        assert [len(request) for request in stored.values()] == [FOLLOW_SEALED_BYTES]
        assert not pair.inbox("one", fb)  # kept at bob's home only

        listed = await social.requests(fb)
        assert [p.username for p in listed.pending] == ["alice"]
        assert not listed.pending[0].key_changed
        await social.accept(fb, "alice")
        assert [name for name, _ in await social.followers(fb)] == ["alice"]
        assert await _exists(fb, "/bob/shared/alice")
        assert not pair.inbox("two", fb)
        assert [len(request) for request in pair.inbox("one", fa).values()] == [FOLLOW_SEALED_BYTES]

        answers = await social.requests(fa)
        assert answers.accepted == ["bob"]
        assert not answers.pending
        ((_, followee),) = await social.following(fa)
        assert followee.cap == (await fb.capability("/bob/shared/alice")).read_only()
        assert not pair.inbox("one", fa)
        # The social state lives in each user's own encrypted space.
        assert await _exists(fa, "/alice/.pyrgos/social")
        assert await _exists(fa, "/alice/.pyrgos/keys")
        # The follower reads the folder through a node that is not the followee's home.
        assert followee.cap is not None
        route = Route(fb.require_session().owner, fb.require_session().home_node)
        assert (await fa.contents_of(followee.cap, route)).items == []


async def test_accept_with_follow_back(fa: FileSystem, fb: FileSystem) -> None:
    with trio.fail_after(30):
        await social.follow(fa, "bob")
        await social.accept(fb, "alice", follow_back=True)
        assert [name for name, _ in await social.following(fb)] == ["alice"]
        listed = await social.requests(fa)
        assert listed.accepted == ["bob"]
        assert [p.username for p in listed.pending] == ["bob"]
        await social.accept(fa, "bob")
        assert (await social.requests(fb)).accepted == ["alice"]


async def test_reject_drops_the_pending_follow(fa: FileSystem, fb: FileSystem) -> None:
    with trio.fail_after(30):
        await social.follow(fa, "bob")
        await social.reject(fb, "alice")
        assert await social.followers(fb) == []
        assert not (await social.requests(fb)).pending
        assert (await social.requests(fa)).rejected == ["bob"]
        assert await social.following(fa) == []


async def test_tampered_and_forged_requests_are_dropped(
    pair: Pair, fa: FileSystem, fb: FileSystem
) -> None:
    with trio.fail_after(30):
        await social.follow(fa, "bob")
        # The stored request is damaged on bob's home node's disk.
        ((key, sealed),) = pair.inbox("two", fb).items()
        tampered = bytearray(sealed)
        tampered[-5] ^= 1
        pair.nodes["two"].store.put(Space.INBOX, key, bytes(tampered), sync=True)
        # Mallory signs with her own key a request claiming to come from alice, and sends it
        # like anyone can: anonymously, through a node that is not bob's home.
        mallory = SigningKey.generate()
        entry = (await fa.capability("/alice/shared/bob")).read_only()
        forged_entry = replace(entry, owner=mallory.public.key_hash())
        forged = FollowRequest.create(
            mallory, "follow", "alice", "bob", forged_entry, b"r" * 32, int(time.time() * 1000)
        )
        sealed_forged = seal_request(forged, fb.require_session().data.boxing.public)
        await fa.api.call(
            "social.send", {"target": fb.require_session().owner, "request": sealed_forged}
        )
        assert len(pair.inbox("two", fb)) == 2

        listed = await social.requests(fb)
        assert listed.pending == []
        assert listed.dropped == 2
        assert not pair.inbox("two", fb)  # unusable items leave the inbox
        with pytest.raises(NotFound, match="no follow request from alice"):
            await social.accept(fb, "alice")
        assert await social.followers(fb) == []


async def test_following_an_unknown_user_changes_nothing(fa: FileSystem) -> None:
    with trio.fail_after(30):
        with pytest.raises(NotFound, match="unknown user"):
            await social.follow(fa, "nobody")
        assert not await _exists(fa, "/alice/.pyrgos")
        assert not await _exists(fa, "/alice/shared")
        with pytest.raises(Conflict, match="yourself"):
            await social.follow(fa, "alice")


async def test_accepting_a_request_that_does_not_exist_changes_nothing(fb: FileSystem) -> None:
    with trio.fail_after(30):
        with pytest.raises(NotFound, match="no follow request from alice"):
            await social.accept(fb, "alice")
        with pytest.raises(NotFound):
            await social.reject(fb, "alice")
        assert not await _exists(fb, "/bob/.pyrgos")
        assert not await _exists(fb, "/bob/shared")


async def test_a_changed_key_is_refused_until_verified(fa: FileSystem, fb: FileSystem) -> None:
    with trio.fail_after(30):
        await social.follow(fa, "bob")
        # Bob once recorded another key for alice: the PKI's key now looks changed to him.
        other = SigningKey.generate().public.key_hash()
        await social._save_keys(fb, KeyStore({"alice": TrustedKey(other, True, 1)}))
        listed = await social.requests(fb)
        assert listed.pending[0].key_changed
        assert any("has changed" in warning for warning in listed.warnings)
        with pytest.raises(Denied, match="has changed"):
            await social.accept(fb, "alice")
        with pytest.raises(Denied, match="has changed"):
            await social.follow(fb, "alice")
        assert await social.followers(fb) == []
        held = await social.fingerprint(fb, "alice")
        assert held.changed
        assert held.identity == other
        with pytest.raises(Denied, match="not the one"):
            await social.verify(fb, "alice", contacts.fingerprint(other))
        with pytest.raises(MalformedInput):
            await social.verify(fb, "alice", "12345")
        mine = await social.fingerprint(fa)
        assert mine.digits == contacts.fingerprint(fa.require_session().owner)
        await social.verify(fb, "alice", mine.digits)
        assert (await social.fingerprint(fb, "alice")).verified
        await social.accept(fb, "alice")
        assert [name for name, _ in await social.followers(fb)] == ["alice"]


async def test_unfollow_and_remove_follower(fa: FileSystem, fb: FileSystem) -> None:
    with trio.fail_after(30):
        await social.follow(fa, "bob")
        await social.accept(fb, "alice")
        await social.requests(fa)
        with pytest.raises(Conflict, match="already follow"):
            await social.follow(fa, "bob")
        await social.remove_follower(fb, "alice")
        assert await social.followers(fb) == []
        assert not await _exists(fb, "/bob/shared/alice")
        with pytest.raises(NotFound):
            await social.remove_follower(fb, "alice")
        await social.unfollow(fa, "bob")
        assert await social.following(fa) == []
        with pytest.raises(NotFound, match="do not follow"):
            await social.unfollow(fa, "bob")


async def test_fingerprint_records_a_first_seen_key(fa: FileSystem, fb: FileSystem) -> None:
    with trio.fail_after(30):
        held = await social.fingerprint(fa, "bob")
        assert held.identity == fb.require_session().owner
        assert not held.verified
        assert not held.changed
        assert (await social.load_keys(fa)).keys["bob"].identity == fb.require_session().owner
