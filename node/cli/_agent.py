"""The command agent: a resident process that has pyrgos loaded, and runs each command in a
process forked from it. A command through the agent starts in milliseconds; on its own, its
imports alone (trio, h11, the client, the method table, the crypto libraries) take a tenth of a
second or more (docs/protocol.md §15).

`relay` is the command's side. It runs first in every `pyrgos` process, so it imports only
what it needs. `serve` is the agent's side: `pyrgos agent serve`, which `relay` starts in the
background when no agent answers. The agent holds no key and no session: each forked process
reads the profile and talks to the node exactly as a command run alone would.
"""

from __future__ import annotations

import os
import stat
import sys
import zlib

from protocols import agent as wire
from protocols.errors import PyrgosError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import socket
    from typing import Final, NoReturn

AGENT_ENV: Final = "PYRGOS_AGENT"  # "off": every command runs in its own process, as before
IDLE_SECONDS: Final = 600.0  # an agent no command used for this long exits
MAX_AGE_SECONDS: Final = 3600.0  # and any agent after this long (see docs/security.md)
REQUEST_SECONDS: Final = 5.0  # to send a whole request, once connected
# Commands that run on a saved session (or none) and never ask for a password: a forked
# process has no controlling terminal to ask on. The rest run in their own process.
SERVED: Final = frozenset(
    {
        "whoami", "logout", "put", "get", "cat", "ls", "mkdir", "rm", "mv", "space",
        "follow", "requests", "accept", "reject", "followers", "following", "unfollow",
        "remove-follower", "fingerprint", "verify", "publish", "unpublish", "share",
        "unshare", "shared", "mirror", "pki",
    }
)  # fmt: skip
# What the interpreter's start depends on: an agent started under other values is another
# agent (its name differs), so a command never runs with another locale or Python setting.
_START_ENV: Final = ("LANG", "LC_", "PYTHON")


# -- the command's side --------------------------------------------------------------------


def command_name(argv: list[str]) -> str | None:
    """The command `argv` names, past the options that come before it."""
    rest = iter(argv)
    for arg in rest:
        if arg == "--profile":
            next(rest, None)
        elif not arg.startswith("--profile="):
            return arg
    return None


