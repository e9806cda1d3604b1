"""The local test swarm through the real CLI: `pyrgos swarm up|status|env|down` and
`pyrgos node init --join`, with real node processes on 127.0.0.1.

Users on different nodes follow, share and read with nothing but `eval "$(pyrgos swarm env
USER)"`; `swarm down` and an interrupted `swarm up` leave no process and no listening port.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Final

import pytest

from node import swarm
from tests.e2e.conftest import (
    PYRGOS,
    STOP_TIMEOUT,
    Cli,
    NodeProcess,
    base_env,
    node_info,
    wait_until,
)

pytestmark = pytest.mark.e2e

UP_TIMEOUT: Final = 90.0  # seconds for `swarm up` of three nodes and four users


def node_processes(directory: Path) -> list[int]:
    return [pid for pid, _ in swarm.processes_under(directory)]


def listening(url_or_addr: str) -> bool:
    """Whether something accepts TCP connections at an http://127.0.0.1:PORT URL or a
    /ip4/127.0.0.1/tcp/PORT/… multiaddr."""
    if url_or_addr.startswith("http://"):
        port = int(url_or_addr.rsplit(":", 1)[1])
    else:
        port = int(url_or_addr.split("/tcp/")[1].split("/")[0])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def as_user(cli: Cli, directory: Path, user: str) -> Cli:
    """The client that `eval "$(pyrgos swarm env USER)"` makes of this shell."""
    exports = cli.ok("swarm", "env", user, "--dir", directory).lines
    changes: dict[str, str | None] = {"PYRGOS_PASSWORD": None, "PYRGOS_HOME": None}
    for line in exports:
        assert line.startswith("export "), exports
        key, _, value = line.removeprefix("export ").partition("=")
        changes[key] = shlex.split(value)[0]
    return cli.with_env(**changes)


@pytest.fixture
def shell(tmp_path: Path) -> Cli:
    """A user's shell: no PYRGOS_* set, HOME sandboxed."""
    (tmp_path / "user-home").mkdir()
    return Cli(base_env(HOME=str(tmp_path / "user-home")), tmp_path)


