"""pyrgos mirroring benchmark: how fast a mirror node catches up with a user, beside the block
exchange between the same two node processes in the same run.

A home node and a mirror node run as real processes on 127.0.0.1 (test mode). The user uploads
MIRROR_SIZE through the CLI; then, RUNS times, `admin.mirror.add` with the user's token and
the time until `admin.mirror.list` shows the user caught up (the token check, the pointer and
login-record reads, the walk, the fetch and the mirror's LevelDB writes), removed and collected
between runs. The reference: a bench libp2p host fetching the same blocks from the home over
the block exchange with the same window and read auths, discarding them (no store).

Failover: a third node reads the user's root pointer (`pointer.get` with `owner`, as a client
reading through it does) with the home up, then the home is killed (SIGKILL): the first read
after (a failed dial, then the mirror) and the reads that follow (straight to the mirror).

Run by benchmarks/run.py (`--mirror-only` for just these rows); alone, this prints the same
table. Every wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import trio
from network import cli, rate
from run import USER, MiB, Node, Row, print_table, write_random

from node.net._network import FETCH_WINDOW

MIRROR_SIZE: Final = 256 * MiB
RUNS: Final = 3
STEP_LIMIT: Final = 300.0  # seconds any one catch-up or fetch may take
POLL: Final = 0.02  # seconds between the bench's mirror.list calls
READS: Final = 50  # root-pointer reads timed with the home up, and during the failover


async def catch_up(url: str, admin: str, token: str) -> float:
    """Seconds from `admin.mirror.add` until the mirror lists the user caught up."""
    from node.client import NodeApi

    async with NodeApi(url, timeout=STEP_LIMIT) as api:
        with trio.fail_after(STEP_LIMIT):
            start = time.perf_counter()
            await api.call("admin.mirror.add", {"token": admin, "mirror": token})
            while True:
                rows = (await api.call("admin.mirror.list", {"token": admin}))["mirrors"]
                if rows and rows[0]["error"]:
                    raise RuntimeError(f"mirroring failed: {rows[0]['error']}")
                if rows and rows[0]["state"] == "ok" and rows[0]["bytes"] >= MIRROR_SIZE:
                    return time.perf_counter() - start
                await trio.sleep(POLL)


async def drop(url: str, admin: str) -> None:
    """Remove the mirrored user and collect: the next run starts from an empty mirror."""
    from node.client import NodeApi

    async with NodeApi(url, timeout=STEP_LIMIT) as api:
        await api.call("admin.mirror.remove", {"token": admin, "username": USER})
        await api.call("admin.gc", {"token": admin})


def held_blocks(mirror: Node) -> list[Any]:
    """The CIDs the mirror's copy reaches (its store, opened once the node stopped)."""
    from node.server._gc import mark
    from node.store import Space, Store
    from protocols.cid import CID
    from protocols.pointers import PointerUpdate

    store = Store(mirror.home / "db")
    try:
        roots = [PointerUpdate.decode(raw).new for _, raw in store.items(Space.POINTERS)]
        return [CID.from_bytes(raw) for raw in mark(store, roots)]
    finally:
        store.close()


async def exchange_fetch(work: Path, home: Node, cids: list[Any], token: str) -> float:
    """Seconds to fetch `cids` from the home over the block exchange, as the mirror does (the
    same window and read auths), discarding them."""
    from node.net import BLOCKS_PROTOCOL, open_host
    from node.net._blocks import open_block_fetch
    from node.net._network import FETCH_WINDOW
    from protocols import bats
    from protocols.mirrors import MirrorToken

    secret = MirrorToken.from_text(token).secret
    addr = home.addr()
    home_id = addr.rsplit("/p2p/", 1)[1]
    async with open_host(work / "bench.key", []) as host:
        await host.connect(addr)
        me = host.peer_id.encode()
        with trio.fail_after(STEP_LIMIT):
            start = time.perf_counter()
            stream = await host.open_stream(home_id, [addr], BLOCKS_PROTOCOL)
            now = int(time.time())
            wants = (
                (cid, bats.make_read_auth(secret, cid, me, home_id.encode(), now, hashed=True))
                for cid in cids
            )
            got = 0
            async with open_block_fetch([stream], wants, window=FETCH_WINDOW) as fetch:
                async for result in fetch:
                    if result.error is not None:
                        raise result.error
                    got += 1
            elapsed = time.perf_counter() - start
    if got != len(cids):
        raise RuntimeError(f"the block exchange delivered {got} of {len(cids)} blocks")
    return elapsed


