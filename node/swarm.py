"""A local test swarm: a PKI node and nodes that follow it, as real processes on 127.0.0.1.

`up` starts them (test mode, loopback, ports the OS picks) and signs up test users; `status`
asks each node; `down` stops them, leaving no process behind. The swarm file
(`DIR/swarm.json`, docs/protocol.md §13) says what runs where; it is checked whenever read.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import trio

from node.home import NodeConfig, NodeHome, Ready
from protocols.errors import Conflict, MalformedInput, NotFound, PyrgosError, Unavailable
from protocols.names import check_username
from protocols.peerid import check_peer_id

SWARM_FILE: Final = "swarm.json"
SWARM_VERSION: Final = 1
PASSWORDS_FILE: Final = "passwords.json"  # mode 0600: the only place a user's password is kept
MAX_NODES: Final = 64  # each node is a process of about 100 MiB on one machine
# Users a swarm signs up; also each swarm node's signup limits (every signup comes from
# 127.0.0.1, and the PKI node takes at most that many new names a day from each home).
MAX_USERS: Final = 1000
MAX_SWARM_FILE: Final = 1024 * 1024  # 64 nodes and 1,000 users take about 250 KiB
LOOPBACK: Final = "127.0.0.1"
START_TIMEOUT: Final = 30.0  # seconds for the first node to be ready ...
START_PER_NODE: Final = 2.0  # ... and more for each node: they share the machine's cores
SIGNUP_TIMEOUT: Final = 60.0  # seconds for one user's signup
SIGNUPS_AT_ONCE: Final = 4
STOP_TIMEOUT: Final = 15.0  # seconds a node has to exit after SIGTERM, before SIGKILL
KILL_TIMEOUT: Final = 5.0  # seconds for the kernel to end a SIGKILLed node
INFO_TIMEOUT: Final = 5.0  # seconds `status` waits for a node's answer
POLL: Final = 0.05

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def default_dir() -> Path:
    """$PYRGOS_SWARM, else ~/.pyrgos-swarm: one place, whatever the current directory."""
    return Path(os.environ.get("PYRGOS_SWARM") or Path.home() / ".pyrgos-swarm")


def swarm_config(pki: str = "") -> NodeConfig:
    """The settings of every swarm node: test mode, loopback only, ports the OS picks."""
    return NodeConfig(
        api=f"{LOOPBACK}:0",
        test_mode=True,
        listen=f"/ip4/{LOOPBACK}/tcp/0",
        pki=pki,
        max_daily_signups=MAX_USERS,
        max_source_signups=MAX_USERS,
    )


# -- the swarm file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SwarmNode:
    name: str  # n1, n2, …; n1 is the PKI node
    peer_id: str
    api: str  # http://127.0.0.1:PORT
    p2p: str  # /ip4/127.0.0.1/tcp/PORT/p2p/PEER-ID
    pid: int
    home: Path
    log: Path


@dataclass(frozen=True)
class SwarmUser:
    name: str
    node: str  # the name of its home node
    profile: Path  # a client profile logged in as the user (PYRGOS_PROFILE)


@dataclass(frozen=True)
class Swarm:
    state: str  # "up" or "down"
    nodes: tuple[SwarmNode, ...]  # the first is the PKI node
    users: tuple[SwarmUser, ...]

    @property
    def pki(self) -> SwarmNode:
        return self.nodes[0]

    def node(self, name: str) -> SwarmNode:
        return next(node for node in self.nodes if node.name == name)

    def users_of(self, node: SwarmNode) -> list[str]:
        return [user.name for user in self.users if user.node == node.name]

    def to_json(self) -> str:
        value = {
            "version": SWARM_VERSION,
            "state": self.state,
            "nodes": [
                {
                    "name": node.name,
                    "pki_role": "root" if index == 0 else "mirror",
                    "peer_id": node.peer_id,
                    "api": node.api,
                    "p2p": node.p2p,
                    "pid": node.pid,
                    "home": str(node.home),
                    "log": str(node.log),
                }
                for index, node in enumerate(self.nodes)
            ],
            "users": [
                {"name": user.name, "node": user.node, "profile": str(user.profile)}
                for user in self.users
            ],
        }
        return json.dumps(value, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Swarm:
        """Every field checked; anything else (another version, a missing or unknown key, a
        wrong type, a URL or address off loopback) is MalformedInput naming what is wrong."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise MalformedInput(f"not JSON ({exc})") from None
        top = _fields(value, "the swarm file", {"version", "state", "nodes", "users"})
        if type(top["version"]) is not int or top["version"] != SWARM_VERSION:
            raise MalformedInput(f"unknown version {top['version']!r} (this pyrgos reads 1)")
        if top["state"] not in ("up", "down"):
            raise MalformedInput("state is neither 'up' nor 'down'")
        nodes = _list(top["nodes"], "nodes", 1, MAX_NODES)
        users = _list(top["users"], "users", 0, MAX_USERS)
        swarm = cls(
            top["state"],
            tuple(_node(raw, index) for index, raw in enumerate(nodes)),
            tuple(_user(raw) for raw in users),
        )
        names = [node.name for node in swarm.nodes]
        if len(set(names)) != len(names):
            raise MalformedInput("two nodes have the same name")
        if len({user.name for user in swarm.users}) != len(swarm.users):
            raise MalformedInput("two users have the same name")
        if any(user.node not in names for user in swarm.users):
            raise MalformedInput("a user's node is not one of the swarm's nodes")
        return swarm


