"""SIGKILL during writes and during garbage collection: whatever the user was told is stored
is there, byte for byte, after the restart, and the node serves again."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Final

import httpx
import pytest

from node.store import Space, Store
from protocols import cbor
from protocols.cid import CID, CODEC_RAW
from tests.e2e.conftest import CALL_TIMEOUT, Result
from tests.faults.conftest import KiB, Target, kill

pytestmark = pytest.mark.e2e

WRITERS: Final = 2  # uploads at once, so one is under way whenever the node is killed
ACKED_BEFORE_KILL: Final = 2
JUNK_BLOCKS: Final = 3000  # garbage for the collection to sweep, in batches of 1,000
JUNK_BYTES: Final = 4 * KiB
SWEEP_STARTED: Final = 16 * KiB  # log growth that only the sweep's deletions make


class Uploads:
    """Clients uploading files one after the other until told to stop; records which puts
    succeeded (acknowledged) and which were under way or failed."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.acked: dict[str, bytes] = {}
        self.failed: dict[str, Result] = {}
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._upload, args=(n,), daemon=True) for n in range(WRITERS)
        ]

    def _upload(self, writer: int) -> None:
        # Sizes alternate: an inline node, one fragment, two fragments.
        sizes = [3 * KiB, 300 * KiB, 1200 * KiB]
        count = 0
        while not self.stop.is_set():
            name = f"w{writer}-{count}.bin"
            with self.lock:
                path = self.target.file(name, sizes[count % len(sizes)])
            result = self.target.cli.run("put", path, name)
            with self.lock:
                if result.code == 0:
                    self.acked[name] = path.read_bytes()
                else:
                    self.failed[name] = result
            count += 1

    def __enter__(self) -> Uploads:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=CALL_TIMEOUT)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + CALL_TIMEOUT
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"no {count} uploads: {self.failed}"
            time.sleep(0.02)


def test_kill_during_writes(target: Target) -> None:
    target.put("before.txt", 10 * KiB)
    with Uploads(target) as uploads:
        uploads.wait_for(ACKED_BEFORE_KILL)
        time.sleep(0.2)  # into the next uploads
        kill(target.node)
    # The uploads under way failed with one line, no traceback, no hang.
    assert uploads.failed, "no upload was under way when the node was killed"
    for result in uploads.failed.values():
        assert result.code != 0
        assert "Traceback" not in result.stderr, str(result)
        assert len(result.stderr.splitlines()) == 1, str(result)
    target.acked.update(uploads.acked)

    target.node.start()
    # A collection right after the restart keeps everything acknowledged (an upload's pins
    # and its committed pointers alike).
    gc = target.cli.run("node", "gc", "--home", target.node.home)
    assert gc.code == 0, f"{gc}\n{target.logs()}"
    files = target.check_acked()
    # An upload cut off half way is absent or whole, never half there.
    for name in set(uploads.failed) & set(files):
        assert files[name] == (target.root / "local" / name).read_bytes(), name
    target.put("after.txt", 20 * KiB)  # and takes writes again
    target.check_no_tracebacks()


def _add_junk(home: Path) -> None:
    """Blocks no pointer reaches, written while the node is stopped: work for the sweep."""
    store = Store(home / "db")
    try:
        with store.batch() as batch:
            for n in range(JUNK_BLOCKS):
                data = n.to_bytes(4, "big") + os.urandom(JUNK_BYTES - 4)
                store.put_block(batch, CID.of(CODEC_RAW, data).raw, data)
    finally:
        store.close()


def _count_blocks(home: Path) -> int:
    store = Store(home / "db")
    try:
        return sum(1 for _ in store.keys(Space.BLOCK_INDEX))
    finally:
        store.close()


def _log_size(db: Path) -> int:
    logs = sorted(db.glob("*.log"))
    return logs[-1].stat().st_size if logs else 0


def _admin_gc(target: Target, answer: list[object]) -> None:
    """The node's collection, asked over its API (`pyrgos node gc` would finish the job
    itself, offline, once the node is gone)."""
    token = (target.node.home / "admin-token").read_text().strip()
    try:
        reply = httpx.post(
            f"{target.node.url}/api/v1/call/admin.gc",
            content=cbor.encode({"token": token}),
            headers={"content-type": "application/cbor"},
            timeout=CALL_TIMEOUT,
        )
        answer.append(reply)
    except httpx.HTTPError as exc:
        answer.append(exc)


def test_kill_during_garbage_collection(target: Target) -> None:
    target.put("kept.bin", 700 * KiB)
    target.node.stop_cleanly()
    _add_junk(target.node.home)
    before = _count_blocks(target.node.home)
    target.node.start()

    db = target.node.home / "db"
    size = _log_size(db)
    answer: list[object] = []
    gc = threading.Thread(target=_admin_gc, args=(target, answer), daemon=True)
    gc.start()
    # The sweep writes its deletions (1,000 a batch, ~50 KB) to LevelDB's log: kill the node
    # as soon as the first batch is there.
    deadline = time.monotonic() + CALL_TIMEOUT
    while _log_size(db) < size + SWEEP_STARTED and gc.is_alive():
        assert time.monotonic() < deadline, "the collection never started"
        time.sleep(0.001)
    kill(target.node)
    gc.join(timeout=CALL_TIMEOUT)
    assert answer, "the collection was not answered"
    assert isinstance(answer[0], httpx.TransportError), f"not cut short: {answer}"

    left = _count_blocks(target.node.home)  # the node is down: the database is free
    target.node.start()
    # Run to the end this time: the junk goes, everything acknowledged stays.
    done = target.cli.run("node", "gc", "--home", target.node.home)
    assert done.code == 0, f"{done}\n{target.logs()}"
    deleted = int(done.out.split()[1])  # "deleted N blocks, freed M bytes"
    assert deleted >= JUNK_BLOCKS - (before - left), done.out
    target.check_acked()
    target.check_no_tracebacks()
