"""Following from the client's side against a real in-process node, with the three inbox
methods (social.send, social.list, social.remove) played by an in-memory fake that checks
what the node will: the sealed length and the owner's signed time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import trio

from node.client import FileSystem, NodeApi, Session, signup, social
from node.client._session import now_ms
from protocols import accounts, contacts
from protocols.cid import CID
from protocols.contacts import KeyStore, TrustedKey
from protocols.crypto import SigningKey, VerifyKey
from protocols.errors import Conflict, Denied, MalformedInput, NotFound
from protocols.social import FOLLOW_SEALED_BYTES, FollowRequest, request_id, seal_request
from tests.node.conftest import PASSWORD, RunningNode


class FakeInbox:
    """The node's inbox methods, in memory: target identity -> id -> sealed request."""

    def __init__(self) -> None:
        self.boxes: dict[CID, dict[bytes, bytes]] = {}

    def handle(self, method: str, args: dict[str, Any]) -> Any:
        if method == "social.send":
            request = args["request"]
            if len(request) != FOLLOW_SEALED_BYTES:
                raise MalformedInput("wrong length")
            self.boxes.setdefault(args["target"], {})[request_id(request)] = request
            return None
        owner = args["owner"]
        payload = [owner] if method == "social.list" else [owner, args["ids"]]
        accounts.check_timed(
            VerifyKey.from_key_hash(owner), accounts.SOCIAL, payload, args["time"], args["sig"],
            now_ms(),
        )  # fmt: skip
        box = self.boxes.setdefault(owner, {})
        if method == "social.list":
            return [{"id": key, "request": value} for key, value in box.items()]
        for key in args["ids"]:
            box.pop(key, None)
        return None

    def install(self, api: NodeApi) -> None:
        original = api.call

        async def call(method: str, args: dict[str, Any] | None = None) -> Any:
            if method.startswith("social."):
                return self.handle(method, args or {})
            return await original(method, args)

        api.call = call  # type: ignore[method-assign]


@pytest.fixture
def inbox() -> FakeInbox:
    return FakeInbox()


@pytest.fixture
async def fa(alice: Session, inbox: FakeInbox) -> FileSystem:
    inbox.install(alice.api)
    return FileSystem(alice)


@pytest.fixture
async def fb(running_node: RunningNode, inbox: FakeInbox) -> AsyncIterator[FileSystem]:
    async with NodeApi(running_node.url) as api:
        inbox.install(api)
        yield FileSystem(await signup(api, "bob", PASSWORD))


async def _exists(fs: FileSystem, path: str) -> bool:
    try:
        await fs.stat(path)
    except NotFound:
        return False
    return True


async def test_follow_accept_gives_the_follower_the_folder(
    fa: FileSystem, fb: FileSystem, inbox: FakeInbox
) -> None:
    with trio.fail_after(30):
        await social.follow(fa, "bob")
        ((name, pending),) = await social.following(fa)
        assert name == "bob"
        assert pending.cap is None
        stored = inbox.boxes[fb.session.owner]
        assert [len(request) for request in stored.values()] == [FOLLOW_SEALED_BYTES]

        listed = await social.requests(fb)
        assert [p.username for p in listed.pending] == ["alice"]
        assert not listed.pending[0].key_changed
        await social.accept(fb, "alice")
        assert [name for name, _ in await social.followers(fb)] == ["alice"]
        assert await _exists(fb, "/bob/shared/alice")
        assert not inbox.boxes[fb.session.owner]

        answers = await social.requests(fa)
        assert answers.accepted == ["bob"]
        assert not answers.pending
        ((_, followee),) = await social.following(fa)
        assert followee.cap == (await fb.capability("/bob/shared/alice")).read_only()
        assert not inbox.boxes[fa.session.owner]
        # The social state lives in each user's own encrypted space.
        assert await _exists(fa, "/alice/.pyrgos/social")
        assert await _exists(fa, "/alice/.pyrgos/keys")


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
    fa: FileSystem, fb: FileSystem, inbox: FakeInbox
) -> None:
    with trio.fail_after(30):
        await social.follow(fa, "bob")
        box = inbox.boxes[fb.session.owner]
        ((key, sealed),) = box.items()
        tampered = bytearray(sealed)
        tampered[-5] ^= 1
        box[key] = bytes(tampered)
        # Mallory signs with her own key a request claiming to come from alice.
        mallory = SigningKey.generate()
        entry = (await fa.capability("/alice/shared/bob")).read_only()
        forged_entry = replace(entry, owner=mallory.public.key_hash())
        forged = FollowRequest.create(
            mallory, "follow", "alice", "bob", forged_entry, b"r" * 32, now_ms()
        )
        sealed_forged = seal_request(forged, fb.session.data.boxing.public)
        box[request_id(sealed_forged)] = sealed_forged

        listed = await social.requests(fb)
        assert listed.pending == []
        assert listed.dropped == 2
        assert not box  # unusable items leave the inbox
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
        assert mine.digits == contacts.fingerprint(fa.session.owner)
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
        assert held.identity == fb.session.owner
        assert not held.verified
        assert not held.changed
        assert (await social.load_keys(fa)).keys["bob"].identity == fb.session.owner