async def failover_reads(url: str, identity: str, home: Node) -> dict[str, Any]:
    """Seconds per root-pointer read through `url`: with the home up (medians of READS), the
    first after the home was killed, and the ones after it."""
    from node.client import NodeApi
    from protocols.cid import CID

    owner = CID.from_text(identity)
    args = {"writer": owner, "owner": owner}
    out: dict[str, Any] = {"up": [], "after": []}
    async with NodeApi(url, timeout=STEP_LIMIT) as api:
        with trio.fail_after(STEP_LIMIT):
            while True:  # the reader's PKI copy must list the mirror first
                claim = await api.call("pki.lookup", {"username": USER})
                if claim.get("mirrors"):
                    break
                await trio.sleep(POLL)
            for _ in range(READS):
                start = time.perf_counter()
                await api.call("pointer.get", args)
                out["up"].append(time.perf_counter() - start)
            home.process.kill()
            home.process.wait(timeout=30)
            start = time.perf_counter()
            await api.call("pointer.get", args)
            out["first"] = time.perf_counter() - start
            for _ in range(READS):
                start = time.perf_counter()
                await api.call("pointer.get", args)
                out["after"].append(time.perf_counter() - start)
    return out


def run_mirror(work: Path) -> list[Row]:
    """The mirroring rows; `work` is a scratch directory (created)."""
    work.mkdir(parents=True, exist_ok=True)
    local = work / "data"
    write_random(local, MIRROR_SIZE)
    nodes: list[Node] = []
    catch_ups, fetches = [], []
    reads: dict[str, Any] = {}
    try:
        home = Node(work, test_mode=True, name="home-node")
        nodes.append(home)
        env = dict(home.env, PYRGOS_NODE=home.url)
        cli(env, "signup", USER)
        cli(env, "put", str(local), "data")
        token = cli(env, "mirror", "token").strip()
        # A first mirror (a warm-up) gives the blocks the reference fetches: its store, read
        # once it stopped. The measured runs use a second one, interleaved with the reference.
        for name in ("warm-up-mirror", "mirror-node"):
            mirror = Node(work, test_mode=True, name=name, init=("--pki", home.addr()))
            nodes.append(mirror)
            admin = (mirror.home / "admin-token").read_text().strip()
            if name == "warm-up-mirror":
                trio.run(catch_up, mirror.url, admin, token)
                mirror.stop()
                nodes.remove(mirror)
                cids = held_blocks(mirror)
                continue
            for run in range(RUNS):
                catch_ups.append(trio.run(catch_up, mirror.url, admin, token))
                if run < RUNS - 1:
                    trio.run(drop, mirror.url, admin)
                fetches.append(trio.run(exchange_fetch, work, home, cids, token))
        reader = Node(work, test_mode=True, name="reader-node", init=("--pki", home.addr()))
        nodes.append(reader)
        mirror_id = mirror.addr().rsplit("/p2p/", 1)[1]
        cli(env, "mirror", "publish", mirror_id)
        identity = json.loads(cli(env, "pki", "lookup", USER, "--json"))["identity"]
        reads = trio.run(failover_reads, reader.url, identity, home)
    finally:
        for node in reversed(nodes):
            node.stop()
    up, after = statistics.median(reads["up"]), statistics.median(reads["after"])
    copied = rate(MIRROR_SIZE, statistics.median(catch_ups))
    exchange = rate(MIRROR_SIZE, statistics.median(fetches))
    return [
        Row(
            "block exchange, a user's 256 MiB (no store)",
            exchange,
            "MiB/s",
            f"{len(cids)} blocks, window {FETCH_WINDOW}",
            None,
            "-",
            None,
        ),
        Row(
            "mirror catch-up, 256 MiB (2 processes)",
            copied,
            "MiB/s",
            f"block exchange {exchange:.0f}",
            copied / exchange,
            ">= 0.80 of the exchange",
            copied >= 0.8 * exchange,
        ),
        Row(
            "first read after the home died (failover)",
            reads["first"] * 1000,
            "ms",
            f"home up {up * 1000:.1f}",
            reads["first"] / up,
            "-",
            None,
        ),
        Row(
            "reads during the failover (median)",
            after * 1000,
            "ms",
            f"home up {up * 1000:.1f}",
            after / up,
            "-",
            None,
        ),
    ]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="pyrgos-mirrorbench-"))
    try:
        print_table(run_mirror(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
