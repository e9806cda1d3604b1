"""The mirror token and the mirror's proof for the login record (protocols/mirrors.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import bats, cbor
from protocols.errors import Denied, InvalidName, MalformedInput
from protocols.mirrors import TOKEN_PREFIX, MirrorToken, account_auth, check_account_auth

SECRET = bytes(range(32))
MIRROR, HOME = b"12D3KooW-mirror", b"12D3KooW-home"
NOW = 1_700_000_000


@given(st.from_regex(r"[a-z][a-z0-9]{0,20}", fullmatch=True), st.binary(min_size=32, max_size=32))
def test_a_token_round_trips(username: str, secret: bytes) -> None:
    token = MirrorToken(username, secret)
    assert MirrorToken.from_text(token.to_text()) == token
    assert MirrorToken.from_text(" " + token.to_text() + "\n") == token  # as pasted
    assert token.bat_id == bats.hashed_id(secret)
    assert secret.hex() not in repr(token)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pyrgos-mirror-2:" + cbor.encode_text([1, "alice", SECRET]),
        TOKEN_PREFIX + cbor.encode_text([2, "alice", SECRET]),
        TOKEN_PREFIX + cbor.encode_text([1, "alice", SECRET[:31]]),
        TOKEN_PREFIX + cbor.encode_text([1, 7, SECRET]),
        TOKEN_PREFIX + cbor.encode_text([1, "alice", SECRET, 0]),
        TOKEN_PREFIX + cbor.encode_text([1, "alice", SECRET]) + "A",
        TOKEN_PREFIX + "x" * 300,
    ],
)
def test_anything_else_is_not_a_token(text: str) -> None:
    with pytest.raises(MalformedInput):
        MirrorToken.from_text(text)


def test_a_token_names_a_valid_user() -> None:
    with pytest.raises(InvalidName):
        MirrorToken.from_text(TOKEN_PREFIX + cbor.encode_text([1, "Alice!", SECRET]))


def test_the_login_record_goes_only_to_a_node_with_the_bat() -> None:
    token = MirrorToken("alice", SECRET)
    bat, expiry, mac = account_auth(token, MIRROR, HOME, NOW)
    assert bat == token.bat_id
    ok = {"requester": MIRROR, "server": HOME, "now": NOW}
    check_account_auth(SECRET, "alice", expiry, mac, **ok)
    refused = [
        (SECRET, "alice", expiry, mac, {**ok, "requester": b""}),  # not a node: HTTP
        (None, "alice", expiry, mac, ok),  # a BAT the home does not know
        (bytes(32), "alice", expiry, mac, ok),  # another secret
        (SECRET, "bob", expiry, mac, ok),  # another user
        (SECRET, "alice", expiry, mac, {**ok, "requester": b"12D3KooW-other"}),
        (SECRET, "alice", expiry, mac, {**ok, "server": b"12D3KooW-other"}),
        (SECRET, "alice", expiry, mac, {**ok, "now": expiry + 31}),  # expired
        (SECRET, "alice", expiry, mac, {**ok, "now": expiry - 331}),  # too far ahead
    ]
    for secret, name, exp, proof, where in refused:
        with pytest.raises(Denied):
            check_account_auth(secret, name, exp, proof, **where)