def socket_path() -> str | None:
    """The agent's socket for this user, interpreter and locale, in a directory only this user
    may enter; None where there can be none."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    directory = os.path.join(base, f"pyrgos-{os.getuid()}")
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None  # not ours alone: never hand a command's terminal to whoever listens there
    start = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(_START_ENV))
    key = zlib.crc32(os.fsencode("\0".join([sys.executable, *start])))
    path = os.path.join(directory, f"agent-{key:08x}.sock")
    return path if len(os.fsencode(path)) < 100 else None  # sun_path holds 108 bytes


def relay(argv: list[str]) -> int | None:
    """Run `pyrgos ARGV` through the agent and return its exit status; None when it must run
    in this process: no agent yet (one is started for the next command), a command the agent
    does not serve, or an agent that refused it (another executable, code changed since)."""
    if os.name != "posix" or os.environ.get(AGENT_ENV) == "off":
        return None
    if command_name(argv) not in SERVED:
        return None
    path = socket_path()
    if path is None:
        return None
    import errno
    import socket

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with conn:
        try:
            conn.connect(path)
        except OSError:  # none listens (or a dead agent's socket is left)
            start_agent()
            return None
        try:
            request = wire.encode_request(_run_request(argv))
        except (OSError, PyrgosError):  # its directory is gone; a command line over 1 MiB
            return None
        try:
            socket.send_fds(conn, [request], [0, 1, 2])
        except OSError as exc:  # a closed standard stream (`<&-`), or an agent gone
            if exc.errno != errno.EBADF:
                start_agent()
            return None
        try:
            tag, pid = _receive(conn)
        except (OSError, PyrgosError):
            tag, pid = b"", 0
        if tag != wire.RUNNING:  # refused (it has gone, if its code changed) or gone
            start_agent()
            return None
        with _Forwarding(conn, pid) as forwarded:
            try:
                tag, status = _receive(conn)
            except (OSError, PyrgosError):
                tag, status = b"", 0
    if tag == wire.ENDED:
        return status
    if forwarded.last:  # it ended on the signal it was sent, as a process of its own would
        return 128 + forwarded.last
    print("pyrgos: error: the command's process ended without an exit status", file=sys.stderr)
    return 1


def _run_request(argv: list[str]) -> wire.Request:
    mask = os.umask(0o077)
    os.umask(mask)
    return wire.Request(
        "run",
        os.fsencode(sys.executable),
        os.fsencode(os.getcwd()),
        mask,
        tuple(os.fsencode(arg) for arg in argv),
        tuple(os.environb.items()),
    )


def _receive(conn: socket.socket) -> tuple[bytes, int]:
    """The next message, or (b"", 0) at the end of the stream."""
    data = _read(conn, wire.MESSAGE)
    return wire.decode_message(data) if len(data) == wire.MESSAGE else (b"", 0)


def _read(conn: socket.socket, size: int) -> bytes:
    """`size` bytes, or fewer at the end of the stream."""
    data = b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            break
        data += more
    return data


class _Forwarding:
    """While the command runs, the signals this process gets go to the command's process: a
    Ctrl-C interrupts it, a Ctrl-Z stops both."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self.last = 0  # the last signal forwarded
        self.before: dict[int, object] = {}

    def __enter__(self) -> _Forwarding:
        import signal

        for signum in _relayed():
            self.before[signum] = signal.signal(signum, self.forward)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for signum, handler in self.before.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def forward(self, signum: int, _frame: object) -> None:
        import signal

        if signum == signal.SIGCONT:  # it is stopped and cannot read: wake it directly
            os.kill(self.pid, signal.SIGCONT)
            return
        try:
            self.conn.sendall(wire.message(wire.SIGNAL, signum))
        except OSError:
            return
        if signum == signal.SIGTSTP:
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            self.last = signum


def _relayed() -> tuple[int, ...]:
    import signal

    return (
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGTSTP,
        signal.SIGCONT,
    )


def start_agent() -> None:
    """Start an agent in the background, in a session of its own, for the next command."""
    import contextlib

    null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    command = [sys.executable, "-m", "node.cli", "agent", "serve"]
    # Where it cannot be started (no setsid for posix_spawn), commands run in their own process.
    with contextlib.suppress(OSError, NotImplementedError):
        os.posix_spawn(sys.executable, command, os.environ, file_actions=null, setsid=True)


# -- the agent's side ----------------------------------------------------------------------


def serve(path: str) -> None:
    """Listen at `path` until idle or old (IDLE_SECONDS, MAX_AGE_SECONDS), or stopped; fork a
    process per connection, which reads the request and runs the command. Returns at once when
    another agent already serves `path`."""
    import contextlib
    import fcntl
    import gc
    import select
    import signal
    import socket
    import time

    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return
    parser = _load()
    modules = _module_files()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps each command's process
    # SIGTERM and SIGINT stop the agent through a wakeup pipe, never by raising: an exception
    # raised where Python ignores them (the fork hooks of the logging module) would be lost.
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _noted)
    gc.collect()
    gc.freeze()  # what every forked process shares stays shared: no collection touches it
    # Bound and listening under another name first, then renamed over whatever `path` was
    # (a dead agent's socket): a command that finds the socket finds it accepting.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fresh = f"{path}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fresh)
    listener.bind(fresh)
    os.chmod(fresh, 0o600)
    listener.listen(64)
    os.rename(fresh, path)
    ours = os.stat(path).st_ino
    started = last = time.monotonic()
    served = 0
    try:
        while True:
            now = time.monotonic()
            wait = min(last + IDLE_SECONDS, started + MAX_AGE_SECONDS) - now
            if wait <= 0:
                return
            ready = select.select([listener.fileno(), woken], [], [], wait)[0]
            if woken in ready:
                return
            if not ready:
                continue
            conn, _ = listener.accept()
            with conn:
                if not _same_user(conn):
                    continue
                if _changed(modules):  # upgraded or edited: this process runs old code
                    _give_up(listener, path, ours, lock)
                    conn.sendall(wire.message(wire.REFUSED, 0))
                    return
                if os.fork() == 0:
                    listener.close()
                    for fd in (lock, woken, wake):
                        os.close(fd)
                    _command_process(conn, parser, served, started)
                served += 1
                last = time.monotonic()
    finally:
        _give_up(listener, path, ours, lock)


