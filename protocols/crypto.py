"""Every cryptographic primitive and constant pyrgos uses, behind one small typed API.

Pure functions over bytes: AEAD sealing, padding, hashes, Ed25519, X-Wing boxing, Argon2id.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import hmac
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import nacl.bindings as sodium
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from protocols import cbor
from protocols.cid import CID, CODEC_DAG_CBOR, MAX_IDENTITY_DIGEST, MH_IDENTITY
from protocols.errors import Corrupted, InvalidName, InvalidSignature, MalformedInput

Data: TypeAlias = bytes | bytearray | memoryview

# --- symmetric encryption: XChaCha20-Poly1305 (IETF) -------------------------------------------
KEY_BYTES: Final = 32  # 256-bit keys keep a post-quantum margin against Grover
NONCE_BYTES: Final = 24  # XChaCha's extended nonce is safe to pick at random for every message
TAG_BYTES: Final = 16  # Poly1305 tag
SEAL_OVERHEAD: Final = NONCE_BYTES + TAG_BYTES  # nonce prefix and tag suffix of every sealed value

# --- padding (ISO/IEC 7816-4), so ciphertext sizes leak only a coarse bucket -------------------
PAD_CONTENT: Final = 4096  # file and directory contents, login data: one page hides small edits
PAD_FOLLOW: Final = 512  # follow requests are short; hide the name lengths inside them
PAD_KEYS: Final = 64  # key blocks: hide how many keys they hold, to within two
PAD_MARKER: Final = 0x80  # the 7816-4 marker byte; everything after it is zero
_UNPAD_WINDOW: Final = 4096  # first tail slice unpad() inspects; doubles while it is all zeros

# --- hashes ------------------------------------------------------------------------------------
HASH_BYTES: Final = 32  # SHA-256, BLAKE2b-256 and HMAC-SHA256 outputs: 128-bit collision margin

# --- signatures: Ed25519 -----------------------------------------------------------------------
SIGN_PUBLIC_BYTES: Final = 32  # Ed25519 public key
SIGN_SEED_BYTES: Final = 32  # Ed25519 private seed (RFC 8032 private key)
SIGNATURE_BYTES: Final = 64  # detached Ed25519 signature R ‖ S
SIGN_SEPARATOR: Final = b"\x00"  # ends the context: ASCII contexts never contain NUL
KEY_TYPE_ED25519: Final = 1  # first element of a signing key's CBOR
KEY_TYPE_HYBRID_SIGN: Final = 2  # reserved: Ed25519 + ML-DSA-65, not implemented yet
KEY_TYPE_XWING: Final = 1  # first element of a boxing key's CBOR

# --- X-Wing hybrid KEM (draft-connolly-cfrg-xwing-kem) -----------------------------------------
XWING_SEED_BYTES: Final = 32  # the whole private key; expanded with SHAKE-256
_XWING_EXPANDED_BYTES: Final = 96  # ML-KEM d ‖ z (64) then the X25519 private key (32)
_MLKEM_SEED_BYTES: Final = 64  # FIPS 203 key generation seed d ‖ z
_MLKEM_PUBLIC_BYTES: Final = 1184  # ML-KEM-768 encapsulation key
_MLKEM_CIPHERTEXT_BYTES: Final = 1088  # ML-KEM-768 ciphertext
_X25519_BYTES: Final = 32  # X25519 public keys, private keys and shared secrets
XWING_PUBLIC_BYTES: Final = _MLKEM_PUBLIC_BYTES + _X25519_BYTES  # pk_M ‖ pk_X = 1216
XWING_CIPHERTEXT_BYTES: Final = _MLKEM_CIPHERTEXT_BYTES + _X25519_BYTES  # ct_M ‖ ct_X = 1120
XWING_SHARED_BYTES: Final = 32  # SHA3-256 combiner output
XWING_LABEL: Final = b"\\./" + b"/^\\"  # the draft's 6-byte label, hashed last by the combiner
# RFC 7748 X25519 yields all zeros for a low-order peer point; cryptography refuses to return
# it, but X-Wing feeds the raw value to the combiner (ML-KEM still protects the secret).
_X25519_LOW_ORDER_RESULT: Final = bytes(_X25519_BYTES)

# --- password KDF: Argon2id (libsodium crypto_pwhash) ------------------------------------------
KDF_SALT_BYTES: Final = 16  # libsodium's crypto_pwhash salt size; random per user
KDF_OUTPUT_BYTES: Final = 64  # Ed25519 login seed (32) then the login-data root key (32)
KDF_ALG: Final = sodium.crypto_pwhash_ALG_ARGON2ID13  # Argon2id v1.3: side-channel + GPU resistant
KDF_PRODUCTION_OPSLIMIT: Final = 3  # passes over memory (OWASP / RFC 9106 second profile)
KDF_PRODUCTION_MEMLIMIT: Final = 256 * 1024 * 1024  # 256 MiB: costly to attack on GPUs and ASICs
KDF_TEST_OPSLIMIT: Final = 1  # test profile: a few ms per login, refused outside test mode
KDF_TEST_MEMLIMIT: Final = 8 * 1024 * 1024  # 8 MiB
KDF_MIN_OPSLIMIT: Final = 1  # libsodium's Argon2id minimum
KDF_MAX_OPSLIMIT: Final = 100  # beyond this a published parameter set is a denial of service
KDF_MIN_MEMLIMIT: Final = sodium.crypto_pwhash_argon2id_MEMLIMIT_MIN  # libsodium's minimum (8 KiB)
KDF_MAX_MEMLIMIT: Final = 4 * 1024 * 1024 * 1024  # 4 GiB: more than any client should allocate
LOGIN_CONTEXT: Final = b"pyrgos/login/1\x00"  # domain-separates login passwords from other uses
_LOGIN_SEPARATOR: Final = b"\x00"  # between username and password; names never contain NUL


# ================================================================================================
# randomness, hashes, comparison


def random_bytes(n: int) -> bytes:
    """`n` bytes from the operating system's CSPRNG (through libsodium); inside
    `deterministic_randomness` only, from that seed's generator. Every secret, nonce and salt
    pyrgos makes comes from here."""
    generator = _DETERMINISTIC.get()
    return sodium.randombytes(n) if generator is None else generator.draw(n)


def random_fraction() -> float:
    """A float in [0, 1) from `random_bytes`: jitter that a simulation's seed reproduces."""
    return int.from_bytes(random_bytes(7), "big") / (1 << 56)


