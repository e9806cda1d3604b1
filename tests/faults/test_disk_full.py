"""A full disk: writes are refused with a clear error and change nothing, reads go on, writes
resume once space is back, and nothing acknowledged is lost, even across a SIGKILL.

A full disk is played by RLIMIT_FSIZE (no file may grow past the limit; Python ignores
SIGXFSZ, so writes fail with EFBIG where a full disk gives ENOSPC).
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import pytest
import trio
import trio.testing

from node.daemon import _collect_periodically
from node.store import DiskFull, Space, Store
from protocols.errors import Unavailable
from tests.e2e.conftest import client
from tests.faults.conftest import KiB, Target, kill, limit_file_size

HEADROOM: Final = 128 * KiB  # what the node may still append to any file once "full"
REFUSED_CODE: Final = 7  # the CLI's exit status for `unavailable`


def newest_log(db: Path) -> int:
    logs = sorted(db.glob("*.log"))
    return logs[-1].stat().st_size if logs else 0


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """This process may grow no file past `limit` bytes until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def write_refused(store: Store, attempt: int) -> None:
    with store.batch(sync=attempt == 1) as batch:
        batch.put(Space.BLOCKS, b"refused-%d" % attempt, bytes(300 * KiB))
        batch.put(Space.POINTERS, b"refused", b"")


def test_a_store_on_a_full_disk_refuses_writes_and_loses_nothing(tmp_path: Path) -> None:
    """The torn log: a write that fails half way, then writes after space returns, used to
    make the database refuse to open (checksum mismatch) and so lose everything written."""
    store = Store(tmp_path / "db")
    acked = {b"k%d" % n: bytes([n]) * (40 * KiB) for n in range(8)}
    for key, value in acked.items():
        store.put(Space.BLOCKS, key, value)
    with file_size_limit(newest_log(tmp_path / "db") + 100 * KiB):
        for attempt in range(3):  # each refused whole; the first tears the log
            with pytest.raises(DiskFull, match="cannot write to its disk"):
                write_refused(store, attempt)
            with pytest.raises(DiskFull):
                store.put(Space.META, b"refused", bytes(300 * KiB))
        assert store.get(Space.BLOCKS, b"k3") == acked[b"k3"]  # reads go on
    # Space is back: writes resume in place, and everything is there after a reopen.
    for n in range(8, 12):
        acked[b"k%d" % n] = bytes([n]) * (40 * KiB)
        store.put(Space.BLOCKS, b"k%d" % n, acked[b"k%d" % n], sync=n == 11)
    store.close()
    store = Store(tmp_path / "db")
    try:
        assert dict(store.items(Space.BLOCKS)) == acked
        assert store.get(Space.POINTERS, b"refused") is None
        assert store.get(Space.META, b"refused") is None
        assert not (tmp_path / "db" / "pyrgos-room-probe").exists()
    finally:
        store.close()


