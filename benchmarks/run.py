"""pyrgos benchmarks: the CLI and a node process on this machine, as a user would run them.

Prints one table: each figure beside a reference measured in the same run (the raw primitive,
or the same operation at a smaller size) and its target. Run with `make bench`. The node-to-node
rows come from benchmarks/network.py (`--network-only` runs just those), the sharing rows from
benchmarks/social.py (`--social-only`), the mirroring rows from benchmarks/mirror.py
(`--mirror-only`), the local swarm's from benchmarks/swarm.py (`--swarm-only`), the simulation
harness's from benchmarks/sim.py (`--sim-only`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

MiB = 1024 * 1024
GiB = 1024 * MiB
PASSWORD = "measured with care 42"
USER = "runner"
BIN = Path(sys.executable).parent / "pyrgos"
RUNS = 3  # each transfer; the table shows medians
PEERGOS_UP = 8.0  # MiB/s, Peergos measured on this kind of machine
PEERGOS_DOWN = 35.0


@dataclass
class Row:
    name: str
    value: float
    unit: str
    reference: str
    ratio: float | None
    target: str
    ok: bool | None


def measure_crypto() -> float:
    from protocols import crypto

    key, data = crypto.random_key(), os.urandom(MiB)
    start = time.perf_counter()
    rounds = 200
    for _ in range(rounds):
        crypto.seal(key, data, b"bench")
    return rounds / (time.perf_counter() - start)


def measure_leveldb(work: Path) -> float:
    from node.store import Space, Store

    store = Store(work / "raw-leveldb")
    blocks = [os.urandom(MiB) for _ in range(8)]
    start = time.perf_counter()
    total = 256
    for i in range(total):
        store.put(Space.BLOCKS, hashlib.sha256(i.to_bytes(4, "big")).digest(), blocks[i % 8])
    rate = total / (time.perf_counter() - start)
    store.close()
    shutil.rmtree(work / "raw-leveldb")
    return rate


class Node:
    """A node process started through the CLI, and the client environment that reaches it."""

    def __init__(
        self, work: Path, *, test_mode: bool, name: str = "node", init: Sequence[str] = ()
    ) -> None:
        self.home = work / name
        self.env = dict(
            os.environ,
            PYRGOS_HOME=str(self.home),
            PYRGOS_PROFILE=str(work / "profile"),
            PYRGOS_PASSWORD=PASSWORD,
        )
        self.env.pop("PYRGOS_NODE", None)
        # A test-mode node's clients opt in to its small KDF profile; a production one's do not.
        self.env.pop("PYRGOS_INSECURE_TEST_KDF", None)
        if test_mode:
            self.env["PYRGOS_INSECURE_TEST_KDF"] = "1"
        args = ["node", "init", "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0"]
        args += ["--quota", "16GiB", *init]
        self.cli(*args, *(["--test-mode"] if test_mode else []))
        self.process = subprocess.Popen(
            [str(BIN), "node", "run"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not (self.home / "api").exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"the node {name} did not start")
            time.sleep(0.05)
        self.url = (self.home / "api").read_text().strip()

    def addr(self) -> str:
        """The node's full libp2p multiaddr (…/p2p/ID), as other nodes dial it."""
        info = subprocess.run(
            [str(BIN), "node", "info", "--json"], env=self.env, capture_output=True, timeout=60
        )
        listen: list[str] = json.loads(info.stdout)["listen"]
        return next(addr for addr in listen if "/p2p/" in addr)

    def cli(self, *args: str, stdout: int | None = subprocess.DEVNULL) -> tuple[float, int]:
        """Run one CLI command; return (seconds, its peak RSS in bytes).

        The peak is read from the child's own VmHWM while it runs: rusage's maxrss would count
        this (larger) process's memory, which a forked child inherits until it execs.
        """
        start = time.perf_counter()
        process = subprocess.Popen([str(BIN), *args], env=self.env, stdout=stdout)
        peak = 0
        while process.poll() is None:
            peak = max(peak, vm_hwm(process.pid))
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        if process.returncode != 0:
            raise RuntimeError(f"pyrgos {' '.join(args)} failed")
        return elapsed, peak

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def peak(self) -> int:
        return vm_hwm(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def vm_hwm(pid: int) -> int:
    """A process's peak resident size in bytes (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def write_random(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with path.open("wb") as out:
        for i in range(size // MiB):
            out.write(hashlib.sha256(i.to_bytes(8, "big")).digest() + block[32:])


def file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(MiB):
            digest.update(block)
    return digest.digest()


def transfer(
    node: Node,
    work: Path,
    size: int,
    rows: list[Row],
    rss: dict[str, list[int]],
    crypto_rate: float,
    leveldb_rate: float,
) -> None:
    """Upload and download `size` bytes RUNS times; rates are the medians, memory the peaks."""
    label = f"{size // MiB} MiB" if size < GiB else f"{size // GiB} GiB"
    local = work / f"file-{size}"
    write_random(local, size)
    ups, downs, client_peaks, node_peaks = [], [], [], []
    for run in range(RUNS):
        os.sync()  # earlier runs' dirty pages must not throttle this one's writes
        node.reset_peak()
        seconds, peak = node.cli("put", str(local), f"file-{size}")
        ups.append(seconds)
        client_peaks.append(peak)
        node_peaks.append(node.peak())
        back = work / f"back-{size}-{run}"  # a fresh file: replacing one costs page-cache work
        os.sync()
        node.reset_peak()
        seconds, peak = node.cli("get", f"file-{size}", str(back))
        downs.append(seconds)
        client_peaks.append(peak)
        node_peaks.append(node.peak())
        if file_digest(back) != file_digest(local):
            raise RuntimeError("the download differs from the upload")
        back.unlink()
    up_rate, down_rate = size / MiB / statistics.median(ups), size / MiB / statistics.median(downs)
    big = size >= GiB
    rows.append(
        Row(
            f"upload {label} (CLI+HTTP)",
            up_rate,
            "MiB/s",
            f"XChaCha20 {crypto_rate:.0f}",
            up_rate / crypto_rate,
            ">= 60 MiB/s" if big else f"Peergos {PEERGOS_UP:.0f}",
            up_rate >= 60 if big else None,
        )
    )
    rows.append(
        Row(
            f"download {label} (CLI+HTTP)",
            down_rate,
            "MiB/s",
            f"LevelDB put {leveldb_rate:.0f}",
            down_rate / leveldb_rate,
            ">= 150 MiB/s" if big else f"Peergos {PEERGOS_DOWN:.0f}",
            down_rate >= 150 if big else None,
        )
    )
    rss["client"].append(max(client_peaks))
    rss["node"].append(max(node_peaks))


def run(sizes: list[int], work: Path) -> list[Row]:
    rows: list[Row] = []
    crypto_rate = measure_crypto()
    leveldb_rate = measure_leveldb(work)
    rows.append(
        Row("raw XChaCha20-Poly1305 seal (1 MiB)", crypto_rate, "MiB/s", "-", None, "-", None)
    )
    rows.append(Row("raw LevelDB put (1 MiB values)", leveldb_rate, "MiB/s", "-", None, "-", None))
    node = Node(work, test_mode=False)
    try:
        node.cli("signup", USER)
        login, _ = node.cli("login", USER)
        process_start, _ = node.cli("whoami")
        in_process, kdf_alone = login_overhead(node)
        rows.append(
            Row(
                "login (in-process) minus the KDF alone",
                in_process * 1000,
                "ms",
                f"KDF {kdf_alone * 1000:.0f} ms",
                None,
                "<= 150 ms",
                in_process <= 0.150,
            )
        )
        rows.append(
            Row(
                "login through the CLI",
                login * 1000,
                "ms",
                f"KDF {kdf_alone * 1000:.0f} ms + start {process_start * 1000:.0f} ms",
                login / (kdf_alone + process_start),
                "-",
                None,
            )
        )
        rss: dict[str, list[int]] = {"client": [], "node": []}
        for size in sizes:
            transfer(node, work, size, rows, rss, crypto_rate, leveldb_rate)
        for who in ("client", "node"):
            peaks = rss[who]
            same = max(peaks) <= 1.1 * min(peaks)
            rows.append(
                Row(
                    f"peak RSS of the {who}, largest transfer",
                    peaks[-1] / MiB,
                    "MiB",
                    f"smallest {peaks[0] / MiB:.0f} MiB",
                    peaks[-1] / peaks[0],
                    "<= 200 MiB, within 10 %",
                    peaks[-1] <= 200 * MiB and same,
                )
            )
        largest = f"file-{sizes[-1]}"
        start = statistics.median(
            node.cli("cat", largest, "--offset", "0", "--length", "4096")[0] for _ in range(5)
        )
        end = statistics.median(
            node.cli("cat", largest, "--offset", str(sizes[-1] - 4096), "--length", "4096")[0]
            for _ in range(5)
        )
        rows.append(
            Row(
                "read 4 KiB at the end vs at offset 0",
                end * 1000,
                "ms",
                f"offset 0: {start * 1000:.0f} ms",
                end / start,
                "ratio <= 1.5",
                end / start <= 1.5,
            )
        )
        folder = work / "many"
        folder.mkdir()
        for i in range(10_000):
            (folder / f"entry-{i:05d}").touch()
        node.cli("put", str(folder), "many")
        listing = statistics.median(node.cli("ls", "many")[0] for _ in range(3))
        rows.append(
            Row(
                "ls of a 10,000-entry directory (CLI)",
                listing * 1000,
                "ms",
                f"process start {process_start * 1000:.0f} ms",
                listing / process_start,
                "<= 1000 ms",
                listing <= 1.0,
            )
        )
    finally:
        node.stop()
    return rows


def login_overhead(node: Node) -> tuple[float, float]:
    """(login time minus the KDF inside it, the KDF alone), each the median of five logins."""
    from node.client import NodeApi, resume
    from protocols import crypto

    url = (node.home / "api").read_text().strip()
    overheads: list[float] = []
    kdfs: list[float] = []

    async def once() -> None:
        async with NodeApi(url) as api:
            start = time.perf_counter()
            reply = await api.call("account.params", {"username": USER})
            params = crypto.KdfParams.from_cbor(reply["params"])
            kdf_start = time.perf_counter()
            keys = crypto.derive_login_keys(USER, PASSWORD, params)
            kdf_end = time.perf_counter()
            await resume(api, USER, keys)
            end = time.perf_counter()
        overheads.append((end - start) - (kdf_end - kdf_start))
        kdfs.append(kdf_end - kdf_start)

    for _ in range(5):
        trio.run(once)
    return statistics.median(overheads), statistics.median(kdfs)


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'figure':44} {'value':>10} {'unit':6} {'reference (same run)':34} {'ratio':>7}"
        f"  {'target':24} ok"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        ok = {True: "yes", False: "NO", None: ""}[row.ok]
        print(
            f"{row.name:44} {row.value:10.1f} {row.unit:6} {row.reference:34} {ratio:>7}"
            f"  {row.target:24} {ok}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="32 MiB and 100 MiB only")
    parser.add_argument(
        "--network-only", action="store_true", help="only node to node (benchmarks/network.py)"
    )
    parser.add_argument(
        "--social-only", action="store_true", help="only sharing and links (benchmarks/social.py)"
    )
    parser.add_argument(
        "--swarm-only", action="store_true", help="only the local swarm (benchmarks/swarm.py)"
    )
    parser.add_argument(
        "--mirror-only", action="store_true", help="only mirroring (benchmarks/mirror.py)"
    )
    parser.add_argument(
        "--sim-only", action="store_true", help="only the simulation harness (benchmarks/sim.py)"
    )
    args = parser.parse_args()
    sizes = [32 * MiB, 100 * MiB] if args.quick else [100 * MiB, GiB]
    work = Path(tempfile.mkdtemp(prefix="pyrgos-bench-"))
    try:
        from mirror import run_mirror
        from network import run_network  # this directory: it imports this module's helpers
        from sim import run_sim
        from social import run_social
        from swarm import run_swarm

        only = args.network_only or args.social_only or args.swarm_only or args.mirror_only
        only = only or args.sim_only
        rows = [] if only else run(sizes, work)
        rows += run_network(work / "network") if args.network_only or not only else []
        rows += run_social(work / "social") if args.social_only or not only else []
        rows += run_mirror(work / "mirror") if args.mirror_only or not only else []
        rows += run_swarm(work / "swarm") if args.swarm_only or not only else []
        rows += run_sim() if args.sim_only or not only else []
        print_table(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