def random_key() -> bytes:
    """A fresh 32-byte symmetric key."""
    return random_bytes(KEY_BYTES)


class _SeededGenerator:
    """BLAKE2b in counter mode under a key derived from the seed: every draw is a function of
    the seed and of the draws before it."""

    def __init__(self, seed: bytes) -> None:
        self._key = hashlib.blake2b(seed, digest_size=64, person=b"pyrgos-sim-rng").digest()
        self._counter = 0

    def draw(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            block = self._counter.to_bytes(16, "big")
            out += hashlib.blake2b(block, key=self._key, digest_size=64).digest()
            self._counter += 1
        return bytes(out[:n])


# Set only by `deterministic_randomness`, for the context that entered it (and the tasks it
# starts); nothing reads an environment variable or a setting to turn it on (docs/security.md).
_DETERMINISTIC: contextvars.ContextVar[_SeededGenerator | None] = contextvars.ContextVar(
    "pyrgos_deterministic_randomness", default=None
)


@contextlib.contextmanager
def deterministic_randomness(seed: bytes) -> Iterator[None]:
    """FOR SIMULATIONS ONLY: within this block, `random_bytes` (so every key, nonce, salt and
    token) is derived from `seed`, and so is predictable to anyone who knows it. The
    simulation harness (simulations/) uses it so that one seed reproduces a run; a node or
    CLI process refuses to start inside it (`require_system_randomness`). ML-KEM
    encapsulation draws from OpenSSL whatever this says: its ciphertexts differ between
    runs, their sizes do not."""
    token = _DETERMINISTIC.set(_SeededGenerator(seed))
    try:
        yield
    finally:
        _DETERMINISTIC.reset(token)


def require_system_randomness() -> None:
    """Raise unless `random_bytes` draws from the operating system and no results are shared
    (`shared_results`): a node, or a user's command, never runs on a seeded generator or on
    verdicts another party reached."""
    if _DETERMINISTIC.get() is not None:
        raise RuntimeError(
            "deterministic randomness is on: pyrgos runs no node or client command with it"
        )
    if _SHARED.get() is not None:
        raise RuntimeError("shared results are on: pyrgos runs no node or client command with it")


class Memo:
    """Results of pure functions of bytes (a verdict, a parsed immutable value), kept by kind
    and input bytes. Once the inputs kept pass `max_bytes`, the oldest go first, but one used
    since it was kept or last passed over gets a second chance (an approximation of least
    recently used whose hits cost a lookup alone). Only `shared_results` makes one that
    anything reads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0  # bytes of the inputs kept
        self.hits = 0
        self.misses = 0
        self._kinds: dict[str, dict[bytes, list[object]]] = {}  # kind -> input -> [result, used]
        self._order: deque[tuple[str, bytes]] = deque()  # as kept, or given a second chance

    def get(self, kind: str, key: bytes) -> object | None:
        """The result kept for `key`, or None (no function kept here returns None)."""
        kept = self._kinds.get(kind)
        slot = None if kept is None else kept.get(key)
        if slot is None:
            self.misses += 1
            return None
        slot[1] = True
        self.hits += 1
        return slot[0]

    def put(self, kind: str, key: bytes, value: object) -> None:
        kept = self._kinds.setdefault(kind, {})
        if key in kept or len(key) > self.max_bytes:
            return
        self.size += len(key)
        while self.size > self.max_bytes:  # room first: the new input is not passed over
            old_kind, old = self._order.popleft()
            slot = self._kinds[old_kind][old]
            if slot[1]:
                slot[1] = False
                self._order.append((old_kind, old))
                continue
            del self._kinds[old_kind][old]
            self.size -= len(old)
        kept[key] = [value, False]
        self._order.append((kind, key))

    def __len__(self) -> int:
        return len(self._order)


MEMO_BYTES: Final = 64 * 1024 * 1024  # of inputs kept: a few hundred thousand signatures

# Set only by `shared_results`, as `_DETERMINISTIC` by `deterministic_randomness`.
_SHARED: contextvars.ContextVar[Memo | None] = contextvars.ContextVar(
    "pyrgos_shared_results", default=None
)


@contextlib.contextmanager
def shared_results(max_bytes: int = MEMO_BYTES) -> Iterator[Memo]:
    """FOR SIMULATIONS ONLY: within this block, Ed25519 verification (`VerifyKey.verify`) and
    the decoding of PKI entries (`pki.Entry.decode`) remember their results by input bytes,
    so that the many nodes of one process do not repeat the same work on the same bytes. A
    kept result is the one the function returned (or, for a signature, the failure it
    raised), so a node accepts and refuses exactly what it would without; but a node must
    reach its verdicts itself, so a node or CLI process refuses to start inside this block
    (`require_system_randomness`)."""
    memo = Memo(max_bytes)
    token = _SHARED.set(memo)
    try:
        yield memo
    finally:
        _SHARED.reset(token)


def shared_memo() -> Memo | None:
    """The memo of the `shared_results` block this runs in, if any."""
    return _SHARED.get()


def sha256(data: Data) -> bytes:
    return hashlib.sha256(data).digest()


def blake2b_256(data: Data) -> bytes:
    """BLAKE2b with a 32-byte digest (the parameterised variant, not a truncation)."""
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def hmac_sha256(key: Data, msg: Data) -> bytes:
    return hmac.digest(key, msg, "sha256")


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets (tags, tokens, hashes) without leaking where they differ."""
    return hmac.compare_digest(a, b)


def _as_bytes(data: Data) -> bytes:
    # bytes(x) of an exact bytes object returns it unchanged, so this copies only views.
    return data if type(data) is bytes else bytes(data)


def _byte_view(data: Data) -> memoryview:
    """A flat view of `data` indexed by byte, whatever the item format of a given view."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# ================================================================================================
# symmetric sealing


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise MalformedInput(f"a symmetric key must be {KEY_BYTES} bytes")


def seal(key: bytes, plaintext: Data, context: bytes, *, prefix: bytes = b"") -> bytes:
    """XChaCha20-Poly1305 under `key` with a random nonce; `context` is the associated data.

    Returns prefix ‖ nonce ‖ ciphertext ‖ tag (the prefix, e.g. a block header, is joined in
    the same copy rather than in another one).
    """
    _check_key(key)
    nonce = random_bytes(NONCE_BYTES)
    body = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        _as_bytes(plaintext), context, nonce, key
    )
    return b"".join((prefix, nonce, body))


def open_sealed(key: bytes, sealed: Data, context: bytes) -> bytes:
    """Undo `seal`; Corrupted when the key, the context or any byte is wrong."""
    _check_key(key)
    view = _byte_view(sealed)
    if len(view) < SEAL_OVERHEAD:
        raise Corrupted("sealed value failed authentication: too short")
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(view[NONCE_BYTES:]), context, bytes(view[:NONCE_BYTES]), key
        )
    except nacl.exceptions.CryptoError:
        raise Corrupted("sealed value failed authentication") from None


# ================================================================================================
# padding (ISO/IEC 7816-4)


def padded_length(n: int, block: int) -> int:
    """Length `pad` gives `n` bytes: the next multiple of `block` strictly above `n`."""
    if block <= 0 or n < 0:
        raise ValueError("padding needs a positive block and a non-negative length")
    return (n // block + 1) * block


def pad(data: Data, block: int) -> bytes:
    """data ‖ 0x80 ‖ zeros, to a multiple of `block`; always adds at least one byte."""
    return pad_to(data, padded_length(_byte_view(data).nbytes, block))


def pad_to(data: Data, size: int) -> bytes:
    """data ‖ 0x80 ‖ zeros, to exactly `size` bytes; ValueError if it does not fit."""
    length = _byte_view(data).nbytes
    zeros = size - length - 1
    if zeros < 0:
        raise ValueError(f"{length} bytes do not fit padded into {size}")
    return b"".join((data, b"\x80", bytes(zeros)))


def unpad(padded: Data) -> bytes:
    """Strip 7816-4 padding; Corrupted when it is malformed.

    Runs only on authenticated plaintext, so it need not be constant-time. It scans back from
    the end in growing slices, so a view costs one copy: the returned data.
    """
    view = _byte_view(padded)
    end = len(view)
    window = _UNPAD_WINDOW
    while end > 0:
        start = max(0, end - window)
        kept = bytes(view[start:end]).rstrip(b"\x00")
        if kept:
            if kept[-1] != PAD_MARKER:
                raise Corrupted("malformed padding: no 0x80 marker before the trailing zeros")
            return bytes(view[: start + len(kept) - 1])
        end = start
        window *= 2
    raise Corrupted("malformed padding: no 0x80 marker")


# ================================================================================================
# key hashes


def _key_hash(encoded: bytes) -> CID:
    # Short keys are inlined (identity multihash) so the CID alone carries the key.
    if len(encoded) <= MAX_IDENTITY_DIGEST:
        return CID(CODEC_DAG_CBOR, MH_IDENTITY, encoded)
    return CID.of(CODEC_DAG_CBOR, encoded)


def _key_body(value: object, key_type: int, length: int, what: str) -> bytes:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or type(value[0]) is not int
        or not isinstance(value[1], bytes)
    ):
        raise MalformedInput(f"{what} must be [type, key bytes]")
    if value[0] != key_type:
        raise MalformedInput(f"unsupported {what} type {value[0]}")
    if len(value[1]) != length:
        raise MalformedInput(f"{what} must be {length} bytes")
    return value[1]


# ================================================================================================
# signatures: Ed25519 with a context prefix


def _signed_bytes(message: Data, context: bytes) -> list[Data]:
    return [context, SIGN_SEPARATOR, message]


class VerifyKey:
    """An Ed25519 public key."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != SIGN_PUBLIC_BYTES:
            raise MalformedInput(f"an Ed25519 public key must be {SIGN_PUBLIC_BYTES} bytes")
        self.raw = raw

    def verify(self, message: Data, signature: bytes, context: bytes) -> None:
        """Raise InvalidSignature unless `signature` signs context ‖ 0x00 ‖ message."""
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            raise InvalidSignature("signature has the wrong length")
        # libsodium's verifier (unlike OpenSSL's) also rejects small-order keys and R values and
        # non-canonical encodings, so no key verifies signatures it did not make. PyNaCl exposes
        # only the attached form, which takes signature ‖ message.
        signed = b"".join([signature, *_signed_bytes(message, context)])
        memo = _SHARED.get()
        if memo is not None:
            known_as = self.raw + signed
            known = memo.get("ed25519", known_as)
            if known is not None:
                if known is False:
                    raise InvalidSignature("signature does not verify")
                return
        try:
            sodium.crypto_sign_open(signed, self.raw)
        except nacl.exceptions.BadSignatureError:
            if memo is not None:
                memo.put("ed25519", known_as, False)
            raise InvalidSignature("signature does not verify") from None
        if memo is not None:
            memo.put("ed25519", known_as, True)

    def to_cbor(self) -> list[object]:
        return [KEY_TYPE_ED25519, self.raw]

    @classmethod
    def from_cbor(cls, value: object) -> VerifyKey:
        # Type first: a decoded value may be bytes, and bytes == int is a BytesWarning.
        kind = value[0] if isinstance(value, list) and value else None
        if type(kind) is int and kind == KEY_TYPE_HYBRID_SIGN:
            raise MalformedInput("hybrid signing keys are not supported yet")
        return cls(_key_body(value, KEY_TYPE_ED25519, SIGN_PUBLIC_BYTES, "signing key"))

    def key_hash(self) -> CID:
        """CIDv1 dag-cbor of the key's CBOR; inlined (identity multihash, 36 bytes)."""
        return _key_hash(cbor.encode(self.to_cbor()))

    @classmethod
    def from_key_hash(cls, cid: CID) -> VerifyKey:
        """Recover the key inlined in an identity key hash."""
        if cid.codec != CODEC_DAG_CBOR or cid.mh_code != MH_IDENTITY:
            raise MalformedInput("key hash does not inline its key")
        return _key_of_hash(cid.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self.raw.hex()})"


