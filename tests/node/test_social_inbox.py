"""The follow-request inbox (issue 8): anonymous sends of exactly one sealed size, lists and
removals signed by the target's identity key, the per-target and per-source limits, and
sends through a node that is not the target's home."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from node.client import NodeApi, Session, signup
from node.net import serve_api
from node.server import NodeService
from node.server import _social as social_module
from node.store import Store
from protocols import accounts, crypto
from protocols.crypto import SigningKey
from protocols.errors import AuthFailed, MalformedInput, NotFound, RateLimited, TooLarge
from protocols.pki import DailyLimit
from protocols.social import FOLLOW_PLAIN_BYTES, FOLLOW_SEALED_BYTES
from simulations.swarm import LocalNetwork, new_node
from tests.node.conftest import PASSWORD, RunningNode
from tests.node.test_bad_input import unchanged

TIMEOUT = 30
CONTEXT = b"pyrgos/follow-request/1"


def sealed(n: int = 0) -> bytes:
    """A request as a follower seals it (the node never opens one)."""
    boxing = crypto.BoxingKey.from_seed(bytes(32))
    plain = crypto.pad_to(bytes([n]) * 10, FOLLOW_PLAIN_BYTES)
    return crypto.box(crypto.BoxingPublicKey(crypto.xwing_public_key(boxing.seed)), plain, CONTEXT)


def signed(
    session: Session | SigningKey, payload: list[object], skew_ms: int = 0
) -> dict[str, Any]:
    key = session.identity if isinstance(session, Session) else session
    now = int(time.time() * 1000) + skew_ms
    return {"time": now, "sig": accounts.sign_timed(key, accounts.SOCIAL, payload, now)}


async def listed(service: NodeService, session: Session) -> list[dict[str, bytes]]:
    result: list[dict[str, bytes]] = await service.call(
        "social.list", {"owner": session.owner, **signed(session, [session.owner])}
    )
    return result


def test_every_request_seals_to_one_length() -> None:
    assert len(sealed()) == FOLLOW_SEALED_BYTES == 2184


async def test_send_list_remove(running_node: RunningNode, alice: Session) -> None:
    service = running_node.service
    first, second = sealed(1), sealed(2)
    with trio.fail_after(TIMEOUT):
        for request in (first, second, first):  # a duplicate is stored once
            assert await service.call("social.send", {"target": alice.owner, "request": request})
        pending = await listed(service, alice)
        assert sorted(p["request"] for p in pending) == sorted([first, second])
        ids = {p["request"]: p["id"] for p in pending}
        assert ids[first] == hashlib.sha256(first).digest()[:16]
        owner = alice.owner
        args = {"owner": owner, "ids": [ids[first]], **signed(alice, [owner, [ids[first]]])}
        assert await service.call("social.remove", args) == 1
        assert await service.call("social.remove", args) == 0  # already gone
        assert [p["request"] for p in await listed(service, alice)] == [second]


async def test_bad_sends_store_nothing(running_node: RunningNode, alice: Session) -> None:
    service = running_node.service
    stranger = SigningKey.generate().public.key_hash()
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"target": alice.owner, "request": sealed()[:-1]}, MalformedInput, "2184 bytes"),
        ({"target": alice.owner, "request": sealed() + b"\0"}, MalformedInput, "2184 bytes"),
        ({"target": alice.owner, "request": "text"}, MalformedInput, "request"),
        ({"target": alice.owner}, MalformedInput, "request"),
        ({"target": "alice", "request": sealed()}, MalformedInput, "public-key hash"),
        ({"target": stranger, "request": sealed()}, NotFound, "no user"),
    ]
    for args, error, message in bad:
        kept = unchanged(running_node.store)
        with trio.fail_after(TIMEOUT), kept, pytest.raises(error, match=message):
            await service.call("social.send", args)


async def test_lists_and_removals_need_the_identity_signature(
    running_node: RunningNode, alice: Session
) -> None:
    service, owner = running_node.service, alice.owner
    stranger = SigningKey.generate()
    with trio.fail_after(TIMEOUT):
        await service.call("social.send", {"target": owner, "request": sealed()})
        one, other, short = [bytes(16)], [bytes([1]) * 16], [bytes(15)]
        cases: list[tuple[str, dict[str, Any], type[Exception], str]] = [
            ("social.list", signed(alice, [owner], skew_ms=6 * 60_000), AuthFailed, "clock"),
            ("social.list", signed(stranger, [owner]), AuthFailed, "identity key"),
            ("social.list", signed(alice, [owner, []]), AuthFailed, "identity key"),
            ("social.list", {"time": "now", "sig": bytes(64)}, MalformedInput, "time"),
            ("social.list", {"time": 1, "sig": "s"}, MalformedInput, "sig"),
            ("social.remove", {"ids": one, **signed(alice, [owner, other])}, AuthFailed, "key"),
            (
                "social.remove",
                {"ids": short, **signed(alice, [owner, short])},
                MalformedInput,
                "ids",
            ),
            ("social.remove", {"ids": [], **signed(alice, [owner, []])}, MalformedInput, "ids"),
            ("social.remove", {"ids": one * 1001, **signed(alice, [owner])}, TooLarge, "ids"),
        ]
        for method, args, error, message in cases:
            with unchanged(running_node.store), pytest.raises(error, match=message):
                await service.call(method, {"owner": owner, **args})
        # A stranger signing for itself is no user here.
        me = stranger.public.key_hash()
        with pytest.raises(NotFound, match="no user"):
            await service.call("social.list", {"owner": me, **signed(stranger, [me])})


async def test_a_full_inbox_and_the_per_source_limit(
    running_node: RunningNode, alice: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = running_node.service
    monkeypatch.setattr(social_module, "MAX_PENDING", 3)
    service.inbox._sources = DailyLimit(2)
    service.inbox._peers = DailyLimit(1)
    send = {"target": alice.owner}
    requests = [sealed(n) for n in range(6)]
    with trio.fail_after(TIMEOUT):
        for n in range(2):
            await service.call("social.send", {**send, "request": requests[n]}, source="one")
        with pytest.raises(RateLimited, match="at most 2 a day"):
            await service.call("social.send", {**send, "request": requests[2]}, source="one")
        await service.call("social.send", {**send, "request": requests[2]}, source="two")
        with unchanged(running_node.store), pytest.raises(RateLimited, match="holds 3"):
            await service.call("social.send", {**send, "request": requests[3]}, source="two")
        # A duplicate is answered without counting or storing anything.
        assert await service.call("social.send", {**send, "request": requests[0]}, source="one")
        pending = await listed(service, alice)
        assert len(pending) == 3
        # The target removes some: others may send again.
        ids = [pending[0]["id"], pending[1]["id"]]
        owner = alice.owner
        remove = {"owner": owner, "ids": ids, **signed(alice, [owner, ids])}
        await service.call("social.remove", remove)
        # Sends a node relays count against that node, under their own limit.
        peer = b"12D3KooWBU4rBscvZFhiC8EyuuuEMPLQJGVggB3Sew9HaNqsRnVp"
        assert await service.call("social.send", {**send, "request": requests[4]}, peer)
        with pytest.raises(RateLimited, match="at most 1 a day"):
            await service.call("social.send", {**send, "request": requests[5]}, peer)


@pytest.fixture
async def two_nodes(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[list[str]]:
    swarm = LocalNetwork()
    home = new_node(Store(tmp_path / "home"))
    other = new_node(Store(tmp_path / "other"), pki_node=home.settings.node_id)
    urls = []
    for service in (home, other):
        swarm.add(service)
        urls.append(await nursery.start(serve_api, service, "127.0.0.1", 0))
    yield urls
    nursery.cancel_scope.cancel()


async def test_sends_and_lists_reach_the_targets_home(two_nodes: list[str]) -> None:
    with trio.fail_after(TIMEOUT):
        async with NodeApi(two_nodes[0]) as api:
            alice = await signup(api, "alice", PASSWORD)
        async with NodeApi(two_nodes[1]) as api:
            request = sealed(7)
            await api.call("social.send", {"target": alice.owner, "request": request})
            owner = alice.owner
            pending = await api.call("social.list", {"owner": owner, **signed(alice, [owner])})
    assert [p["request"] for p in pending] == [request]
