"""What an owner shares with one follower (DESIGN §10): the caps file `/<owner>/shared/<them>/caps`.

A CBOR list of `{path, cap, writable, since}`, one per shared item; the follower reads it
through the read-only capability of its folder. Decoding is strict and bounded: the owner
may be hostile, so every item is checked before a reader uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from protocols import cbor
from protocols.cryptree import Capability
from protocols.errors import InvalidName, MalformedInput, TooLarge
from protocols.names import MAX_PATH_BYTES, check_username, split_path

MAX_SHARES: Final = 1000  # items shared with one follower: bounds the file and its decoding
# An item is a path (≤ 4096 bytes) and a capability (≤ 250 bytes): 1,000 of them fit.
MAX_CAPS_BYTES: Final = 1000 * (MAX_PATH_BYTES + 512)
_MAX_ITEMS: Final = 20 * MAX_SHARES  # CBOR items: about 15 an entry


def normalise(path: str) -> str:
    """`/owner/a/b` with its names checked (InvalidName); the owner's home alone is refused."""
    names = split_path(path)
    if not path.startswith("/") or len(names) < 2:
        raise InvalidName("a shared path is /<owner>/<names…> below the owner's home")
    check_username(names[0])
    return "/" + "/".join(names)


@dataclass(frozen=True)
class SharedItem:
    """One item shared: its path in the owner's space, its capability (with the write key
    exactly when `writable`), and when it was shared (ms)."""

    path: str
    cap: Capability
    writable: bool
    since: int

    def to_cbor(self) -> dict[str, object]:
        return {"path": self.path, "cap": self.cap.to_cbor(), "writable": self.writable,
                "since": self.since}  # fmt: skip

    @classmethod
    def from_cbor(cls, value: object) -> SharedItem:
        if not isinstance(value, dict) or set(value) != {"path", "cap", "writable", "since"}:
            raise MalformedInput("a shared item is {path, cap, writable, since}")
        path, writable, since = value["path"], value["writable"], value["since"]
        if not isinstance(path, str) or len(path.encode()) > MAX_PATH_BYTES:
            raise MalformedInput("a shared item's path must be text of at most 4096 bytes")
        if not isinstance(writable, bool):
            raise MalformedInput("a shared item's `writable` must be a boolean")
        if type(since) is not int or since < 0:
            raise MalformedInput("a shared item's time must be a non-negative integer")
        try:
            path = normalise(path)
        except InvalidName as exc:
            raise MalformedInput(f"a shared item's path is not valid: {exc.message}") from exc
        cap = Capability.from_cbor(value["cap"])
        if cap.writable != writable:
            raise MalformedInput("a shared item's capability does not match its `writable`")
        return cls(path, cap, writable, since)


def encode_caps(items: Sequence[SharedItem]) -> bytes:
    if len(items) > MAX_SHARES:
        raise TooLarge(f"at most {MAX_SHARES} items can be shared with one follower")
    return cbor.encode([item.to_cbor() for item in items])


def decode_caps(data: bytes) -> list[SharedItem]:
    """The items of a caps file: MalformedInput for anything but a list of valid items with
    distinct paths, at most MAX_SHARES of them."""
    try:
        value = cbor.decode(data, limit=MAX_CAPS_BYTES, max_items=_MAX_ITEMS)
    except TooLarge as exc:
        raise MalformedInput(f"a caps file is at most {MAX_CAPS_BYTES} bytes") from exc
    if not isinstance(value, list) or len(value) > MAX_SHARES:
        raise MalformedInput(f"a caps file is a list of at most {MAX_SHARES} shared items")
    items = [SharedItem.from_cbor(item) for item in value]
    if len({item.path for item in items}) != len(items):
        raise MalformedInput("a caps file names one path twice")
    return items


def within(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or below it (both normalised)."""
    return path == prefix or path.startswith(prefix + "/")