def test_a_store_whose_database_failed_a_flush_asks_for_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the room probe, LevelDB itself fails the flush; it then refuses writes until
    it is reopened, and the error says so instead of promising they resume."""
    monkeypatch.setattr(Store, "_room_for", lambda self, size: True)
    store = Store(tmp_path / "db")
    acked = {b"k%d" % n: bytes([n]) * (100 * KiB) for n in range(4)}
    for key, value in acked.items():
        store.put(Space.BLOCKS, key, value)
    messages = []
    with file_size_limit(newest_log(tmp_path / "db") // 2):
        for _ in range(4):
            with pytest.raises(DiskFull) as caught:
                store.put(Space.META, b"refused", b"x")
            messages.append(caught.value.message)
        assert store.get(Space.BLOCKS, b"k1") == acked[b"k1"]
    assert "restart the node" in messages[-1], messages
    with pytest.raises(DiskFull, match="restart the node"):
        store.put(Space.META, b"refused", b"x")
    store.close()
    store = Store(tmp_path / "db")  # the restart
    try:
        store.put(Space.META, b"after", b"y", sync=True)
        assert dict(store.items(Space.BLOCKS)) == acked
        assert store.get(Space.META, b"refused") is None
    finally:
        store.close()


def test_a_store_that_cannot_open_on_a_full_disk_says_so(tmp_path: Path) -> None:
    """Opening replays the log into a table; on a full disk that fails, and the error must
    not send the operator looking for another node holding the database."""
    store = Store(tmp_path / "db")
    store.put(Space.BLOCKS, b"k", bytes(300 * KiB), sync=True)
    store.close()
    with file_size_limit(100 * KiB), pytest.raises(Unavailable) as caught:
        Store(tmp_path / "db")
    assert "File too large" in caught.value.message
    assert "another node" not in caught.value.message
    store = Store(tmp_path / "db")  # space is back
    try:
        assert store.get(Space.BLOCKS, b"k") == bytes(300 * KiB)
    finally:
        store.close()


def test_a_node_on_a_full_disk(target: Target) -> None:
    target.put("a.bin", 200 * KiB)
    db = target.node.home / "db"
    full = max(newest_log(db), target.node.log.stat().st_size) + HEADROOM
    limit_file_size(target.node, full)

    for name in ("refused-1.bin", "refused-2.bin"):  # the first tears the log, the second not
        path = target.file(name, 3 * HEADROOM)
        result = target.cli.run("put", path, name)
        assert result.code == REFUSED_CODE, f"{result}\n{target.logs()}"
        assert result.stderr.startswith("pyrgos: error: "), str(result)
        assert "cannot write to its disk" in result.stderr, str(result)
        assert len(result.stderr.splitlines()) == 1, str(result)
    files = target.check_acked()  # reads go on
    assert "refused-1.bin" not in files
    assert "refused-2.bin" not in files
    # A collection needs to write too: the operator is told why it cannot run, not that
    # another node holds the database.
    gc = target.cli.run("node", "gc", "--home", target.node.home)
    assert gc.code == REFUSED_CODE, str(gc)
    assert "cannot write to its disk" in gc.stderr, str(gc)
    assert len(gc.stderr.splitlines()) == 1, str(gc)

    limit_file_size(target.node, resource.RLIM_INFINITY)  # space is back
    target.put("c.bin", 3 * HEADROOM)  # without a restart
    kill(target.node)
    target.node.start()
    files = target.check_acked()
    assert "refused-1.bin" not in files
    target.check_no_tracebacks()


def test_reads_relayed_by_a_node_on_a_full_disk(target: Target, tmp_path: Path) -> None:
    """A user homed on the PKI node reads through the mirror, whose disk is full."""
    if target.kind == "node":
        pytest.skip("needs a second node")
    away = f"{target.user}-away"
    owner = client(target.nodes[0], tmp_path, "owner")
    assert owner.run("signup", away).code == 0
    data = target.rng.randbytes(100 * KiB)
    (tmp_path / "away.bin").write_bytes(data)
    assert owner.run("put", tmp_path / "away.bin", "away.bin").code == 0
    reader = client(target.node, tmp_path, "reader")
    assert reader.run("login", away).code == 0
    # Full for LevelDB's log (the node's own log may lose lines: it is no worse for it).
    limit_file_size(target.node, newest_log(target.node.home / "db") + 1)
    result = reader.run("cat", "away.bin")
    assert result.code == 0, f"{result}\n{target.logs()}"
    assert result.stdout == data


async def test_a_scheduled_collection_on_a_full_disk_logs_one_line(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    """Every scheduled collection on a full disk fails: each is one line, no traceback."""

    class FullService:
        calls = 0
        third = trio.Event()

        async def collect_garbage(self) -> dict[str, int]:
            self.calls += 1
            if self.calls == 3:
                self.third.set()
            raise DiskFull("this node cannot write to its disk (No space left on device)")

    service = FullService()
    with trio.fail_after(4 * 3600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect_periodically, service, 3600)  # on virtual time
            await service.third.wait()
            nursery.cancel_scope.cancel()
    failures = [r for r in caplog.records if "garbage collection failed" in r.getMessage()]
    assert len(failures) >= 3
    assert all(r.exc_info is None and "No space left" in r.getMessage() for r in failures)
