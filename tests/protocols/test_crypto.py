"""Tests of protocols.crypto: published vectors, round trips, and every failure mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from protocols import cbor, crypto
from protocols.cid import CID, CODEC_DAG_CBOR, CODEC_RAW, MH_IDENTITY, MH_SHA2_256
from protocols.errors import Corrupted, InvalidName, InvalidSignature, MalformedInput

VECTORS: list[dict[str, str]] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "xwing.json").read_text()
)
MiB = 1024 * 1024
CONTEXT = b"pyrgos/test/1"

# Built once: key generation is the slow part of most tests here.
SIGNER = crypto.SigningKey.generate()
BOXER = crypto.BoxingKey.generate()

contexts = st.binary(max_size=40)


def flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index % len(changed)] ^= 0x01
    return bytes(changed)


# --- X-Wing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=range(len(VECTORS)))
def test_xwing_vectors(vector: dict[str, str]) -> None:
    seed = bytes.fromhex(vector["sk"])
    assert seed == bytes.fromhex(vector["seed"])
    pk, ct, ss = (bytes.fromhex(vector[name]) for name in ("pk", "ct", "ss"))
    assert crypto.xwing_public_key(seed) == pk
    assert crypto.xwing_decapsulate(seed, ct) == ss
    key = crypto.BoxingKey.from_seed(seed)
    assert key.public.raw == pk
    assert key.decapsulate(ct) == ss
    assert key.decapsulate(memoryview(ct)) == ss


def test_xwing_sizes() -> None:
    seed = crypto.random_bytes(crypto.XWING_SEED_BYTES)
    public = crypto.xwing_public_key(seed)
    assert len(public) == crypto.XWING_PUBLIC_BYTES == 1216
    secret, ciphertext = crypto.xwing_encapsulate(public)
    assert len(secret) == 32
    assert len(ciphertext) == crypto.XWING_CIPHERTEXT_BYTES == 1120
    assert crypto.xwing_decapsulate(seed, ciphertext) == secret


def test_xwing_encapsulation_is_randomised() -> None:
    first = BOXER.public.encapsulate()
    second = BOXER.public.encapsulate()
    assert first[0] != second[0]
    assert first[1] != second[1]
    assert BOXER.decapsulate(first[1]) == first[0]
    assert BOXER.decapsulate(second[1]) == second[0]


def test_xwing_wrong_key_gives_unrelated_secret() -> None:
    secret, ciphertext = BOXER.public.encapsulate()
    assert crypto.BoxingKey.generate().decapsulate(ciphertext) != secret


def test_xwing_low_order_x25519_point_does_not_raise() -> None:
    # The X25519 half of the ciphertext set to zero (a low-order point): X-Wing still
    # decapsulates, deterministically; only ML-KEM protects such a secret.
    _, ciphertext = BOXER.public.encapsulate()
    bad = ciphertext[: -crypto._X25519_BYTES] + bytes(crypto._X25519_BYTES)
    assert BOXER.decapsulate(bad) == BOXER.decapsulate(bad)
    assert len(BOXER.decapsulate(bad)) == 32


@pytest.mark.parametrize("length", [0, 1119, 1121])
def test_xwing_decapsulate_rejects_wrong_ciphertext_length(length: int) -> None:
    with pytest.raises(MalformedInput):
        crypto.xwing_decapsulate(BOXER.seed, bytes(length))


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_xwing_rejects_wrong_seed_length(length: int) -> None:
    with pytest.raises(MalformedInput):
        crypto.xwing_public_key(bytes(length))
    with pytest.raises(MalformedInput):
        crypto.BoxingKey.from_seed(bytes(length))


def test_xwing_encapsulate_rejects_bad_public_keys() -> None:
    with pytest.raises(MalformedInput):
        crypto.xwing_encapsulate(BOXER.public.raw[:-1])
    with pytest.raises(MalformedInput):  # coefficients over the ML-KEM modulus
        crypto.xwing_encapsulate(b"\xff" * crypto.XWING_PUBLIC_BYTES)
    with pytest.raises(MalformedInput):
        crypto.BoxingPublicKey(b"\xff" * crypto.XWING_PUBLIC_BYTES)


# --- boxing ------------------------------------------------------------------------------------


@given(plaintext=st.binary(max_size=2000), context=contexts)
def test_box_round_trip(plaintext: bytes, context: bytes) -> None:
    boxed = crypto.box(BOXER.public, plaintext, context)
    assert len(boxed) == crypto.XWING_CIPHERTEXT_BYTES + crypto.SEAL_OVERHEAD + len(plaintext)
    assert crypto.open_box(BOXER, boxed, context) == plaintext
    assert crypto.open_box(BOXER, memoryview(boxed), context) == plaintext


@given(index=st.integers(min_value=0))
def test_box_tampered_anywhere_fails(index: int) -> None:
    boxed = crypto.box(BOXER.public, b"a follow request", CONTEXT)
    with pytest.raises(Corrupted, match="failed authentication"):
        crypto.open_box(BOXER, flip(boxed, index), CONTEXT)


@pytest.mark.parametrize(
    "region", [0, crypto.XWING_CIPHERTEXT_BYTES - 1, crypto.XWING_CIPHERTEXT_BYTES, -1]
)
def test_box_tampered_in_each_region_fails(region: int) -> None:
    # KEM ciphertext (ML-KEM, X25519 halves), AEAD nonce, tag.
    boxed = crypto.box(BOXER.public, b"capability", CONTEXT)
    with pytest.raises(Corrupted):
        crypto.open_box(BOXER, flip(boxed, region), CONTEXT)


def test_box_wrong_key_or_context_fails() -> None:
    boxed = crypto.box(BOXER.public, b"capability", CONTEXT)
    with pytest.raises(Corrupted):
        crypto.open_box(crypto.BoxingKey.generate(), boxed, CONTEXT)
    with pytest.raises(Corrupted):
        crypto.open_box(BOXER, boxed, CONTEXT + b"x")


@pytest.mark.parametrize("cut", [0, 1, crypto.XWING_CIPHERTEXT_BYTES + crypto.SEAL_OVERHEAD - 1])
def test_box_truncated_fails(cut: int) -> None:
    boxed = crypto.box(BOXER.public, b"", CONTEXT)
    with pytest.raises(Corrupted):
        crypto.open_box(BOXER, boxed[:cut], CONTEXT)


def test_box_is_randomised() -> None:
    assert crypto.box(BOXER.public, b"same", CONTEXT) != crypto.box(BOXER.public, b"same", CONTEXT)


def test_boxing_key_from_seed_is_deterministic() -> None:
    again = crypto.BoxingKey.from_seed(BOXER.seed)
    assert again.public == BOXER.public
    assert again == BOXER
    assert hash(again.public) == hash(BOXER.public)
    assert BOXER.seed.hex() not in repr(BOXER)


def test_boxing_public_key_cbor_and_hash() -> None:
    public = BOXER.public
    assert public.to_cbor() == [1, public.raw]
    assert crypto.BoxingPublicKey.from_cbor(cbor.decode(cbor.encode(public.to_cbor()))) == public
    key_hash = public.key_hash()
    assert key_hash.codec == CODEC_DAG_CBOR
    assert key_hash.mh_code == MH_SHA2_256
    assert key_hash == CID.of(CODEC_DAG_CBOR, cbor.encode(public.to_cbor()))
    with pytest.raises(MalformedInput):  # not an identity hash: the key cannot be recovered
        crypto.VerifyKey.from_key_hash(key_hash)


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        [1],
        [2, b"\x00" * 1216],
        [True, b"\x00" * 1216],
        [1, b"\x00" * 1215],
        [1, "text"],
        [1, b"\x00" * 1216, 0],
        {"1": b""},
    ],
)
def test_boxing_public_key_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(MalformedInput):
        crypto.BoxingPublicKey.from_cbor(value)


# --- sealing -----------------------------------------------------------------------------------


@given(plaintext=st.binary(max_size=5000), context=contexts)
def test_seal_round_trip(plaintext: bytes, context: bytes) -> None:
    key = crypto.random_key()
    sealed = crypto.seal(key, plaintext, context)
    assert len(sealed) == len(plaintext) + crypto.SEAL_OVERHEAD
    assert crypto.open_sealed(key, sealed, context) == plaintext
    assert crypto.open_sealed(key, memoryview(sealed), context) == plaintext


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 5 * MiB])
def test_seal_sizes(size: int) -> None:
    key = crypto.random_key()
    plaintext = crypto.random_bytes(size)
    sealed = crypto.seal(key, memoryview(plaintext), CONTEXT)
    assert len(sealed) == size + crypto.SEAL_OVERHEAD
    assert crypto.open_sealed(key, sealed, CONTEXT) == plaintext


@given(plaintext=st.binary(max_size=300), index=st.integers(min_value=0))
def test_seal_tampered_fails(plaintext: bytes, index: int) -> None:
    key = crypto.random_key()
    sealed = crypto.seal(key, plaintext, CONTEXT)
    with pytest.raises(Corrupted, match="failed authentication"):
        crypto.open_sealed(key, flip(sealed, index), CONTEXT)


@given(context=contexts, other=contexts)
def test_seal_wrong_context_fails(context: bytes, other: bytes) -> None:
    key = crypto.random_key()
    sealed = crypto.seal(key, b"file key", context)
    if other == context:
        assert crypto.open_sealed(key, sealed, other) == b"file key"
    else:
        with pytest.raises(Corrupted):
            crypto.open_sealed(key, sealed, other)


def test_seal_wrong_key_truncated_or_appended_fails() -> None:
    key = crypto.random_key()
    sealed = crypto.seal(key, b"data", CONTEXT)
    with pytest.raises(Corrupted):
        crypto.open_sealed(crypto.random_key(), sealed, CONTEXT)
    for cut in (0, crypto.NONCE_BYTES, crypto.SEAL_OVERHEAD - 1, len(sealed) - 1):
        with pytest.raises(Corrupted):
            crypto.open_sealed(key, sealed[:cut], CONTEXT)
    with pytest.raises(Corrupted):
        crypto.open_sealed(key, sealed + b"\x00", CONTEXT)


def test_seal_uses_fresh_nonces() -> None:
    key = crypto.random_key()
    first, second = crypto.seal(key, b"x", CONTEXT), crypto.seal(key, b"x", CONTEXT)
    assert first[: crypto.NONCE_BYTES] != second[: crypto.NONCE_BYTES]
    assert first != second


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_seal_rejects_wrong_key_length(length: int) -> None:
    with pytest.raises(MalformedInput):
        crypto.seal(bytes(length), b"", CONTEXT)
    with pytest.raises(MalformedInput):
        crypto.open_sealed(bytes(length), bytes(100), CONTEXT)


# --- padding -----------------------------------------------------------------------------------


@given(
    data=st.binary(max_size=3000),
    block=st.sampled_from([1, 2, crypto.PAD_KEYS, crypto.PAD_FOLLOW, crypto.PAD_CONTENT, 1000]),
)
def test_pad_round_trip(data: bytes, block: int) -> None:
    padded = crypto.pad(data, block)
    assert len(padded) % block == 0
    assert len(data) < len(padded) <= len(data) + block
    assert len(padded) == crypto.padded_length(len(data), block)
    assert padded[: len(data)] == data
    assert padded[len(data)] == 0x80
    assert not any(padded[len(data) + 1 :])
    assert crypto.unpad(padded) == data
    assert crypto.unpad(memoryview(padded)) == data
    assert crypto.pad(memoryview(data), block) == padded


def test_pad_lengths() -> None:
    assert crypto.padded_length(0, 4096) == 4096
    assert crypto.padded_length(4095, 4096) == 4096
    assert crypto.padded_length(4096, 4096) == 8192
    assert crypto.pad(b"", 64) == b"\x80" + bytes(63)
    with pytest.raises(ValueError, match="positive"):
        crypto.padded_length(1, 0)


@given(data=st.binary(max_size=200), extra=st.integers(min_value=1, max_value=20000))
def test_pad_to_round_trip(data: bytes, extra: int) -> None:
    padded = crypto.pad_to(data, len(data) + extra)
    assert len(padded) == len(data) + extra
    assert crypto.unpad(padded) == data


def test_pad_to_rejects_when_too_small() -> None:
    assert crypto.pad_to(b"abc", 4) == b"abc\x80"
    with pytest.raises(ValueError, match="do not fit"):
        crypto.pad_to(b"abc", 3)
    with pytest.raises(ValueError, match="do not fit"):
        crypto.pad_to(b"", 0)


def test_unpad_long_zero_tail() -> None:
    # Longer than unpad's first look-back window.
    padded = crypto.pad_to(b"x\x80\x00y", 1 * MiB)
    assert crypto.unpad(padded) == b"x\x80\x00y"


def test_unpad_non_byte_view() -> None:
    padded = crypto.pad(b"abc", 8)
    assert crypto.unpad(memoryview(padded).cast("H")) == b"abc"
    assert crypto.pad(memoryview(b"abcd").cast("H"), 8) == b"abcd\x80\x00\x00\x00"


@given(size=st.integers(min_value=0, max_value=10000))
def test_unpad_rejects_all_zero(size: int) -> None:
    with pytest.raises(Corrupted, match="padding"):
        crypto.unpad(bytes(size))


@given(data=st.binary(max_size=500), last=st.integers(min_value=1, max_value=255))
def test_unpad_rejects_missing_marker(data: bytes, last: int) -> None:
    if last == 0x80:
        return
    with pytest.raises(Corrupted, match="padding"):
        crypto.unpad(data + bytes([last]))
    with pytest.raises(Corrupted, match="padding"):
        crypto.unpad(data + bytes([last]) + bytes(7))


@given(
    data=st.binary(max_size=200),
    zeros=st.integers(min_value=0, max_value=100),
    junk=st.integers(min_value=1, max_value=255),
    tail=st.integers(min_value=0, max_value=100),
)
def test_unpad_rejects_nonzero_after_marker(data: bytes, zeros: int, junk: int, tail: int) -> None:
    if junk == 0x80:
        return
    with pytest.raises(Corrupted, match="padding"):
        crypto.unpad(data + b"\x80" + bytes(zeros) + bytes([junk]) + bytes(tail))


# --- hashes ------------------------------------------------------------------------------------


def test_hashes_known_values() -> None:
    assert crypto.sha256(b"").hex().startswith("e3b0c44298fc1c149afbf4c8996fb924")
    assert crypto.blake2b_256(b"").hex() == (
        "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"
    )
    # RFC 4231, test case 2.
    assert crypto.hmac_sha256(b"Jefe", b"what do ya want for nothing?").hex() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    data = b"abc" * 1000
    assert crypto.sha256(memoryview(data)) == crypto.sha256(data)
    assert crypto.blake2b_256(memoryview(data)) == crypto.blake2b_256(data)
    assert len(crypto.blake2b_256(data)) == 32


def test_constant_time_equal_and_randomness() -> None:
    assert crypto.constant_time_equal(b"abc", b"abc")
    assert not crypto.constant_time_equal(b"abc", b"abd")
    assert not crypto.constant_time_equal(b"abc", b"ab")
    assert len(crypto.random_bytes(0)) == 0
    assert len(crypto.random_bytes(77)) == 77
    assert len(crypto.random_key()) == crypto.KEY_BYTES
    assert crypto.random_key() != crypto.random_key()


# --- signatures --------------------------------------------------------------------------------


def test_ed25519_rfc8032_key() -> None:
    # RFC 8032 section 7.1, test 1: the public key of a known seed.
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert crypto.SigningKey.from_seed(seed).public.raw.hex() == public


@given(message=st.binary(max_size=2000), context=contexts)
def test_sign_verify_round_trip(message: bytes, context: bytes) -> None:
    signature = SIGNER.sign(message, context)
    assert len(signature) == 64
    SIGNER.public.verify(message, signature, context)
    SIGNER.public.verify(memoryview(message), signature, context)
    assert SIGNER.sign(memoryview(message), context) == signature  # Ed25519 is deterministic


def test_signature_covers_context_separator_message() -> None:
    signature = SIGNER.sign(b"m", b"ctx")
    # Plain Ed25519 over exactly context ‖ 0x00 ‖ message, checked by an independent verifier.
    ed25519.Ed25519PublicKey.from_public_bytes(SIGNER.public.raw).verify(signature, b"ctx\x00m")
    with pytest.raises(InvalidSignature):
        SIGNER.public.verify(b"m", signature, b"ctx\x00")
    with pytest.raises(InvalidSignature):
        SIGNER.public.verify(b"\x00m", signature, b"ctx")


def test_signature_wrong_context_key_or_message_fails() -> None:
    signature = SIGNER.sign(b"pointer", CONTEXT)
    with pytest.raises(InvalidSignature):
        SIGNER.public.verify(b"pointer", signature, b"pyrgos/other/1")
    with pytest.raises(InvalidSignature):
        crypto.SigningKey.generate().public.verify(b"pointer", signature, CONTEXT)
    with pytest.raises(InvalidSignature):
        SIGNER.public.verify(b"pointes", signature, CONTEXT)


@given(index=st.integers(min_value=0, max_value=63))
def test_signature_tampered_fails(index: int) -> None:
    signature = SIGNER.sign(b"pointer", CONTEXT)
    with pytest.raises(InvalidSignature):
        SIGNER.public.verify(b"pointer", flip(signature, index), CONTEXT)


@pytest.mark.parametrize("length", [0, 63, 65])
def test_signature_wrong_length_fails(length: int) -> None:
    with pytest.raises(InvalidSignature):
        SIGNER.public.verify(b"pointer", bytes(length), CONTEXT)


def test_small_order_key_verifies_nothing() -> None:
    # The identity point as a key with R = identity, S = 0 satisfies the cofactorless
    # equation for every message; libsodium refuses it.
    identity = b"\x01" + bytes(31)
    with pytest.raises(InvalidSignature):
        crypto.VerifyKey(identity).verify(b"anything", identity + bytes(32), CONTEXT)
    with pytest.raises(InvalidSignature):
        crypto.VerifyKey(bytes(32)).verify(b"anything", bytes(64), CONTEXT)


def test_signing_key_seed_and_repr() -> None:
    again = crypto.SigningKey.from_seed(SIGNER.seed)
    assert again.public == SIGNER.public
    assert again == SIGNER
    assert hash(again) == hash(SIGNER)
    assert len(SIGNER.seed) == 32
    assert SIGNER.seed.hex() not in repr(SIGNER)
    assert SIGNER.seed.hex() not in str(SIGNER)
    with pytest.raises(MalformedInput):
        crypto.SigningKey.from_seed(bytes(31))


def test_verify_key_cbor_and_key_hash() -> None:
    public = SIGNER.public
    assert public.to_cbor() == [1, public.raw]
    assert crypto.VerifyKey.from_cbor(cbor.decode(cbor.encode(public.to_cbor()))) == public
    key_hash = public.key_hash()
    assert key_hash.codec == CODEC_DAG_CBOR
    assert key_hash.mh_code == MH_IDENTITY
    assert len(key_hash.digest) == 36
    assert key_hash.digest == cbor.encode(public.to_cbor())
    assert crypto.VerifyKey.from_key_hash(key_hash) == public
    assert crypto.VerifyKey.from_key_hash(CID.from_text(key_hash.text)) == public
    assert {public, crypto.VerifyKey(bytes(public.raw))} == {public}
    assert public != crypto.SigningKey.generate().public


def test_from_key_hash_rejects_other_cids() -> None:
    encoded = cbor.encode(SIGNER.public.to_cbor())
    with pytest.raises(MalformedInput):
        crypto.VerifyKey.from_key_hash(CID(CODEC_RAW, MH_IDENTITY, encoded))
    with pytest.raises(MalformedInput):
        crypto.VerifyKey.from_key_hash(CID.of(CODEC_DAG_CBOR, encoded))
    with pytest.raises(MalformedInput):  # inlined, but not a key
        crypto.VerifyKey.from_key_hash(CID(CODEC_DAG_CBOR, MH_IDENTITY, cbor.encode([1, 2])))
    with pytest.raises(MalformedInput):  # inlined, but not CBOR
        crypto.VerifyKey.from_key_hash(CID(CODEC_DAG_CBOR, MH_IDENTITY, b"\xff"))


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"\x00" * 32,
        [],
        [1],
        [1, b"\x00" * 31],
        [1, b"\x00" * 33],
        [True, b"\x00" * 32],
        [0, b"\x00" * 32],
        [2, b"\x00" * 32],
        [1, "00" * 32],
        [1, b"\x00" * 32, None],
    ],
)
def test_verify_key_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(MalformedInput):
        crypto.VerifyKey.from_cbor(value)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_verify_key_rejects_wrong_length(length: int) -> None:
    with pytest.raises(MalformedInput):
        crypto.VerifyKey(bytes(length))


# --- password KDF ------------------------------------------------------------------------------

SALT = bytes(range(16))
TEST_PARAMS = crypto.KdfParams(crypto.KDF_TEST_OPSLIMIT, crypto.KDF_TEST_MEMLIMIT, SALT)


def test_login_keys_are_deterministic() -> None:
    first = crypto.derive_login_keys("alice", "correct horse", TEST_PARAMS)
    second = crypto.derive_login_keys("alice", "correct horse", TEST_PARAMS)
    assert first == second
    assert first.signing.public == second.signing.public
    assert len(first.root_key) == 32
    assert first.root_key != first.signing.seed
    assert first.root_key.hex() not in repr(first)
    assert first.signing.seed.hex() not in repr(first)
    signature = first.signing.sign(b"login", CONTEXT)
    second.signing.public.verify(b"login", signature, CONTEXT)


def test_login_keys_depend_on_every_input() -> None:
    base = crypto.derive_login_keys("alice", "correct horse", TEST_PARAMS)
    others = [
        crypto.derive_login_keys("alicf", "correct horse", TEST_PARAMS),
        crypto.derive_login_keys("alice", "correct horsf", TEST_PARAMS),
        crypto.derive_login_keys("alice", "correct horse", crypto.KdfParams.test_profile()),
        crypto.derive_login_keys("alice", "correct horse", crypto.KdfParams(2, 8 * MiB, SALT)),
        crypto.derive_login_keys("alicec", "orrect horse", TEST_PARAMS),  # moved boundary
        crypto.derive_login_keys("ålice", "correct horse", TEST_PARAMS),
    ]
    roots = {keys.root_key for keys in [base, *others]}
    publics = {keys.signing.public for keys in [base, *others]}
    assert len(roots) == len(publics) == 1 + len(others)


def test_login_rejects_nul_in_username() -> None:
    with pytest.raises(InvalidName):
        crypto.derive_login_keys("al\x00ice", "pw", TEST_PARAMS)


def test_login_accepts_any_password() -> None:
    keys = crypto.derive_login_keys("bob", "", TEST_PARAMS)
    assert keys != crypto.derive_login_keys("bob", "\x00", TEST_PARAMS)


def test_kdf_profiles() -> None:
    production = crypto.KdfParams.production()
    assert production.opslimit == 3
    assert production.memlimit == 256 * MiB
    assert len(production.salt) == 16
    assert production.is_production_strength
    assert production.salt != crypto.KdfParams.production().salt
    test = crypto.KdfParams.test_profile()
    assert (test.opslimit, test.memlimit, len(test.salt)) == (1, 8 * MiB, 16)
    assert not test.is_production_strength
    assert not crypto.KdfParams(3, 255 * MiB, SALT).is_production_strength
    assert not crypto.KdfParams(2, 256 * MiB, SALT).is_production_strength
    assert crypto.KdfParams(4, 512 * MiB, SALT).is_production_strength


@given(
    opslimit=st.integers(min_value=1, max_value=100),
    memlimit=st.integers(min_value=8192, max_value=4 * 1024 * MiB),
    salt=st.binary(min_size=16, max_size=16),
)
def test_kdf_params_cbor_round_trip(opslimit: int, memlimit: int, salt: bytes) -> None:
    params = crypto.KdfParams(opslimit, memlimit, salt)
    assert params.to_cbor() == {"t": opslimit, "m": memlimit, "s": salt}
    assert crypto.KdfParams.from_cbor(cbor.decode(cbor.encode(params.to_cbor()))) == params


@pytest.mark.parametrize(
    "value",
    [
        None,
        [1, 8 * MiB, SALT],
        {},
        {"t": 1, "m": 8 * MiB},
        {"t": 1, "m": 8 * MiB, "s": SALT, "x": 0},
        {"t": True, "m": 8 * MiB, "s": SALT},
        {"t": "1", "m": 8 * MiB, "s": SALT},
        {"t": 0, "m": 8 * MiB, "s": SALT},
        {"t": 101, "m": 8 * MiB, "s": SALT},
        {"t": -1, "m": 8 * MiB, "s": SALT},
        {"t": 1, "m": 4 * 1024 * MiB + 1, "s": SALT},
        {"t": 1, "m": 2**64 - 1, "s": SALT},
        {"t": 1, "m": 8191, "s": SALT},
        {"t": 1, "m": 8 * MiB, "s": SALT[:15]},
        {"t": 1, "m": 8 * MiB, "s": SALT + b"\x00"},
        {"t": 1, "m": 8 * MiB, "s": SALT.hex()},
    ],
)
def test_kdf_params_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(MalformedInput):
        crypto.KdfParams.from_cbor(value)
