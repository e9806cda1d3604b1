"""pyrgos network benchmarks: node to node on 127.0.0.1, each figure beside its same-run reference.

- Bulk download over the block exchange (/pyrgos/blocks/1.0.0) beside plain trio TCP and a raw
  libp2p stream between the same two processes: the stream carrying one buffer over and over
  (its peak), and carrying the same stored GiB the exchange serves, read from the store the same
  way, back to back with no protocol (the exchange's reference). The serving side runs in a
  process of its own (`network.py --serve DIR`), so each end has a core, as two nodes would.
- Many small blocks: pipelined fetch time beside stop-and-wait (2,000 x the RPC round trip).
- Upload through a non-home node beside the home node: two real node processes and the CLI.
- PKI: a fresh mirror syncing 10,000 claims over the RPC, and lookups at 10,000 users.

Run by benchmarks/run.py (`--network-only` for just these rows); alone, this prints the same
table. Every wait is bounded: a stalled run fails instead of hanging.

Both processes of the bulk transfers run with the CLI's fixed allocator thresholds
(node/heap.py: buffers under 2 MiB from the heap, up to 32 MiB kept free); with glibc's adaptive
ones the heap was now and then given back and faulted in again, which moved single runs by a
fifth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio
from run import (
    BIN,
    CLI_LIMIT,
    PASSWORD,
    USER,
    GiB,
    MiB,
    Node,
    Row,
    cpu_seconds,
    machine_busy,
    print_table,
    write_random,
)

LOCALHOST: Final = "127.0.0.1"
BULK: Final = GiB  # each bulk transfer
BULK_BLOCK: Final = MiB
SMALL_COUNT: Final = 2_000
SMALL_BLOCK: Final = 4 * 1024
SEND_CHUNK: Final = 4 * MiB  # the raw stream's and TCP's writes
RUNS: Final = 3  # bulk transfers and uploads; the table shows medians
SMALL_RUNS: Final = 5
RTT_CALLS: Final = 300
CLAIMS: Final = 10_000
SMALL_LOG: Final = 100  # the lookup reference: the same lookup in a log of 100 users
UPLOAD: Final = 100 * MiB
SOURCE: Final = "/pyrgos-bench/source/1.0.0"  # the server sends the size asked for, then ends
STORED: Final = "/pyrgos-bench/stored/1.0.0"  # the server sends the stored blocks asked for
TRANSFER_LIMIT: Final = 300.0  # seconds any one transfer may take
STEP_LIMIT: Final = 120.0  # seconds any smaller step may take
SERVER_LIFETIME: Final = 3600.0  # the serving process exits after this, whatever happens


# -- the serving process ----------------------------------------------------------------------


def signer_of(key_file: Path) -> Any:
    """The node key as the PKI signs with it (the libp2p key's seed, as node/daemon.py does)."""
    from libp2p.identity_utils import load_identity

    from protocols.crypto import SigningKey

    return SigningKey.from_seed(load_identity(key_file).private_key.to_bytes()[:32])


def steady_heap() -> None:
    """The allocator thresholds both bulk-transfer processes run with (see the module doc)."""
    from node import heap

    heap.tune(heap.CLIENT_MMAP_THRESHOLD, heap.CLIENT_TRIM_THRESHOLD, heap.CLIENT_ARENAS)


async def serve(work: Path) -> None:
    """The serving node: the store the client filled, the real RPC and block handlers, a raw
    source protocol and a TCP source; prints where it is reachable, runs until stdin ends."""
    from multiaddr import Multiaddr

    from node.net import open_host, serve_node
    from node.net._framed import write_in_units
    from node.server import NodeService, NodeSettings, PkiLog
    from node.server._service import stored_block
    from node.store import Store
    from protocols.cid import CID
    from protocols.peerid import peer_id_of

    key_file = work / "server.key"
    signer = signer_of(key_file)
    store = Store(work / "server-db")
    payload = os.urandom(SEND_CHUNK)

    async def send_asked(stream: Any) -> None:
        left = int.from_bytes(await receive_exactly(stream, 8), "big")
        view = memoryview(payload)
        while left > 0:
            await stream.send_all(view[: min(left, len(view))])
            left -= min(left, len(view))

    async def source(stream: Any, peer: str) -> None:
        await send_asked(stream)

    async def stored_source(stream: Any, peer: str) -> None:
        # The CIDs asked for, then the blocks back to back (no small bytes between them), read
        # as the node's block serving reads them and written as the exchange writes answers.
        asked = await receive_exactly(stream, int.from_bytes(await receive_exactly(stream, 4)))
        blocks = ((b"", stored_block(store, CID.from_bytes(raw))) for raw in cid_list(asked))
        await write_in_units(stream, blocks)

    async def tcp_source(stream: trio.SocketStream) -> None:
        async with stream:
            await send_asked(stream)

    try:
        pki = PkiLog(store, peer_id_of(signer.public), signer)
        with trio.move_on_after(SERVER_LIFETIME):
            async with (
                open_host(key_file, [Multiaddr(f"/ip4/{LOCALHOST}/tcp/0")]) as host,
                trio.open_nursery() as nursery,
            ):
                settings = NodeSettings(node_id=host.peer_id, test_mode=True, addrs=(*host.addrs,))
                serve_node(host, NodeService(store, settings, pki=pki))
                host.set_handler(SOURCE, source)
                host.set_handler(STORED, stored_source)
                listeners = await nursery.start(
                    partial(trio.serve_tcp, tcp_source, 0, host=LOCALHOST)
                )
                port = listeners[0].socket.getsockname()[1]
                ready = {"peer_id": host.peer_id, "addrs": host.addrs, "tcp_port": port}
                print(json.dumps(ready), flush=True)
                stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
                while await stdin.receive_some(4096):
                    pass
                nursery.cancel_scope.cancel()
    finally:
        store.close()


async def receive_exactly(stream: Any, size: int) -> bytes:
    """`size` bytes from `stream`; RuntimeError if it ends first."""
    data = b""
    while len(data) < size:
        more = await stream.receive_some(size - len(data))
        if not more:
            raise RuntimeError("the stream ended early")
        data += more
    return data


def cid_request(cids: list[Any]) -> bytes:
    """The stored source's request: its length, then each CID after a 1-byte length."""
    body = b"".join(bytes([len(cid.raw)]) + cid.raw for cid in cids)
    return len(body).to_bytes(4, "big") + body


def cid_list(body: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(body):
        out.append(body[at + 1 : at + 1 + body[at]])
        at += 1 + body[at]
    return out


# -- preparing the serving node's store (before it starts) --------------------------------------


def fill_blocks(work: Path) -> tuple[list[Any], list[Any]]:
    """1 GiB of 1 MiB public raw blocks and 2,000 of 4 KiB, straight into the server's store."""
    from node.store import Store
    from protocols.cid import CID, CODEC_RAW

    store = Store(work / "server-db")
    try:
        big, small = [], []
        base = os.urandom(BULK_BLOCK)
        for first in range(0, BULK // BULK_BLOCK, 64):
            with store.batch() as batch:
                for i in range(first, first + 64):
                    data = i.to_bytes(8, "big") + base[8:]
                    cid = CID.of(CODEC_RAW, data)
                    store.put_block(batch, cid.raw, data)
                    big.append(cid)
        with store.batch() as batch:
            for _ in range(SMALL_COUNT):
                data = os.urandom(SMALL_BLOCK)
                cid = CID.of(CODEC_RAW, data)
                store.put_block(batch, cid.raw, data)
                small.append(cid)
        store.compact()  # the serving node reads settled files, not a fresh memtable
    finally:
        store.close()
    return big, small


def fill_pki(work: Path) -> tuple[str, list[str]]:
    """The serving node's own PKI log (it is the root), with CLAIMS claims; the usernames."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.identity_utils import save_identity

    from node.server import PkiLog
    from node.store import Store
    from protocols.crypto import SigningKey
    from protocols.peerid import peer_id_of
    from protocols.pki import Claim

    key_file = work / "server.key"
    save_identity(create_new_key_pair(), key_file)
    signer = signer_of(key_file)
    root_id = peer_id_of(signer.public)
    store = Store(work / "server-db")
    try:
        root = PkiLog(store, root_id, signer)
        now = int(time.time())
        names = [f"user-{i:05d}" for i in range(CLAIMS)]
        for name in names:  # the root appends one durable entry per claim, as in service
            root.append(Claim.create(SigningKey.generate(), name, root_id, now + 300 * 86400))
    finally:
        store.close()
    return root_id, names


def mirror_in_process(work: Path, root_id: str, entries: int, name: str) -> tuple[Any, Any, float]:
    """A fresh mirror applying the root's pages by direct calls (no network): (log, its
    store, seconds)."""
    from node.server import PkiLog
    from node.store import Store

    root_store = Store(work / "server-db")
    try:
        root = PkiLog(root_store, root_id)
        store = Store(work / name)
        mirror = PkiLog(store, root_id)
        start = time.perf_counter()
        while mirror.seq() < entries:
            page = root.page(mirror.seq(), min(1000, entries - mirror.seq()))
            assert page.head is not None
            result = mirror.apply_from_mirror(page.entries, page.head.to_cbor())
            if result.refusal is not None:
                raise RuntimeError(f"the mirror refused a page: {result.refusal.reason}")
        return mirror, store, time.perf_counter() - start
    finally:
        root_store.close()


def lookup_time(log: Any, names: list[str], rounds: int = 3) -> float:
    """Seconds per lookup of a known user (random order), the best of `rounds` passes."""
    shuffled = random.Random(7).sample(names, len(names))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for name in shuffled:
            if log.lookup(name) is None:
                raise RuntimeError(f"{name} is missing from the mirror")
        best = min(best, (time.perf_counter() - start) / len(shuffled))
    return best


# -- the client side ----------------------------------------------------------------------------


class Server:
    """The serving process (`network.py --serve`); stopped by closing its stdin."""

    def __init__(self, work: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = _read_line(self.process, 60)
        ready = json.loads(line)
        self.peer_id: str = ready["peer_id"]
        self.addrs: list[str] = ready["addrs"]
        self.tcp_port: int = ready["tcp_port"]

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _read_line(process: subprocess.Popen[bytes], limit: float) -> str:
    """The first line a child prints, or RuntimeError once it exits or `limit` s pass."""
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    deadline, buffered = time.monotonic() + limit, b""
    while b"\n" not in buffered:
        chunk = process.stdout.read()
        if chunk:
            buffered += chunk
            continue
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the serving process did not start")
        time.sleep(0.02)
    return buffered.split(b"\n", 1)[0].decode()


@dataclass
class Cpu:
    """Where the CPU went while a block ran, in cores (1.0 = one core busy throughout; this
    machine has os.cpu_count()): ours by process, interrupts (irq), every other process
    (rest: another job on the machine skews every figure it overlaps)."""

    wall: float = 0.0
    ours: dict[str, float] = field(default_factory=dict)  # process name -> cores
    others: float = 0.0
    interrupts: float = 0.0

    def describe(self) -> str:
        mine = "".join(f"{name} {100 * load:.0f}%, " for name, load in self.ours.items())
        return f"{mine}irq {100 * self.interrupts:.0f}%, rest {100 * self.others:.0f}%"


@contextlib.contextmanager
def cpu_meter(pids: dict[str, int | None]) -> Iterator[Cpu]:
    """Measure the CPU of `pids` (None: this process and its reaped children) and of the rest
    of the machine while the block runs."""

    def now() -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        here = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        return {name: here if pid is None else cpu_seconds(pid) for name, pid in pids.items()}

    cpu = Cpu()
    before, (busy, irq), start = now(), machine_busy(), time.perf_counter()
    yield cpu
    after, cpu.wall = now(), time.perf_counter() - start
    busy_after, irq_after = machine_busy()
    cpu.ours = {name: (after[name] - before[name]) / cpu.wall for name in pids}
    cpu.others = max(0.0, (busy_after - busy) / cpu.wall - sum(cpu.ours.values()))
    cpu.interrupts = (irq_after - irq) / cpu.wall


def median_cpu(loads: list[Cpu]) -> Cpu:
    """The measurement of the run whose duration was the median."""
    return sorted(loads, key=lambda cpu: cpu.wall)[len(loads) // 2]


async def tcp_pull(port: int, size: int) -> float:
    """Seconds to receive `size` bytes from the server's TCP source."""
    with trio.fail_after(TRANSFER_LIMIT):
        start = time.perf_counter()
        stream = await trio.open_tcp_stream(LOCALHOST, port)
        async with stream:
            await stream.send_all(size.to_bytes(8, "big"))
            got = 0
            while data := await stream.receive_some(SEND_CHUNK):
                got += len(data)
        elapsed = time.perf_counter() - start
    if got != size:
        raise RuntimeError(f"TCP delivered {got} of {size} bytes")
    return elapsed


async def raw_pull(host: Any, server: Server, size: int) -> float:
    """Seconds to receive `size` bytes over one libp2p stream the server writes in big writes."""
    return await _pull_stream(host, server, SOURCE, size.to_bytes(8, "big"), size, "")


async def stored_pull(host: Any, server: Server, cids: list[Any]) -> float:
    """Seconds to receive the stored blocks `cids` over one libp2p stream, sent back to back
    with no framing, no wants and no hash check: what the block exchange carries, bare."""
    size = BULK_BLOCK * len(cids)
    return await _pull_stream(host, server, STORED, cid_request(cids), size, " stored")


async def _pull_stream(
    host: Any, server: Server, protocol: str, request: bytes, size: int, what: str
) -> float:
    """Seconds to send `request` on a fresh `protocol` stream and read `size` bytes to its end."""
    with trio.fail_after(TRANSFER_LIMIT):
        start = time.perf_counter()
        stream = await host.open_stream(server.peer_id, server.addrs, protocol)
        try:
            await stream.send_all(request)
            got = 0
            while data := await stream.receive_some(SEND_CHUNK):
                got += len(data)
        finally:
            await stream.aclose()
        elapsed = time.perf_counter() - start
    if got != size:
        raise RuntimeError(f"the libp2p stream delivered {got} of {size}{what} bytes")
    return elapsed


@contextlib.contextmanager
def hash_checks_off() -> Iterator[None]:
    """A diagnostic, in this process only: every block is taken as matching its CID, to show
    what the check that the block exchange must make costs it."""
    from protocols.cid import CID

    check = CID.matches
    CID.matches = lambda self, data: True  # type: ignore[method-assign]
    try:
        yield
    finally:
        CID.matches = check  # type: ignore[method-assign]


def sha256_rate() -> float:
    """MiB/s of hashlib's SHA-256 over 1 MiB blocks, in this process: the check's raw cost."""
    import hashlib

    block, rounds = os.urandom(BULK_BLOCK), 256
    start = time.perf_counter()
    for _ in range(rounds):
        hashlib.sha256(block).digest()
    return rounds * BULK_BLOCK / MiB / (time.perf_counter() - start)


async def blocks_pull(
    host: Any, server: Server, cids: list[Any], window: int | None = None
) -> float:
    """Seconds to fetch every block over the block exchange, discarding them as they come."""
    from node.net import BLOCKS_PROTOCOL
    from node.net._blocks import open_block_fetch
    from protocols.blockexchange import DEFAULT_WINDOW

    got = 0
    with trio.fail_after(TRANSFER_LIMIT):
        start = time.perf_counter()
        stream = await host.open_stream(server.peer_id, server.addrs, BLOCKS_PROTOCOL)
        wants = [(cid, None) for cid in cids]
        async with open_block_fetch([stream], wants, window=window or DEFAULT_WINDOW) as fetch:
            async for result in fetch:
                if result.error is not None:
                    raise result.error
                assert result.data is not None
                got += 1
        elapsed = time.perf_counter() - start
    if got != len(cids):
        raise RuntimeError(f"the block exchange delivered {got} of {len(cids)} blocks")
    return elapsed


async def rpc_round_trip(network: Any, server: Server) -> float:
    """The median of RTT_CALLS sequential small RPC calls (node.info) to the server, seconds."""
    with trio.fail_after(STEP_LIMIT):
        for _ in range(20):  # the stream open and warm caches are not a round trip
            await network.call(server.peer_id, "node.info", {})
        times = []
        for _ in range(RTT_CALLS):
            start = time.perf_counter()
            await network.call(server.peer_id, "node.info", {})
            times.append(time.perf_counter() - start)
    return statistics.median(times)


async def sync_over_rpc(network: Any, work: Path, root_id: str) -> tuple[Any, Any, float]:
    """A fresh mirror node pulling the whole PKI log from the server (the node's own sync loop
    over the real RPC); (its log, its store, seconds)."""
    from node.server import NodeService, NodeSettings, PkiLog
    from node.store import Store

    store = Store(work / "mirror-rpc")
    mirror = PkiLog(store, root_id)
    service = NodeService(store, NodeSettings(node_id="client"), network, pki=mirror)
    with trio.fail_after(STEP_LIMIT):
        start = time.perf_counter()
        result = await service.sync_pki()
        elapsed = time.perf_counter() - start
    if result is None or result.refusal is not None or mirror.seq() != CLAIMS:
        store.close()
        raise RuntimeError(f"the mirror did not sync: {result}")
    return mirror, store, elapsed


@contextlib.asynccontextmanager
async def client_host(work: Path, server: Server) -> AsyncIterator[tuple[Any, Any]]:
    """A dial-only host and the node's Network over it, connected to the server."""
    from node.net import Libp2pNetwork, open_host

    async with open_host(work / "client.key", []) as host:
        network = Libp2pNetwork(host, lambda peer: server.addrs if peer == server.peer_id else [])
        try:
            await host.connect(server.addrs[0])
            yield host, network
        finally:
            with trio.CancelScope(shield=True):
                await network.aclose()


async def measure_hosts(
    work: Path, server: Server, big: list[Any], small: list[Any], root_id: str
) -> dict[str, Any]:
    """Every figure between the two hosts: lists of seconds (medians taken by the caller) and
    the CPU each bulk run used."""
    runs = ("tcp", "raw", "stored", "blocks", "unchecked", "small")
    out: dict[str, Any] = {name: [] for name in runs}
    out |= {f"{name}_cpu": [] for name in runs}
    pids = {"server": server.process.pid, "client": None}
    async with client_host(work, server) as (host, network):
        out["rtt"] = [await rpc_round_trip(network, server)]
        await blocks_pull(host, server, small)  # warm-up: pages, code paths
        await stored_pull(host, server, big)  # the server maps its table files once
        for _ in range(RUNS):  # interleaved, so drift hits all four alike
            out["tcp"].append(await tcp_pull(server.tcp_port, BULK))
            with cpu_meter(pids) as cpu:
                out["raw"].append(await raw_pull(host, server, BULK))
            out["raw_cpu"].append(cpu)
            with cpu_meter(pids) as cpu:
                out["stored"].append(await stored_pull(host, server, big))
            out["stored_cpu"].append(cpu)
            with cpu_meter(pids) as cpu:
                out["blocks"].append(await blocks_pull(host, server, big))
            out["blocks_cpu"].append(cpu)
            with hash_checks_off(), cpu_meter(pids) as cpu:
                out["unchecked"].append(await blocks_pull(host, server, big))
            out["unchecked_cpu"].append(cpu)
        for _ in range(SMALL_RUNS):
            with cpu_meter(pids) as cpu:
                out["small"].append(await blocks_pull(host, server, small))
            out["small_cpu"].append(cpu)
        out["stop_and_wait"] = await blocks_pull(host, server, small, window=1)
        out["rtt"].append(await rpc_round_trip(network, server))
        out["mirror"], out["mirror_store"], out["sync"] = await sync_over_rpc(
            network, work, root_id
        )
    return out


# -- upload through a non-home node -------------------------------------------------------------


def cli(env: dict[str, str], *args: str, limit: float = CLI_LIMIT) -> str:
    """Run one CLI command within `limit` seconds; its standard output."""
    try:
        done = subprocess.run(
            [str(BIN), *args], env=env, capture_output=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pyrgos {' '.join(args)} took over {limit:g} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"pyrgos {' '.join(args)} failed: {done.stderr.decode().strip()}")
    return done.stdout.decode()


def measure_uploads(work: Path) -> dict[str, Any]:
    """Seconds for RUNS uploads through the home node and through the other node, and the CPU
    of each run (the CLI, both nodes, the rest of the machine)."""
    env = dict(os.environ, PYRGOS_PROFILE=str(work / "profile"), PYRGOS_PASSWORD=PASSWORD)
    env.pop("PYRGOS_NODE", None)
    env["PYRGOS_INSECURE_TEST_KDF"] = "1"  # the two nodes run in test mode
    local, warm = work / "upload", work / "warm-up"
    write_random(local, UPLOAD)
    write_random(warm, MiB)
    nodes: list[Node] = []
    try:
        home = Node(work, test_mode=True, name="home-node")
        nodes.append(home)
        other = Node(work, test_mode=True, name="other-node", init=("--pki", home.addr()))
        nodes.append(other)
        via_home, via_other = dict(env, PYRGOS_NODE=home.url), dict(env, PYRGOS_NODE=other.url)
        cli(via_home, "signup", USER)
        for name, via in (("home", via_home), ("other", via_other)):
            cli(via, "put", str(warm), f"warm-{name}")  # the other node learns the user here
        out: dict[str, Any] = {"home": [], "other": [], "home_cpu": [], "other_cpu": []}
        pids = {"cli": None, "via": other.process.pid, "home": home.process.pid}
        for run in range(RUNS):
            for name, via in (("home", via_home), ("other", via_other)):
                os.sync()
                with cpu_meter(pids) as cpu:
                    start = time.perf_counter()
                    cli(via, "put", str(local), f"{name}-{run}")
                    out[name].append(time.perf_counter() - start)
                out[f"{name}_cpu"].append(cpu)
        return out
    finally:
        for node in reversed(nodes):
            node.stop()


# -- the rows -----------------------------------------------------------------------------------


def rate(size: int, seconds: float) -> float:
    return size / MiB / seconds


def run_network(work: Path) -> list[Row]:
    """Every network figure, as table rows; `work` is a scratch directory (created)."""
    work.mkdir(parents=True, exist_ok=True)
    big, small = fill_blocks(work)
    root_id, names = fill_pki(work)
    _, local_store, in_process = mirror_in_process(work, root_id, CLAIMS, "mirror-local")
    local_store.close()
    few, few_store, _ = mirror_in_process(work, root_id, SMALL_LOG, "mirror-small")
    try:
        server = Server(work)
        try:
            steady_heap()
            hosts = trio.run(measure_hosts, work, server, big, small, root_id)
        finally:
            server.stop()
        try:
            at_many = lookup_time(hosts["mirror"], names)
            at_few = lookup_time(few, names[:SMALL_LOG])
        finally:
            hosts["mirror_store"].close()
    finally:
        few_store.close()
    uploads = measure_uploads(work)

    rows: list[Row] = []
    tcp = rate(BULK, statistics.median(hosts["tcp"]))
    raw = rate(BULK, statistics.median(hosts["raw"]))
    stored = rate(BULK, statistics.median(hosts["stored"]))
    blocks = rate(BULK, statistics.median(hosts["blocks"]))
    unchecked = rate(BULK, statistics.median(hosts["unchecked"]))
    sha256 = sha256_rate()
    rows.append(Row("TCP, 1 GiB (trio, 2 processes)", tcp, "MiB/s", "-", None, "-", None))
    rows.append(
        Row(
            "libp2p stream, 1 GiB (2 processes)",
            raw,
            "MiB/s",
            f"TCP {tcp:.0f}",
            raw / tcp,
            "-",
            None,
        )
    )
    rows.append(cpu_row("  CPU of the serving process", median_cpu(hosts["raw_cpu"]), "server"))
    rows.append(
        Row(
            "libp2p stream of the stored 1 GiB",
            stored,
            "MiB/s",
            f"one buffer {raw:.0f}",
            stored / raw,
            "-",
            None,
        )
    )
    rows.append(cpu_row("  CPU of the serving process", median_cpu(hosts["stored_cpu"]), "server"))
    rows.append(
        Row(
            "block exchange download, 1 GiB",
            blocks,
            "MiB/s",
            f"stored {stored:.0f}; one buffer {raw:.0f} = {blocks / raw:.2f}",
            blocks / stored,
            ">= 0.70 of the stream",
            blocks >= 0.7 * stored,
        )
    )
    rows.append(cpu_row("  CPU of the serving process", median_cpu(hosts["blocks_cpu"]), "server"))
    rows.append(
        Row(
            "  the same, blocks not hash-checked",
            unchecked,
            "MiB/s",
            f"stored GiB on the stream {stored:.0f}",
            unchecked / stored,
            "- (diagnostic)",
            None,
        )
    )
    rows.append(
        Row(
            "  SHA-256 of 1 MiB blocks (hashlib)",
            sha256,
            "MiB/s",
            f"per MiB {1000 / sha256:.2f} ms; stream {1000 / stored:.2f}",
            None,
            "-",
            None,
        )
    )

    rtt = statistics.median(hosts["rtt"])
    stop_and_wait = SMALL_COUNT * rtt
    pipelined = statistics.median(hosts["small"])
    rows.append(
        Row(
            "2,000 x 4 KiB blocks, pipelined",
            pipelined * 1000,
            "ms",
            f"2000 x RTT {stop_and_wait * 1000:.0f} (RTT {rtt * 1e6:.0f} us)",
            pipelined / stop_and_wait,
            "<= 0.10 of stop-and-wait",
            pipelined <= 0.1 * stop_and_wait,
        )
    )
    rows.append(cpu_row("  CPU of the serving process", median_cpu(hosts["small_cpu"]), "server"))
    rows.append(
        Row(
            "2,000 x 4 KiB blocks, window 1",
            hosts["stop_and_wait"] * 1000,
            "ms",
            f"2000 x RTT {stop_and_wait * 1000:.0f}",
            hosts["stop_and_wait"] / stop_and_wait,
            "-",
            None,
        )
    )

    home_rate = rate(UPLOAD, statistics.median(uploads["home"]))
    other_rate = rate(UPLOAD, statistics.median(uploads["other"]))
    rows.append(
        Row(
            "upload 100 MiB via the home node (CLI)",
            home_rate,
            "MiB/s",
            "-",
            None,
            "-",
            None,
        )
    )
    rows.append(cpu_row("  CPU of the CLI process", median_cpu(uploads["home_cpu"]), "cli"))
    rows.append(
        Row(
            "upload 100 MiB via a non-home node (CLI)",
            other_rate,
            "MiB/s",
            f"via the home node {home_rate:.0f}",
            other_rate / home_rate,
            ">= 0.70",
            other_rate >= 0.7 * home_rate,
        )
    )
    rows.append(cpu_row("  CPU of the CLI process", median_cpu(uploads["other_cpu"]), "cli"))

    synced, local = CLAIMS / hosts["sync"], CLAIMS / in_process
    rows.append(
        Row(
            "PKI: 10,000 claims to a fresh mirror (RPC)",
            synced,
            "ent/s",
            f"in-process apply {local:.0f}",
            synced / local,
            "-",
            None,
        )
    )
    rows.append(
        Row(
            "PKI lookup at 10,000 users",
            at_many * 1e6,
            "us",
            f"at {SMALL_LOG} users {at_few * 1e6:.1f}",
            at_many / at_few,
            "-",
            None,
        )
    )
    return rows


def cpu_row(name: str, cpu: Cpu, first: str) -> Row:
    """A row for where the CPU went in a run: `first` as the value, the rest as reference."""
    rest = Cpu(
        cpu.wall, {k: v for k, v in cpu.ours.items() if k != first}, cpu.others, cpu.interrupts
    )
    return Row(name, 100 * cpu.ours[first], "%core", rest.describe(), None, "-", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        steady_heap()
        trio.run(serve, args.serve)
        return
    work = Path(tempfile.mkdtemp(prefix="pyrgos-netbench-"))
    try:
        print_table(run_network(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