def test_swarm_up_share_across_nodes_join_and_down(shell: Cli, tmp_path: Path) -> None:
    directory = tmp_path / "swarm"
    started = subprocess.run(
        [str(PYRGOS), "swarm", "up", "--nodes", "3", "--users", "4", "--dir", str(directory)],
        env=shell.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=UP_TIMEOUT,
        check=False,
    )
    out, err = started.stdout.decode(), started.stderr.decode()
    try:
        assert started.returncode == 0, f"{out}\n{err}"
        swarm: dict[str, Any] = json.loads((directory / "swarm.json").read_text())
        assert (swarm["version"], swarm["state"]) == (1, "up"), swarm
        nodes = {node["name"]: node for node in swarm["nodes"]}
        assert list(nodes) == ["n1", "n2", "n3"]
        assert [n["pki_role"] for n in nodes.values()] == ["root", "mirror", "mirror"]
        homes = {user["name"]: user["node"] for user in swarm["users"]}
        assert homes == {"user1": "n1", "user2": "n2", "user3": "n3", "user4": "n1"}
        for name, node in nodes.items():  # the table: name, peer id, API URL, users
            row = next(line.split() for line in out.splitlines() if line.startswith(name + " "))
            users = sorted(user for user, home in homes.items() if home == name)
            assert row == [name, node["peer_id"], node["api"], *users], out
        passwords = directory / "passwords.json"
        assert passwords.stat().st_mode & 0o777 == 0o600
        secrets = json.loads(passwords.read_text())["passwords"]
        assert sorted(secrets) == sorted(homes)
        for secret in secrets.values():
            assert secret not in out + err

        # up twice: refused, and the running swarm is untouched
        line = shell.fails("swarm", "up", "--nodes", "2", "--dir", directory, code=5)
        assert "already up" in line, line
        assert len(node_processes(directory)) == 3

        # user2 (on n2) and user3 (on n3), neither on the PKI node: follow, share, read
        user2, user3 = as_user(shell, directory, "user2"), as_user(shell, directory, "user3")
        assert user3.env["PYRGOS_NODE"] == nodes["n3"]["api"]
        assert user3.ok("whoami").out == f"user3 at {nodes['n3']['api']}\n"
        user3.ok("follow", "user2")
        assert "user3" in user2.ok("requests").out
        user2.ok("accept", "user3")
        (tmp_path / "note.txt").write_bytes(b"from n2 to n3\n")
        user2.ok("put", tmp_path / "note.txt", "note.txt")
        user2.ok("share", "note.txt", "user3")
        assert "user2 accepted" in user3.ok("requests").out
        assert user3.ok("cat", "/user2/note.txt").stdout == b"from n2 to n3\n"

        # a fourth node joins the running swarm and serves its users' names
        joined = NodeProcess(tmp_path / "joined", tmp_path / "joined.log")
        shell.ok("node", "init", "--join", directory / "swarm.json", "--home", joined.home)
        joined.start()
        try:
            assert joined.process is not None
            ready = json.loads((joined.home / "ready").read_text())
            assert ready["pid"] == joined.process.pid, ready
            assert ready["api"] == joined.url, ready
            info = node_info(joined)
            assert ready["node_id"] == info["node_id"], ready
            assert (info["pki_role"], info["test_mode"]) == ("mirror", True), info
            assert info["pki"] == nodes["n1"]["p2p"], info
            lookup = shell.with_env(PYRGOS_NODE=joined.url).ok("pki", "lookup", "user3", "--json")
            assert json.loads(lookup.stdout)["home"] == nodes["n3"]["peer_id"]
        finally:
            joined.stop_cleanly()
        assert not (joined.home / "ready").exists()

        status = json.loads(shell.ok("swarm", "status", "--dir", directory, "--json").stdout)
        assert status["state"] == "up"
        assert [(n["name"], n["state"]) for n in status["nodes"]] == [
            ("n1", "up"), ("n2", "up"), ("n3", "up")
        ]  # fmt: skip
        assert all(isinstance(n["pki_head"], int) for n in status["nodes"]), status
        assert [n["users"] for n in status["nodes"]] == [["user1", "user4"], ["user2"], ["user3"]]
        shown = shell.ok("swarm", "status", "--dir", directory).out
        assert nodes["n1"]["p2p"] in shown
        assert "swarm env USER" in shown
    finally:
        down = shell.run("swarm", "down", "--dir", directory)
    assert down.code == 0, str(down)
    assert down.out == "stopped 3 nodes\n", str(down)
    assert node_processes(directory) == []
    for node in nodes.values():
        assert not listening(node["api"]), node
        assert not listening(node["p2p"]), node
        assert not (Path(node["home"]) / "ready").exists()
    assert json.loads((directory / "swarm.json").read_text())["state"] == "down"
    status = json.loads(shell.ok("swarm", "status", "--dir", directory, "--json").stdout)
    assert [n["state"] for n in status["nodes"]] == ["down"] * 3
    assert shell.ok("swarm", "down", "--dir", directory).out.startswith("no node")


