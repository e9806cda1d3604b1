"""`link.get` at the owner's home (issue 8): the proof, the expiry on the node's clock, the use
count (durable, refused at the maximum), throttled failures, unknown links, and a target block
only the owner and the home node can read."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from node.client import NodeApi, Session, signup
from node.net import serve_api
from node.server import NodeService
from node.server._service import SOURCE_FREE_FAILURES
from node.store import Space, Store, owner_prefix
from protocols import champ, links
from protocols.cid import CID, CODEC_DAG_CBOR
from protocols.crypto import SigningKey
from protocols.cryptree import Capability
from protocols.errors import AuthFailed, Denied, MalformedInput, NotFound, RateLimited
from protocols.links import LinkKeys, LinkTarget, derive
from protocols.pointers import PointerUpdate
from simulations.swarm import LocalNetwork, new_node
from tests.node.conftest import PASSWORD, RunningNode
from tests.node.test_bad_input import put, root_of, unchanged

TIMEOUT = 30
KEY = bytes(range(32))
CAP = Capability(
    SigningKey.from_seed(bytes(32)).public.key_hash(),
    SigningKey.from_seed(bytes(32)).public.key_hash(),
    bytes(32),
    bytes([1]) * 32,
    bytes([2]) * 32,
)


def make_target(session: Session, label: bytes, keys: LinkKeys, **limits: object) -> LinkTarget:
    base = LinkTarget(
        bats=[session.mirror_id],
        cap=links.seal_capability(keys.cap_key, label, CAP),
        verifier=keys.verifier,
        password=False,
    )
    return replace(base, **limits)  # type: ignore[arg-type]


async def publish_links(api: NodeApi, session: Session, targets: dict[bytes, LinkTarget]) -> CID:
    """The owner's identity root with a links CHAMP holding `targets` (by label)."""
    staged = champ.MemoryBlocks([champ.EMPTY_NODE])
    root = champ.EMPTY_ROOT
    blocks = []
    for label, target in targets.items():
        data = target.encode()
        blocks.append(data)
        root = await champ.put(
            staged, root, links.lookup_key(label), None, CID.of(CODEC_DAG_CBOR, data)
        )
    pointer, writer_data = await root_of(api, session)
    new_root = replace(writer_data, links=root).encode()
    await put(api, session.owner, [*staged.blocks.values(), *blocks, new_root], session.identity)
    new = CID.of(CODEC_DAG_CBOR, new_root)
    update = PointerUpdate.create(session.identity, pointer.new, new, pointer.sequence + 1)
    await api.call(
        "pointer.cas", {"owner": session.owner, "updates": [[session.owner, update.encode()]]}
    )
    return root


def use(session: Session, label: bytes, keys: LinkKeys) -> dict[str, object]:
    return {"owner": session.owner, "label": label, "proof": keys.proof}


def count(store: Store, session: Session, label: bytes) -> bytes | None:
    return store.get(Space.LINKS, owner_prefix(session.owner.raw) + label)


