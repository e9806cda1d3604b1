"""Mirroring in process: a mirror node copies a user's pointers and blocks from their home,
keeps up, refuses what does not check out, and resumes after a restart."""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from node.client import FileSystem, NodeApi, Session, login, mirror_token, publish_mirrors, signup
from node.net import serve_api
from node.server import NodeService, PkiLog, collect_garbage
from node.server import _mirrors as mirrors_module
from node.server._gc import mark
from node.store import Space, Store
from protocols.cid import CID
from protocols.errors import Conflict, Denied, MalformedInput, NotFound, Unavailable
from protocols.mirrors import MirrorToken
from protocols.pointers import PointerUpdate
from simulations.swarm import LocalNetwork, new_node
from tests.node.conftest import PASSWORD, start_swarm

ADMIN = "admin-token-of-the-mirror"


class Setup:
    def __init__(self, nodes: dict[str, NodeService], urls: dict[str, str], alice: Session):
        self.nodes = nodes
        self.urls = urls
        self.alice = alice
        self.home = nodes["home"]
        self.mirror = nodes["mirror"]

    async def add(self, token: str) -> Any:
        return await self.mirror.call("admin.mirror.add", {"token": ADMIN, "mirror": token})

    def held(self, node: NodeService) -> set[bytes]:
        """The raw CIDs alice's pointers at `node` reach there."""
        roots = [
            PointerUpdate.decode(raw).new
            for writer, raw in node.store.items(Space.POINTERS)
            if writer == self.alice.owner.raw or node.store.get(Space.WRITERS, writer)
        ]
        return mark(node.store, roots)


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    nodes, urls = await start_swarm(tmp_path, nursery, ["home", "mirror"])
    mirror = nodes["mirror"]
    mirror.settings = dataclasses.replace(mirror.settings, admin_token=ADMIN)
    async with NodeApi(urls["home"]) as api:
        alice = await signup(api, "alice", PASSWORD)
        yield Setup(nodes, urls, alice)
    nursery.cancel_scope.cancel()


def mirror_error(setup: Setup) -> str:
    """The error alice's mirror state records (there must be one)."""
    state = setup.mirror.mirrors.state("alice")
    assert state is not None
    assert state.error
    return state.error


async def test_a_mirror_catches_up_and_keeps_up(setup: Setup) -> None:
    fs = FileSystem(setup.alice)
    with trio.fail_after(60):
        await fs.mkdir("docs")
        await fs.write_file("docs/a.bin", io.BytesIO(os.urandom(3 * 1024 * 1024 + 5)))
        added = await setup.add(mirror_token(setup.alice))
        assert added["username"] == "alice"
        assert await setup.mirror.mirrors.sync_round()
        assert setup.mirror.mirrors.users()[0].error is None
        home_blocks = setup.held(setup.home)
        assert home_blocks
        assert all(setup.mirror.store.has_block(raw) for raw in home_blocks)
        owner = setup.alice.owner
        assert setup.mirror.pointers.pointer(owner) == setup.home.pointers.pointer(owner)
        account = setup.mirror.mirrors.account("alice")
        assert account == setup.home.store.get(Space.ACCOUNTS, b"alice")

        # More writes: the next round copies only what is new.
        fetched = setup.mirror.stats["mirror_blocks"]
        await fs.write_file("docs/b.txt", io.BytesIO(b"more"))
        await fs.remove("docs/a.bin")
        await fs.rotate("docs", own_writer=True)  # a sub-writer, owned by alice's identity
        sub = [w for w, o in setup.home.store.items(Space.WRITERS) if w != owner.raw]
        assert len(sub) == 1
        assert await setup.mirror.mirrors.sync_round()
        for writer in (owner.raw, sub[0]):
            assert setup.mirror.store.get(Space.POINTERS, writer) == setup.home.store.get(
                Space.POINTERS, writer
            )
        assert not setup.mirror.store.has(Space.WRITERS, sub[0])  # no writes taken here
        assert all(setup.mirror.store.has_block(raw) for raw in setup.held(setup.home))
        assert 0 < setup.mirror.stats["mirror_blocks"] - fetched < len(home_blocks)

        listed = await setup.mirror.call("admin.mirror.list", {"token": ADMIN})
        (row,) = listed["mirrors"]
        assert row["username"] == "alice"
        assert row["state"] == "ok"
        assert row["lag"] == 0
        assert row["writers"] == 2
        assert row["blocks"] == len(setup.held(setup.home))
        assert row["error"] is None

        # A mirrored user counts against nothing; GC keeps what the mirrored pointers reach.
        assert setup.mirror.store.get(Space.USAGE, owner.raw) is None
        await setup.mirror.collect_garbage()
        assert all(setup.mirror.store.has_block(raw) for raw in setup.held(setup.home))

        # Removed, the next collection frees it all; writes at the mirror were never taken.
        await setup.mirror.call("admin.mirror.remove", {"token": ADMIN, "username": "alice"})
        assert setup.mirror.pointers.pointer(owner) is None
        stats = await setup.mirror.collect_garbage()
        assert stats["deleted"] >= len(home_blocks) // 2
        assert not any(setup.mirror.store.has_block(raw) for raw in setup.held(setup.home))