def _fields(value: object, what: str, keys: set[str]) -> dict[str, object]:
    if not isinstance(value, dict) or set(value) != keys:
        raise MalformedInput(f"{what} is not a map of exactly: {', '.join(sorted(keys))}")
    return value


def _list(value: object, what: str, least: int, most: int) -> list[object]:
    if not isinstance(value, list) or not least <= len(value) <= most:
        raise MalformedInput(f"{what} is not a list of {least} to {most} entries")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 4096:
        raise MalformedInput(f"{what} is not a text")
    return value


def _path(value: object, what: str) -> Path:
    path = Path(_text(value, what))
    if not path.is_absolute():
        raise MalformedInput(f"{what} is not an absolute path")
    return path


def _port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5 and 0 < int(text) < 65536


def _node(raw: object, index: int) -> SwarmNode:
    keys = {"name", "pki_role", "peer_id", "api", "p2p", "pid", "home", "log"}
    v = _fields(raw, f"node {index + 1}", keys)
    name = _text(v["name"], "a node's name")
    if v["pki_role"] != ("root" if index == 0 else "mirror"):
        raise MalformedInput(f"node {name}: the first node is the PKI root, the others mirrors")
    try:
        peer_id = check_peer_id(_text(v["peer_id"], f"node {name}'s peer id"))
    except PyrgosError as exc:
        raise MalformedInput(f"node {name}: {exc.message}") from None
    p2p = _text(v["p2p"], f"node {name}'s p2p address")
    prefix, suffix = f"/ip4/{LOOPBACK}/tcp/", f"/p2p/{peer_id}"
    port = p2p.removeprefix(prefix).removesuffix(suffix)
    if not (p2p.startswith(prefix) and p2p.endswith(suffix) and _port(port)):
        raise MalformedInput(
            f"node {name}: its p2p address is not /ip4/{LOOPBACK}/tcp/PORT/p2p/{peer_id}"
        )
    api = _text(v["api"], f"node {name}'s API URL")
    if not api.startswith(f"http://{LOOPBACK}:") or not _port(api.rpartition(":")[2]):
        raise MalformedInput(f"node {name}: its API URL is not http://{LOOPBACK}:PORT")
    pid = v["pid"]
    if type(pid) is not int or not 0 < pid < 2**31:
        raise MalformedInput(f"node {name}: its pid is not a process id")
    home, log = _path(v["home"], f"node {name}'s home"), _path(v["log"], f"node {name}'s log")
    return SwarmNode(name, peer_id, api, p2p, pid, home, log)


