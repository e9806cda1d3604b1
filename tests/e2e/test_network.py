"""End to end across nodes: three real node processes on 127.0.0.1, one PKI root, two mirrors.

Node 1 orders the PKI log; nodes 2 and 3 mirror it (`--pki` is node 1's full multiaddr). Users
are homed where they sign up; a client talks to any node (PYRGOS_NODE), which tunnels the
home's calls and fetches the home's blocks over libp2p. Every command and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Final

import pytest

from tests.e2e.conftest import (
    CALL_TIMEOUT,
    PYRGOS,
    STOP_TIMEOUT,
    Cli,
    Cluster,
    Result,
    node_info,
    p2p_address,
    stats,
)

pytestmark = pytest.mark.e2e

MiB: Final = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def race(clis: list[Cli], *argv: str) -> list[Result]:
    """Start `pyrgos ARGV` for every client at once, then wait for all (bounded)."""
    started = [
        subprocess.Popen(
            [str(PYRGOS), *argv],
            env=cli.env,
            cwd=cli.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for cli in clis
    ]
    results = []
    try:
        for process in started:
            out, err = process.communicate(timeout=CALL_TIMEOUT)
            results.append(Result(process.returncode, out, err.decode(errors="replace"), argv))
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
    return results


def test_three_nodes(cluster: Cluster, tmp_path: Path) -> None:
    """Signup anywhere, use from anywhere; one PKI everywhere; a home node that restarts."""
    node1, node2, node3 = cluster.nodes
    ids = [node_info(node)["node_id"] for node in cluster.nodes]
    assert len(set(ids)) == 3
    assert node_info(node1)["pki_role"] == "root"
    assert node_info(node2)["pki_role"] == node_info(node3)["pki_role"] == "mirror"

    # signups make the node the client talks to the user's home
    alice2 = cluster.device(node2, "alice-on-2")
    bob3 = cluster.device(node3, "bob-on-3")
    cluster.ok(alice2, "signup", "alice")
    cluster.ok(bob3, "signup", "bob")
    for user, home in (("alice", ids[1]), ("bob", ids[2])):
        answers = {cluster.lookup(node, user) for node in cluster.nodes}
        assert len(answers) == 1, answers
        assert answers.pop()[1] == home

    # alice on node 3: upload 12 MiB (tunneled to her home, node 2)
    data = os.urandom(12 * MiB)
    (tmp_path / "big.bin").write_bytes(data)
    alice3 = cluster.device(node3, "alice-on-3")
    cluster.ok(alice3, "login", "alice")
    cluster.ok(alice3, "put", tmp_path / "big.bin", "big.bin")
    blocks = len(data) // (5 * MiB) + 1  # at least one block per 5 MiB chunk
    assert stats(node3).get("forwarded", 0) > 0, stats(node3)
    assert stats(node3).get("blocks_stored", 0) == 0, stats(node3)
    assert stats(node2).get("blocks_stored", 0) >= blocks, stats(node2)

    # alice on node 1: download (blocks fetched from node 2), list
    alice1 = cluster.device(node1, "alice-on-1")
    cluster.ok(alice1, "login", "alice")
    cluster.ok(alice1, "get", "big.bin", tmp_path / "big.from1")
    assert sha256((tmp_path / "big.from1").read_bytes()) == sha256(data)
    assert stats(node1).get("blocks_relayed", 0) >= blocks, stats(node1)
    assert stats(node2).get("blocks_served", 0) >= blocks, stats(node2)
    listing = cluster.ok(alice1, "ls", "-l").lines
    assert [(line.split()[0], int(line.split()[1]), line.split()[-1]) for line in listing] == [
        ("-", len(data), "big.bin")
    ]

    # a username race through nodes 2 and 3: one winner, everywhere
    racers = [cluster.device(node, f"carol-on-{n}") for n, node in ((2, node2), (3, node3))]
    outcomes = race(racers, "signup", "carol")
    shown = "\n".join(map(str, outcomes))
    winners = [n for n, result in enumerate(outcomes) if result.code == 0]
    assert len(winners) == 1, f"{shown}\n{cluster.logs()}"
    lost = outcomes[1 - winners[0]]
    assert lost.code == 5, shown  # Conflict
    assert len(lost.stderr.splitlines()) == 1, shown
    assert lost.stderr.startswith("pyrgos: error: "), shown
    assert "carol" in lost.stderr, shown
    winner_home = ids[1 + winners[0]]

    seq = cluster.wait_synced()
    answers = {cluster.lookup(node, "carol") for node in cluster.nodes}
    assert len(answers) == 1, answers
    assert answers.pop()[1] == winner_home
    loser = racers[1 - winners[0]]
    cluster.ok(loser, "login", "carol")  # through the loser's node, to the winner's home
    assert cluster.ok(loser, "ls").lines == []
    for mirror in (node2, node3):
        status = cluster.status(mirror)
        assert status["role"] == "mirror", status
        assert status["pki_node"] == ids[0], status
        assert status["seq"] == seq, status
        assert status["refusals"] == [], status

    # node 2 restarts on new ports and republishes its node record; everything works again
    node2.stop_cleanly()
    node2.start()
    assert p2p_address(node2).endswith(f"/p2p/{ids[1]}")
    cluster.wait_synced(beyond=seq)
    for cli, name in ((alice3, "big.from3-again"), (alice1, "big.from1-again")):
        cluster.ok(cli, "get", "big.bin", tmp_path / name)
        assert sha256((tmp_path / name).read_bytes()) == sha256(data)
    # node 3 had never read it: its blocks came from node 2 at its new address
    assert stats(node3).get("blocks_relayed", 0) >= blocks, stats(node3)
    assert stats(node2).get("blocks_served", 0) >= blocks, stats(node2)
    (tmp_path / "second.txt").write_bytes(b"written through node 1 after the restart\n")
    cluster.ok(alice1, "put", tmp_path / "second.txt", "second.txt")
    assert cluster.ok(alice3, "cat", "second.txt").stdout == (tmp_path / "second.txt").read_bytes()
    assert cluster.ok(alice1, "ls").lines == ["big.bin", "second.txt"]