# The canonical CBOR of an Ed25519 key, [1, 32-byte string], up to the key's own bytes.
_ED25519_KEY_HEAD: Final = b"\x82\x01\x58\x20"


@functools.lru_cache(maxsize=4096)  # a PKI sync checks the same keys' claims on every node
def _key_of_hash(digest: bytes) -> VerifyKey:
    # The one form `key_hash` makes is that head and 32 bytes, which are the key, as decoding
    # would find: a sync of a log longer than the cache recovers each key without decoding.
    if len(digest) == len(_ED25519_KEY_HEAD) + SIGN_PUBLIC_BYTES and digest.startswith(
        _ED25519_KEY_HEAD
    ):
        return VerifyKey(digest[len(_ED25519_KEY_HEAD) :])
    return VerifyKey.from_cbor(cbor.decode(digest))


class SigningKey:
    """An Ed25519 private key; signatures cover context ‖ 0x00 ‖ message."""

    __slots__ = ("_secret", "public", "seed")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SIGN_SEED_BYTES:
            raise MalformedInput(f"an Ed25519 seed must be {SIGN_SEED_BYTES} bytes")
        public, secret = sodium.crypto_sign_seed_keypair(seed)
        self.seed = seed
        self._secret = secret  # libsodium's 64-byte seed ‖ public form
        self.public = VerifyKey(public)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(random_bytes(SIGN_SEED_BYTES))

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        return cls(seed)

    def sign(self, message: Data, context: bytes) -> bytes:
        """Detached 64-byte signature over context ‖ 0x00 ‖ message."""
        signed = sodium.crypto_sign(b"".join(_signed_bytes(message, context)), self._secret)
        return signed[:SIGNATURE_BYTES]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningKey) and hmac.compare_digest(other.seed, self.seed)

    def __hash__(self) -> int:
        return hash(self.public)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.raw.hex()})"