def interrupt_up(shell: Cli, directory: Path, signum: signal.Signals) -> tuple[int, str]:
    """Start `swarm up --nodes 3`; once the PKI node is ready (the others are starting), send
    `signum`; return the exit status and standard error."""
    process = subprocess.Popen(
        [str(PYRGOS), "swarm", "up", "--nodes", "3", "--dir", str(directory)],
        env=shell.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As from a terminal: a suite started in the background (`make test &`) ignores
        # SIGINT, and a child would inherit that and never see the Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        ready = directory / "nodes" / "n1" / "ready"
        wait_until(ready.exists, UP_TIMEOUT, lambda: "the first node never became ready")
        process.send_signal(signum)
        _, err = process.communicate(timeout=UP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
    return process.returncode, err.decode()


def wait_gone(directory: Path) -> None:
    """Until no node process of `directory` is left (their exits are reaped by whoever
    inherited them), bounded."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while node_processes(directory) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node_processes(directory) == []


def test_an_interrupted_up_leaves_no_process(shell: Cli, tmp_path: Path) -> None:
    directory = tmp_path / "swarm"
    code, err = interrupt_up(shell, directory, signal.SIGINT)
    assert (code, err) == (130, "pyrgos: error: interrupted\n")
    wait_gone(directory)
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "logs"]
    # what is left is no swarm: status says so
    assert "no swarm file" in shell.fails("swarm", "status", "--dir", directory, code=4)

    # an `up` killed outright cannot stop its nodes: the next `up` names them, and starts
    # once they are gone
    code, _ = interrupt_up(shell, directory, signal.SIGKILL)
    assert code == -signal.SIGKILL
    orphans = node_processes(directory)
    assert orphans
    line = shell.fails("swarm", "up", "--nodes", "1", "--dir", directory, code=5)
    assert "did not finish still run" in line, line
    for pid in orphans:
        assert str(pid) in line, line
        os.kill(pid, signal.SIGTERM)
    wait_gone(directory)
    shell.ok("swarm", "up", "--nodes", "1", "--dir", directory)
    assert shell.ok("swarm", "down", "--dir", directory).out == "stopped 1 node\n"
    wait_gone(directory)


def test_bad_input_gets_one_line(shell: Cli, tmp_path: Path) -> None:
    directory = tmp_path / "swarm"
    for nodes in ("0", "65", "-1", "x", "1.5"):
        line = shell.fails("swarm", "up", "--nodes", nodes, "--dir", directory, code=2)
        assert "number of nodes from 1 to 64" in line, line
    line = shell.fails("swarm", "up", "--nodes", "2", "--users", "1001", "--dir", directory)
    assert "number of users from 0 to 1000" in line, line
    assert not directory.exists()  # refused before anything was made
    assert "no swarm file" in shell.fails("swarm", "status", "--dir", directory, code=4)
    assert "no swarm file" in shell.fails("swarm", "down", "--dir", directory, code=4)
    missing = tmp_path / "missing.json"
    line = shell.fails("node", "init", "--join", missing, "--home", tmp_path / "n", code=4)
    assert str(missing) in line, line
    assert not (tmp_path / "n").exists()

    # a swarm file that is damaged: every command says so, and `up` removes nothing
    directory.mkdir()
    good = {
        "version": 1, "state": "up", "users": [],
        "nodes": [{
            "name": "n1", "pki_role": "root", "pid": 2**30, "home": str(directory / "nodes/n1"),
            "peer_id": "12D3KooWAVKp1ssRdZgiShwoH1oqw9qvxv41gzGYvToQxRUaAxFL",
            "api": "http://127.0.0.1:9", "log": str(directory / "logs/n1.log"),
            "p2p": "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWAVKp1ssRdZgiShwoH1oqw9qvxv41gzGYvToQxRUaAxFL",
        }],
    }  # fmt: skip
    swarm_file = directory / "swarm.json"
    swarm_file.write_text(json.dumps(good))
    assert "n1" in shell.ok("swarm", "status", "--dir", directory).out  # the pid is not a node
    node = good["nodes"][0]  # type: ignore[index]
    damaged = [
        "{not json",
        json.dumps({**good, "version": 2}),
        json.dumps({**good, "nodes": [{**node, "pid": "1"}]}),
        json.dumps({**good, "nodes": [{**node, "api": "http://192.0.2.1:80"}]}),
        json.dumps({**good, "nodes": [{**node, "p2p": "/ip4/127.0.0.1/tcp/9"}]}),
        json.dumps({**good, "users": [{"name": "u", "node": "n9", "profile": "/p"}]}),
        json.dumps({**good, "extra": 1}),
    ]
    for number, text in enumerate(damaged):
        swarm_file.write_text(text)
        every = (("status",), ("down",), ("up", "--nodes", "1"), ("env", "user1"))
        for argv in every if number == 0 else every[:1]:  # tests/node: every kind of damage
            line = shell.fails("swarm", *argv, "--dir", directory, code=1)
            assert f"{swarm_file} is damaged" in line, (text, line)
        if number == 0:
            line = shell.fails("node", "init", "--join", swarm_file, "--home", tmp_path / "n")
            assert "is damaged" in line, line
        assert swarm_file.read_text() == text
    swarm_file.write_text(json.dumps({**good, "state": "down"}))
    line = shell.fails("node", "init", "--join", swarm_file, "--home", tmp_path / "n", code=7)
    assert "is down" in line, line
    assert "no user 'nobody'" in shell.fails("swarm", "env", "nobody", "--dir", directory, code=4)
