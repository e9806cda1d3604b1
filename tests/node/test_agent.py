"""The command agent, live: commands through it behave as in their own process (output, exit
status, working directory, signals), and it survives hostile or broken requests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from node.cli import _agent
from node.cli import _main as cli_main
from node.cli._main import build_parser
from protocols import agent as wire
from tests.node.test_cli_imports import saved_session

PYRGOS: Final = Path(sys.executable).with_name("pyrgos")
WAIT: Final = 20.0  # seconds for any one step


class Agent:
    """An agent in its own run directory, and the environment commands reach it with."""

    def __init__(self, tmp_path: Path) -> None:
        run = tmp_path / "run"
        run.mkdir(mode=0o700)
        saved_session(tmp_path / "profile")
        self.run = run
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "XDG_RUNTIME_DIR": str(run),
            "PYRGOS_PROFILE": str(tmp_path / "profile"),
            "PYRGOS_NODE": "http://127.0.0.1:9",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "agent", "serve"], env=self.env
        )
        self.wait_for_socket()

    def wait_for_socket(self) -> Path:
        deadline = time.monotonic() + WAIT
        while not (sockets := list(self.run.glob("pyrgos-*/agent-*.sock"))):
            assert time.monotonic() < deadline, "the agent did not come up"
            time.sleep(0.02)
        return sockets[0]

    def pyrgos(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PYRGOS), *argv],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )

    def said(self, key: str) -> int:
        """A number the agent's status answer gives (a status request is served too)."""
        said = _agent.status(str(self.wait_for_socket()))
        assert said is not None
        return int(said[key])

    def served(self) -> int:
        """Requests served so far, this one not counted."""
        return self.said("served")

    def pid(self) -> int:
        return self.said("pid")

    def stop(self) -> None:
        sockets = list(self.run.glob("pyrgos-*/agent-*.sock"))
        for path in sockets:
            _agent.stop(str(path))
        if self.process is not None:
            self.process.wait(timeout=WAIT)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = Agent(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def test_a_command_through_the_agent_is_the_command_alone(agent: Agent, tmp_path: Path) -> None:
    agent.start()
    before = agent.served()
    through = agent.pyrgos("whoami")
    alone = agent.pyrgos("whoami", PYRGOS_AGENT="off")
    assert (through.returncode, through.stdout) == (0, "alice at http://127.0.0.1:9\n")
    assert (through.stdout, through.stderr) == (alone.stdout, alone.stderr)
    # A failure: the same one line on stderr, the same exit status.
    through, alone = agent.pyrgos("ls", "/alice"), agent.pyrgos("ls", "/alice", PYRGOS_AGENT="off")
    assert through.returncode == alone.returncode == 7
    assert through.stderr == alone.stderr
    assert through.stderr.startswith("pyrgos: error: cannot reach the node at")
    # It runs in the command's directory, with its environment: a relative profile works.
    relative = subprocess.run(
        [str(PYRGOS), "whoami"],
        env={**agent.env, "PYRGOS_PROFILE": "profile"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert relative.stdout == "alice at http://127.0.0.1:9\n"
    # Each run with the agent on was served by it (and so was the first status request).
    assert agent.served() == before + 1 + 3


def test_without_an_agent_the_command_runs_and_starts_one(agent: Agent) -> None:
    done = agent.pyrgos("whoami")
    assert done.stdout == "alice at http://127.0.0.1:9\n"
    assert agent.served() == 0  # the agent it started has served nothing yet
    assert agent.pyrgos("whoami").stdout == done.stdout
    assert agent.served() == 2  # the status request before, then the command


def test_off_means_no_agent(agent: Agent) -> None:
    assert agent.pyrgos("whoami", PYRGOS_AGENT="off").returncode == 0
    assert list(agent.run.iterdir()) == []  # not even its directory


def test_a_directory_others_may_enter_is_never_used(agent: Agent) -> None:
    shared = agent.run / f"pyrgos-{os.getuid()}"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert agent.pyrgos("whoami").stdout == "alice at http://127.0.0.1:9\n"
    assert list(shared.iterdir()) == []
    status = agent.pyrgos("agent", "status")
    assert status.returncode == 2
    assert "only you can enter" in status.stderr


def silent_node() -> socket.socket:
    """A port that takes connections and never answers: a command waits on it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    return listener


def waiting_command(
    agent: Agent, listener: socket.socket
) -> tuple[subprocess.Popen[str], socket.socket]:
    """`pyrgos ls` through the agent, once its process waits on `listener`'s port; and that
    process's connection."""
    port = listener.getsockname()[1]
    command = subprocess.Popen(
        [str(PYRGOS), "ls", "/alice"],
        env={**agent.env, "PYRGOS_NODE": f"http://127.0.0.1:{port}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    listener.settimeout(WAIT)
    conn, _ = listener.accept()
    conn.settimeout(WAIT)
    assert conn.recv(1 << 16).startswith(b"POST ")  # its first request: it waits for an answer
    return command, conn


def test_ctrl_c_interrupts_the_command(agent: Agent) -> None:
    agent.start()
    with silent_node() as listener:
        command, conn = waiting_command(agent, listener)
        with conn:
            command.send_signal(signal.SIGINT)
            _, err = command.communicate(timeout=WAIT)
    assert command.returncode == 130
    assert err == "pyrgos: error: interrupted\n"


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_for_state(pid: int, state: str) -> None:
    deadline = time.monotonic() + WAIT
    while process_state(pid) != state:
        assert time.monotonic() < deadline, f"{pid} never reached state {state}"
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states")
def test_ctrl_z_stops_the_command_and_fg_resumes_it(agent: Agent) -> None:
    agent.start()
    with silent_node() as listener:
        command, conn = waiting_command(agent, listener)
        with conn:
            assert agent.process is not None
            agent_pid = agent.process.pid
            children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split()
            (forked,) = map(int, children)
            command.send_signal(signal.SIGTSTP)
            wait_for_state(command.pid, "T")  # both stop, as a shell's job would
            wait_for_state(forked, "T")
            command.send_signal(signal.SIGCONT)
            wait_for_state(forked, "S")  # waiting on the node again
            command.send_signal(signal.SIGINT)
            _, err = command.communicate(timeout=WAIT)
    assert command.returncode == 130
    assert err == "pyrgos: error: interrupted\n"


def test_a_killed_command_ends_its_process(agent: Agent) -> None:
    agent.start()
    with silent_node() as listener:
        command, conn = waiting_command(agent, listener)
        with conn:
            command.kill()
            # The agent's process held the command's stdout and stderr and its connection to
            # the node: all close, as it ends.
            out, err = command.communicate(timeout=WAIT)
            assert (out, err) == ("", "")
            while conn.recv(1 << 16):  # the rest of its request, then the end
                pass


def raw(path: Path, data: bytes, fds: list[int] | None = None) -> bytes:
    """Send `data` as a client would, and return all the agent answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(WAIT)
        conn.connect(str(path))
        if fds:
            socket.send_fds(conn, [data], fds)
        elif data:
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while more := conn.recv(1 << 16):
            answer += more
        return answer


def test_hostile_requests_are_dropped_and_the_agent_serves_on(agent: Agent) -> None:
    agent.start()
    path = agent.wait_for_socket()
    pid = agent.pid()
    assert raw(path, b"") == b""  # nothing
    assert raw(path, b"\0\0") == b""  # half a header
    assert raw(path, (wire.MAX_REQUEST + 1).to_bytes(4, "big")) == b""  # a huge length
    assert raw(path, (100).to_bytes(4, "big") + b"run") == b""  # less than it says
    assert raw(path, wire.encode_request(wire.Request("run", b"x")) + b"more") == b""
    garbage = b"\xff" * 40
    assert raw(path, len(garbage).to_bytes(4, "big") + garbage) == b""
    # A run request without its three streams, or from another Python: refused.
    run = wire.Request("run", os.fsencode(sys.executable), b"/", 0o22, (b"whoami",))
    assert raw(path, wire.encode_request(run)) == wire.message(wire.REFUSED, 0)
    other = wire.Request("run", b"/other/python", b"/", 0o22, (b"whoami",))
    with open(os.devnull, "rb") as null:
        fds = [null.fileno()] * 3
        assert raw(path, wire.encode_request(other), fds) == wire.message(wire.REFUSED, 0)
        gone = wire.Request("run", os.fsencode(sys.executable), b"/no/such/dir", 0o22, (b"ls",))
        assert raw(path, wire.encode_request(gone), fds) == wire.message(wire.REFUSED, 0)
    assert agent.pid() == pid  # the same agent, still serving
    assert agent.pyrgos("whoami").stdout == "alice at http://127.0.0.1:9\n"


def test_stop_ends_the_agent_and_frees_its_socket(agent: Agent) -> None:
    agent.start()
    status = agent.pyrgos("agent", "status")
    assert status.returncode == 0
    assert f"agent {agent.pid()} at " in status.stdout
    stopped = agent.pyrgos("agent", "stop")
    assert stopped.stdout.startswith("stopped agent ")
    assert agent.process is not None
    assert agent.process.wait(timeout=WAIT) == 0
    assert list(agent.run.glob("pyrgos-*/agent-*.sock")) == []
    assert agent.pyrgos("agent", "status").stdout.startswith("no agent at ")


def test_an_agent_whose_code_changed_hands_over(agent: Agent, tmp_path: Path) -> None:
    """A module it loaded changed: it refuses, exits, and the command runs in its own process
    and starts a new agent."""
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "sitecustomize.py").write_text("")  # loaded by every interpreter of this env
    agent.env["PYTHONPATH"] = str(extra)
    agent.start()
    old = agent.pid()
    (extra / "sitecustomize.py").write_text("# changed\n")
    assert agent.pyrgos("whoami").stdout == "alice at http://127.0.0.1:9\n"
    assert agent.process is not None
    assert agent.process.wait(timeout=WAIT) == 0
    deadline = time.monotonic() + WAIT
    while (said := _agent.status(str(agent.wait_for_socket()))) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert int(said["pid"]) != old


def test_changed_code_is_noticed(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("A = 1\n")
    files = {str(module): (module.stat().st_mtime_ns, module.stat().st_size)}
    assert not _agent._changed(files)
    module.write_text("A = 22\n")
    assert _agent._changed(files)
    module.unlink()
    assert _agent._changed(files)


def test_served_commands_exist_and_never_ask_for_a_password() -> None:
    """A forked process has no terminal to ask on: nothing a served command calls in the CLI
    module may prompt (followed through every function of the module it names)."""
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(_agent.SERVED) <= set(commands)
    module = vars(cli_main)

    def reached(code: types.CodeType, seen: set[str]) -> set[str]:
        names = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                names |= reached(const, seen)
        for name in names - seen:
            seen.add(name)
            found = module.get(name)
            methods = vars(found).values() if isinstance(found, type) else [found]
            for function in methods:
                if isinstance(function, types.FunctionType):
                    names |= reached(function.__code__, seen)
        return names

    assert {"getpass", "Passwords"} <= reached(cli_main.cmd_login.__code__, set())  # it sees
    for name in _agent.SERVED:
        parser = commands[name]
        subs = [parser]
        if parser._subparsers is not None:
            subs = list(parser._subparsers._group_actions[0].choices.values())
        for sub in subs:
            run = sub.get_default("run")
            assert run is not None, name
            assert not reached(run.__code__, set()) & {"getpass", "Passwords"}, name


def test_command_names_skip_the_profile_option() -> None:
    assert _agent.command_name(["--profile", "p", "ls", "/a"]) == "ls"
    assert _agent.command_name(["--profile=p", "whoami"]) == "whoami"
    assert _agent.command_name(["--profile"]) is None
    assert _agent.command_name([]) is None


def test_each_forked_process_draws_its_own_randomness() -> None:
    """What the agent drew before a fork never repeats in its commands' processes: every
    secret comes from `crypto.random_bytes`, and libsodium reseeds in a new process."""
    from protocols import crypto

    drawn = {crypto.random_bytes(32)}
    for _ in range(3):
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os.write(writer, crypto.random_bytes(32))
            os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            drawn.add(pipe.read())
        os.waitpid(pid, 0)
    drawn.add(crypto.random_bytes(32))
    assert len(drawn) == 5