def _noted(_signum: int, _frame: object) -> None:
    """A signal that stops the agent: the wakeup pipe has its number."""


def _give_up(listener: socket.socket, path: str, ours: int, lock: int) -> None:
    """Leave `path` to the next agent: the socket file (if it is still the one this agent
    bound, inode `ours`) goes before the lock does."""
    import contextlib

    if listener.fileno() == -1:
        return
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == ours:
            os.unlink(path)
    listener.close()
    os.close(lock)


# What the commands the agent serves import, as they run: no forked process imports anything.
_LOADED: Final = (
    *(f"node.client.{name}" for name in ("_api", "_blocks", "_fs", "_links", "_mirrors")),
    *(f"node.client.{name}" for name in ("_profile", "_resolve", "_session", "_sharing")),
    *(f"node.client.{name}" for name in ("_social", "_trees", "_typed")),
    "node.heap",
    "protocols.methods",
    "protocols.crypto",
    "trio",
    "h11",
    "rich.progress",
    "cryptography.hazmat.backends.openssl.backend",
    "encodings.idna",  # a node's host name
)


def _load() -> argparse.ArgumentParser:
    """Load what the served commands use, and build the parser they share."""
    import importlib

    from node.cli._main import build_parser

    for module in _LOADED:
        importlib.import_module(module)
    parser = build_parser()
    parser.parse_args(["whoami"])  # what the first parse of a process sets up, done once
    return parser


