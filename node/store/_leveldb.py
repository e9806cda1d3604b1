"""LevelDB (plyvel) behind prefixed keyspaces, atomic batches and durable writes.

Every key is `space prefix ‖ key`. What must change together goes in one `Batch`; a batch or
put with `sync=True` is on disk (and so is everything written before it) when it returns.
A write the disk refuses (full, or a file-size limit) raises DiskFull and changes nothing;
reads go on, and writes resume once space is back.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import enum
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import plyvel

from protocols.cid import decode_varint, encode_varint
from protocols.errors import Corrupted, Unavailable

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# A key in no keyspace: compacting the range [it, it] only flushes the memtable to a table and
# starts a new log file (see Store._start_new_log), it moves no table file.
_NO_KEY = b"\xff\xff"
_LOG_FILE = re.compile(r"^([0-9]+)\.log$")
_PROBE_FILE = "pyrgos-room-probe"  # a name LevelDB does not parse, so leaves alone
_TABLE_OVERHEAD = 64 * 1024  # index and block trailers of a table, beyond its log's bytes
MADV_PAGEOUT = 21  # Linux ≥ 5.4: reclaim these pages now (clean file pages just drop)
MADV_DONTNEED = 4  # unmap these pages; a shared file's stay in the page cache
# The table cache that keeps table files open (LevelDB maps the first 1,000, reads the rest
# with pread) holds MAX_OPEN_FILES - 10 tables in 16 shards, and which mappings may be dropped
# with MADV_DONTNEED rests on that (Store.release_mapped_pages). LevelDB's default of 1,000
# left a shard over half full from about 500 tables (4 GB of 8 MiB tables): those went back
# to paging out, and a 1 GiB download from a 4 GB node read 1,600-3,700 pages from disk
# where it now reads 0-120. An open table holds its index and filter blocks (a few KiB).
MAX_OPEN_FILES = 4096
_CACHE_SHARDS = 16
_SHARD_CAPACITY = -(-(MAX_OPEN_FILES - 10) // _CACHE_SHARDS)  # 256 tables
# A shard holding at most this many table files cannot evict (LRU) for the next half of its
# capacity of new tables, far more than compactions finish during one pass over the mappings.
_SHARD_BOUND = _SHARD_CAPACITY // 2
# The LevelDB releases whose table cache, file mapping and sharding the argument was checked
# against; under any other, every table mapping is paged out.
_CHECKED_LEVELDB = frozenset({"1.22"})
_TABLE_FILE = re.compile(r"^([0-9]+)\.(?:ldb|sst)$")
_SSTABLE = re.compile(rb"^ ([0-9]+):[0-9]+\[", re.MULTILINE)  # a file in leveldb.sstables
_MAPPED_TABLE = re.compile(r"/([0-9]+)\.ldb$")


class DiskFull(Unavailable):
    """The node's disk refused a write: nothing of it was applied; reads still work."""


def owner_prefix(owner_raw: bytes) -> bytes:
    """The start of a key under one user's raw key hash, length first: no owner's prefix is
    the start of another's (keyspaces `y` and `e`)."""
    return bytes([len(owner_raw)]) + owner_raw


class Space(enum.Enum):
    """The keyspaces of DESIGN §9, one byte prefix each. Every read and write reads its
    prefix as `_value_`, the plain attribute behind the `value` property (a fraction of its
    cost, which every key pays)."""

    BLOCKS = b"b"  # 8-byte sequence number -> block bytes
    BLOCK_INDEX = b"z"  # CID bytes -> sequence number ‖ varint size
    POINTERS = b"p"  # writer key hash -> signed pointer update
    PKI = b"k"  # the PKI log, its heads and its index (node/server/_pki.py)
    ACCOUNTS = b"a"  # username -> login record
    WRITERS = b"w"  # writer key hash -> owner key hash
    BATS = b"t"  # mirror BAT id -> secret
    UPLOADS = b"u"  # upload id ‖ CID -> (): blocks an upload in progress needs
    USAGE = b"s"  # owner key hash -> usage record
    STORED = b"y"  # len(owner) ‖ owner key hash ‖ CID -> varint size: put since the last GC
    INBOX = b"i"
    LINKS = b"l"
    MIRRORS = b"m"
    META = b"n"  # node-level settings
    SESSIONS = b"e"  # owner key hash ‖ session id -> expiry (node/server/_service.py)


