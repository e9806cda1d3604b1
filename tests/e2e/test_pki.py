"""The PKI with real processes on 127.0.0.1: a PKI node that dies and comes back under two
mirrors, and a node whose signup needs a token and is limited per address.

The mirrors keep serving their users while the PKI node is away and say so in `pki status`;
once it is back (on the same address, as a restarted node would be), what it appended reaches
them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    STOP_TIMEOUT,
    Cluster,
    NodeProcess,
    base_env,
    client,
    init_node,
    node_info,
    pyrgos,
    wait_until,
)

pytestmark = pytest.mark.e2e

DOWN_TIMEOUT = 20.0  # seconds for a mirror to notice that its PKI node is gone
BACK_TIMEOUT = 30.0  # seconds for a mirror to learn of a user signed up after the return


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, so that the PKI node can come back on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def kill(node: NodeProcess) -> None:
    """SIGKILL: no goodbye to the mirrors, as when the machine fails."""
    process, node.process = node.process, None
    assert process is not None
    process.kill()
    process.wait(timeout=STOP_TIMEOUT)
    node.api_file.unlink(missing_ok=True)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    homes = [tmp_path / f"node{n}" for n in (1, 2, 3)]
    nodes = (
        NodeProcess(homes[0], tmp_path / "node1.log"),
        NodeProcess(homes[1], tmp_path / "node2.log"),
        NodeProcess(homes[2], tmp_path / "node3.log"),
    )
    with ExitStack() as running:
        init_node(homes[0], "--listen", f"/ip4/127.0.0.1/tcp/{free_port()}")
        nodes[0].start()
        running.callback(_stop, nodes[0])
        listen = [a for a in node_info(nodes[0])["listen"] if "/p2p/" in a]
        for node in nodes[1:]:
            init_node(node.home, "--pki", listen[0])
            node.start()
            running.callback(_stop, node)
        (tmp_path / "clients").mkdir()
        yield Cluster(nodes, tmp_path / "clients")


def _stop(node: NodeProcess) -> None:
    if node.process is not None:
        node.stop_cleanly()


def knows(node: NodeProcess, user: str) -> bool:
    found = pyrgos("pki", "lookup", user, env=base_env(PYRGOS_NODE=node.url))
    return found.code == 0


def health(cluster: Cluster, node: NodeProcess) -> dict[str, Any]:
    value: dict[str, Any] = cluster.status(node)["pki_node_health"]
    return value


def test_mirrors_outlive_their_pki_node_and_catch_up(cluster: Cluster, tmp_path: Path) -> None:
    root, node2, node3 = cluster.nodes
    alice = cluster.device(node2, "alice-on-2")
    bob = cluster.device(node3, "bob-on-3")
    cluster.ok(alice, "signup", "alice")
    cluster.ok(bob, "signup", "bob")
    (tmp_path / "note.txt").write_bytes(b"kept while the PKI node is away\n")
    cluster.ok(alice, "put", tmp_path / "note.txt", "note.txt")
    cluster.ok(bob, "put", tmp_path / "note.txt", "note.txt")
    for mirror in (node2, node3):
        wait_until(
            lambda m=mirror: health(cluster, m)["reachable"] is True,  # type: ignore[misc]
            DOWN_TIMEOUT,
            lambda: cluster.logs(),
        )

    kill(root)
    for mirror in (node2, node3):
        wait_until(
            lambda m=mirror: health(cluster, m)["reachable"] is False,  # type: ignore[misc]
            DOWN_TIMEOUT,
            lambda: cluster.logs(),
        )
    # Both mirrors still serve their users (and each other's), and say where they stand.
    alice_on_3 = cluster.device(node3, "alice-on-3")
    cluster.ok(alice_on_3, "login", "alice")
    for cli in (alice, bob, alice_on_3):
        assert cluster.ok(cli, "cat", "note.txt").stdout == (tmp_path / "note.txt").read_bytes()
    for mirror in (node2, node3):
        assert mirror.process is not None
        assert mirror.process.poll() is None, cluster.logs()
        shown = health(cluster, mirror)
        assert shown["failures"] >= 1, shown
        assert shown["last_error"], shown
        assert shown["next_retry"] is not None, shown
    status_text = cluster.ok(cluster.device(node2, "status"), "pki", "status").out
    assert "reachable       NO" in status_text, status_text

    # The PKI node comes back on its address; a user signed up there meanwhile reaches both
    # mirrors, and they report it reachable again.
    root.start()
    dave = cluster.device(root, "dave-on-1")
    cluster.ok(dave, "signup", "dave")
    root_id = node_info(root)["node_id"]
    for mirror in (node2, node3):
        # A lookup that misses pulls at once (at most every 2 s while the PKI node was away).
        wait_until(
            lambda m=mirror: knows(m, "dave"),  # type: ignore[misc]
            BACK_TIMEOUT,
            lambda: cluster.logs(),
        )
        assert cluster.lookup(mirror, "dave")[1] == root_id
        assert health(cluster, mirror)["reachable"] is True
    cluster.wait_synced()
    for mirror in (node2, node3):
        assert health(cluster, mirror)["failures"] == 0
    assert cluster.ok(alice, "cat", "note.txt").stdout == (tmp_path / "note.txt").read_bytes()


def test_signup_token_and_limits_from_the_cli(tmp_path: Path) -> None:
    bad = pyrgos(
        "node", "init", "--home", tmp_path / "bad", "--max-daily-signups", "-1", env=base_env()
    )
    assert bad.code == 2, str(bad)
    assert bad.stderr.startswith("pyrgos: error: "), str(bad)
    assert len(bad.stderr.splitlines()) == 1, str(bad)
    home = tmp_path / "node"
    init_node(home, "--signup-token", "let-me-in", "--max-daily-signups", "2")
    assert (home / "signup-token").stat().st_mode & 0o777 == 0o600
    node = NodeProcess(home, tmp_path / "node.log")
    node.start()
    try:
        cli = client(node, tmp_path, "profile")
        assert "signup token" in cli.fails("signup", "ann")
        assert "signup token" in cli.fails("signup", "ann", "--signup-token", "wrong")
        cli.ok("signup", "ann", "--signup-token", "let-me-in")
        cli.with_env(PYRGOS_SIGNUP_TOKEN="let-me-in").ok("signup", "ben")
        limited = cli.fails("signup", "cat", "--signup-token", "let-me-in")
        assert "at most 2 a day" in limited, limited
    finally:
        node.stop_cleanly()