def _module_files() -> dict[str, tuple[int, int]]:
    """Every loaded module's file, with its modification time and size."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            try:
                info = os.stat(path)
            except OSError:
                continue
            files[path] = (info.st_mtime_ns, info.st_size)
    return files


def _changed(files: dict[str, tuple[int, int]]) -> bool:
    for path, (mtime, size) in files.items():
        try:
            info = os.stat(path)
        except OSError:
            return True
        if (info.st_mtime_ns, info.st_size) != (mtime, size):
            return True
    return False


def _same_user(conn: socket.socket) -> bool:
    """Whether the peer runs as this user (Linux tells; elsewhere the directory's mode is all)."""
    import socket
    import struct

    if not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def _command_process(
    conn: socket.socket, parser: argparse.ArgumentParser, served: int, started: float
) -> NoReturn:
    """A forked process's whole life: read the request, run it, report, exit."""
    status = 1
    try:
        status = _answer(conn, parser, served, started)
    finally:
        os._exit(status)


def _answer(
    conn: socket.socket, parser: argparse.ArgumentParser, served: int, started: float
) -> int:
    import contextlib
    import signal
    import threading
    import time

    signal.set_wakeup_fd(-1)  # trio sets its own
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        request, fds = _read_request(conn, time.monotonic() + REQUEST_SECONDS)
    except (OSError, PyrgosError):
        return 1  # a broken or hostile request: dropped
    if request.kind != "run":
        for fd in fds:
            os.close(fd)
        return _answer_about_agent(conn, request.kind, served, started)
    if request.executable != os.fsencode(sys.executable) or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.sendall(wire.message(wire.REFUSED, 0))
        return 0
    try:
        _adopt(request, fds)
    except OSError:  # its directory went away: it runs in its own process and says so
        conn.sendall(wire.message(wire.REFUSED, 0))
        return 0
    conn.settimeout(None)
    conn.sendall(wire.message(wire.RUNNING, os.getpid()))
    threading.Thread(target=_watch, args=(conn,), daemon=True).start()
    status = _run(request.argv, parser)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    with contextlib.suppress(OSError):
        conn.sendall(wire.message(wire.ENDED, status))
    return status


def _read_request(conn: socket.socket, deadline: float) -> tuple[wire.Request, list[int]]:
    """One request, and the descriptors that came with it, within `deadline`."""
    import socket
    import time

    conn.settimeout(max(0.001, deadline - time.monotonic()))
    data, fds, flags, _ = socket.recv_fds(conn, wire.HEADER + 4096, 3)
    try:
        if flags & socket.MSG_CTRUNC:
            raise OSError("more descriptors than a request carries")
        while len(data) < wire.HEADER:
            data += _recv_within(conn, wire.HEADER - len(data), deadline)
        end = wire.HEADER + wire.request_length(data[: wire.HEADER])
        while len(data) < end:
            data += _recv_within(conn, min(end - len(data), 1 << 16), deadline)
        if len(data) > end:
            raise OSError("bytes after the request")
        return wire.decode_request(data[wire.HEADER :]), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _recv_within(conn: socket.socket, size: int, deadline: float) -> bytes:
    import time

    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request did not arrive in time")
    conn.settimeout(left)
    data = conn.recv(size)
    if not data:
        raise ConnectionError("the request ended early")
    return data


def _answer_about_agent(conn: socket.socket, kind: str, served: int, started: float) -> int:
    import signal
    import time

    agent = os.getppid()
    lines = [
        f"pid={agent}",
        f"served={served}",
        f"age={time.monotonic() - started:.0f}",
        f"executable={sys.executable}",
    ]
    body = "\n".join(lines).encode()
    conn.sendall(wire.message(wire.STATUS, agent) + len(body).to_bytes(wire.HEADER, "big") + body)
    if kind == "stop":
        os.kill(agent, signal.SIGTERM)
    return 0


def _adopt(request: wire.Request, fds: list[int]) -> None:
    """Become the command's process: its directory, umask, environment and standard streams."""
    os.chdir(request.cwd)
    os.umask(request.umask)
    os.environb.clear()
    os.environb.update(request.env)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())  # type: ignore[union-attr]
    sys.argv = ["pyrgos", *map(os.fsdecode, request.argv)]


def _watch(conn: socket.socket) -> None:
    """Deliver the signals the command's shell sent; a client gone ends the command, as the
    end of its terminal would."""
    import signal

    relayed = set(_relayed())
    while True:
        try:
            tag, signum = _receive(conn)
        except (OSError, PyrgosError):
            tag, signum = b"", 0
        if tag != wire.SIGNAL or signum not in relayed:
            os.kill(os.getpid(), signal.SIGHUP)
            return
        os.kill(os.getpid(), signal.SIGSTOP if signum == signal.SIGTSTP else signum)


def _run(argv: tuple[bytes, ...], parser: argparse.ArgumentParser) -> int:
    """Run the command as `python -m node.cli` would, and return its exit status."""
    from node.cli._main import main

    try:
        main([os.fsdecode(arg) for arg in argv], parser)
    except SystemExit as exc:
        return _exit_status(exc.code)
    except KeyboardInterrupt:
        return 130
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def status(path: str) -> dict[str, str] | None:
    """What the agent at `path` says of itself (and, for `stop`, it then exits); None when
    none answers."""
    return _ask(path, "status")


def stop(path: str) -> dict[str, str] | None:
    return _ask(path, "stop")


def _ask(path: str, kind: str) -> dict[str, str] | None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(REQUEST_SECONDS)
        try:
            conn.connect(path)
            conn.sendall(wire.encode_request(wire.Request(kind, os.fsencode(sys.executable))))
            tag, _ = _receive(conn)
            if tag != wire.STATUS:
                return None
            length = wire.request_length(_read(conn, wire.HEADER))
            body = _read(conn, length).decode()
        except (OSError, PyrgosError, UnicodeDecodeError):
            return None
    return dict(line.partition("=")[::2] for line in body.splitlines())
