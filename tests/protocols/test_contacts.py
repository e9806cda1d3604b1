"""Tests of protocols.contacts: the TOFU rule, the keystore format and safety numbers."""

from __future__ import annotations

from typing import Any

import pytest

from protocols import cbor
from protocols.contacts import (
    FINGERPRINT_DIGITS,
    MAX_CONTACTS,
    KeyStore,
    TrustedKey,
    check_contact,
    fingerprint,
    matches,
    normalise_fingerprint,
    verify,
)
from protocols.crypto import SigningKey
from protocols.errors import Denied, MalformedInput, TooLarge

BOB = SigningKey.from_seed(bytes(range(32))).public.key_hash()
EVE = SigningKey.from_seed(bytes(range(1, 33))).public.key_hash()
NOW = 1_700_000_000_000


def test_first_use_is_trusted_then_same_then_changed() -> None:
    store, verdict = check_contact(KeyStore({}), "bob", BOB, NOW)
    assert verdict == "new"
    assert store.keys["bob"] == TrustedKey(BOB, verified=False, first_seen=NOW)
    again, verdict = check_contact(store, "bob", BOB, NOW + 5)
    assert (again, verdict) == (store, "same")
    changed, verdict = check_contact(store, "bob", EVE, NOW + 9)
    assert verdict == "changed"
    assert changed == store  # the recorded key stays until verified


def test_verify_records_the_new_key_as_verified() -> None:
    store, _ = check_contact(KeyStore({}), "bob", BOB, NOW)
    with pytest.raises(Denied, match="not the one"):
        verify(store, "bob", EVE, fingerprint(BOB), NOW)
    verified = verify(store, "bob", EVE, fingerprint(EVE), NOW + 1)
    assert verified.keys["bob"] == TrustedKey(EVE, verified=True, first_seen=NOW + 1)
    assert check_contact(verified, "bob", EVE, NOW + 2)[1] == "same"
    same = verify(store, "bob", BOB, fingerprint(BOB).replace(" ", ""), NOW + 3)
    assert same.keys["bob"] == TrustedKey(BOB, verified=True, first_seen=NOW)


def test_fingerprint_shape_and_stability() -> None:
    shown = fingerprint(BOB)
    groups = shown.split(" ")
    assert len(groups) == 12
    assert all(len(g) == 5 and g.isdigit() for g in groups)
    assert len(shown.replace(" ", "")) == FINGERPRINT_DIGITS == 60
    assert fingerprint(BOB) == shown
    assert fingerprint(EVE) != shown


def test_typed_fingerprints_ignore_spaces_only() -> None:
    digits = fingerprint(BOB).replace(" ", "")
    assert matches(BOB, digits)
    assert matches(BOB, " ".join(digits[i : i + 3] for i in range(0, 60, 3)))
    assert not matches(EVE, digits)
    for bad in ("", digits[:-1], digits + "0", digits[:-1] + "x", digits[:-1] + "\u0663"):
        with pytest.raises(MalformedInput, match="60 digits"):
            normalise_fingerprint(bad)


def test_keystore_round_trip_and_strictness() -> None:
    store = KeyStore({"bob": TrustedKey(BOB, True, NOW), "eve": TrustedKey(EVE, False, 1)})
    assert KeyStore.decode(store.encode()) == store
    bad: list[Any] = [
        [],
        {"v": 2, "keys": {}},
        {"v": 1, "keys": {"Bob": TrustedKey(BOB, True, 1).to_cbor()}},
        {"v": 1, "keys": {"bob": {"identity": b"x", "verified": True, "first_seen": 1}}},
        {"v": 1, "keys": {"bob": {"identity": BOB, "verified": 1, "first_seen": 1}}},
        {"v": 1, "keys": {"bob": {"identity": BOB, "verified": True, "first_seen": -1}}},
        {"v": 1, "keys": {"bob": {"identity": BOB, "verified": True}}},
    ]
    for value in bad:
        with pytest.raises(MalformedInput):
            KeyStore.decode(cbor.encode(value))


def test_keystore_is_bounded() -> None:
    full = KeyStore({f"u{i}": TrustedKey(BOB, False, 1) for i in range(MAX_CONTACTS)})
    with pytest.raises(TooLarge):
        check_contact(full, "newcomer", EVE, NOW)
    assert check_contact(full, "u1", BOB, NOW)[1] == "same"
    value = {"v": 1, "keys": {f"u{i}": TrustedKey(BOB, False, 1).to_cbor() for i in range(10_001)}}
    with pytest.raises(MalformedInput, match="at most"):
        KeyStore.decode(cbor.encode(value))
