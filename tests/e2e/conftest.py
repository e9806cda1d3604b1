"""Real processes: the `pyrgos` console script next to this Python, and real nodes.

A node is `pyrgos node init` (API and libp2p on 127.0.0.1, port 0, test mode) then
`pyrgos node run` in its own process; clients find it through PYRGOS_HOME/api, as a user's
shell would. Every wait is bounded: a node that does not come up, a command that hangs or a node
that ignores SIGTERM fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

PYRGOS: Final = Path(sys.executable).with_name("pyrgos")
PASSWORD: Final = "correct horse battery"
START_TIMEOUT: Final = 20.0  # seconds for a node to write its api file
STOP_TIMEOUT: Final = 10.0  # seconds for a node to exit after SIGTERM
CALL_TIMEOUT: Final = 60.0  # seconds for any one CLI command


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without any PYRGOS_* a developer may have set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRGOS_")}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Result:
    code: int
    stdout: bytes
    stderr: str
    argv: tuple[str, ...]

    @property
    def out(self) -> str:
        return self.stdout.decode()

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def __str__(self) -> str:
        return (
            f"$ pyrgos {' '.join(self.argv)}\nexit status {self.code}\n"
            f"stdout: {self.stdout[:2000]!r}\nstderr: {self.stderr[:4000]}"
        )


def pyrgos(
    *argv: str | Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    stdin: bytes | None = None,
    timeout: float = CALL_TIMEOUT,
) -> Result:
    """Run the real CLI once; standard input is empty (not a terminal) unless given."""
    args = tuple(str(a) for a in argv)
    done = subprocess.run(
        [str(PYRGOS), *args],
        env=dict(env),
        cwd=cwd,
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr.decode(errors="replace"), args)


@dataclass
class Cli:
    """One client device: a profile, a password, and the node home to find the node through."""

    env: dict[str, str]
    cwd: Path

    def with_env(self, **changes: str | None) -> Cli:
        env = dict(self.env)
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return Cli(env, self.cwd)

    def run(self, *argv: str | Path, stdin: bytes | None = None) -> Result:
        return pyrgos(*argv, env=self.env, cwd=self.cwd, stdin=stdin)

    def ok(self, *argv: str | Path, stdin: bytes | None = None) -> Result:
        result = self.run(*argv, stdin=stdin)
        assert result.code == 0, str(result)
        assert "Traceback" not in result.stderr, str(result)
        return result

    def fails(self, *argv: str | Path, code: int | None = None, stdin: bytes | None = None) -> str:
        """Run a command that must fail: non-zero status, one line on stderr; return that line."""
        result = self.run(*argv, stdin=stdin)
        assert result.code != 0, str(result)
        if code is not None:
            assert result.code == code, str(result)
        assert "Traceback" not in result.stderr, str(result)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, str(result)
        assert lines[0].startswith("pyrgos: error: "), str(result)
        return lines[0]


class NodeProcess:
    """`pyrgos node run --home HOME` as a child process, its output in a log file."""

    def __init__(self, home: Path, log: Path) -> None:
        self.home = home
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def api_file(self) -> Path:
        return self.home / "api"

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def start(self, *options: str) -> str:
        """Run the node; return its URL once it has written its api file and said so."""
        assert self.process is None, "already running"
        with self.log.open("ab") as log:
            since = log.tell()  # a restart appends: only this run's lines count
            self.process = subprocess.Popen(
                [str(PYRGOS), "node", "run", "--home", str(self.home), *options],
                env=base_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = self.api_file.read_text() if self.api_file.exists() else ""
            if text.endswith("\n"):
                self.url = text.strip()
                said = self.log.read_bytes()[since:].decode(errors="replace")
                if f"API listening at {self.url}\n" in said:
                    return self.url
            if self.process.poll() is not None:
                self.process = None
                pytest.fail(f"the node exited before listening:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"the node did not listen within {START_TIMEOUT} s:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, wait (bounded), SIGKILL if it did not exit; return its exit status."""
        process, self.process = self.process, None
        assert process is not None, "not running"
        if process.poll() is not None:
            pytest.fail(
                f"the node had exited by itself (status {process.returncode}):\n{self._log_tail()}"
            )
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
            pytest.fail(f"the node ignored SIGTERM for {STOP_TIMEOUT} s:\n{self._log_tail()}")

    def stop_cleanly(self) -> None:
        code = self.stop()
        assert code == 0, f"the node exited with {code}:\n{self._log_tail()}"
        assert not self.api_file.exists(), "a stopped node left its api file behind"


def node_info(node: NodeProcess) -> dict[str, Any]:
    """`pyrgos node info --json` of a running node."""
    result = pyrgos("node", "info", "--json", "--home", node.home, env=base_env())
    assert result.code == 0, str(result)
    info = json.loads(result.stdout)
    assert isinstance(info, dict)
    assert info["running"] is True, info
    return info


def p2p_address(node: NodeProcess) -> str:
    """The node's full libp2p multiaddr on 127.0.0.1 (…/tcp/PORT/p2p/ID)."""
    info = node_info(node)
    full = [a for a in info["listen"] if a.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in a]
    assert full, info
    assert full[0].endswith(f"/p2p/{info['node_id']}"), info
    return str(full[0])


def init_node(home: Path, *options: str) -> None:
    """`pyrgos node init` for 127.0.0.1 port 0 in test mode; `options` add to it (`--pki`)."""
    result = pyrgos(
        "node",
        "init",
        "--home",
        home,
        "--api",
        "127.0.0.1:0",
        "--test-mode",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        *options,
        env=base_env(),
    )
    assert result.code == 0, str(result)


def running_node(root: Path) -> Iterator[NodeProcess]:
    """A node initialised in root/node and running until the generator is closed."""
    init_node(root / "node")
    running = NodeProcess(root / "node", root / "node.log")
    try:
        running.start()
        yield running
    finally:
        if running.process is not None:
            running.stop_cleanly()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A running node (initialised in tmp_path/node); its URL is `node.url`."""
    yield from running_node(tmp_path)


def client(node: NodeProcess, root: Path, profile: str) -> Cli:
    """A client device whose state lives in root/profile; HOME is sandboxed too."""
    (root / "user-home").mkdir(exist_ok=True)
    env = base_env(
        HOME=str(root / "user-home"),
        PYRGOS_HOME=str(node.home),
        PYRGOS_PROFILE=str(root / profile),
        PYRGOS_PASSWORD=PASSWORD,
        # The test nodes run in test mode; the client opts in to their small KDF profile.
        PYRGOS_INSECURE_TEST_KDF="1",
    )
    return Cli(env, root)


@pytest.fixture
def cli(node: NodeProcess, tmp_path: Path) -> Cli:
    return client(node, tmp_path, "profile-a")


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for many short tests that do not change it much (bad-input checks)."""
    yield from running_node(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="module")
def alice(shared_node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """alice, signed up on the shared node, with a small file `note.txt`."""
    root = tmp_path_factory.mktemp("alice")
    cli = client(shared_node, root, "profile")
    cli.ok("signup", "alice")
    (root / "note.txt").write_bytes(b"hello\n")
    cli.ok("put", root / "note.txt", "note.txt")
    return cli


# -- a cluster of three nodes: node 1 orders the PKI, nodes 2 and 3 mirror it ---------------

SYNC_TIMEOUT: Final = 20.0  # seconds for mirrors to catch up with the PKI root
POLL: Final = 0.2


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