def _user(raw: object) -> SwarmUser:
    v = _fields(raw, "a user", {"name", "node", "profile"})
    try:
        name = check_username(_text(v["name"], "a user's name"))
    except PyrgosError as exc:
        raise MalformedInput(exc.message) from None
    return SwarmUser(name, _text(v["node"], "a user's node"), _path(v["profile"], "a profile"))


def load(directory: Path) -> Swarm:
    """The swarm file in `directory`, checked (NotFound, or MalformedInput saying why)."""
    return load_file(directory / SWARM_FILE)


def load_file(path: Path) -> Swarm:
    """A swarm file (or the directory that holds one), checked."""
    if path.is_dir():
        path = path / SWARM_FILE
    try:
        with path.open("rb") as source:
            text = source.read(MAX_SWARM_FILE + 1)
    except FileNotFoundError:
        raise NotFound(f"no swarm file at {path}: `pyrgos swarm up` starts a swarm") from None
    except IsADirectoryError:
        raise MalformedInput(f"{path} is a directory, not a swarm file") from None
    if len(text) > MAX_SWARM_FILE:
        raise MalformedInput(f"{path} is damaged: over {MAX_SWARM_FILE} bytes")
    try:
        return Swarm.from_json(text.decode())
    except UnicodeDecodeError:
        raise MalformedInput(f"{path} is damaged: not UTF-8") from None
    except MalformedInput as exc:
        raise MalformedInput(f"{path} is damaged: {exc.message}") from None


def save(directory: Path, swarm: Swarm) -> None:
    """Written whole (a new file renamed into place): a reader never sees half of it."""
    written = directory / f".{SWARM_FILE}.tmp"
    written.write_text(swarm.to_json())
    written.replace(directory / SWARM_FILE)


def join_config(path: Path) -> NodeConfig:
    """The settings of a node that joins the swarm of the swarm file `path`: those of the
    swarm's own nodes, following its PKI node. The swarm must be up (its PKI node's address
    changes with every `up`)."""
    swarm = load_file(path)
    if swarm.state != "up":
        raise Unavailable(f"the swarm of {path} is down: `pyrgos swarm up` first")
    return swarm_config(pki=swarm.pki.p2p)


def user_env(swarm: Swarm, name: str) -> dict[str, str]:
    """The environment that makes the CLI act as the swarm user `name`, on their home node."""
    user = next((user for user in swarm.users if user.name == name), None)
    if user is None:
        known = ", ".join(user.name for user in swarm.users) or "none"
        raise NotFound(f"the swarm has no user {name!r} (its users: {known})")
    return {
        "PYRGOS_NODE": swarm.node(user.node).api,
        "PYRGOS_PROFILE": str(user.profile),
        "PYRGOS_INSECURE_TEST_KDF": "1",  # its accounts use the small KDF profile
    }


# -- processes ---------------------------------------------------------------------------------