# ================================================================================================
# X-Wing hybrid KEM


class _XWingPrivate:
    """A seed expanded into its ML-KEM-768 and X25519 halves."""

    __slots__ = ("mlkem", "public", "x25519", "x25519_public")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != XWING_SEED_BYTES:
            raise MalformedInput(f"an X-Wing seed must be {XWING_SEED_BYTES} bytes")
        expanded = hashlib.shake_256(seed).digest(_XWING_EXPANDED_BYTES)
        self.mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:_MLKEM_SEED_BYTES])
        self.x25519 = x25519.X25519PrivateKey.from_private_bytes(expanded[_MLKEM_SEED_BYTES:])
        self.x25519_public = self.x25519.public_key().public_bytes_raw()
        self.public = self.mlkem.public_key().public_bytes_raw() + self.x25519_public

    def decapsulate(self, ciphertext: Data) -> bytes:
        view = _byte_view(ciphertext)
        if len(view) != XWING_CIPHERTEXT_BYTES:
            raise MalformedInput(f"an X-Wing ciphertext must be {XWING_CIPHERTEXT_BYTES} bytes")
        ct_x = bytes(view[_MLKEM_CIPHERTEXT_BYTES:])
        # ML-KEM decapsulation never fails on a well-sized ciphertext (implicit rejection).
        ss_m = self.mlkem.decapsulate(bytes(view[:_MLKEM_CIPHERTEXT_BYTES]))
        ss_x = _x25519(self.x25519, ct_x)
        return _combine(ss_m, ss_x, ct_x, self.x25519_public)