async def test_a_mirror_refuses_tokens_that_do_not_check_out(setup: Setup, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with NodeApi(setup.urls["home"]) as api:
            bob = await signup(api, "bob", PASSWORD)
        alice_token = MirrorToken.from_text(mirror_token(setup.alice))
        bob_token = MirrorToken.from_text(mirror_token(bob))
        wrong = MirrorToken("alice", bob_token.secret).to_text()  # a BAT the home knows
        with pytest.raises(Denied, match=r"not open|not the one"):
            await setup.add(wrong)
        with pytest.raises(Denied):
            await setup.add(MirrorToken("alice", os.urandom(32)).to_text())
        with pytest.raises(NotFound, match="unknown user"):
            await setup.add(MirrorToken("nobody", alice_token.secret).to_text())
        with pytest.raises(MalformedInput, match="not a mirror token"):
            await setup.add("pyrgos-mirror-1:AAAA")
        with pytest.raises(MalformedInput):
            await setup.add(mirror_token(setup.alice)[:-3])
        with pytest.raises(Denied, match="admin token"):
            await setup.mirror.call(
                "admin.mirror.add", {"token": "guess", "mirror": mirror_token(setup.alice)}
            )
        # The home itself has nothing to mirror.
        setup.home.settings = dataclasses.replace(setup.home.settings, admin_token=ADMIN)
        with pytest.raises(Conflict, match="homed on this node"):
            await setup.home.call(
                "admin.mirror.add", {"token": ADMIN, "mirror": mirror_token(setup.alice)}
            )
        # The login record goes to no one but a node holding the BAT.
        with pytest.raises(Denied):
            await setup.home.call(
                "mirror.account",
                {"username": "alice", "bat": bob_token.bat_id, "expiry": 10**9, "mac": bytes(32)},
                b"12D3KooWmirror",
            )
        assert setup.mirror.mirrors.users() == []


async def test_a_mirror_refuses_what_the_home_forges(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = FileSystem(setup.alice)
    owner = setup.alice.owner
    with trio.fail_after(60):
        await fs.write_file("a.txt", io.BytesIO(b"first"))
        await setup.add(mirror_token(setup.alice))
        assert await setup.mirror.mirrors.sync_round()
        old = setup.home.pointers.pointer(owner)
        assert old is not None

        # A block that does not hash to its CID: nothing of that writer is set.
        await fs.write_file("b.txt", io.BytesIO(b"second"))
        real_get = setup.home.get_block

        async def lying_get(cid: CID, auth: Any, requester: bytes, owner: Any = None) -> bytes:
            data = await real_get(cid, auth, requester, owner)
            return data[:-1] + bytes([data[-1] ^ 1])

        monkeypatch.setattr(setup.home, "get_block", lying_get)
        await setup.mirror.mirrors.sync_round()
        assert setup.mirror.pointers.pointer(owner) == old
        assert "does not match" in mirror_error(setup)
        monkeypatch.setattr(setup.home, "get_block", real_get)

        # A pointer whose signature is not the writer's.
        new = setup.home.pointers.pointer(owner)
        assert new is not None
        forged = dataclasses.replace(new, signature=bytes(64))
        setup.home.store.put(Space.POINTERS, owner.raw, forged.encode())
        await setup.mirror.mirrors.sync_round()
        assert setup.mirror.pointers.pointer(owner) == old
        assert "signed" in mirror_error(setup)

        # The real one goes through; then an older one (a home rolled back) is refused.
        setup.home.store.put(Space.POINTERS, owner.raw, new.encode())
        assert await setup.mirror.mirrors.sync_round()
        assert setup.mirror.pointers.pointer(owner) == new
        setup.home.store.put(Space.POINTERS, owner.raw, old.encode())
        await setup.mirror.mirrors.sync_round()
        assert setup.mirror.pointers.pointer(owner) == new
        assert "not after" in mirror_error(setup)


async def test_a_home_that_is_down_is_tried_with_a_backoff(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(60):
        await setup.add(mirror_token(setup.alice))
        now = [time.time() - 200]  # behind the home, so the mirror's read auths stay valid
        setup.mirror.clock = lambda: now[0]

        async def down(*args: Any, **kwargs: Any) -> Any:
            raise Unavailable("the home is down")

        monkeypatch.setattr(setup.home, "call", down)
        for _ in range(120):  # a poll a second for two minutes
            await setup.mirror.mirrors.sync_round(backoff=True)
            now[0] += 1
        # Tried at 0, 2, 6, 14, 30 and 62 s (then each minute): not at every poll.
        assert setup.mirror.stats["mirror_failures"] == 6
        state = setup.mirror.mirrors.state("alice")
        assert state is not None
        assert state.error == "the home is down"
        monkeypatch.undo()
        now[0] += 2  # the minute since the last try has passed
        assert await setup.mirror.mirrors.sync_round(backoff=True)
        state = setup.mirror.mirrors.state("alice")
        assert state is not None
        assert state.error is None


async def test_a_mirror_resumes_after_a_restart(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = FileSystem(setup.alice)
    owner = setup.alice.owner
    with trio.fail_after(60):
        await fs.write_file("big.bin", io.BytesIO(os.urandom(6 * 1024 * 1024)))
        await setup.add(mirror_token(setup.alice))
        monkeypatch.setattr(mirrors_module, "ROUND_BYTES", 2 * 1024 * 1024)
        assert not await setup.mirror.mirrors.sync_round()  # its share of the round is spent
        assert setup.mirror.pointers.pointer(owner) is None
        first = setup.mirror.stats["mirror_blocks"]
        assert first > 0
        # What was copied is pinned: a collection meanwhile keeps it.
        assert (await setup.mirror.collect_garbage())["deleted"] == 0

        # Restart: a new service over the same database, as the daemon would open it.
        mirror = setup.mirror
        mirror.store.close()
        store = Store(mirror.store.path)
        assert mirror.pki is not None
        pki = PkiLog(store, mirror.pki.pki_node, None)
        restarted = NodeService(store, mirror.settings, pki=pki, clock=mirror.clock)
        swarm = LocalNetwork()
        swarm.add(setup.home)
        swarm.add(restarted)
        monkeypatch.setattr(mirrors_module, "ROUND_BYTES", 64 * 1024 * 1024)
        await restarted.sync_pki()
        assert await restarted.mirrors.sync_round()
        assert restarted.pointers.pointer(owner) == setup.home.pointers.pointer(owner)
        held = setup.held(setup.home)
        assert all(store.has_block(raw) for raw in held)
        assert restarted.stats["mirror_blocks"] + first == len(held)  # nothing fetched twice
        assert collect_garbage(store, 0)["deleted"] == 0


async def test_reads_fail_over_to_a_mirror_and_writes_wait_for_the_home(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    swarm = LocalNetwork()
    home = new_node(Store(tmp_path / "home"))
    nodes = {"home": home}
    for name in ("mirror", "reader"):
        nodes[name] = new_node(Store(tmp_path / name), pki_node=home.settings.node_id)
    urls = {}
    for name, service in nodes.items():
        swarm.add(service)
        urls[name] = await nursery.start(serve_api, service, "127.0.0.1", 0)
    mirror, reader = nodes["mirror"], nodes["reader"]
    mirror.settings = dataclasses.replace(mirror.settings, admin_token=ADMIN)
    content = os.urandom(2 * 1024 * 1024 + 7)
    with trio.fail_after(60):
        async with (
            NodeApi(urls["home"]) as at_home,
            NodeApi(urls["reader"]) as at_reader,
            NodeApi(urls["mirror"]) as at_mirror,
        ):
            alice = await signup(at_home, "alice", PASSWORD)
            await FileSystem(alice).mkdir("docs")
            await FileSystem(alice).write_file("docs/a.bin", io.BytesIO(content))
            token = mirror_token(alice)
            await mirror.call("admin.mirror.add", {"token": ADMIN, "mirror": token})
            assert await mirror.mirrors.sync_round()
            claim = await publish_mirrors(alice, [mirror.settings.node_id])
            assert claim.mirrors == (mirror.settings.node_id,)
            for node in (mirror, reader):
                await node.sync_pki()
            via_reader = FileSystem(await login(at_reader, "alice", PASSWORD))
            via_mirror = FileSystem(await login(at_mirror, "alice", PASSWORD))

            swarm.down.add(home.settings.node_id)
            # Through another node: pointer, CHAMP and blocks from the mirror, whose read
            # auths were made out to the home.
            assert await via_reader.read_bytes("docs/a.bin", len(content)) == content
            assert reader.stats["failover_reads"] > 0
            # Through the mirror itself: its own copy.
            assert await via_mirror.read_bytes("docs/a.bin", len(content)) == content
            assert mirror.stats["failover_local"] > 0

            # No split brain: a write waits for the home, through any node.
            before = mirror.pointers.pointer(alice.owner)
            for fs in (via_reader, via_mirror):
                with pytest.raises(Unavailable):
                    await fs.write_file("b.txt", io.BytesIO(b"while the home is away"))
            assert mirror.pointers.pointer(alice.owner) == before

            # The home is back: writes go through, and the mirror catches up.
            swarm.down.discard(home.settings.node_id)
            await via_reader.write_file("b.txt", io.BytesIO(b"back"))
            assert await mirror.mirrors.sync_round()
            assert mirror.pointers.pointer(alice.owner) == home.pointers.pointer(alice.owner)
    nursery.cancel_scope.cancel()
