"""The command agent's local protocol: requests round-trip, and malformed ones are refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import agent as wire
from protocols.errors import MalformedInput, TooLarge

no_nul = st.binary(max_size=40).filter(lambda b: b"\0" not in b)
keys = st.binary(min_size=1, max_size=12).filter(lambda b: b"\0" not in b and b"=" not in b)


def body(request: wire.Request) -> bytes:
    frame = wire.encode_request(request)
    assert wire.request_length(frame[: wire.HEADER]) == len(frame) - wire.HEADER
    return frame[wire.HEADER :]


@given(
    kind=st.sampled_from(sorted(wire.KINDS)),
    executable=no_nul,
    cwd=no_nul,
    umask=st.integers(0, 0o777),
    argv=st.lists(no_nul, max_size=6).map(tuple),
    env=st.lists(st.tuples(keys, no_nul), max_size=6).map(tuple),
)
def test_a_request_round_trips(
    kind: str,
    executable: bytes,
    cwd: bytes,
    umask: int,
    argv: tuple[bytes, ...],
    env: tuple[tuple[bytes, bytes], ...],
) -> None:
    back = wire.decode_request(body(wire.Request(kind, executable, cwd, umask, argv, env)))
    assert (back.kind, back.executable, back.cwd, back.umask) == (kind, executable, cwd, umask)
    assert (back.argv, back.env) == (argv, env)


def test_an_empty_argument_and_an_empty_value_survive() -> None:
    request = wire.Request("run", b"/py", b"/", 0o022, (b"ls", b""), ((b"EMPTY", b""),))
    back = wire.decode_request(body(request))
    assert back.argv == (b"ls", b"")
    assert back.env == ((b"EMPTY", b""),)


@pytest.mark.parametrize(
    "fields",
    [
        [b""],
        [b"run", b"/py", b"/", b"22"],  # no argc
        [b"exec", b"/py", b"/", b"22", b"0"],  # an unknown kind
        [b"run", b"/py", b"/", b"89", b"0"],  # not octal
        [b"run", b"/py", b"/", b"", b"0"],  # nor a number at all
        [b"run", b"/py", b"/", b"22", b"-1"],  # not a count
        [b"run", b"/py", b"/", b"22", b"3", b"ls"],  # fewer arguments than it names
        [b"run", b"/py", b"/", b"22", b"1", b"ls", b"NOEQUALS"],  # an entry without =
        [b"run", b"/py", b"/", b"22", b"1", b"ls", b"=value"],  # nor a key
        [b"run", b"/py", b"/", b"22", b"99999999", b"ls"],  # a count too long to be one
    ],
)
def test_malformed_requests_are_refused(fields: list[bytes]) -> None:
    with pytest.raises(MalformedInput):
        wire.decode_request(b"\0".join(fields))


def test_sizes_are_bounded_both_ways() -> None:
    with pytest.raises(TooLarge):
        wire.request_length((wire.MAX_REQUEST + 1).to_bytes(wire.HEADER, "big"))
    huge = wire.Request("run", b"/py", argv=(b"x" * wire.MAX_REQUEST,))
    with pytest.raises(TooLarge):
        wire.encode_request(huge)
    with pytest.raises(MalformedInput):  # NUL cannot be carried, so it is never sent
        wire.encode_request(wire.Request("run", b"/py", argv=(b"a\0b",)))


def test_messages_are_five_bytes() -> None:
    assert wire.decode_message(wire.message(wire.ENDED, 130)) == (wire.ENDED, 130)
    assert wire.decode_message(wire.message(wire.RUNNING, 2**31 - 1)) == (wire.RUNNING, 2**31 - 1)
    with pytest.raises(MalformedInput):
        wire.decode_message(b"X\0\0")