def _x25519(private: x25519.X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(x25519.X25519PublicKey.from_public_bytes(public))
    except ValueError:  # low-order point: RFC 7748's result is all zeros
        return _X25519_LOW_ORDER_RESULT


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return hashlib.sha3_256(b"".join((ss_m, ss_x, ct_x, pk_x, XWING_LABEL))).digest()


def _mlkem_public(raw: bytes) -> mlkem.MLKEM768PublicKey:
    try:
        return mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUBLIC_BYTES])
    except ValueError:  # fails FIPS 203's modulus check
        raise MalformedInput("invalid ML-KEM-768 public key") from None


def _encapsulate(mlkem_public: mlkem.MLKEM768PublicKey, pk_x: bytes) -> tuple[bytes, bytes]:
    ephemeral = x25519.X25519PrivateKey.from_private_bytes(random_bytes(_X25519_BYTES))
    ct_x = ephemeral.public_key().public_bytes_raw()
    ss_x = _x25519(ephemeral, pk_x)
    ss_m, ct_m = mlkem_public.encapsulate()
    return _combine(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x


def xwing_public_key(seed: bytes) -> bytes:
    """The 1216-byte X-Wing public key (ML-KEM-768 ‖ X25519) of a 32-byte seed."""
    return _XWingPrivate(seed).public


def xwing_encapsulate(public: bytes) -> tuple[bytes, bytes]:
    """A fresh (32-byte shared secret, 1120-byte ciphertext) for `public`."""
    if len(public) != XWING_PUBLIC_BYTES:
        raise MalformedInput(f"an X-Wing public key must be {XWING_PUBLIC_BYTES} bytes")
    return _encapsulate(_mlkem_public(public), public[_MLKEM_PUBLIC_BYTES:])


def xwing_decapsulate(seed: bytes, ciphertext: bytes) -> bytes:
    """The shared secret in `ciphertext`; a wrong key gives an unrelated secret, not an error."""
    return _XWingPrivate(seed).decapsulate(ciphertext)


class BoxingPublicKey:
    """An X-Wing public key, to which anyone can box a message."""

    __slots__ = ("_mlkem", "raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != XWING_PUBLIC_BYTES:
            raise MalformedInput(f"an X-Wing public key must be {XWING_PUBLIC_BYTES} bytes")
        self._mlkem = _mlkem_public(raw)
        self.raw = raw

    def encapsulate(self) -> tuple[bytes, bytes]:
        """A fresh (shared secret, ciphertext) pair, as `xwing_encapsulate`."""
        return _encapsulate(self._mlkem, self.raw[_MLKEM_PUBLIC_BYTES:])

    def to_cbor(self) -> list[object]:
        return [KEY_TYPE_XWING, self.raw]

    @classmethod
    def from_cbor(cls, value: object) -> BoxingPublicKey:
        return cls(_key_body(value, KEY_TYPE_XWING, XWING_PUBLIC_BYTES, "boxing key"))

    def key_hash(self) -> CID:
        """CIDv1 dag-cbor, sha2-256 (the key is too long to inline)."""
        return _key_hash(cbor.encode(self.to_cbor()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BoxingPublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"BoxingPublicKey({self.key_hash()})"


class BoxingKey:
    """A private X-Wing key: a 32-byte seed, expanded once and kept for decapsulation."""

    __slots__ = ("_private", "public", "seed")

    def __init__(self, seed: bytes) -> None:
        self._private = _XWingPrivate(seed)
        self.seed = seed
        self.public = BoxingPublicKey(self._private.public)

    @classmethod
    def generate(cls) -> BoxingKey:
        return cls(random_bytes(XWING_SEED_BYTES))

    @classmethod
    def from_seed(cls, seed: bytes) -> BoxingKey:
        return cls(seed)

    def decapsulate(self, ciphertext: Data) -> bytes:
        return self._private.decapsulate(ciphertext)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BoxingKey) and hmac.compare_digest(other.seed, self.seed)

    def __hash__(self) -> int:
        return hash(self.public)

    def __repr__(self) -> str:
        return f"BoxingKey(public={self.public.key_hash()})"


# The X-Wing shared secret is used directly as the AEAD key, with no further KDF: it is already a
# SHA3-256 output over both component secrets, the X25519 ciphertext and the recipient's X25519
# key (ML-KEM binds its own ciphertext), it is uniform and fresh for every box, and the AEAD
# binds `context` as associated data. The random nonce is then redundant but keeps one format.


def box(recipient: BoxingPublicKey, plaintext: Data, context: bytes) -> bytes:
    """Encrypt to `recipient` anonymously: X-Wing ciphertext (1120) ‖ seal(secret, ...)."""
    secret, ciphertext = recipient.encapsulate()
    return ciphertext + seal(secret, plaintext, context)


def open_box(recipient: BoxingKey, boxed: Data, context: bytes) -> bytes:
    """Undo `box`; Corrupted for a wrong key, a wrong context or any changed byte."""
    view = _byte_view(boxed)
    if len(view) < XWING_CIPHERTEXT_BYTES + SEAL_OVERHEAD:
        raise Corrupted("boxed value failed authentication: too short")
    secret = recipient.decapsulate(view[:XWING_CIPHERTEXT_BYTES])
    return open_sealed(secret, view[XWING_CIPHERTEXT_BYTES:], context)


# ================================================================================================
# password KDF


def _exact_int(value: object, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise MalformedInput(f"KDF {what} must be an integer in [{low}, {high}]")
    return value


@dataclass(frozen=True)
class KdfParams:
    """Public, per-user Argon2id parameters."""

    opslimit: int
    memlimit: int
    salt: bytes

    def __post_init__(self) -> None:
        _exact_int(self.opslimit, KDF_MIN_OPSLIMIT, KDF_MAX_OPSLIMIT, "opslimit")
        _exact_int(self.memlimit, KDF_MIN_MEMLIMIT, KDF_MAX_MEMLIMIT, "memlimit")
        if not isinstance(self.salt, bytes) or len(self.salt) != KDF_SALT_BYTES:
            raise MalformedInput(f"KDF salt must be {KDF_SALT_BYTES} bytes")

    def to_cbor(self) -> dict[str, object]:
        return {"t": self.opslimit, "m": self.memlimit, "s": self.salt}

    @classmethod
    def from_cbor(cls, value: object) -> KdfParams:
        if not isinstance(value, dict) or set(value) != {"t", "m", "s"}:
            raise MalformedInput('KDF parameters must be a map of exactly "t", "m" and "s"')
        return cls(opslimit=value["t"], memlimit=value["m"], salt=value["s"])

    @property
    def is_production_strength(self) -> bool:
        return self.opslimit >= KDF_PRODUCTION_OPSLIMIT and self.memlimit >= KDF_PRODUCTION_MEMLIMIT

    @classmethod
    def production(cls) -> KdfParams:
        return cls(KDF_PRODUCTION_OPSLIMIT, KDF_PRODUCTION_MEMLIMIT, random_bytes(KDF_SALT_BYTES))

    @classmethod
    def test_profile(cls) -> KdfParams:
        """Cheap parameters; only a node started in test mode accepts them."""
        return cls(KDF_TEST_OPSLIMIT, KDF_TEST_MEMLIMIT, random_bytes(KDF_SALT_BYTES))


@dataclass(frozen=True)
class LoginKeys:
    """What a username and password unlock."""

    signing: SigningKey  # proves the login to a node
    root_key: bytes = field(repr=False)  # encrypts the login data


def derive_login_keys(username: str, password: str, params: KdfParams) -> LoginKeys:
    """Argon2id over a domain-separated username and password, split into two keys."""
    try:
        name, phrase = username.encode("utf-8"), password.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from undecodable terminal input
        raise MalformedInput("usernames and passwords must be valid text") from exc
    if _LOGIN_SEPARATOR in name:
        raise InvalidName("a username must not contain NUL")
    secret = b"".join((LOGIN_CONTEXT, name, _LOGIN_SEPARATOR, phrase))
    out = sodium.crypto_pwhash_alg(
        KDF_OUTPUT_BYTES, secret, params.salt, params.opslimit, params.memlimit, KDF_ALG
    )
    return LoginKeys(signing=SigningKey(out[:SIGN_SEED_BYTES]), root_key=out[SIGN_SEED_BYTES:])
