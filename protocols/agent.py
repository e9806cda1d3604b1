"""The command agent's local protocol: what a `pyrgos` command sends the agent over its Unix
socket, and what comes back (docs/protocol.md §15).

A request is one frame: a 4-byte big-endian length, then NUL-separated fields (argv and
environment strings can hold any byte but NUL). A "run" request travels with the command's
standard input, output and error as SCM_RIGHTS descriptors. Replies and the command's signals
are 5-byte messages: a tag and a 4-byte big-endian integer.

Every `pyrgos` command imports this module before anything else, so it imports neither typing
nor dataclasses (together a tenth of the command's whole start through the agent).
"""

from __future__ import annotations

import struct

from protocols.errors import MalformedInput, TooLarge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

MAX_REQUEST: Final = 1024 * 1024  # argv and environment; a longer command runs in-process
HEADER: Final = 4
MESSAGE: Final = 5
KINDS: Final = frozenset({"run", "status", "stop"})

RUNNING: Final = b"R"  # the command's process started; its pid
ENDED: Final = b"X"  # the command ended; its exit status
REFUSED: Final = b"N"  # not run (another executable, stale code): run it in-process
STATUS: Final = b"S"  # the agent's pid; then a frame of "key=value" lines
SIGNAL: Final = b"K"  # client to command: deliver this signal

_INT: Final = struct.Struct(">i")


class Request:
    """One request: `kind` in KINDS; for "run", the command as its shell started it."""

    __slots__ = ("argv", "cwd", "env", "executable", "kind", "umask")

    def __init__(
        self,
        kind: str,
        executable: bytes,
        cwd: bytes = b"",
        umask: int = 0o022,
        argv: tuple[bytes, ...] = (),
        env: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.kind = kind
        self.executable = executable
        self.cwd = cwd
        self.umask = umask
        self.argv = argv
        self.env = env


def encode_request(request: Request) -> bytes:
    fields = [request.kind.encode(), request.executable, request.cwd, b"%o" % request.umask]
    fields += [b"%d" % len(request.argv), *request.argv]
    fields += [key + b"=" + value for key, value in request.env]
    if any(b"\0" in field for field in fields):
        raise MalformedInput("a command's arguments and environment cannot hold NUL")
    body = b"\0".join(fields)
    if len(body) > MAX_REQUEST:
        raise TooLarge(f"a command of {len(body)} bytes is over the agent's {MAX_REQUEST}")
    return len(body).to_bytes(HEADER, "big") + body


def request_length(header: bytes) -> int:
    """The body length a frame's header announces, refused over MAX_REQUEST."""
    length = int.from_bytes(header, "big")
    if length > MAX_REQUEST:
        raise TooLarge(f"an agent request of {length} bytes (at most {MAX_REQUEST})")
    return length


def decode_request(body: bytes) -> Request:
    fields = body.split(b"\0")
    if len(fields) < 5:
        raise MalformedInput("an agent request needs kind, executable, cwd, umask and argc")
    kind, executable, cwd, umask, argc = fields[:5]
    if kind.decode("ascii", "replace") not in KINDS:
        raise MalformedInput(f"unknown agent request {kind[:20]!r}")
    octal = umask and len(umask) <= 4 and set(umask) <= set(b"01234567")
    if not (octal and argc.isdigit() and len(argc) <= 7):
        raise MalformedInput("an agent request's umask or argc is not a small number")
    count = int(argc)
    if count > len(fields) - 5:
        raise MalformedInput(f"an agent request names {count} arguments but holds fewer")
    argv = tuple(fields[5 : 5 + count])
    env = []
    for item in fields[5 + count :]:
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise MalformedInput("an agent request's environment entry is not KEY=VALUE")
        env.append((key, value))
    return Request(kind.decode(), executable, cwd, int(umask, 8), argv, tuple(env))


def message(tag: bytes, value: int) -> bytes:
    return tag + _INT.pack(value)


def decode_message(data: bytes) -> tuple[bytes, int]:
    if len(data) != MESSAGE:
        raise MalformedInput(f"an agent message of {len(data)} bytes, not {MESSAGE}")
    return data[:1], _INT.unpack(data[1:])[0]
