"""Who may add to the PKI: a claim is attested by the home node it names, after a real signup
there; signups are limited per node and per source; and a signup is all or nothing."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from node.client import NodeApi, login, signup
from node.net import serve_api
from node.server import NodeService
from node.store import Space, Store
from protocols import cbor
from protocols.cid import CID
from protocols.crypto import SigningKey
from protocols.errors import (
    Conflict,
    Denied,
    InvalidSignature,
    MalformedInput,
    PyrgosError,
    QuotaExceeded,
    RateLimited,
)
from protocols.peerid import peer_id_of
from protocols.pki import CLAIM_LIFETIME, DAY, Claim, DailyLimit, NodeRecord, record_to_cbor
from protocols.pointers import PointerUpdate
from simulations.swarm import LocalNetwork, new_node
from tests.node.conftest import PASSWORD

Args = dict[str, Any]


class DirectApi:
    """A client's view of a node without sockets: calls go through the node's method table as
    CBOR, from `source`, with an optional rewrite of the signup arguments."""

    def __init__(
        self,
        service: NodeService,
        source: str = "10.0.0.1",
        tamper: Callable[[Args], Args] | None = None,
    ) -> None:
        self.service, self.source, self.tamper = service, source, tamper

    async def call(self, method: str, args: Args | None = None) -> Any:
        args = dict(args or {})
        if method == "account.signup" and self.tamper is not None:
            args = self.tamper(args)
        wire = cbor.decode(cbor.encode(args))
        reply = cbor.decode(cbor.encode(await self.service.call(method, wire, source=self.source)))
        if method == "node.info":
            reply["test_mode"] = True  # the client derives with the small profile, always
        return reply

    def route(self, owner: CID, home: str) -> None:
        pass

    async def node_id(self) -> bytes:
        return self.service.node_id_bytes

    def clock(self) -> float:  # the client's clock is the node's: signed times agree
        return self.service.clock()

    def now_ms(self) -> int:
        return int(self.service.clock() * 1000)


async def sign_up(
    service: NodeService,
    name: str,
    source: str = "10.0.0.1",
    tamper: Callable[[Args], Args] | None = None,
) -> None:
    with trio.fail_after(30):
        await signup(cast("NodeApi", DirectApi(service, source, tamper)), name, PASSWORD)


def swarm_of(tmp_path: Path, **settings: Any) -> tuple[NodeService, NodeService]:
    root = new_node(Store(tmp_path / "root"))
    mirror = new_node(Store(tmp_path / "mirror"), pki_node=root.settings.node_id)
    for node in (root, mirror):
        node.settings = dataclasses.replace(node.settings, **settings)
        node.__init__(node.store, node.settings, pki=node.pki)  # type: ignore[misc]
    swarm = LocalNetwork()
    swarm.add(root)
    swarm.add(mirror)
    return root, mirror


def claim(home: str, name: str, key: SigningKey | None = None) -> Claim:
    expiry = int(time.time()) + CLAIM_LIFETIME // 2
    return Claim.create(key or SigningKey.generate(), name, home, expiry)


# -- item: every late refusal leaves the name free (all or nothing) ------------------------------


def resign_pointer(args: Args) -> Args:
    update = PointerUpdate.decode(args["pointer"])
    forged = PointerUpdate.create(SigningKey.generate(), None, update.new, 1)
    return {**args, "pointer": forged.encode()}


def bad_block_signature(args: Args) -> Args:
    return {**args, "sigs": [bytes(64), *args["sigs"][1:]]}


def drop_the_root(args: Args) -> Args:
    root = PointerUpdate.decode(args["pointer"]).new
    kept = [
        (item, sig)
        for item, sig in zip(args["blocks"], args["sigs"], strict=True)
        if CID.of(item[0], item[1]) != root
    ]
    return {**args, "blocks": [b for b, _ in kept], "sigs": [s for _, s in kept]}


LATE_REFUSALS: dict[str, tuple[Callable[[Args], Args], type[PyrgosError]]] = {
    "pointer signed by another key": (resign_pointer, InvalidSignature),
    "pointer bytes": (lambda a: {**a, "pointer": b"\x00"}, MalformedInput),
    "block signature": (bad_block_signature, InvalidSignature),
    "no WriterData": (drop_the_root, MalformedInput),
    "login key": (lambda a: {**a, "login_key": [9, b"x"]}, MalformedInput),
    "login data": (lambda a: {**a, "login_data": bytes(17 * 1024)}, MalformedInput),
    "mirror BAT": (lambda a: {**a, "mirror_bat": b"short"}, MalformedInput),
    "key change": (
        lambda a: {**a, "claim": {**a["claim"], "previous": a["claim"]["identity"]}},
        MalformedInput,
    ),
}


@pytest.mark.parametrize("on", ["root", "mirror"])
async def test_every_refused_signup_leaves_the_name_free(tmp_path: Path, on: str) -> None:
    root, mirror = swarm_of(tmp_path)
    node = root if on == "root" else mirror
    assert root.pki is not None
    for what, (tamper, error) in LATE_REFUSALS.items():
        with pytest.raises(error):
            await sign_up(node, "alice", tamper=tamper)
        assert root.pki.lookup("alice") is None, what
        assert not list(node.store.keys(Space.ACCOUNTS)), what
    # A node-side rule: the weak KDF profile on a node out of test mode; and the quota.
    for changed, error in (
        ({"test_mode": False}, Denied),
        ({"default_quota": 10}, QuotaExceeded),
    ):
        saved = node.settings
        node.settings = dataclasses.replace(saved, **changed)
        with pytest.raises(error):
            await sign_up(node, "alice")
        node.settings = saved
        assert root.pki.lookup("alice") is None
    await sign_up(node, "alice")
    claimed = root.pki.lookup("alice")
    assert claimed is not None
    assert claimed.home == node.settings.node_id
    with trio.fail_after(30):
        session = await login(cast("NodeApi", DirectApi(node)), "alice", PASSWORD)
    assert session.username == "alice"


async def test_a_signup_the_pki_refuses_writes_nothing(tmp_path: Path) -> None:
    root, mirror = swarm_of(tmp_path)
    await sign_up(root, "bob")
    with pytest.raises(Conflict, match="taken"):
        await sign_up(mirror, "bob")
    assert not list(mirror.store.keys(Space.ACCOUNTS))
    assert not list(mirror.store.keys(Space.WRITERS))


# -- item: claims are attested by their home, which the PKI knows --------------------------------


async def test_no_one_but_the_home_claims_a_new_name(tmp_path: Path) -> None:
    root, mirror = swarm_of(tmp_path)
    assert root.pki is not None
    seq = root.pki.seq()
    stranger = peer_id_of(SigningKey.generate().public)
    with trio.fail_after(30):
        for home, via, requester in (
            (root.settings.node_id, root, b""),  # an anonymous client of the PKI node
            (mirror.settings.node_id, root, b""),
            (mirror.settings.node_id, mirror, b""),  # an anonymous client of a mirror
            (root.settings.node_id, root, mirror.node_id_bytes),  # another node
            (mirror.settings.node_id, root, stranger.encode()),
        ):
            record = {"record": record_to_cbor(claim(home, "mallory"))}
            with pytest.raises(Denied, match="home node"):
                await via.call("pki.submit", record, requester)
        # A home that is no node the PKI knows, even when it submits the claim itself.
        record = {"record": record_to_cbor(claim(stranger, "mallory"))}
        with pytest.raises(Denied, match="not a node the PKI knows"):
            await root.call("pki.submit", record, stranger.encode())
    assert root.pki.seq() == seq
    assert root.pki.lookup("mallory") is None


async def test_the_owner_renews_and_updates_through_any_node(tmp_path: Path) -> None:
    root, mirror = swarm_of(tmp_path)
    assert root.pki is not None
    key = SigningKey.generate()
    first = claim(root.settings.node_id, "carol", key)
    await root.call("pki.submit", {"record": record_to_cbor(first)}, root.node_id_bytes)
    await mirror.sync_pki()
    with trio.fail_after(30):
        for via in (root, mirror):  # anonymous clients, as a login near expiry renews
            current = root.pki.lookup("carol")
            assert current is not None
            renewed = Claim.create(key, "carol", current.home, current.expiry + 10)
            await via.call("pki.submit", {"record": record_to_cbor(renewed)})
            assert root.pki.lookup("carol") == renewed
        # The same record again (a retried submission) is answered, not appended twice.
        seq = root.pki.seq()
        await root.call("pki.submit", {"record": record_to_cbor(renewed)})
        assert root.pki.seq() == seq


async def test_node_records_come_from_their_node_and_new_nodes_are_capped(tmp_path: Path) -> None:
    root, _ = swarm_of(tmp_path)
    root.pki_calls._new_nodes = DailyLimit(2)
    with trio.fail_after(30):
        key = SigningKey.generate()
        record = {"record": record_to_cbor(NodeRecord.create(key, ["/ip4/10.0.0.9/tcp/1"], 1))}
        with pytest.raises(Denied, match="node it names"):
            await root.call("pki.submit", record, b"")
        joined = []
        for _ in range(2):
            key = SigningKey.generate()
            node = peer_id_of(key.public)
            record = {"record": record_to_cbor(NodeRecord.create(key, [], 1))}
            await root.call("pki.submit", record, node.encode())
            joined.append((key, node))
        key = SigningKey.generate()
        record = {"record": record_to_cbor(NodeRecord.create(key, [], 1))}
        with pytest.raises(RateLimited, match="node records"):
            await root.call("pki.submit", record, peer_id_of(key.public).encode())
        # A node already known publishes its new addresses as before.
        key, node = joined[0]
        record = {"record": record_to_cbor(NodeRecord.create(key, ["/ip4/10.0.0.9/tcp/2"], 2))}
        await root.call("pki.submit", record, node.encode())


# -- item: signups are limited per node and per source, and may need a token ---------------------


async def test_signups_are_limited_per_source_and_per_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = swarm_of(tmp_path, max_daily_signups=3, max_source_signups=2)
    now = [time.time()]  # the PKI node dates its entries, and claims by it
    root.clock = lambda: now[0]
    assert root.pki is not None
    await sign_up(root, "ann", source="10.0.0.1")
    await sign_up(root, "ben", source="10.0.0.1")
    with pytest.raises(RateLimited, match="one address"):
        await sign_up(root, "cat", source="10.0.0.1")
    await sign_up(root, "cat", source="10.0.0.2")
    with pytest.raises(RateLimited, match="this node"):
        await sign_up(root, "dan", source="10.0.0.3")
    # A refused signup costs nothing: only those that succeeded count.
    with pytest.raises(Conflict):
        await sign_up(root, "ann", source="10.0.0.4")
    assert root.pki.lookup("dan") is None
    now[0] += DAY
    await sign_up(root, "dan", source="10.0.0.1")


async def test_a_failed_signup_gives_its_count_back(tmp_path: Path) -> None:
    root, _ = swarm_of(tmp_path, max_daily_signups=1)
    with pytest.raises(InvalidSignature):
        await sign_up(root, "ann", tamper=bad_block_signature)
    await sign_up(root, "bob")  # the failed attempt did not use the day's one signup


async def test_a_node_with_a_signup_token_requires_it(tmp_path: Path) -> None:
    root, _ = swarm_of(tmp_path, signup_token="open sesame", max_source_signups=1)
    for token in (None, "wrong"):
        with pytest.raises(Denied, match="signup token"):
            await sign_up(
                root, "ann", tamper=lambda a, t=token: a if t is None else {**a, "token": t}
            )
    with pytest.raises(MalformedInput, match="'token' must be text"):
        await sign_up(root, "ann", tamper=lambda a: {**a, "token": 7})
    invited = lambda a: {**a, "token": "open sesame"}  # noqa: E731
    await sign_up(root, "ann", tamper=invited)
    await sign_up(root, "bob", tamper=invited)  # the token's holder is not limited per source


def test_a_daily_limit_forgets_windows_that_ended() -> None:
    limit = DailyLimit(2, window=100)
    for n in range(50):
        limit.take(f"source-{n}", float(n), "signups")
    assert len(limit) == 50
    limit.take("late", 1000.0, "signups")
    assert len(limit) == 1
    limit.take("late", 1001.0, "signups")
    with pytest.raises(RateLimited, match="try again in 100 s"):
        limit.take("late", 1001.0, "signups")
    limit.give_back("late")
    limit.take("late", 1002.0, "signups")


async def test_over_http_the_source_is_the_clients_address(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    root, _ = swarm_of(tmp_path, max_source_signups=1)
    url = await nursery.start(serve_api, root, "127.0.0.1", 0)
    with trio.fail_after(30):
        async with NodeApi(url) as api:
            await signup(api, "ann", PASSWORD)
            with pytest.raises(RateLimited, match="one address"):
                await signup(api, "ben", PASSWORD)
    await sign_up(root, "ben", source="10.0.0.2")  # another address still may
