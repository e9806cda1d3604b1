"""Deterministic CBOR in the DAG-CBOR subset.

`encode` writes canonical CBOR (map keys length-first then bytewise, definite lengths, CIDs as
tag 42 over 0x00 ‖ CID bytes). `decode` accepts only what `encode` would have written: no
floats, no other tags, text keys only, no duplicates, no trailing bytes, within a size limit.

Messages that carry blocks hold byte strings of a megabyte or more. Copying one costs more than
everything else about the message (a fresh buffer of that size is page-faulted in), so
`encode_parts` hands such strings on as pieces of their own, and `decode` checks the bytes
around them in place against the input instead of re-encoding the whole message.

Before cbor2 sees a byte, `decode` walks the heads alone (`check_shape`): it counts items and
depth and steps over string payloads by their length, so a body of millions of tiny items is
refused after at most `max_items` steps, whatever its size.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import cbor2

from protocols.cid import CID
from protocols.errors import MalformedInput, TooLarge

CBORValue: TypeAlias = Any  # int | bytes | str | bool | None | CID | list | dict[str, ...]
TAG_CID: Final = 42
MAX_DEPTH: Final = 64
DEFAULT_LIMIT: Final = 1024 * 1024 + 8 * 1024  # one block
BULK_BYTES: Final = 64 * 1024  # byte strings this long are passed on and checked uncopied
# Items (every value, container, map key and tag counts one) a decode accepts unless its
# caller says otherwise: the largest legitimate messages, a PKI page of 1,000 entries or a
# directory chunk of 500 children, hold under 10,000; refusing one more costs about 20 ms.
DEFAULT_MAX_ITEMS: Final = 32_768


def _encode_cid(encoder: Any, value: CID) -> None:
    encoder.encode(cbor2.CBORTag(TAG_CID, b"\x00" + value.raw))


# CIDs by their type: a type cbor2 does not know otherwise sends it through its own encoders
# for other types first, and resolving those imports datetime, uuid and email (a hundredth of
# a second, in the first encode of every process).
_ENCODERS: Final[dict[type, Callable[[Any, Any], None]]] = {CID: _encode_cid}


def _refuse(encoder: Any, value: object) -> None:
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


def encode(value: CBORValue) -> bytes:
    """Canonical DAG-CBOR bytes of `value`."""
    return cbor2.dumps(value, canonical=True, encoders=_ENCODERS, default=_refuse)


def _tag_hook(*args: Any) -> CID:
    # cbor2 5.x passes (decoder, tag); 6.x passes (tag, immutable): take the tag either way.
    tag = args[0] if isinstance(args[0], cbor2.CBORTag) else args[1]
    if tag.tag != TAG_CID:
        raise MalformedInput(f"CBOR tag {tag.tag} is not allowed")
    payload = tag.value
    if not isinstance(payload, bytes) or not payload.startswith(b"\x00"):
        raise MalformedInput("tag 42 must wrap 0x00 followed by CID bytes")
    return CID.from_bytes(payload[1:])


def encode_parts(value: CBORValue, bulk: int = BULK_BYTES) -> list[bytes]:
    """`encode(value)` as pieces to write in order: each byte string of `bulk` bytes or more
    is a piece of its own (the very object, not a copy) and the bytes between them are
    joined, so pieces alternate joined, bulk, joined, … and the first is never bulk."""
    if not _holds_bulk(value, bulk):
        return [encode(value)]
    parts: list[bytes] = []
    pending: list[bytes] = []
    _encode_into(value, parts, pending, bulk)
    parts.append(b"".join(pending))
    return parts


def _holds_bulk(value: CBORValue, bulk: int) -> bool:
    if isinstance(value, bytes):
        return len(value) >= bulk
    if isinstance(value, list):
        return any(_holds_bulk(item, bulk) for item in value)
    if isinstance(value, dict):
        return any(_holds_bulk(item, bulk) for item in value.values())
    return False


def _encode_into(value: CBORValue, parts: list[bytes], pending: list[bytes], bulk: int) -> None:
    """Encode a value that holds a bulk string: bytes go to `pending` until a bulk string
    closes them into one piece of `parts`, followed by the string itself."""
    if not _holds_bulk(value, bulk):
        pending.append(encode(value))
    elif isinstance(value, bytes):
        pending.append(_head(2, len(value)))
        parts += [b"".join(pending), value]
        pending.clear()
    elif isinstance(value, list):
        pending.append(_head(4, len(value)))
        for item in value:
            _encode_into(item, parts, pending, bulk)
    else:  # a dict: keys in canonical order, each key's encoding as cbor2 writes it
        keys = sorted((encode(key), key) for key in value)
        keys.sort(key=lambda pair: len(pair[0]))  # stable: length first, then bytewise
        pending.append(_head(5, len(value)))
        for encoded, key in keys:
            pending.append(encoded)
            _encode_into(value[key], parts, pending, bulk)


def encode_uint(value: int) -> bytes:
    """`encode(value)` of an int from 0 to 2**64 - 1, without the encoder (a PKI mirror
    writes a few per entry)."""
    return _head(0, value)


def _head(major: int, argument: int) -> bytes:
    """The shortest CBOR head of `major` type with `argument`."""
    kind = major << 5
    if argument < 24:
        return bytes((kind | argument,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if argument < 1 << (8 * size):
            return bytes((kind | extra,)) + argument.to_bytes(size, "big")
    raise ValueError("CBOR argument over 64 bits")


_PLAIN: Final = frozenset({str, bool, type(None), CID})  # allowed as they are, nothing inside


def _check_types(value: CBORValue, depth: int = 0) -> bool:
    """Refuse what DAG-CBOR does not allow here; whether a bulk byte string is inside.

    A walk without recursion over the exact types cbor2 returns; anything else (a subclass,
    a map with a key that is not text) takes `_check_types_of`, which raises the same errors
    in the same order."""
    bulky = False
    stack: list[tuple[CBORValue, int]] = [(value, depth)]
    pop = stack.pop
    while stack:
        item, level = pop()
        if level > MAX_DEPTH:
            raise MalformedInput("CBOR nested too deeply")
        kind = type(item)
        if kind in _PLAIN:
            continue
        if kind is bytes:
            if len(item) >= BULK_BYTES:
                bulky = True
        elif kind is int:
            if not -(2**64) <= item < 2**64:
                raise MalformedInput("CBOR integer out of range")
        elif kind is list:
            level += 1
            stack += [(x, level) for x in reversed(item)]
        elif kind is dict and all(type(key) is str for key in item):
            level += 1
            stack += [(x, level) for x in reversed(item.values())]
        else:
            bulky |= _check_types_of(item, level)
    return bulky


def _check_types_of(value: CBORValue, depth: int = 0) -> bool:
    """`_check_types`, item by item."""
    if depth > MAX_DEPTH:
        raise MalformedInput("CBOR nested too deeply")
    if isinstance(value, bytes):
        return len(value) >= BULK_BYTES
    if isinstance(value, bool | str | CID) or value is None:
        return False
    if isinstance(value, int):
        if not -(2**64) <= value < 2**64:
            raise MalformedInput("CBOR integer out of range")
        return False
    if isinstance(value, list):
        bulky = False
        for item in value:
            bulky |= _check_types_of(item, depth + 1)
        return bulky
    if isinstance(value, dict):
        bulky = False
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedInput("CBOR map keys must be text")
            bulky |= _check_types_of(item, depth + 1)
        return bulky
    raise MalformedInput(f"CBOR value of type {type(value).__name__} is not allowed")


def _is_encoding_of(value: CBORValue, data: bytes | bytearray, bulky: bool) -> bool:
    """Whether `data` is exactly `encode(value)`, `value` being what cbor2 decoded from it.

    Bulk strings are not compared: every byte around them, their heads included, matches at
    its place, so each was decoded from exactly the bytes it would be encoded to. Comparing a
    megabyte with the copy just made of it would double what checking a block answer reads."""
    if not bulky:
        return encode(value) == data
    position = 0
    for index, part in enumerate(encode_parts(value)):
        if index % 2 == 0 and not data.startswith(part, position):
            return False
        position += len(part)
    return position == len(data)


def check_shape(data: bytes | bytearray, max_items: int = DEFAULT_MAX_ITEMS) -> None:
    """Refuse, before any decoding, CBOR of more than `max_items` items or nested deeper than
    MAX_DEPTH, and heads that cannot be well-formed (indefinite or reserved lengths, a string
    or container that claims more than the bytes left, trailing bytes). Costs one step per
    head, never per byte: string payloads are stepped over by their declared length."""
    size = len(data)
    if size <= max_items:
        return  # every item takes a byte at least; cbor2 itself bounds the depth
    position = 0
    items = 0
    pending = [1]  # per open container: items still to come in it (the top level holds one)
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        if position >= size:
            raise MalformedInput("invalid CBOR: truncated")
        initial = data[position]
        position += 1
        items += 1
        if items > max_items:
            raise TooLarge(f"CBOR of more than {max_items} items is over the limit")
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            argument = info
        elif info < 28:
            width = 1 << (info - 24)
            argument = int.from_bytes(data[position : position + width], "big")
            position += width
        else:
            raise MalformedInput("invalid CBOR: indefinite or reserved length")
        if major == 6:  # a tag: the item it wraps stands in its place
            continue
        pending[-1] -= 1
        if major in (2, 3):
            position += argument
        elif major in (4, 5):
            count = argument * (major - 3)  # a map holds a key and a value per entry
            if count > max_items - items:  # each of them counts: refuse before walking any
                raise TooLarge(f"CBOR of more than {max_items} items is over the limit")
            if count > size - position:  # each item takes a byte at least
                raise MalformedInput("invalid CBOR: a container claims more than the input")
            if count:
                if len(pending) > MAX_DEPTH:
                    raise MalformedInput("CBOR nested too deeply")
                pending.append(count)
    if position != size:
        raise MalformedInput("invalid CBOR: truncated or trailing bytes")


def decode(
    data: bytes | bytearray | memoryview,
    limit: int = DEFAULT_LIMIT,
    *,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> CBORValue:
    """Decode canonical DAG-CBOR, rejecting anything `encode` would not produce: over `limit`
    bytes or `max_items` items is TooLarge, refused before any decoding."""
    if len(data) > limit:
        raise TooLarge(f"CBOR of {len(data)} bytes is over the limit of {limit}")
    if isinstance(data, memoryview):
        data = bytes(data)
    check_shape(data, max_items)
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
    if not _is_encoding_of(value, data, _check_types(value)):
        raise MalformedInput("CBOR is not in canonical form")
    return value


def encoded_length(value: CBORValue) -> int:
    """`len(encode(value))` without encoding: one step per item, strings only measured."""
    if isinstance(value, bytes | bytearray):
        return len(_head(2, len(value))) + len(value)
    if isinstance(value, str):
        size = len(value.encode())
        return len(_head(3, size)) + size
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int):
        return len(_head(0, value if value >= 0 else -1 - value))
    if isinstance(value, CID):
        payload = len(value.raw) + 1
        return 2 + len(_head(2, payload)) + payload  # tag 42 takes a two-byte head
    if isinstance(value, list):
        return len(_head(4, len(value))) + sum(map(encoded_length, value))
    if isinstance(value, dict):
        pairs = sum(encoded_length(key) + encoded_length(item) for key, item in value.items())
        return len(_head(5, len(value))) + pairs
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


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
