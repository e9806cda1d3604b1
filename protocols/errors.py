"""Typed errors shared by every layer.

Each error carries a stable `code` (sent over the wire and mapped to an exit status by the CLI)
and a message a user can act on. Messages never contain keys, passwords or file contents.
"""

from __future__ import annotations


class PyrgosError(Exception):
    """Base of every error pyrgos raises on purpose."""

    code = "error"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedInput(PyrgosError):
    """Bytes that do not decode to a valid structure (bad CBOR, wrong shape, bad CID)."""

    code = "malformed"


class TooLarge(PyrgosError):
    """A body, frame or block over its size limit."""

    code = "too-large"
    http_status = 413


class InvalidSignature(PyrgosError):
    """A signature that does not verify with the key it claims."""

    code = "bad-signature"
    http_status = 403


class Corrupted(PyrgosError):
    """Stored or received data that fails its hash or AEAD check; never returned as data."""

    code = "corrupted"
    http_status = 502


class Denied(PyrgosError):
    """A read or write the presented credentials do not allow."""

    code = "denied"
    http_status = 403


class AuthFailed(PyrgosError):
    """Login failed: wrong password, or a stale signed time."""

    code = "auth-failed"
    http_status = 401


class NotFound(PyrgosError):
    """An unknown user, block, pointer or path."""

    code = "not-found"
    http_status = 404


class Conflict(PyrgosError):
    """A compare-and-swap on a stale value, a replayed sequence number, a taken name."""

    code = "conflict"
    http_status = 409


class StaleRoot(Conflict):
    """A pointer compare-and-swap against a value that has moved on: re-read and retry."""

    code = "stale-root"


class QuotaExceeded(PyrgosError):
    """A write that would take a user over their quota; nothing of it is stored."""

    code = "quota-exceeded"
    http_status = 507


class InvalidName(PyrgosError):
    """A username, file name or path that breaks the naming rules."""

    code = "invalid-name"


class WeakPassword(PyrgosError):
    """A password that breaks the password rules."""

    code = "weak-password"


class RateLimited(PyrgosError):
    """Too many attempts (failed logins); the message says how long to wait."""

    code = "rate-limited"
    http_status = 429


class Unavailable(PyrgosError):
    """A node that cannot be reached or is not running."""

    code = "unavailable"
    http_status = 503


ERRORS_BY_CODE: dict[str, type[PyrgosError]] = {
    cls.code: cls
    for cls in (
        PyrgosError,
        MalformedInput,
        TooLarge,
        InvalidSignature,
        Corrupted,
        Denied,
        AuthFailed,
        NotFound,
        Conflict,
        StaleRoot,
        QuotaExceeded,
        InvalidName,
        WeakPassword,
        RateLimited,
        Unavailable,
    )
}


def error_from_code(code: str, message: str) -> PyrgosError:
    """Rebuild a typed error received over the wire."""
    return ERRORS_BY_CODE.get(code, PyrgosError)(message)
