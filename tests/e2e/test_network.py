"""End to end across nodes: three real node processes on 127.0.0.1, one PKI root, two mirrors.

Node 1 orders the PKI log; nodes 2 and 3 mirror it (`--pki` is node 1's full multiaddr). Users
are homed where they sign up; a client talks to any node (PYRGOS_NODE), which tunnels the
home's calls and fetches the home's blocks over libp2p. Every command and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.e2e.conftest import (
    CALL_TIMEOUT,
    PYRGOS,
    STOP_TIMEOUT,
    Cli,
    NodeProcess,
    Result,
    base_env,
    client,
    init_node,
    node_info,
    p2p_address,
    pyrgos,
)

pytestmark = pytest.mark.e2e

MiB: Final = 1024 * 1024
SYNC_TIMEOUT: Final = 20.0  # seconds for mirrors to catch up with the PKI root
POLL: Final = 0.2


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Poll `check` until it holds; fail with `what()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what()}")
        time.sleep(POLL)


@dataclass
class Cluster:
    """The three nodes (index 0 is node 1, the PKI root) and where client state lives."""

    nodes: tuple[NodeProcess, NodeProcess, NodeProcess]
    root: Path

    def logs(self) -> str:
        tails = []
        for number, node in enumerate(self.nodes, 1):
            text = node.log.read_text(errors="replace") if node.log.exists() else ""
            tails.append(f"--- node {number} log tail ---\n{text[-3000:]}")
        return "\n".join(tails)

    def device(self, node: NodeProcess, profile: str) -> Cli:
        """A client device (its own profile) talking to `node` at its current URL."""
        return client(node, self.root, profile).with_env(PYRGOS_NODE=node.url)

    def ok(self, cli: Cli, *argv: str | Path) -> Result:
        result = cli.run(*argv)
        assert result.code == 0, f"{result}\n{self.logs()}"
        assert "Traceback" not in result.stderr, f"{result}\n{self.logs()}"
        return result

    def ask(self, node: NodeProcess, *argv: str) -> dict[str, Any]:
        """A `--json` query of one node (pki lookup/status); its parsed answer."""
        result = pyrgos(*argv, "--json", env=base_env(PYRGOS_NODE=node.url))
        assert result.code == 0, f"{result}\n{self.logs()}"
        value = json.loads(result.stdout)
        assert isinstance(value, dict)
        return value

    def lookup(self, node: NodeProcess, user: str) -> tuple[str, str]:
        """(identity key hash, home node id) that `node` answers for `user`."""
        claim = self.ask(node, "pki", "lookup", user)
        assert claim["username"] == user
        return claim["identity"], claim["home"]

    def status(self, node: NodeProcess) -> dict[str, Any]:
        return self.ask(node, "pki", "status")

    def wait_synced(self, *, beyond: int = -1) -> int:
        """Wait until the root's head is past `beyond` and both mirrors are at it, with no
        refusals; return that head's seq."""
        root = self.nodes[0]
        seen: dict[str, Any] = {}

        def synced() -> bool:
            head = self.status(root)
            seen.update(root=head)
            if head["seq"] <= beyond:
                return False
            for number, mirror in enumerate(self.nodes[1:], 2):
                status = seen[f"node {number}"] = self.status(mirror)
                assert status["role"] == "mirror", status
                assert status["refusals"] == [], f"{status}\n{self.logs()}"
                if (status["seq"], status["hash"]) != (head["seq"], head["hash"]):
                    return False
            return True

        wait_until(synced, SYNC_TIMEOUT, lambda: f"PKI sync: {seen}\n{self.logs()}")
        seq: int = seen["root"]["seq"]
        return seq


def stats(node: NodeProcess) -> dict[str, int]:
    """The node's counters since it started (calls forwarded, blocks stored, relayed, …)."""
    counters: dict[str, int] = node_info(node)["stats"]
    return counters


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    homes = [tmp_path / f"node{n}" for n in (1, 2, 3)]
    nodes = (
        NodeProcess(homes[0], tmp_path / "node1.log"),
        NodeProcess(homes[1], tmp_path / "node2.log"),
        NodeProcess(homes[2], tmp_path / "node3.log"),
    )
    with ExitStack() as running:
        for node in nodes:  # node 1 is the PKI root; the mirrors follow its full multiaddr
            role = () if node is nodes[0] else ("--pki", p2p_address(nodes[0]))
            init_node(node.home, *role)
            node.start()
            running.callback(_stop, node)
        (tmp_path / "clients").mkdir()
        yield Cluster(nodes, tmp_path / "clients")


def _stop(node: NodeProcess) -> None:
    if node.process is not None:  # a failed restart has already stopped it
        node.stop_cleanly()


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
