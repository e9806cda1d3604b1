"""Deterministic CBOR in the DAG-CBOR subset.

`encode` writes canonical CBOR (map keys length-first then bytewise, definite lengths, CIDs as
tag 42 over 0x00 ‖ CID bytes). `decode` accepts only what `encode` would have written: no
floats, no other tags, text keys only, no duplicates, no trailing bytes, within a size limit.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final, TypeAlias

import cbor2

from protocols.cid import CID
from protocols.errors import MalformedInput, TooLarge

CBORValue: TypeAlias = Any  # int | bytes | str | bool | None | CID | list | dict[str, ...]
TAG_CID: Final = 42
MAX_DEPTH: Final = 64
DEFAULT_LIMIT: Final = 1024 * 1024 + 8 * 1024  # one block


def _default(encoder: Any, value: object) -> None:
    if isinstance(value, CID):
        encoder.encode(cbor2.CBORTag(TAG_CID, b"\x00" + value.raw))
        return
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


def encode(value: CBORValue) -> bytes:
    """Canonical DAG-CBOR bytes of `value`."""
    return cbor2.dumps(value, canonical=True, default=_default)


def _tag_hook(*args: Any) -> CID:
    # cbor2 5.x passes (decoder, tag); 6.x passes (tag, immutable): take the tag either way.
    tag = next(arg for arg in args if isinstance(arg, cbor2.CBORTag))
    if tag.tag != TAG_CID:
        raise MalformedInput(f"CBOR tag {tag.tag} is not allowed")
    payload = tag.value
    if not isinstance(payload, bytes) or not payload.startswith(b"\x00"):
        raise MalformedInput("tag 42 must wrap 0x00 followed by CID bytes")
    return CID.from_bytes(payload[1:])


def _check_types(value: CBORValue, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise MalformedInput("CBOR nested too deeply")
    if isinstance(value, bool | bytes | str | CID) or value is None:
        return
    if isinstance(value, int):
        if not -(2**64) <= value < 2**64:
            raise MalformedInput("CBOR integer out of range")
        return
    if isinstance(value, list):
        for item in value:
            _check_types(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedInput("CBOR map keys must be text")
            _check_types(item, depth + 1)
        return
    raise MalformedInput(f"CBOR value of type {type(value).__name__} is not allowed")


def decode(data: bytes | memoryview, limit: int = DEFAULT_LIMIT) -> CBORValue:
    """Decode canonical DAG-CBOR, rejecting anything `encode` would not produce."""
    if len(data) > limit:
        raise TooLarge(f"CBOR of {len(data)} bytes is over the limit of {limit}")
    data = bytes(data)
    try:
        value = cbor2.loads(
            data,
            tag_hook=_tag_hook,
            allow_duplicate_keys=False,
            allow_indefinite=False,
            max_depth=MAX_DEPTH,
        )
    except MalformedInput:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedInput(f"invalid CBOR: {exc}") from exc
    _check_types(value)
    if encode(value) != data:
        raise MalformedInput("CBOR is not in canonical form")
    return value


def iter_links(value: CBORValue) -> list[CID]:
    """Every CID linked (tag 42) anywhere inside a decoded value, in document order."""
    found: list[CID] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, CID):
            found.append(item)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
    return found


def encode_text(value: CBORValue) -> str:
    """Unpadded base64url of the canonical CBOR: a form for URLs and pasting."""
    return base64.urlsafe_b64encode(encode(value)).rstrip(b"=").decode("ascii")


def decode_text(text: str, limit: int) -> CBORValue:
    """Undo `encode_text`, accepting exactly one spelling of each value."""
    if len(text) > (limit * 4 + 2) // 3:
        raise TooLarge(f"text of {len(text)} characters is over the limit")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error) as exc:
        raise MalformedInput("not base64url") from exc
    value = decode(raw, limit=limit)
    if encode_text(value) != text:  # b64decode skips stray characters and ignores padding
        raise MalformedInput("not unpadded base64url of canonical CBOR")
    return value
