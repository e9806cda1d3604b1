"""Migration in process: a mirror of alice becomes her home; every client keeps working (logins
from any node, reads, writes, a follower's share, a secret link, her inbox); a move that may
not happen changes nothing."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import trio

from node.client import NodeApi, links, login, migrate, mirror_token, sharing, signup, social
from node.client._links import link_filesystem
from node.server import NodeService
from node.server._migrate import HANDOFF_TTL
from node.store import Space
from protocols.crypto import SigningKey
from protocols.errors import Conflict, Denied, NotFound, Unavailable
from protocols.peerid import peer_id_of
from protocols.pki import Claim
from tests.node.conftest import PASSWORD, start_swarm

ADMIN = "admin-token-of-the-mirror"


def hosts(node: NodeService, username: str) -> bool:
    return node.store.has(Space.ACCOUNTS, username.encode())


async def read_link(api: NodeApi, url: str) -> bytes:
    fs = await link_filesystem(api, url)
    return await fs.read_bytes("/link", 1024)


async def test_migrate_moves_alice_and_every_client_keeps_working(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    nodes, urls = await start_swarm(tmp_path, nursery, ["pki", "home", "mirror", "other"])
    home, mirror, other = nodes["home"], nodes["mirror"], nodes["other"]
    mirror.settings = dataclasses.replace(mirror.settings, admin_token=ADMIN)
    target = mirror.settings.node_id
    with trio.fail_after(90):
        async with (
            NodeApi(urls["home"]) as at_home,
            NodeApi(urls["other"]) as at_other,
            NodeApi(urls["pki"]) as at_pki,
        ):
            alice = await signup(at_home, "alice", PASSWORD)
            bob = await signup(at_other, "bob", PASSWORD)
            carol = await signup(at_pki, "carol", PASSWORD)
            afs, bfs = sharing.filesystem(alice), sharing.filesystem(bob)
            await afs.mkdir("docs")
            await afs.write_file("docs/a.txt", io.BytesIO(b"before the move"))
            await social.follow(bfs, "alice")
            await social.accept(afs, "bob")
            await social.requests(bfs)  # bob takes the capability her answer holds
            await sharing.share(afs, "docs", "bob")
            url = await links.create_link(afs, "docs/a.txt", node_url=urls["other"], max_uses=3)
            assert await read_link(at_other, url) == b"before the move"
            await social.follow(sharing.filesystem(carol), "alice")  # waits in her inbox

            # Refused, changing nothing: a node that does not mirror her, an unknown node, a
            # mirror that is not caught up.
            with pytest.raises(Denied, match="does not mirror"):
                await migrate(alice, target)
            with pytest.raises(NotFound, match="unknown node"):
                await migrate(alice, peer_id_of(SigningKey.generate().public))
            await mirror.call("admin.mirror.add", {"token": ADMIN, "mirror": mirror_token(alice)})
            assert await mirror.mirrors.sync_round()
            state = mirror.mirrors.state("alice")
            assert state is not None
            mirror.mirrors._failed("alice", Unavailable("the home was away"))
            with pytest.raises(Conflict, match="not caught up"):
                await migrate(alice, target)
            assert hosts(home, "alice")
            assert not hosts(mirror, "alice")
            assert home.migration.moving(alice.owner) is None
            looked = await other.call("pki.lookup", {"username": "alice"})
            assert looked["home"] == home.settings.node_id
            await afs.write_file("docs/b.txt", io.BytesIO(b"still at home"))  # writes go on

            # The move.
            assert await mirror.mirrors.sync_round()
            claim = await migrate(alice, target)
            assert claim.home == target
            assert claim.mirrors == (home.settings.node_id,)
            assert hosts(mirror, "alice")
            assert mirror.mirrors.state("alice") is None  # no longer a mirrored user there
            assert mirror.store.get(Space.USAGE, alice.owner.raw) is not None
            for writer, raw in home.store.items(Space.POINTERS):
                if home.store.get(Space.WRITERS, writer) == alice.owner.raw:
                    assert mirror.store.get(Space.POINTERS, writer) == raw  # the final pointers

            # Her device logged in through the old home keeps its session: the old home
            # releases her (it now mirrors her) and forwards to the new one.
            await afs.write_file("docs/c.txt", io.BytesIO(b"after the move"))
            assert not hosts(home, "alice")
            assert home.mirrors.state("alice") is not None
            assert await home.mirrors.sync_round()  # it keeps up from the new home
            kept = home.mirrors.state("alice")
            assert kept is not None
            assert kept.blocks > 0
            assert kept.error is None
            assert home.migration.moving(alice.owner) is None
            assert not home.store.has(Space.WRITERS, alice.owner.raw)
            assert await afs.read_bytes("docs/c.txt", 100) == b"after the move"

            # A second device logs in through another node (its PKI view stale at first).
            second = sharing.filesystem(await login(at_other, "alice", PASSWORD))
            assert await second.read_bytes("docs/b.txt", 100) == b"still at home"
            await second.write_file("docs/d.txt", io.BytesIO(b"from the second device"))
            assert await afs.read_bytes("docs/d.txt", 100) == b"from the second device"

            # Bob still reads what she shared; her link still opens, its uses carried over.
            assert await bfs.read_bytes("/alice/docs/c.txt", 100) == b"after the move"
            assert await read_link(at_other, url) == b"before the move"
            assert await read_link(at_other, url) == b"before the move"
            with pytest.raises(Denied, match="used its 3 times"):
                await read_link(at_other, url)

            # Carol's request moved with her inbox; answering it works at the new home.
            pending = (await social.requests(afs)).pending
            assert [p.username for p in pending] == ["carol"]
            await social.accept(afs, "carol")
            await sharing.share(afs, "docs", "carol")
            cfs = sharing.filesystem(carol)
            await social.requests(cfs)
            assert await cfs.read_bytes("/alice/docs/a.txt", 100) == b"before the move"

            # Moving back to where she is is refused by the client, changing nothing.
            with pytest.raises(Conflict, match="home already"):
                await migrate(alice, target)
    nursery.cancel_scope.cancel()


async def test_a_handoff_the_pki_never_took_resumes_the_writes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    nodes, urls = await start_swarm(tmp_path, nursery, ["home", "mirror"])
    home, mirror = nodes["home"], nodes["mirror"]
    mirror.settings = dataclasses.replace(mirror.settings, admin_token=ADMIN)
    target = mirror.settings.node_id
    with trio.fail_after(60):
        async with NodeApi(urls["home"]) as at_home:
            alice = await signup(at_home, "alice", PASSWORD)
            fs = sharing.filesystem(alice)
            await mirror.call("admin.mirror.add", {"token": ADMIN, "mirror": mirror_token(alice)})
            assert await mirror.mirrors.sync_round()

            # The new home fails after the handoff, before the PKI took the claim.
            async def refuse(*args: object) -> None:
                raise Unavailable("the PKI node is away")

            mirror.pki_calls.submit = refuse  # type: ignore[method-assign]
            with pytest.raises(Unavailable):
                await migrate(alice, mirror.settings.node_id)
            assert home.migration.moving(alice.owner) is not None
            with pytest.raises(Conflict, match="moving to node"):
                await fs.write_file("x.txt", io.BytesIO(b"during the handoff"))
            assert not hosts(mirror, "alice")  # the copy is still a copy

            # Its time passed, the PKI still naming the old home: her writes resume there.
            start = home.clock()
            home.clock = lambda: start + HANDOFF_TTL + 1
            await fs.write_file("x.txt", io.BytesIO(b"after the handoff expired"))
            assert home.migration.moving(alice.owner) is None
            assert hosts(home, "alice")

            # A handoff asked for by a client, or by a node other than the one the claim
            # names, is refused.
            claim = await mirror.call("pki.lookup", {"username": "alice"})
            with pytest.raises(Denied, match="only the node"):
                await home.call("mirror.handoff", {"claim": claim})
            with pytest.raises(Denied, match="other node than the caller"):
                await home.call("mirror.handoff", {"claim": claim}, b"someone")
            # A claim naming the caller but no newer than the current one (a replay) too.
            stale = Claim.create(alice.identity, "alice", target, claim["expiry"])
            with pytest.raises(Denied, match="not newer"):
                await home.call("mirror.handoff", {"claim": stale.to_cbor()}, target.encode())
            assert home.migration.moving(alice.owner) is None
    nursery.cancel_scope.cancel()


async def test_a_move_the_pki_took_is_finished_by_running_it_again(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    nodes, urls = await start_swarm(tmp_path, nursery, ["pki", "home", "mirror"])
    home, mirror = nodes["home"], nodes["mirror"]
    mirror.settings = dataclasses.replace(mirror.settings, admin_token=ADMIN)
    target = mirror.settings.node_id
    with trio.fail_after(60):
        async with NodeApi(urls["home"]) as at_home:
            alice = await signup(at_home, "alice", PASSWORD)
            fs = sharing.filesystem(alice)
            await fs.write_file("a.txt", io.BytesIO(b"kept"))
            await mirror.call("admin.mirror.add", {"token": ADMIN, "mirror": mirror_token(alice)})
            assert await mirror.mirrors.sync_round()

            # The new home stops between the PKI taking the claim and its switch.
            adopt = mirror.migration.adopt

            async def crash(*args: object) -> None:
                raise Unavailable("the node stopped")

            mirror.migration.adopt = crash  # type: ignore[method-assign]
            with pytest.raises(Unavailable):
                await migrate(alice, target)
            mirror.migration.adopt = adopt  # type: ignore[method-assign]
            assert not hosts(mirror, "alice")
            with pytest.raises(Denied):  # no node takes her writes meanwhile
                await fs.write_file("b.txt", io.BytesIO(b"lost?"))
            assert not hosts(home, "alice")  # released: the PKI names the mirror

            # Run again, it finishes the switch; what the handoff carried is lost with the
            # crash (her sessions among it): she logs in again and writes at her new home.
            await migrate(alice, target)
            assert hosts(mirror, "alice")
            fs = sharing.filesystem(await login(at_home, "alice", PASSWORD))
            await fs.write_file("b.txt", io.BytesIO(b"written at the new home"))
            assert await fs.read_bytes("a.txt", 100) == b"kept"
            with pytest.raises(Conflict, match="home already"):
                await migrate(alice, target)
    nursery.cancel_scope.cancel()
