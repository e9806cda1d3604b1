"""Mirroring end to end: alice is homed on node 2, node 3 mirrors her (real processes, real
libp2p); the copy catches up, keeps up, survives a restart of the mirror; when alice's home
dies, bob still reads what she shared through the mirror and her writes fail cleanly; the home
back, the mirror catches up; `migrate` moves alice to the mirror and every client keeps
working, her old home now mirroring her; removed there, its copy is freed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Final

import pytest

from tests.e2e.conftest import Cluster, NodeProcess, base_env, node_info, pyrgos, wait_until

pytestmark = pytest.mark.e2e

MiB: Final = 1024 * 1024
MIRROR_TIMEOUT: Final = 90.0  # seconds for a mirror to catch up (polls every 2 s; retries a
# home that was down after up to 60 s)


def mirrors(node: NodeProcess) -> list[dict[str, Any]]:
    result = pyrgos("node", "mirror", "list", "--json", "--home", node.home, env=base_env())
    assert result.code == 0, str(result)
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def synced_after(node: NodeProcess, moment: int) -> bool:
    """The mirror ended a round caught up well after `moment` (rounds run every 2 s)."""
    rows = mirrors(node)
    return len(rows) == 1 and rows[0]["state"] == "ok" and rows[0]["synced"] >= moment + 2


def test_a_node_mirrors_a_user(cluster: Cluster, tmp_path: Path) -> None:
    node1, node2, node3 = cluster.nodes
    alice = cluster.device(node2, "alice-on-2")
    cluster.ok(alice, "signup", "alice")
    data = os.urandom(6 * MiB)
    (tmp_path / "big.bin").write_bytes(data)
    cluster.ok(alice, "put", tmp_path / "big.bin", "big.bin")

    token = cluster.ok(alice, "mirror", "token").out.strip()
    assert token.startswith("pyrgos-mirror-1:")
    admin = ["--home", str(node3.home)]
    wrong = alice.fails("node", "mirror", "add", "bob", "--token", token, *admin, code=2)
    assert "not bob's" in wrong
    bad = alice.fails("node", "mirror", "add", "alice", "--token", token[:-4], *admin)
    assert "mirror token" in bad
    cluster.ok(alice, "node", "mirror", "add", "alice", "--token", token, *admin)

    def caught_up(size: int) -> bool:
        rows = mirrors(node3)
        return len(rows) == 1 and rows[0]["state"] == "ok" and rows[0]["bytes"] >= size

    wait_until(lambda: caught_up(len(data)), MIRROR_TIMEOUT, lambda: str(mirrors(node3)))
    first = mirrors(node3)[0]
    assert first["username"] == "alice"
    assert first["error"] is None

    # alice writes more: the mirror keeps up
    more = os.urandom(2 * MiB)
    (tmp_path / "more.bin").write_bytes(more)
    cluster.ok(alice, "put", tmp_path / "more.bin", "more.bin")
    wait_until(
        lambda: caught_up(len(data) + len(more)), MIRROR_TIMEOUT, lambda: str(mirrors(node3))
    )
    assert node_info(node3)["stats"]["mirror_bytes"] >= len(data) + len(more)

    # the claim lists the mirror
    node3_id = node_info(node3)["node_id"]
    cluster.ok(alice, "mirror", "publish", node3_id)
    claim = cluster.ask(node2, "pki", "lookup", "alice")
    assert claim["mirrors"] == [node3_id]

    # the mirror restarts: its state is kept, and it keeps up
    node3.stop_cleanly()
    node3.start()
    assert mirrors(node3)[0]["username"] == "alice"
    assert mirrors(node3)[0]["blocks"] > 0
    cluster.ok(alice, "rm", "more.bin")
    wait_until(
        lambda: (
            (row := mirrors(node3)[0])["state"] == "ok" and row["bytes"] < len(data) + len(more)
        ),
        MIRROR_TIMEOUT,
        lambda: str(mirrors(node3)),
    )

    # bob (homed on node 1) is given big.bin; the mirror has everything alice wrote
    bob = cluster.device(node1, "bob-on-1")
    cluster.ok(bob, "signup", "bob")
    cluster.ok(bob, "follow", "alice")
    cluster.ok(alice, "requests")
    cluster.ok(alice, "accept", "bob")
    cluster.ok(bob, "requests")
    cluster.ok(alice, "share", "big.bin", "bob")
    alice3 = cluster.device(node3, "alice-on-3")
    cluster.ok(alice3, "login", "alice")
    bob3 = cluster.device(node3, "bob-on-3")
    cluster.ok(bob3, "login", "bob")
    wrote = int(time.time())
    wait_until(lambda: synced_after(node3, wrote), MIRROR_TIMEOUT, lambda: str(mirrors(node3)))

    # alice's home dies: bob reads through his home (relayed to the mirror) and through the
    # mirror itself; alice's writes fail cleanly, through any node
    node2.process.kill()  # type: ignore[union-attr]
    node2.process.wait(timeout=10)  # type: ignore[union-attr]
    node2.process = None
    node2.api_file.unlink()
    for reader, name in ((bob, "from-1"), (bob3, "from-3")):
        cluster.ok(reader, "get", "/alice/big.bin", tmp_path / name)
        assert (tmp_path / name).read_bytes() == data
    assert node_info(node1)["stats"]["failover_reads"] > 0
    assert node_info(node3)["stats"]["failover_local"] > 0
    (tmp_path / "new.txt").write_bytes(b"written while the home is away")
    refused = alice3.fails("put", tmp_path / "new.txt", "new.txt", code=7)
    assert "unavailable" in refused or "reach" in refused, refused

    # the home is back: alice writes again, the mirror catches up
    node2.start()
    cluster.ok(alice3, "put", tmp_path / "new.txt", "new.txt")
    wrote = int(time.time())
    wait_until(lambda: synced_after(node3, wrote), MIRROR_TIMEOUT, lambda: str(mirrors(node3)))

    # `migrate` moves alice to node 3 and every client keeps working; node 2 mirrors her
    nobody = cluster.device(node1, "nobody-on-1")
    assert "log" in nobody.fails("migrate", "--to", node3_id)  # not logged in: nothing moves
    node2_id = node_info(node2)["node_id"]
    alice2 = cluster.device(node2, "alice-on-2-again")  # node 2 listens on a new port
    cluster.ok(alice2, "login", "alice")
    moved = cluster.ok(alice2, "migrate", "--to", node3_id).out
    assert node3_id in moved
    claim = cluster.ask(node1, "pki", "lookup", "alice")
    assert (claim["home"], claim["mirrors"]) == (node3_id, [node2_id])
    (tmp_path / "after.txt").write_bytes(b"written after the move")
    cluster.ok(alice2, "put", tmp_path / "after.txt", "after.txt")  # through the old home
    alice1 = cluster.device(node1, "alice-on-1")
    cluster.ok(alice1, "login", "alice")
    for device, name in ((alice1, "after-1"), (alice3, "after-3")):
        cluster.ok(device, "get", "after.txt", tmp_path / name)
        assert (tmp_path / name).read_bytes() == b"written after the move"
    cluster.ok(bob, "get", "/alice/big.bin", tmp_path / "after-move")
    assert (tmp_path / "after-move").read_bytes() == data
    assert [row["username"] for row in mirrors(node2)] == ["alice"]
    assert mirrors(node3) == []

    # removed at the old home, the copy is freed by its next collection
    old = ["--home", str(node2.home)]
    cluster.ok(alice, "node", "mirror", "remove", "alice", *old)
    freed = cluster.ok(alice, "node", "gc", *old).out
    assert int(freed.split()[4]) >= len(data), freed