class Batch:
    """Writes applied together, atomically, when the `with` block ends without error."""

    def __init__(self, store: Store, db: Any, sync: bool) -> None:
        self._store = store
        self._batch = db.write_batch(transaction=True, sync=sync)

    def put(self, space: Space, key: bytes, value: bytes) -> None:
        self._batch.put(space._value_ + key, value)

    def delete(self, space: Space, key: bytes) -> None:
        self._batch.delete(space._value_ + key)

    def __enter__(self) -> Batch:
        self._batch.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:  # nothing is written (a transaction batch)
            self._batch.__exit__(exc_type, exc, tb)
            return
        with self._store.writing():
            self._batch.__exit__(None, None, None)


def _reason(exc: Exception) -> str:
    """LevelDB's message: plyvel carries it as bytes, which str() would show as b'...'."""
    raw = exc.args[0] if exc.args else ""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _disk_full(exc: Exception) -> DiskFull:
    """The error a caller sees: the system's reason ("No space left on device"), not the
    node's paths, which the reply carries to clients."""
    cause = _reason(exc).rsplit(": ", 1)[-1]
    return DiskFull(
        f"this node cannot write to its disk ({cause}): it still serves reads; "
        "writes resume once space is freed"
    )


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
                write_buffer_size=8 * MiB,  # two memtables at most: bounds the node's memory
                # Every flushed memtable spans the key space (blocks under new sequence numbers,
                # their index entries under random CIDs), so each compaction out of level 0 also
                # rewrites the level-1 table holding the newest blocks and the index, and pushes
                # such a table on down: up to a whole table more each time. Tables of 8 MiB
                # instead of 32 rewrite about 30 % less in compactions; storing costs a fifth
                # less CPU (docs/benchmarks.md, Mirroring).
                max_file_size=8 * MiB,
                max_open_files=MAX_OPEN_FILES,
                # A lookup by CID (the block index) probes every level's table covering the
                # key; a filter of 10 bits a key skips those that do not hold it (a download
                # from a 4 GB node: node CPU 3.9-4.2 s a GiB against 4.3-4.8).
                bloom_filter_bits=10,
                lru_cache_size=8 * MiB,
                paranoid_checks=True,
            )
        except plyvel.IOError as exc:
            reason = _reason(exc)
            # Opening replays LevelDB's log into a table: a full disk fails it too.
            hint = " (is another node running here?)" if "/LOCK:" in reason else ""
            raise Unavailable(f"cannot open the node database at {path}: {reason}{hint}") from exc
        except plyvel.Error as exc:  # CorruptionError: damaged files, not a busy database
            raise Corrupted(f"the node database at {path} is damaged: {_reason(exc)}") from exc

        self._table_prefix = " " + os.path.realpath(self.path) + os.sep  # as /proc/self/maps
        self._paged_out_at: int | None = None  # file-backed resident bytes after a page-out
        # Per table-cache shard, the newest table file that may have left the cache (or never
        # entered it) while this store was open: every table existing at opening, and those
        # existing when the shard was seen holding more than _SHARD_BOUND files.
        self._shard_floor = [max(_table_numbers(path), default=0)] * _CACHE_SHARDS
        self._tables_seen_at: int | None = None  # the directory's mtime when last counted
        self._sequence_lock = threading.Lock()
        # One write at a time, so that no write can follow a failed one into the same log
        # before `_torn_log` is set (LevelDB would otherwise queue it right behind).
        self._write_lock = threading.Lock()
        self._torn_log = False
        self._next_sequence = self._last_sequence() + 1

    # Blocks are stored under the order they arrived in, not under their (random) CIDs: new data
    # then always lands at the end of the key space, so LevelDB's compactions mostly move
    # files instead of rewriting every level each time a large file is uploaded.

    def _last_sequence(self) -> int:
        with self._db.iterator(prefix=Space.BLOCKS.value, reverse=True, include_value=False) as it:
            for key in it:
                return int.from_bytes(key[len(Space.BLOCKS.value) :], "big")
        return 0

    def put_block(self, batch: Batch, cid: bytes, data: bytes) -> None:
        """Add a block (by its raw CID) to `batch`."""
        with self._sequence_lock:
            sequence = self._next_sequence.to_bytes(8, "big")
            self._next_sequence += 1
        batch.put(Space.BLOCKS, sequence, data)
        batch.put(Space.BLOCK_INDEX, cid, sequence + encode_varint(len(data)))

    def next_sequence(self) -> int:
        """The sequence number the next stored block will get: every block stored so far has a
        smaller one."""
        with self._sequence_lock:
            return self._next_sequence

    def block_entries(self) -> Iterator[tuple[bytes, int, int]]:
        """(CID, sequence number, size) of every stored block, without reading the blocks."""
        for cid, entry in self.items(Space.BLOCK_INDEX):
            yield cid, int.from_bytes(entry[:8], "big"), decode_varint(entry, 8)[0]

    def block_sequence(self, cid: bytes) -> int | None:
        """The arrival sequence number of a stored block, None when it is not stored."""
        key = self.block_key(cid)
        return None if key is None else int.from_bytes(key, "big")

    def block_key(self, cid: bytes) -> bytes | None:
        """Where a block lives in the BLOCKS keyspace, or None when it is not stored."""
        entry = self.get(Space.BLOCK_INDEX, cid)
        return None if entry is None else entry[:8]

    def get_block(self, cid: bytes, *, checked: bool = True) -> bytes | None:
        """A stored block, or None. Checked, LevelDB verifies its checksums on the way: a block
        damaged on disk raises Corrupted, never returns. Unchecked skips that CRC (about a
        quarter of a millisecond per MiB, a fifth of what serving the block costs) for a block
        whose reader checks its hash in any case; damage then shows as a hash mismatch there."""
        key = self.block_key(cid)
        if key is None:
            return None
        try:
            value: bytes | None = self._db.get(Space.BLOCKS.value + key, verify_checksums=checked)
        except plyvel.CorruptionError as exc:
            raise Corrupted(f"a block is damaged on this node's disk: {_reason(exc)}") from exc
        return value

    def has_block(self, cid: bytes) -> bool:
        return self.get(Space.BLOCK_INDEX, cid) is not None

    def block_size(self, cid: bytes) -> int:
        """The stored size of a block, 0 when it is not stored; never reads the block."""
        entry = self.get(Space.BLOCK_INDEX, cid)
        return 0 if entry is None else decode_varint(entry, 8)[0]

    def block_cids(self) -> Iterator[bytes]:
        return self.keys(Space.BLOCK_INDEX)

    def delete_block(self, batch: Batch, cid: bytes) -> None:
        key = self.block_key(cid)
        if key is not None:
            batch.delete(Space.BLOCKS, key)
            batch.delete(Space.BLOCK_INDEX, cid)

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    def get(self, space: Space, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(space._value_ + key)
        return value

    def has(self, space: Space, key: bytes) -> bool:
        return self.get(space, key) is not None

    def put(self, space: Space, key: bytes, value: bytes, *, sync: bool = False) -> None:
        with self.writing():
            self._db.put(space._value_ + key, value, sync=sync)

    def delete(self, space: Space, key: bytes, *, sync: bool = False) -> None:
        with self.writing():
            self._db.delete(space._value_ + key, sync=sync)

    def batch(self, *, sync: bool = False) -> Batch:
        return Batch(self, self._db, sync)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Run one LevelDB write; a write the disk refuses raises DiskFull.

        LevelDB appends each write to its log file. When the disk refuses an append, part of
        the record may already be in the file: harmless at the log's end (recovery drops a
        torn tail), but a record appended after it makes recovery find a corrupt record in
        the middle, and a database opened with paranoid checks then refuses to open at all,
        losing every write since. So after a failure, nothing is written until LevelDB has
        moved to a new log file.
        """
        with self._write_lock:
            if self._torn_log:
                self._start_new_log()
            try:
                yield
            except plyvel.IOError as exc:
                self._torn_log = True
                log.error("the node's disk refused a write: %s", _reason(exc))
                raise _disk_full(exc) from exc

    def _start_new_log(self) -> None:
        """Have LevelDB flush its memtable and start a new log file, leaving the torn one
        behind (it is deleted once the flush is done); DiskFull while that cannot happen.

        The flush first needs room for a table as large as the log: if the disk cannot take
        it, LevelDB would record a background error and refuse every write until the
        database is reopened. So room is tried first with a file of that size, and LevelDB
        is asked only once it fits.
        """
        log_file = self.path / f"{self._log_number():06d}.log"
        try:
            needed = log_file.stat().st_size + _TABLE_OVERHEAD
        except OSError:
            needed = _TABLE_OVERHEAD
        before = self._log_number()
        if not self._room_for(needed):
            raise DiskFull(
                "this node cannot write to its disk (it is full, or a file-size limit was "
                "reached): it still serves reads; writes resume once space is freed"
            )
        self._db.compact_range(start=_NO_KEY, stop=_NO_KEY)  # reports no error: look
        if self._log_number() <= before:
            # LevelDB keeps a failed flush or compaction as an error until it is reopened.
            raise DiskFull(
                "this node's database refuses writes since its disk refused one: it still "
                "serves reads; restart the node (once space is freed) to write again"
            )
        self._torn_log = False
        log.info("the node's disk takes writes again")

    def _room_for(self, size: int) -> bool:
        """Whether `size` bytes can be written to the database's disk now (tried, then freed)."""
        probe = self.path / _PROBE_FILE
        chunk = bytes(MiB)
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                while size > 0:
                    written = os.write(fd, chunk[: min(size, MiB)])
                    size -= written
            finally:
                os.close(fd)
        except OSError:
            return False
        finally:
            probe.unlink(missing_ok=True)
        return True

    def _log_number(self) -> int:
        """The number of LevelDB's newest log file (the one it appends to)."""
        numbers = [0]
        for entry in os.scandir(self.path):
            match = _LOG_FILE.match(entry.name)
            if match:
                numbers.append(int(match.group(1)))
        return max(numbers)

    def items(self, space: Space, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of a keyspace under `prefix`; keys come without the space."""
        start = len(space.value)
        with self._db.iterator(prefix=space.value + prefix) as it:
            for key, value in it:
                yield key[start:], value

    def items_between(
        self, space: Space, start: bytes, stop: bytes
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of a keyspace from key `start` up to, not including, `stop`, in
        order; keys come without the space."""
        skip = len(space.value)
        with self._db.iterator(start=space.value + start, stop=space.value + stop) as it:
            for key, value in it:
                yield key[skip:], value

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

    def release_mapped_pages(self, keep: int = 0) -> int:
        """Hand back the pages of table files that LevelDB read through its mmaps.

        LevelDB maps table files to read them, so every page a read touched would count in the
        node's resident size for as long as the table stays open: serving a 1 GiB file would
        show as 1 GiB. A mapping is dropped with MADV_DONTNEED where that is proven safe (below):
        its pages leave this process but stay in the page cache, so reading them again costs a
        minor fault, not a disk read. Every other table mapping gets MADV_PAGEOUT, which also
        evicts the pages from the page cache but cannot lose data (clean file pages are re-read;
        anonymous pages are left alone or swapped), so a mapping that changed since
        /proc/self/maps was read is no hazard for it.

        MADV_DONTNEED would zero an anonymous mapping that took over the range of a table
        unmapped in between. LevelDB (1.22: util/env_posix.cc, db/table_cache.cc) unmaps a
        table only when its entry leaves the table cache and no one holds it: (a) Evict of a
        file in no live version (DeleteObsoleteFiles), (b) LRU eviction within one of the
        cache's 16 shards once that shard holds more than its capacity, (c) closing. So a
        mapping is dropped only when its table (a) is in the version pinned by an iterator held
        across the madvise (listed live before and after the iterator was made: a file number
        enters the live set once and leaves it once); (b) sits in a shard holding at most half
        its capacity of table files (new tables only come from compactions, each several MiB
        written), has one mapping only, and was made after this store opened and since the
        shard last held more: LevelDB opens every new table into the cache as it verifies it,
        so no reader can have opened it a second time, a duplicate entry whose mapping goes
        when its reader is done; (c) the caller never closes the store while this runs (the
        node calls both from its one trio thread).

        With `keep`, nothing is done until the process's file-backed resident memory has grown
        by more than `keep` bytes since the last page-out: reading the mappings and advising
        each costs about 5 µs a table (up to LevelDB's 1000 mapped ones), which a node calling
        this many times a second would otherwise pay idle too.
        Returns the bytes advised; 0 where this is not Linux or nothing was done.
        """
        if _madvise is None or self._db.closed:
            return 0
        self._count_tables()  # every call, so that no shard holds more unseen
        if keep:
            resident = _file_resident()
            if resident is not None and self._paged_out_at is not None:
                self._paged_out_at = min(self._paged_out_at, resident)  # tables were closed
                if resident - self._paged_out_at <= keep:
                    return 0
        pin = None
        pinned: set[int] = set()
        if plyvel.__leveldb_version__ in _CHECKED_LEVELDB:
            live = self._live_tables()
            pin = self._db.raw_iterator()  # holds the current version until closed
            pinned = live & self._live_tables()
        try:
            try:
                with open("/proc/self/maps") as maps:
                    text = maps.read()
            except OSError:
                return 0
            tables: list[tuple[int, int, int]] = []  # start, end, file number
            for line in text.splitlines():  # "start-end perms offset dev inode path"
                if not line.endswith(".ldb") or self._table_prefix not in line:
                    continue
                start, end = (int(bound, 16) for bound in line.split(" ", 1)[0].split("-"))
                match = _MAPPED_TABLE.search(line)
                tables.append((start, end, int(match.group(1)) if match else 0))
            shards = self._count_tables(again=True)
            mappings = collections.Counter(number for _, _, number in tables)
            advised = 0
            for start, end, number in tables:
                shard = _cache_shard(number)
                drop = (
                    number in pinned
                    and mappings[number] == 1
                    and number > self._shard_floor[shard]
                    and shards is not None
                    and shards[shard] <= _SHARD_BOUND
                )
                advice = MADV_DONTNEED if drop else MADV_PAGEOUT
                if _madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), advice) == 0:
                    advised += end - start
        finally:
            if pin is not None:
                pin.close()
        self._paged_out_at = _file_resident()
        return advised

    def _live_tables(self) -> set[int]:
        """The file numbers of the tables in LevelDB's current version."""
        listing = self._db.get_property(b"leveldb.sstables") or b""
        return {int(number) for number in _SSTABLE.findall(listing)}

    def _count_tables(self, *, again: bool = False) -> list[int] | None:
        """The table files per table-cache shard, when the directory changed since the last
        count (or `again`); None when it did not, or cannot be read. A shard seen holding more
        than _SHARD_BOUND files may have evicted any table that exists now."""
        try:
            changed = os.stat(self.path).st_mtime_ns
            if changed == self._tables_seen_at and not again:
                return None
            numbers = _table_numbers(self.path)
        except OSError:
            return None
        # A change within the timestamps' granularity would leave the mtime as it is: a
        # directory changed in the last 0.1 s is counted again next time.
        self._tables_seen_at = changed if time.time_ns() - changed > 100_000_000 else None
        counts = [0] * _CACHE_SHARDS
        for number in numbers:
            counts[_cache_shard(number)] += 1
        newest = max(numbers, default=0)
        for shard, count in enumerate(counts):
            if count > _SHARD_BOUND:
                self._shard_floor[shard] = max(self._shard_floor[shard], newest)
        return counts


def _table_numbers(path: Path) -> list[int]:
    """The file numbers of the table files in a LevelDB directory."""
    numbers = []
    for entry in os.scandir(path):
        match = _TABLE_FILE.match(entry.name)
        if match:
            numbers.append(int(match.group(1)))
    return numbers


def _cache_shard(number: int) -> int:
    """The shard of LevelDB's table cache that holds a table: the top 4 bits of LevelDB's Hash
    (util/hash.cc, seed 0) of the file number's 8 little-endian bytes."""
    m = 0xC6A4A793
    h = (8 * m) & 0xFFFFFFFF
    for word in (number & 0xFFFFFFFF, number >> 32 & 0xFFFFFFFF):
        h = (h + word) * m & 0xFFFFFFFF
        h ^= h >> 16
    return h >> 28


def _file_resident() -> int | None:
    """This process's resident file-backed (and shared) bytes, None where /proc cannot say."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[2]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _find_madvise() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None


_madvise = _find_madvise()
