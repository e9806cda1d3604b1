"""LevelDB (plyvel) behind prefixed keyspaces, atomic batches and durable writes.

Every key is `space prefix ‖ key`. What must change together goes in one `Batch`; a batch or
put with `sync=True` is on disk (and so is everything written before it) when it returns.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import plyvel

from protocols.errors import Corrupted, Unavailable

MiB = 1024 * 1024


class Space(enum.Enum):
    """The keyspaces of DESIGN §9, one byte prefix each."""

    BLOCKS = b"b"  # CID bytes -> block bytes
    SIZES = b"z"  # CID bytes -> varint size, so accounting never reads a block
    POINTERS = b"p"  # writer key hash -> signed pointer update
    PKI = b"k"  # username -> claim
    ACCOUNTS = b"a"  # username -> login record
    WRITERS = b"w"  # writer key hash -> owner key hash
    BATS = b"t"  # mirror BAT id -> secret
    UPLOADS = b"u"  # upload id ‖ CID -> (): blocks an upload in progress needs
    USAGE = b"s"  # owner key hash -> usage record
    INBOX = b"i"
    LINKS = b"l"
    MIRRORS = b"m"
    META = b"n"  # node-level settings


class Batch:
    """Writes applied together, atomically, when the `with` block ends without error."""

    def __init__(self, db: Any, sync: bool) -> None:
        self._batch = db.write_batch(transaction=True, sync=sync)

    def put(self, space: Space, key: bytes, value: bytes) -> None:
        self._batch.put(space.value + key, value)

    def delete(self, space: Space, key: bytes) -> None:
        self._batch.delete(space.value + key)

    def __enter__(self) -> Batch:
        self._batch.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._batch.__exit__(exc_type, exc, tb)


def _reason(exc: Exception) -> str:
    """LevelDB's message: plyvel carries it as bytes, which str() would show as b'...'."""
    raw = exc.args[0] if exc.args else ""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


class Store:
    """One node's LevelDB."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        try:
            # Blocks are ciphertext, so compression would only cost CPU.
            self._db = plyvel.DB(
                str(path),
                create_if_missing=True,
                compression=None,
                write_buffer_size=16 * MiB,  # two memtables at most: bounds the node's memory
                max_file_size=32 * MiB,
                lru_cache_size=8 * MiB,
                paranoid_checks=True,
            )
        except plyvel.IOError as exc:
            raise Unavailable(
                f"cannot open the node database at {path}: {_reason(exc)} "
                "(is another node running here?)"
            ) from exc
        except plyvel.Error as exc:  # CorruptionError: damaged files, not a busy database
            raise Corrupted(f"the node database at {path} is damaged: {_reason(exc)}") from exc

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    def get(self, space: Space, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(space.value + key)
        return value

    def has(self, space: Space, key: bytes) -> bool:
        return self.get(space, key) is not None

    def put(self, space: Space, key: bytes, value: bytes, *, sync: bool = False) -> None:
        self._db.put(space.value + key, value, sync=sync)

    def delete(self, space: Space, key: bytes, *, sync: bool = False) -> None:
        self._db.delete(space.value + key, sync=sync)

    def batch(self, *, sync: bool = False) -> Batch:
        return Batch(self._db, sync)

    def items(self, space: Space, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of a keyspace under `prefix`; keys come without the space."""
        start = len(space.value)
        with self._db.iterator(prefix=space.value + prefix) as it:
            for key, value in it:
                yield key[start:], value

    def keys(self, space: Space, prefix: bytes = b"") -> Iterator[bytes]:
        start = len(space.value)
        with self._db.iterator(prefix=space.value + prefix, include_value=False) as it:
            for key in it:
                yield key[start:]

    def compact(self) -> None:
        # An open-ended compact_range leaves older table files as they are: give the bounds.
        self._db.compact_range(start=b"\x00", stop=b"\xff")

    def disk_bytes(self) -> int:
        """Bytes the database occupies on disk now."""
        return sum(entry.stat().st_size for entry in os.scandir(self.path) if entry.is_file())
