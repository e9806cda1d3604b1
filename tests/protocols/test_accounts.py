"""Tests of protocols.accounts: signed-time requests and the sealed login data."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import cbor, crypto
from protocols.accounts import (
    FORGET_AFTER,
    FREE_FAILURES,
    LOGIN,
    LOGIN_DATA_VERSION,
    MAX_DELAY,
    MAX_SKEW_MS,
    SESSION_TOKEN_BYTES,
    UPDATE_LOGIN,
    USAGE,
    LoginData,
    LoginThrottle,
    check_timed,
    session_id,
    sign_timed,
)
from protocols.crypto import BoxingKey, KdfParams, SigningKey
from protocols.cryptree import Capability
from protocols.errors import AuthFailed, Corrupted, MalformedInput, PyrgosError, RateLimited

LOGIN_KEY = SigningKey.from_seed(bytes(range(32)))
OTHER_KEY = SigningKey.from_seed(bytes(range(1, 33)))
NOW_MS = 1_700_000_000_000
PAYLOAD: list[object] = ["alice", b"\x01\x02"]
IDENTITY = SigningKey.from_seed(bytes(range(2, 34)))
BOXING = BoxingKey.from_seed(bytes(range(3, 35)))
ROOT_KEY = bytes(range(4, 36))
HOME = Capability(
    owner=IDENTITY.public.key_hash(),
    writer=IDENTITY.public.key_hash(),
    label=bytes(range(5, 37)),
    bat=bytes(range(6, 38)),
    read_key=bytes(range(7, 39)),
    write_key=bytes(range(8, 40)),
)
DATA = LoginData(IDENTITY, BOXING, HOME, mirror_bat=bytes(range(9, 41)))


def check(
    signature: bytes,
    signed_ms: int = NOW_MS,
    now_ms: int = NOW_MS,
    payload: list[object] = PAYLOAD,
    context: bytes = LOGIN,
    key: SigningKey = LOGIN_KEY,
) -> None:
    check_timed(key.public, context, payload, signed_ms, signature, now_ms)


# --- signed times ------------------------------------------------------------------------------


def test_signed_time_round_trip() -> None:
    signature = sign_timed(LOGIN_KEY, LOGIN, PAYLOAD, NOW_MS)
    assert len(signature) == 64
    check(signature)
    check(sign_timed(LOGIN_KEY, USAGE, [], NOW_MS), payload=[], context=USAGE)


@pytest.mark.parametrize("skew", [0, 1, -1, MAX_SKEW_MS, -MAX_SKEW_MS, 60_000, -60_000])
def test_signed_time_within_five_minutes(skew: int) -> None:
    signed_ms = NOW_MS + skew
    check(sign_timed(LOGIN_KEY, LOGIN, PAYLOAD, signed_ms), signed_ms=signed_ms)


@pytest.mark.parametrize("skew", [MAX_SKEW_MS + 1, -MAX_SKEW_MS - 1, 3_600_000, -NOW_MS])
def test_signed_time_outside_five_minutes(skew: int) -> None:
    signed_ms = NOW_MS + skew
    with pytest.raises(AuthFailed, match="5 minutes"):
        check(sign_timed(LOGIN_KEY, LOGIN, PAYLOAD, signed_ms), signed_ms=signed_ms)


def test_five_minutes_is_the_design() -> None:
    assert MAX_SKEW_MS == 5 * 60 * 1000


@given(skew=st.integers(-2 * MAX_SKEW_MS, 2 * MAX_SKEW_MS))
@settings(deadline=None)
def test_signed_time_window(skew: int) -> None:
    signed_ms = NOW_MS + skew
    signature = sign_timed(LOGIN_KEY, LOGIN, PAYLOAD, signed_ms)
    if abs(skew) <= MAX_SKEW_MS:
        check(signature, signed_ms=signed_ms)
    else:
        with pytest.raises(AuthFailed):
            check(signature, signed_ms=signed_ms)


def test_signed_time_covers_the_time() -> None:
    # A captured request cannot be replayed later by claiming a fresher time.
    signature = sign_timed(LOGIN_KEY, LOGIN, PAYLOAD, NOW_MS - 10 * 60 * 1000)
    with pytest.raises(AuthFailed, match="does not verify"):
        check(signature, signed_ms=NOW_MS)
    with pytest.raises(AuthFailed, match="does not verify"):
        check(sign_timed(LOGIN_KEY, LOGIN, PAYLOAD, NOW_MS), signed_ms=NOW_MS + 1)


@pytest.mark.parametrize(
    "change",
    [
        {"key": OTHER_KEY},
        {"context": UPDATE_LOGIN},
        {"context": USAGE},
        {"payload": ["bob", b"\x01\x02"]},
        {"payload": ["alice"]},
        {"payload": [*PAYLOAD, 0]},
        {"payload": []},
    ],
)
def test_signed_time_wrong_key_context_or_payload(change: dict[str, Any]) -> None:
    signature = sign_timed(LOGIN_KEY, LOGIN, PAYLOAD, NOW_MS)
    with pytest.raises(AuthFailed, match="does not verify"):
        check(signature, **change)


def test_signed_time_payload_cannot_absorb_the_time() -> None:
    # [*payload, time] is one CBOR list: a payload ending in the time is a different message.
    signature = sign_timed(LOGIN_KEY, LOGIN, [*PAYLOAD, NOW_MS], NOW_MS)
    with pytest.raises(AuthFailed):
        check(signature, payload=PAYLOAD)


@given(index=st.integers(0, 63), bit=st.integers(0, 7))
def test_signed_time_tampered_signature(index: int, bit: int) -> None:
    signature = bytearray(sign_timed(LOGIN_KEY, LOGIN, PAYLOAD, NOW_MS))
    signature[index] ^= 1 << bit
    with pytest.raises(AuthFailed):
        check(bytes(signature))


@pytest.mark.parametrize(
    ("signature", "signed_ms"),
    [(bytes(63), NOW_MS), (bytes(65), NOW_MS), ("x" * 64, NOW_MS), (None, NOW_MS),
     (bytes(64), True), (bytes(64), "1700000000000"), (bytes(64), None), (bytes(64), 1.5)],
)  # fmt: skip
def test_signed_time_malformed(signature: Any, signed_ms: Any) -> None:
    with pytest.raises(MalformedInput):
        check(signature, signed_ms=signed_ms)


# --- login data --------------------------------------------------------------------------------


def test_login_data_round_trip() -> None:
    sealed = DATA.seal(ROOT_KEY, "alice")
    opened = LoginData.open(ROOT_KEY, "alice", sealed)
    assert opened == DATA
    assert opened.identity.seed == IDENTITY.seed
    assert opened.boxing.public == BOXING.public
    assert opened.home == HOME
    assert opened.home.writable
    assert opened.mirror_bat == DATA.mirror_bat


def test_login_data_round_trip_with_read_only_home() -> None:
    data = replace(DATA, home=HOME.read_only())
    opened = LoginData.open(ROOT_KEY, "alice", data.seal(ROOT_KEY, "alice"))
    assert opened.home == HOME.read_only()
    assert not opened.home.writable


def test_login_data_with_password_derived_keys() -> None:
    params = KdfParams.test_profile()
    keys = crypto.derive_login_keys("alice", "correct horse battery", params)
    sealed = DATA.seal(keys.root_key, "alice")
    again = crypto.derive_login_keys("alice", "correct horse battery", params)
    assert LoginData.open(again.root_key, "alice", sealed) == DATA
    wrong = crypto.derive_login_keys("alice", "correct horse battery!", params)
    with pytest.raises(AuthFailed, match="wrong password"):
        LoginData.open(wrong.root_key, "alice", sealed)


def test_login_data_is_sealed_afresh_each_time() -> None:
    assert DATA.seal(ROOT_KEY, "alice") != DATA.seal(ROOT_KEY, "alice")


def test_wrong_root_key_is_auth_failed() -> None:
    sealed = DATA.seal(ROOT_KEY, "alice")
    with pytest.raises(AuthFailed, match="wrong password"):
        LoginData.open(bytes(32), "alice", sealed)
    with pytest.raises(AuthFailed):
        LoginData.open(ROOT_KEY[::-1], "alice", sealed)


def test_login_data_is_bound_to_the_username() -> None:
    sealed = DATA.seal(ROOT_KEY, "alice")
    for username in ("bob", "alice2", "Alice", ""):
        with pytest.raises(AuthFailed):
            LoginData.open(ROOT_KEY, username, sealed)


@given(index=st.integers(0))
@settings(deadline=None, max_examples=50)
def test_tampered_login_data_is_auth_failed(index: int) -> None:
    sealed = bytearray(DATA.seal(ROOT_KEY, "alice"))
    sealed[index % len(sealed)] ^= 0x01
    with pytest.raises(AuthFailed):
        LoginData.open(ROOT_KEY, "alice", bytes(sealed))


@pytest.mark.parametrize("cut", [0, 1, crypto.SEAL_OVERHEAD - 1, crypto.SEAL_OVERHEAD, 4096])
def test_truncated_login_data_is_auth_failed(cut: int) -> None:
    with pytest.raises(AuthFailed):
        LoginData.open(ROOT_KEY, "alice", DATA.seal(ROOT_KEY, "alice")[:cut])


@pytest.mark.parametrize(
    "data",
    [
        DATA,
        replace(DATA, home=HOME.read_only()),
        replace(DATA, identity=SigningKey.from_seed(bytes(32)), mirror_bat=b"\xff" * 32),
    ],
)
def test_sealed_length_is_a_page_plus_the_fixed_overhead(data: LoginData) -> None:
    sealed = data.seal(ROOT_KEY, "a-much-longer-username-of-32-chr")
    assert (len(sealed) - crypto.SEAL_OVERHEAD) % crypto.PAD_CONTENT == 0
    assert len(sealed) == crypto.PAD_CONTENT + crypto.SEAL_OVERHEAD  # what a node sees


def test_sealed_length_does_not_depend_on_the_capability() -> None:
    lengths = {len(d.seal(ROOT_KEY, "alice")) for d in (DATA, replace(DATA, home=HOME.read_only()))}
    assert lengths == {crypto.PAD_CONTENT + crypto.SEAL_OVERHEAD}


def _seal_plain(value: object) -> bytes:
    plain = crypto.pad(cbor.encode(value), crypto.PAD_CONTENT)
    return crypto.seal(ROOT_KEY, plain, b"pyrgos/login-data/1" + b"alice")


GOOD_PLAIN = {
    "v": LOGIN_DATA_VERSION,
    "identity": IDENTITY.seed,
    "boxing": BOXING.seed,
    "home": HOME.to_cbor(),
    "mirror": DATA.mirror_bat,
}


def test_login_data_context_is_what_the_module_uses() -> None:
    assert LoginData.open(ROOT_KEY, "alice", _seal_plain(GOOD_PLAIN)) == DATA


@pytest.mark.parametrize(
    "value",
    [
        {**GOOD_PLAIN, "v": 2},
        {k: v for k, v in GOOD_PLAIN.items() if k != "v"},
        [GOOD_PLAIN],
        {**GOOD_PLAIN, "identity": bytes(31)},
        {**GOOD_PLAIN, "boxing": "seed"},
        {**GOOD_PLAIN, "home": {}},
        {**GOOD_PLAIN, "home": {**HOME.to_cbor(), "l": bytes(31)}},
        {k: v for k, v in GOOD_PLAIN.items() if k != "mirror"},
        {k: v for k, v in GOOD_PLAIN.items() if k != "home"},
    ],
)
def test_authentic_but_malformed_login_data_is_corrupted(value: object) -> None:
    with pytest.raises(Corrupted):
        LoginData.open(ROOT_KEY, "alice", _seal_plain(value))


def test_authentic_but_unpadded_login_data_is_corrupted() -> None:
    sealed = crypto.seal(ROOT_KEY, bytes(4096), b"pyrgos/login-data/1alice")
    with pytest.raises(Corrupted):
        LoginData.open(ROOT_KEY, "alice", sealed)


def test_authentic_non_cbor_login_data_is_refused() -> None:
    # Only the holder of the root key can produce this; it must still be a typed error.
    sealed = crypto.seal(
        ROOT_KEY, crypto.pad(b"\xff\xff", crypto.PAD_CONTENT), b"pyrgos/login-data/1alice"
    )
    with pytest.raises(PyrgosError):
        LoginData.open(ROOT_KEY, "alice", sealed)


# -- the login throttle ---------------------------------------------------------------------------


def test_throttle_free_failures_then_doubling_delays_up_to_the_cap() -> None:
    throttle = LoginThrottle()
    waits = []
    for _ in range(FREE_FAILURES + 20):
        waits.append(throttle.wait("user:alice", 1000.0))
        throttle.failed(["user:alice"], 1000.0)
    assert waits[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    assert waits[FREE_FAILURES : FREE_FAILURES + 3] == [1.0, 2.0, 4.0]
    assert max(waits) == MAX_DELAY
    assert throttle.wait("user:bob", 1000.0) == 0.0  # keys are independent
    with pytest.raises(RateLimited, match="try again in 900 seconds"):
        throttle.check(["user:bob", "user:alice"], 1000.0, "for this user")
    throttle.check(["user:alice"], 1000.0 + MAX_DELAY, "for this user")  # the wait is over


def test_throttle_forgets_and_resets() -> None:
    throttle = LoginThrottle(free=1)
    for _ in range(10):
        throttle.failed(["a", "b"], 0.0)
    assert throttle.wait("a", 100.0) == 512.0 - 100.0
    assert throttle.wait("a", FORGET_AFTER) == 0.0  # a quiet day: forgotten
    throttle.failed(["a"], FORGET_AFTER)
    assert throttle.wait("a", FORGET_AFTER) == 1.0  # counting starts afresh
    throttle.succeeded(["b"])
    assert throttle.wait("b", 0.0) == 0.0


@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 1e6)), max_size=200))
@settings(max_examples=50, deadline=None)
def test_throttle_memory_is_bounded_and_waits_stay_under_the_cap(
    events: list[tuple[int, float]],
) -> None:
    throttle = LoginThrottle(max_keys=8)
    now = 0.0
    for key, step in events:
        now += step
        throttle.failed([f"k{key}"], now)
        assert 0.0 <= throttle.wait(f"k{key}", now) <= MAX_DELAY
    assert len(throttle._failures) <= 8


def test_session_ids_are_hashes_of_32_byte_tokens() -> None:
    token = bytes(range(SESSION_TOKEN_BYTES))
    assert session_id(token) != token
    assert len(session_id(token)) == 32
    for bad in (b"", token[:-1], token + b"x", "text", None):
        with pytest.raises(MalformedInput, match="session token"):
            session_id(bad)