def _alive(pid: int, home: Path) -> bool:
    """Whether `pid` is a live `pyrgos node run` of `home` (not a reused pid, not a zombie)."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # someone else's process: not ours
        return True
    try:
        stat = (proc / str(pid) / "stat").read_text()
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"]):
        return False
    return b"run" in argv and os.fsencode(home) in argv


def _signal(pid: int, home: Path, signum: signal.Signals) -> None:
    if _alive(pid, home):
        with suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, signum)


@dataclass
class _Started:
    """A node process this `up` started, until it is ready."""

    name: str
    home: NodeHome
    log: Path
    process: trio.Process

    def alive(self) -> bool:
        return self.process.poll() is None  # polling also reaps it once it has exited


async def _start(name: str, home: NodeHome, log: Path) -> _Started:
    """`pyrgos node run` of `home` in a session of its own (a Ctrl-C in the terminal of
    `swarm up` does not reach it), its output in `log`."""
    with log.open("ab") as out:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "node.cli", "node", "run", "--home", str(home.path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home.path,
            start_new_session=True,
        )
    return _Started(name, home, log, process)


async def _ready(started: _Started) -> Ready:
    """Wait for the node's ready file: it serves and has published its addresses to the PKI
    node, so users can sign up on it. The caller bounds the wait."""
    while True:
        ready = started.home.ready()
        if ready is not None and ready.pid == started.process.pid:
            return ready
        if not started.alive():
            raise Unavailable(
                f"node {started.name} exited (status {started.process.returncode}) before it"
                f" was ready; its log: {started.log}"
            )
        await trio.sleep(POLL)


def _loopback_p2p(ready: Ready, name: str) -> str:
    full = [a for a in ready.addrs if a.startswith(f"/ip4/{LOOPBACK}/tcp/") and "/p2p/" in a]
    if not full:
        raise Unavailable(f"node {name} listens on no {LOOPBACK} address: {ready.addrs}")
    return full[0]


async def _stop(targets: list[tuple[int, Path]]) -> int:
    """SIGTERM each live (pid, home), wait, SIGKILL what is left; return how many were
    killed. Raises Unavailable if one outlives SIGKILL too."""
    for pid, home in targets:
        _signal(pid, home, signal.SIGTERM)
    left = await _wait_gone(targets, STOP_TIMEOUT)
    for pid, home in left:
        _signal(pid, home, signal.SIGKILL)
    stuck = await _wait_gone(left, KILL_TIMEOUT)
    if stuck:
        pids = ", ".join(str(pid) for pid, _ in stuck)
        raise Unavailable(f"node processes {pids} did not end even after SIGKILL")
    return len(left)


async def _wait_gone(targets: list[tuple[int, Path]], seconds: float) -> list[tuple[int, Path]]:
    """Those of `targets` still alive after at most `seconds`."""
    with trio.move_on_after(seconds):
        while True:
            if not any(_alive(pid, home) for pid, home in targets):
                break
            await trio.sleep(POLL)
    return [(pid, home) for pid, home in targets if _alive(pid, home)]


# -- up, status, down --------------------------------------------------------------------------


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One `swarm up` or `down` at a time in a directory."""
    with (directory / ".lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"another `pyrgos swarm` command is running in {directory}") from None
        yield


def _any_alive(swarm: Swarm) -> bool:
    return any(_alive(node.pid, node.home) for node in swarm.nodes)


def _clear(directory: Path) -> None:
    """Remove a stopped swarm's files (fixed names inside `directory`, never a path the
    swarm file names), so that a new swarm starts afresh there."""
    try:
        swarm = load(directory)
    except NotFound:
        # What a failed `up` leaves (its logs), or one killed outright (its files, beside the
        # lock file only a swarm makes); anything else is not a swarm's to remove.
        names = {path.name for path in directory.iterdir()}
        if not names <= {"logs", ".lock"} and not (".lock" in names and names <= _OWN):
            raise Conflict(
                f"{directory} is not empty and holds no swarm: choose another --dir"
            ) from None
        orphans = _node_pids(directory / "nodes")
        if orphans:
            pids = " ".join(map(str, orphans))
            raise Conflict(
                f"nodes of an `up` that did not finish still run in {directory}: end them"
                f" (kill {pids}) first"
            ) from None
    else:
        if _any_alive(swarm):
            running = sum(_alive(node.pid, node.home) for node in swarm.nodes)
            raise Conflict(
                f"a swarm is already up in {directory} ({running} of {len(swarm.nodes)} nodes"
                f" running): `pyrgos swarm down --dir {directory}` first"
            )
    _remove(directory)


_OWN: Final = {"nodes", "logs", "users", PASSWORDS_FILE, SWARM_FILE, f".{SWARM_FILE}.tmp", ".lock"}


def processes_under(directory: Path) -> list[tuple[int, list[bytes]]]:
    """(pid, command line) of the live processes (not zombies) whose command line names a
    path inside `directory`; none where there is no procfs."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    inside = os.fsencode(directory).rstrip(b"/") + b"/"
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[:1]
        except OSError:
            continue
        if state not in (["Z"], ["X"]) and any(arg.startswith(inside) for arg in argv):
            found.append((int(entry.name), argv))
    return sorted(found)


def _node_pids(nodes: Path) -> list[int]:
    """Live `node run` processes of a home inside `nodes` (an `up` killed outright started
    them and recorded none)."""
    if not nodes.is_dir():
        return []
    inside = os.fsencode(nodes).rstrip(b"/") + b"/"
    found = []
    for pid, argv in processes_under(nodes):
        if b"run" in argv:
            home = Path(os.fsdecode(next(a for a in argv if a.startswith(inside))))
            if _alive(pid, home):
                found.append(pid)
    return found


def _remove(directory: Path, *keep: str) -> None:
    for name in {"nodes", "logs", "users"} - set(keep):
        shutil.rmtree(directory / name, ignore_errors=True)
    for name in (PASSWORDS_FILE, SWARM_FILE):
        (directory / name).unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)


def _made(directory: Path) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory.resolve()


def check_counts(nodes: int, users: int) -> None:
    if not 1 <= nodes <= MAX_NODES:
        raise MalformedInput(f"a swarm has 1 to {MAX_NODES} nodes, not {nodes}")
    if not 0 <= users <= MAX_USERS:
        raise MalformedInput(f"a swarm has 0 to {MAX_USERS} users, not {users}")


async def up(directory: Path, nodes: int, users: int, progress: Progress | None = None) -> Swarm:
    """Start a swarm of `nodes` in `directory` and sign up `users` round-robin across them.

    Whatever fails (a node that does not start, a signup, Ctrl-C), every process started is
    stopped before the error goes up, and only the nodes' logs are left in `directory`."""
    check_counts(nodes, users)
    report = progress or (lambda stage, done, total: None)
    directory = _made(directory)
    with _locked(directory):
        _clear(directory)
        for name in ("nodes", "logs", "users"):
            (directory / name).mkdir(mode=0o700)
        started: list[_Started] = []
        try:
            report("starting nodes", 0, nodes)
            records = await _start_nodes(directory, nodes, started, report)
            swarm = Swarm("up", tuple(records), ())
            swarm = await _sign_up(directory, swarm, users, report)
            save(directory, swarm)
            return swarm
        except BaseException:
            with trio.CancelScope(shield=True):
                await _stop([(s.process.pid, s.home.path) for s in started])
                for s in started:
                    s.alive()  # reaps it
                _remove(directory, "logs")
            raise


async def _start_nodes(
    directory: Path, count: int, started: list[_Started], report: Progress
) -> list[SwarmNode]:
    """n1 (the PKI node) first, then all the others at once, following it."""
    timeout = START_TIMEOUT + START_PER_NODE * count
    names = [f"n{number}" for number in range(1, count + 1)]
    records: dict[str, SwarmNode] = {}

    async def launch(name: str, config: NodeConfig) -> _Started:
        home = NodeHome(directory / "nodes" / name)
        await trio.to_thread.run_sync(home.init, config)  # makes a key: off the event loop
        node = await _start(name, home, directory / "logs" / f"{name}.log")
        started.append(node)
        return node

    async def ready(node: _Started) -> None:
        info = await _ready(node)
        p2p = _loopback_p2p(info, node.name)
        records[node.name] = SwarmNode(
            node.name, info.node_id, info.api, p2p, info.pid, node.home.path, node.log
        )
        report("starting nodes", len(records), count)

    try:
        with trio.fail_after(timeout):
            await ready(await launch(names[0], swarm_config()))
            pki = records[names[0]].p2p
            followers = [await launch(name, swarm_config(pki)) for name in names[1:]]
            async with trio.open_nursery() as nursery:
                for node in followers:
                    nursery.start_soon(ready, node)
    except trio.TooSlowError:
        late = [node.name for node in started if node.name not in records]
        raise Unavailable(
            f"nodes {', '.join(late)} were not ready within {timeout:.0f} s;"
            f" their logs: {started[0].log.parent}"
        ) from None
    return [records[name] for name in names]


async def _sign_up(directory: Path, swarm: Swarm, count: int, report: Progress) -> Swarm:
    """Users user1…userN, round-robin over the nodes; random passwords, kept only in the
    0600 passwords file; each user's profile logged in, for the CLI to use."""
    from node import client

    if count == 0:
        return swarm
    names = [f"user{number}" for number in range(1, count + 1)]
    passwords = {name: secrets.token_urlsafe(18) for name in names}
    _write_private(directory / PASSWORDS_FILE, json.dumps({"version": 1, "passwords": passwords}))
    users = tuple(
        SwarmUser(name, swarm.nodes[index % len(swarm.nodes)].name, directory / "users" / name)
        for index, name in enumerate(names)
    )
    limiter = trio.CapacityLimiter(SIGNUPS_AT_ONCE)
    done = 0
    report("signing up users", 0, count)

    async def sign_up(user: SwarmUser) -> None:
        nonlocal done
        async with limiter:
            url = swarm.node(user.node).api
            with trio.fail_after(SIGNUP_TIMEOUT):
                async with client.NodeApi(url) as api:
                    session = await client.signup(
                        api, user.name, passwords[user.name], test_kdf=True
                    )
            saved = client.SavedSession(url, user.name, session.data, session.token, session.expiry)
            client.Profile(user.profile).save(saved)
        done += 1
        report("signing up users", done, count)

    async with trio.open_nursery() as nursery:
        for user in users:
            nursery.start_soon(sign_up, user)
    return replace(swarm, users=users)


@dataclass(frozen=True)
class NodeStatus:
    node: SwarmNode
    state: str  # "up", "down", "not answering", "another node"
    users: list[str]
    pki_head: int | None  # the seq of the node's PKI head


async def status(directory: Path) -> tuple[Swarm, list[NodeStatus]]:
    """The swarm file and what each of its nodes answers now (asked at once, each bounded)."""
    from node.client import NodeApi, typed
    from protocols import methods

    swarm = load(directory)
    answers: dict[str, NodeStatus] = {}

    async def ask(node: SwarmNode) -> None:
        state, head = "down", None
        if _alive(node.pid, node.home):
            state = "not answering"
            with trio.move_on_after(INFO_TIMEOUT):
                try:
                    async with NodeApi(node.api, timeout=INFO_TIMEOUT) as api:
                        info = await typed.request(api, methods.NodeInfo(), methods.NodeInfoReply)
                    state = "up" if info.node == node.peer_id else "another node"
                    head = None if info.pki_head is None else info.pki_head[0]
                except PyrgosError:
                    pass
        answers[node.name] = NodeStatus(node, state, swarm.users_of(node), head)

    async with trio.open_nursery() as nursery:
        for node in swarm.nodes:
            nursery.start_soon(ask, node)
    return swarm, [answers[node.name] for node in swarm.nodes]


@dataclass(frozen=True)
class Stopped:
    stopped: int  # nodes that were running
    killed: int  # of those, nodes that needed SIGKILL


async def down(directory: Path) -> Stopped:
    """Stop every node of the swarm (SIGTERM, then SIGKILL after STOP_TIMEOUT); the swarm
    file then says it is down. Its homes, logs and users stay until the next `up` there."""
    swarm = load(directory)
    directory = _made(directory)
    with _locked(directory):
        running = [(node.pid, node.home) for node in swarm.nodes if _alive(node.pid, node.home)]
        with trio.CancelScope(shield=True):  # a Ctrl-C must not leave half the swarm running
            killed = await _stop(running)
        for node in swarm.nodes:  # a killed node could not remove them
            NodeHome(node.home).ready_file.unlink(missing_ok=True)
            NodeHome(node.home).api_file.unlink(missing_ok=True)
        save(directory, replace(swarm, state="down"))
    return Stopped(len(running), killed)