async def test_a_link_works_exactly_as_many_times_as_allowed(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    label = bytes([1]) * 16
    keys = derive(KEY, "open sesame", test_kdf=True)
    target = make_target(alice, label, keys, max_uses=2, password=True)
    service = running_node.service
    with trio.fail_after(TIMEOUT):
        await publish_links(api, alice, {label: target})
        for _ in range(2):
            reply = await api.call("link.get", use(alice, label, keys))
            assert reply == {"cap": target.cap, "password": True}
            assert links.open_capability(keys.cap_key, label, reply["cap"]) == CAP
        with unchanged(running_node.store), pytest.raises(Denied, match="used its 2 times"):
            await service.call("link.get", use(alice, label, keys))
    assert count(running_node.store, alice, label) == b"\x02"


async def test_wrong_proofs_count_no_use_and_are_throttled(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    label = bytes([2]) * 16
    keys = derive(KEY, "open sesame", test_kdf=True)
    wrong = derive(KEY, "open sesame?", test_kdf=True)
    service = running_node.service
    with trio.fail_after(TIMEOUT):
        await publish_links(api, alice, {label: make_target(alice, label, keys, max_uses=1)})
        for _ in range(SOURCE_FREE_FAILURES):
            with unchanged(running_node.store), pytest.raises(AuthFailed, match="wrong link"):
                await service.call("link.get", use(alice, label, wrong), source="guesser")
        with pytest.raises(RateLimited, match="try again in"):
            await service.call("link.get", use(alice, label, keys), source="guesser")
        # Another source is not held back, and the link still has its one use.
        assert await service.call("link.get", use(alice, label, keys), source="reader")


async def test_an_expired_link_is_refused_on_the_nodes_clock(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    past, future = bytes([3]) * 16, bytes([4]) * 16
    keys = derive(KEY, None)
    now_ms = int(time.time() * 1000)
    with trio.fail_after(TIMEOUT):
        await publish_links(
            api,
            alice,
            {
                past: make_target(alice, past, keys, expiry=now_ms - 1),
                future: make_target(alice, future, keys, expiry=now_ms + 3_600_000),
            },
        )
        with unchanged(running_node.store), pytest.raises(Denied, match="expired"):
            await api.call("link.get", use(alice, past, keys))
        assert await api.call("link.get", use(alice, future, keys))
        running_node.service.clock = lambda: now_ms / 1000 + 7200
        with pytest.raises(Denied, match="expired"):
            await api.call("link.get", use(alice, future, keys))


async def test_unknown_links_and_bad_arguments(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    keys = derive(KEY, None)
    label = bytes([5]) * 16
    stranger = SigningKey.generate().public.key_hash()
    service = running_node.service
    with trio.fail_after(TIMEOUT):
        with unchanged(running_node.store), pytest.raises(NotFound, match="no such link"):
            await service.call("link.get", use(alice, label, keys))  # no links CHAMP yet
        await publish_links(api, alice, {label: make_target(alice, label, keys)})
        bad: list[tuple[dict[str, object], type[Exception], str]] = [
            ({**use(alice, bytes(16), keys)}, NotFound, "no such link"),
            ({**use(alice, label, keys), "owner": stranger}, NotFound, "no user"),
            ({**use(alice, label, keys), "owner": "alice"}, MalformedInput, "owner"),
            ({**use(alice, label, keys), "label": bytes(15)}, MalformedInput, "label"),
            ({**use(alice, label, keys), "proof": bytes(31)}, MalformedInput, "proof"),
            ({"owner": alice.owner}, MalformedInput, "label"),
        ]
        for args, error, message in bad:
            with unchanged(running_node.store), pytest.raises(error, match=message):
                await service.call("link.get", args, source=f"s{message}")


async def test_the_target_block_needs_the_owners_bat(
    running_node: RunningNode, api: NodeApi, alice: Session
) -> None:
    """Else a reader could fetch the sealed capability around the use count."""
    label = bytes([6]) * 16
    keys = derive(KEY, None)
    target = make_target(alice, label, keys, max_uses=1)
    with trio.fail_after(TIMEOUT):
        root = await publish_links(api, alice, {label: target})
        found = await champ.get(
            champ.MemoryBlocks(
                await api.call("champ.get", {"root": root, "keys": [links.lookup_key(label)]})
            ),
            root,
            links.lookup_key(label),
        )
        assert found == CID.of(CODEC_DAG_CBOR, target.encode())
        async with NodeApi(running_node.url) as anonymous:
            with pytest.raises(NotFound, match="read auth"):
                await anonymous.get_block(found)
            # The links CHAMP and its targets are reachable from the owner's root: kept.
            await running_node.service.collect_garbage()
            reply = await anonymous.call("link.get", use(alice, label, keys))
            assert reply["cap"] == target.cap


@pytest.fixture
def two_nodes(tmp_path: Path) -> list[NodeService]:
    swarm = LocalNetwork()
    home = new_node(Store(tmp_path / "home"))
    other = new_node(Store(tmp_path / "other"), pki_node=home.settings.node_id)
    for service in (home, other):
        swarm.add(service)
    return [home, other]


async def test_any_node_forwards_link_get_to_the_home(
    two_nodes: list[NodeService], nursery: trio.Nursery
) -> None:
    home, other = two_nodes
    label = bytes([7]) * 16
    keys = derive(KEY, None)
    with trio.fail_after(TIMEOUT):
        url = await nursery.start(serve_api, home, "127.0.0.1", 0)
        async with NodeApi(url) as api:
            alice = await signup(api, "alice", PASSWORD)
            await publish_links(api, alice, {label: make_target(alice, label, keys)})
        assert await other.call("link.get", use(alice, label, keys), source="x")
    assert other.stats["forwarded"] == 1
    assert count(home.store, alice, label) == b"\x01"
    assert not list(other.store.keys(Space.LINKS))
    nursery.cancel_scope.cancel()
