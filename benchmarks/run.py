"""pyrgos benchmarks: the CLI and a node process on this machine, as a user would run them.

Prints one table: each figure beside a reference measured in the same run (the raw primitive,
the bare process start, or the same operation at a smaller size) and its target. Every transfer
is a whole `pyrgos` process (start, session resume, transfer, exit) against a production-mode
node: a file at each size (10 MiB, 200 MiB and 1 GiB; `--quick` 10 and 200 MiB; `--sizes`),
uploaded, downloaded and downloaded again, and a folder of 1,000 small files put and got back.
Run with `make bench` (`--cli-only` runs just these rows). The node-to-node rows come from
benchmarks/network.py (`--network-only` runs just those), the sharing rows from
benchmarks/social.py (`--social-only`), the mirroring rows from benchmarks/mirror.py
(`--mirror-only`), the local swarm's from benchmarks/swarm.py (`--swarm-only`), the simulation
harness's from benchmarks/sim.py (`--sim-only`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
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
STARTS = 5  # each short command (process start, whoami, ls); the table shows medians
CLI_LIMIT = 600.0  # seconds any one CLI command may take
# MiB/s (up, down) of Tahoe-LAFS measured on this kind of machine, by file size; a row names the
# nearest size's.
TAHOE = {100 * MiB: (54.0, 48.0), GiB: (56.0, 96.0)}
# MiB/s (up, down) through the CLI: the targets (at 1 GiB, the next goal).
TARGETS = {200 * MiB: (120.0, 200.0), GiB: (160.0, 350.0)}
AGAIN = 0.95  # a second download is "no slower" at this share of the first's rate or more
PEAK = {"client": 100 * MiB, "node": 160 * MiB}  # peak RSS bounds, flat (10 %) in file size
# Flatness is judged against the peak at the smallest size from this one on: a 10 MiB file does
# not bring every buffer of the pipeline into use (its peaks are about a fifth lower).
FLAT_FROM = 100 * MiB
FOLDER_FILES = 1000  # the folder of small files put and got back
SMALL = 4096  # bytes of each small file


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
        self.env.pop("PYRGOS_AGENT", None)  # commands go through a command agent, by default
        run = work / "run"  # the agent of this run alone
        run.mkdir(mode=0o700, exist_ok=True)
        self.env["XDG_RUNTIME_DIR"] = str(run)
        self.agent: subprocess.Popen[bytes] | None = None
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

    def start_agent(self) -> None:
        """Start the command agent, as a user's first command would, and wait until it
        answers: what every later command of a user finds."""
        self.agent = subprocess.Popen([str(BIN), "agent", "serve"], env=self.env)
        deadline = time.monotonic() + 30
        while (
            b"requests served"
            not in subprocess.run(
                [str(BIN), "agent", "status"], env=self.env, capture_output=True, timeout=60
            ).stdout
        ):
            if time.monotonic() > deadline or self.agent.poll() is not None:
                raise RuntimeError("the command agent did not start")
            time.sleep(0.05)

    def cli(
        self, *args: str, stdout: int | None = subprocess.DEVNULL, limit: float = CLI_LIMIT
    ) -> tuple[float, int, float]:
        """Run one CLI command within `limit` seconds; return (seconds, its peak RSS in bytes,
        the CPU seconds of the agent's process that ran it, if one did).

        Peaks are read from /proc while the command runs: of the `pyrgos` process and of the
        process the agent forked for it. rusage's maxrss would count this (larger) process's
        memory, which a forked child inherits until it execs; and the agent's processes are
        not this one's children. Their CPU is read at each poll, so a command through the
        agent is undercounted by at most the last poll interval (10 ms).
        """
        start = time.perf_counter()
        process = subprocess.Popen([str(BIN), *args], env=self.env, stdout=stdout)
        peak = 0
        forked: dict[int, float] = {}
        while process.poll() is None:
            if time.perf_counter() - start > limit:
                process.kill()
                process.wait()
                raise RuntimeError(f"pyrgos {' '.join(args)} took over {limit:g} s")
            peak = max(peak, vm_hwm(process.pid))
            for pid in self.forked():
                peak = max(peak, vm_hwm(pid))
                forked[pid] = cpu_seconds(pid) or forked.get(pid, 0.0)
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        if process.returncode != 0:
            raise RuntimeError(f"pyrgos {' '.join(args)} failed")
        return elapsed, peak, sum(forked.values())

    def forked(self) -> list[int]:
        """The processes the agent has forked and that still run."""
        if self.agent is None:
            return []
        pid = self.agent.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def peak(self) -> int:
        return vm_hwm(self.process.pid)

    def stop(self) -> None:
        # The agent this run started, or one a command started.
        subprocess.run([str(BIN), "agent", "stop"], env=self.env, capture_output=True, timeout=60)
        if self.agent is not None:
            self.agent.wait(timeout=30)
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


def cpu_seconds(pid: int) -> float:
    """CPU seconds a process has used so far (user + system, all its threads; 0 once it is
    gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """CPU seconds all cores have spent so far (in processes, in interrupts: loopback traffic
    is mostly softirq work, which no process is charged for)."""
    line = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in line[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + steal) / tick, (irq + softirq) / tick


def children_cpu() -> float:
    """CPU seconds of this process's reaped children so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


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


def small_files(folder: Path, count: int) -> None:
    """`count` files of SMALL bytes each (distinct, random) in a new folder."""
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"f{i:05}.txt").write_text(os.urandom(SMALL // 2).hex())


def same_tree(one: Path, other: Path) -> bool:
    """Whether two local folders hold the same names with the same bytes (flat folders)."""
    names = sorted(path.name for path in one.iterdir())
    if names != sorted(path.name for path in other.iterdir()):
        return False
    return all((one / name).read_bytes() == (other / name).read_bytes() for name in names)


def size_label(size: int) -> str:
    return f"{size // GiB} GiB" if size >= GiB and size % GiB == 0 else f"{size // MiB} MiB"


@dataclass
class Measured:
    """One whole CLI command: its time, both processes' peak RSS and CPU seconds."""

    seconds: float
    client_peak: int
    node_peak: int
    client_cpu: float
    node_cpu: float
    busy: float  # CPU seconds of the whole machine, in processes and in interrupts

    def cpu_row(self) -> Row:
        """Where the CPU went in this command, in cores (1.0: one core busy throughout): the
        client, the node, and everything else (this harness, interrupts, other work)."""
        client, node = self.client_cpu / self.seconds, self.node_cpu / self.seconds
        rest = max(0.0, self.busy / self.seconds - client - node)
        where = f"node {100 * node:.0f}%, rest {100 * rest:.0f}%"
        return Row("  CPU of the client", 100 * client, "%core", where, None, "-", None)


def measured(node: Node, *args: str) -> Measured:
    """Run one CLI command after flushing dirty pages (earlier runs' writes must not throttle
    this one's), with the node's peak reset."""
    os.sync()
    node.reset_peak()
    client_before, node_before = children_cpu(), cpu_seconds(node.process.pid)
    busy_before = sum(machine_busy())
    seconds, peak, forked_cpu = node.cli(*args)
    return Measured(
        seconds,
        peak,
        node.peak(),
        children_cpu() - client_before + forked_cpu,
        cpu_seconds(node.process.pid) - node_before,
        sum(machine_busy()) - busy_before,
    )


def median_run(runs: list[Measured]) -> Measured:
    """The run whose time was the median."""
    return sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]


def median_start(env: dict[str, str], *command: str) -> float:
    """The median seconds of STARTS runs of a short command, start to exit. Each wait is a
    blocking waitpid, exact to the exit: `subprocess.run(timeout=…)` polls in sleeps that
    double from 0.5 to 50 ms, which rounded every start up to 32, 64, 114 or 164 ms."""
    times = []
    for _ in range(STARTS):
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        watchdog = threading.Timer(60, process.kill)
        watchdog.start()
        try:
            code = process.wait()
        finally:
            watchdog.cancel()
        times.append(time.perf_counter() - start)
        if code != 0:
            raise RuntimeError(f"{' '.join(command)} failed")
    return statistics.median(times)


@dataclass
class References:
    """The raw figures measured in the same run that transfer rows are put beside."""

    crypto: float  # MiB/s of XChaCha20-Poly1305 seal
    leveldb: float  # MiB/s of LevelDB puts


def targets(size: int, upload: bool) -> tuple[str, float | None]:
    """The target text of a transfer of `size` (the target rate, if any, and Tahoe-LAFS's at
    the nearest size measured) and the rate it asks for."""
    nearest = min(TAHOE, key=lambda measured_size: abs(measured_size - size))
    tahoe = TAHOE[nearest][0 if upload else 1]
    also = f"Tahoe {tahoe:.0f} at {size_label(nearest)}"
    goal = TARGETS.get(size)
    if goal is None:
        return f"- ({also})", None
    rate = goal[0 if upload else 1]
    return f">= {rate:.0f} ({also})", rate


def transfer(
    node: Node, work: Path, size: int, refs: References, rss: dict[str, list[int]]
) -> list[Row]:
    """Upload `size` bytes, download them and download them again, RUNS times, each a whole
    CLI command; rows of the median rates (and the CPU of the median runs); memory peaks go
    to `rss`."""
    label = size_label(size)
    local = work / f"file-{size}"
    write_random(local, size)
    expected = file_digest(local)
    ups: list[Measured] = []
    downs: list[list[Measured]] = [[], []]
    for run in range(RUNS):
        ups.append(measured(node, "put", str(local), f"file-{size}"))
        for again, runs in enumerate(downs):
            back = work / f"back-{size}-{run}-{again}"  # fresh: replacing costs page-cache work
            runs.append(measured(node, "get", f"file-{size}", str(back)))
            if file_digest(back) != expected:
                raise RuntimeError("the download differs from the upload")
            back.unlink()
    local.unlink()
    every = ups + downs[0] + downs[1]
    rss["client"].append(max(run.client_peak for run in every))
    rss["node"].append(max(run.node_peak for run in every))

    def rate(runs: list[Measured]) -> float:
        return size / MiB / statistics.median(run.seconds for run in runs)

    up, first, second = rate(ups), rate(downs[0]), rate(downs[1])
    up_target, up_goal = targets(size, upload=True)
    down_target, down_goal = targets(size, upload=False)
    return [
        Row(f"upload {label} (CLI)", up, "MiB/s", f"XChaCha20 {refs.crypto:.0f}",
            up / refs.crypto, up_target, None if up_goal is None else up >= up_goal),
        median_run(ups).cpu_row(),
        Row(f"download {label} (CLI)", first, "MiB/s", f"LevelDB put {refs.leveldb:.0f}",
            first / refs.leveldb, down_target, None if down_goal is None else first >= down_goal),
        median_run(downs[0]).cpu_row(),
        Row(f"download {label} again (CLI)", second, "MiB/s",
            f"first {first:.0f}; LevelDB x{second / refs.leveldb:.2f}", second / first,
            f"ratio >= {AGAIN} (no slower)", second >= AGAIN * first),
        median_run(downs[1]).cpu_row(),
    ]  # fmt: skip


def folder(node: Node, work: Path) -> list[Row]:
    """`pyrgos put` of a folder of FOLDER_FILES small files and `pyrgos get` of it back (its
    content checked), RUNS times; rows of the median files/s."""
    local = work / "small"
    small_files(local, FOLDER_FILES)
    puts, gets = [], []
    for run in range(RUNS):
        puts.append(measured(node, "put", str(local), f"small-{run}"))
        back = work / f"small-back-{run}"
        gets.append(measured(node, "get", f"small-{run}", str(back)))
        if not same_tree(local, back):
            raise RuntimeError("the folder downloaded differs from the one uploaded")
        shutil.rmtree(back)
    rows = []
    for what, runs in (("put", puts), ("get", gets)):
        seconds = statistics.median(run.seconds for run in runs)
        name = f"{what} a folder of {FOLDER_FILES:,} x {SMALL // 1024} KiB (CLI)"
        per_file = f"{seconds:.2f} s; {seconds / FOLDER_FILES * 1000:.2f} ms a file"
        rows.append(Row(name, FOLDER_FILES / seconds, "file/s", per_file, None, "-", None))
        rows.append(median_run(runs).cpu_row())
    return rows


def memory_rows(sizes: list[int], rss: dict[str, list[int]]) -> list[Row]:
    """Each process's peak RSS at each size, beside its peak at the smallest size from
    FLAT_FROM on (or the smallest size, when none is that large)."""
    rows = []
    base_size = next((size for size in sizes if size >= FLAT_FROM), sizes[0])
    for who, peaks in rss.items():
        base = peaks[sizes.index(base_size)]
        bound = PEAK[who]
        for size, peak in zip(sizes, peaks, strict=True):
            rows.append(
                Row(
                    f"peak RSS of the {who}, {size_label(size)}",
                    peak / MiB,
                    "MiB",
                    f"at {size_label(base_size)} {base / MiB:.0f} MiB",
                    peak / base,
                    f"<= {bound // MiB} MiB, within 10 %",
                    peak <= bound and peak <= 1.1 * base,
                )
            )
    return rows


def run(sizes: list[int], work: Path) -> list[Row]:
    rows: list[Row] = []
    refs = References(measure_crypto(), measure_leveldb(work))
    rows.append(
        Row("raw XChaCha20-Poly1305 seal (1 MiB)", refs.crypto, "MiB/s", "-", None, "-", None)
    )
    rows.append(Row("raw LevelDB put (1 MiB values)", refs.leveldb, "MiB/s", "-", None, "-", None))
    node = Node(work, test_mode=False)
    try:
        python = median_start(node.env, sys.executable, "-c", "pass")
        bare = median_start(node.env, str(BIN), "--help")
        node.cli("signup", USER)
        login = node.cli("login", USER)[0]
        alone = dict(node.env, PYRGOS_AGENT="off")
        whoami_alone = median_start(alone, str(BIN), "whoami")
        home_alone = median_start(alone, str(BIN), "ls")
        node.start_agent()
        whoami = median_start(node.env, str(BIN), "whoami")
        rows.append(Row("process start: python -c pass", python * 1000, "ms", "-", None, "-", None))
        rows.append(
            Row(
                "process start: pyrgos --help",
                bare * 1000,
                "ms",
                f"python -c pass {python * 1000:.0f} ms",
                bare / python,
                "-",
                None,
            )
        )
        rows.append(
            Row(
                "whoami (CLI)",
                whoami * 1000,
                "ms",
                f"pyrgos --help {bare * 1000:.0f} ms",
                whoami / bare,
                "<= 150 ms (a start)",
                whoami <= 0.150,
            )
        )
        rows.append(
            Row(
                "  whoami, no agent (CLI)",
                whoami_alone * 1000,
                "ms",
                f"through the agent {whoami * 1000:.0f} ms",
                whoami_alone / whoami,
                "-",
                None,
            )
        )
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
                f"KDF {kdf_alone * 1000:.0f} ms + whoami alone {whoami_alone * 1000:.0f} ms",
                login / (kdf_alone + whoami_alone),
                "-",
                None,
            )
        )
        rss: dict[str, list[int]] = {"client": [], "node": []}
        for size in sizes:
            rows += transfer(node, work, size, refs, rss)
        rows += folder(node, work)
        rows += memory_rows(sizes, rss)
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
        home = median_start(node.env, str(BIN), "ls")
        rows.append(
            Row(
                "ls of the home folder (CLI)",
                home * 1000,
                "ms",
                f"whoami {whoami * 1000:.0f} ms",
                home / whoami,
                "<= 150 ms (a start)",
                home <= 0.150,
            )
        )
        rows.append(
            Row(
                "  ls of the home folder, no agent (CLI)",
                home_alone * 1000,
                "ms",
                f"through the agent {home * 1000:.0f} ms",
                home_alone / home,
                "-",
                None,
            )
        )
        many = work / "many"
        many.mkdir()
        for i in range(10_000):
            (many / f"entry-{i:05d}").touch()
        node.cli("put", str(many), "many")
        listing = statistics.median(node.cli("ls", "many")[0] for _ in range(3))
        rows.append(
            Row(
                "ls of a 10,000-entry directory (CLI)",
                listing * 1000,
                "ms",
                f"ls of the home folder {home * 1000:.0f} ms",
                listing / home,
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
        with trio.fail_after(60):
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
        f"  {'target':30} ok"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        ok = {True: "yes", False: "NO", None: ""}[row.ok]
        print(
            f"{row.name:44} {row.value:10.1f} {row.unit:6} {row.reference:34} {ratio:>7}"
            f"  {row.target:30} {ok}"
        )


def mib_list(text: str) -> list[int]:
    """`--sizes`: MiB, comma-separated, each at least 1 and under 64 GiB, in rising order."""
    try:
        sizes = [int(part) * MiB for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole MiB: {text}") from None
    if not all(MiB <= size < 64 * GiB for size in sizes) or sizes != sorted(set(sizes)):
        raise argparse.ArgumentTypeError("sizes must rise, from 1 MiB to under 64 GiB")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="files of 10 and 200 MiB only")
    parser.add_argument(
        "--sizes",
        type=mib_list,
        metavar="MIB,...",
        help="the file sizes in MiB, smallest first (default 10,200,1024)",
    )
    parser.add_argument(
        "--cli-only", action="store_true", help="only the CLI against one node (this module)"
    )
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
    sizes = args.sizes or ([10 * MiB, 200 * MiB] if args.quick else [10 * MiB, 200 * MiB, GiB])
    work = Path(tempfile.mkdtemp(prefix="pyrgos-bench-"))
    try:
        from mirror import run_mirror
        from network import run_network  # this directory: it imports this module's helpers
        from sim import run_sim
        from social import run_social
        from swarm import run_swarm

        only = args.network_only or args.social_only or args.swarm_only or args.mirror_only
        only = only or args.sim_only or args.cli_only
        rows = run(sizes, work) if args.cli_only or not only else []
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
