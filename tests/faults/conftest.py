"""Real node processes under faults: killed with SIGKILL, starved of disk, fed garbage.

Each test runs twice: against a lone node (its own PKI root) and against a mirror (a node that
follows another's PKI) with its user homed there. The helpers of tests/e2e start the nodes and
drive the real CLI; every wait is bounded.
"""

from __future__ import annotations

import random
import resource
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from tests.e2e.conftest import (
    STOP_TIMEOUT,
    Cli,
    NodeProcess,
    client,
    init_node,
    p2p_address,
)

KiB: Final = 1024
MiB: Final = 1024 * KiB
SEED: Final = 7  # every size and every byte a test writes follows from it


def kill(node: NodeProcess) -> None:
    """SIGKILL: no shutdown code runs, as in a power cut of the process (not of the disk)."""
    process, node.process = node.process, None
    assert process is not None, "not running"
    assert process.poll() is None, f"the node had already exited:\n{node._log_tail()}"
    process.kill()
    process.wait(timeout=STOP_TIMEOUT)


def limit_file_size(node: NodeProcess, limit: int) -> None:
    """Let the running node write no file past `limit` bytes (RLIMIT_FSIZE; Python ignores
    SIGXFSZ, so writes fail with EFBIG as on a full disk); resource.RLIM_INFINITY lifts it."""
    assert node.process is not None
    _, hard = resource.prlimit(node.process.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(node.process.pid, resource.RLIMIT_FSIZE, (limit, hard))


@dataclass
class Target:
    """The node under fault, the nodes it needs, one user homed on it, and what that user
    has been told is stored (remote name -> bytes)."""

    kind: str
    node: NodeProcess
    cli: Cli
    root: Path
    nodes: list[NodeProcess]
    user: str
    acked: dict[str, bytes] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    downloads: int = 0

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.home.name} log tail ---\n{n._log_tail()[-3000:]}" for n in self.nodes
        )

    def file(self, name: str, size: int) -> Path:
        path = self.root / "local" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(self.rng.randbytes(size))
        return path

    def put(self, name: str, size: int) -> None:
        """Upload a new file; it must succeed."""
        path = self.file(name, size)
        result = self.cli.run("put", path, name)
        assert result.code == 0, f"{result}\n{self.logs()}"
        self.acked[name] = path.read_bytes()

    def download(self) -> dict[str, bytes]:
        """Every file of the user's home, fetched in one `get`: name -> bytes."""
        self.downloads += 1
        local = self.root / f"download-{self.downloads}"
        result = self.cli.run("get", f"/{self.user}", local)
        assert result.code == 0, f"{result}\n{self.logs()}"
        return {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}

    def check_acked(self) -> dict[str, bytes]:
        """Every file the user saw stored reads back byte for byte; returns all files."""
        files = self.download()
        for name, data in self.acked.items():
            assert name in files, f"{name} is lost\n{self.logs()}"
            assert files[name] == data, f"{name} came back different\n{self.logs()}"
        return files

    def check_no_tracebacks(self) -> None:
        for node in self.nodes:
            text = node.log.read_text(errors="replace")
            assert "Traceback" not in text, f"{node.home.name}:\n{text[-6000:]}"


@dataclass
class Nodes:
    """A lone node, or a PKI node and a mirror (the node under fault is the last)."""

    kind: str
    nodes: list[NodeProcess]
    root: Path
    users: int = 0


@pytest.fixture(scope="package", params=["node", "mirror"])
def nodes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nodes]:
    """The nodes, shared by the tests of this package (each test has its own user)."""
    root = tmp_path_factory.mktemp(request.param)
    with ExitStack() as running:
        started: list[NodeProcess] = []
        for name in ["pki", "mirror"] if request.param == "mirror" else ["node"]:
            node = NodeProcess(root / name, root / f"{name}.log")
            options = ("--pki", p2p_address(started[0])) if started else ()
            init_node(node.home, *options)
            node.start()
            running.callback(_stop, node)
            started.append(node)
        yield Nodes(request.param, started, root)


@pytest.fixture
def target(nodes: Nodes, tmp_path: Path) -> Iterator[Target]:
    """The node under fault, running, with a new user signed up on it."""
    for node in nodes.nodes:
        if node.process is None:  # a test that failed after a kill left it down
            node.start()
    nodes.users += 1
    user = f"user{nodes.users}"
    cli = client(nodes.nodes[-1], tmp_path, "profile")
    done = cli.run("signup", user)
    assert done.code == 0, str(done)
    yield Target(nodes.kind, nodes.nodes[-1], cli, tmp_path, nodes.nodes, user)
    for node in nodes.nodes:
        if node.process is not None:
            limit_file_size(node, resource.RLIM_INFINITY)


def _stop(node: NodeProcess) -> None:
    if node.process is not None:  # a test that killed it last left nothing to stop
        node.stop_cleanly()
