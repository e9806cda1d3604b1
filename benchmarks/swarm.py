"""Swarm benchmarks: how long `pyrgos swarm up` takes to start 20 real nodes on loopback,
beside one node, and how long `swarm down` takes to stop them.

Every figure is a whole CLI command as a user types it; each run checks that every node
answers (`swarm status`) and that `swarm down` leaves no node process. Run by `make bench`
(or alone: `benchmarks/run.py --swarm-only`).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path

from network import cli
from run import RUNS, Row

from node import swarm

MANY = 20  # nodes: the goal is under a minute for them
GOAL = 60.0  # seconds
LIMIT = 300.0  # seconds any one command may take here


def env_for(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRGOS_")}
    env["HOME"] = str(work / "home")
    return env


def node_processes(directory: Path) -> int:
    return len(swarm.processes_under(directory))


def one_swarm(work: Path, nodes: int, users: int = 0) -> tuple[float, float]:
    """(seconds for `swarm up`, seconds for `swarm down`), each checked."""
    directory = work / f"swarm-{nodes}-{users}"
    env = env_for(work)
    (work / "home").mkdir(parents=True, exist_ok=True)
    base = ("--dir", str(directory))
    start = time.perf_counter()
    try:
        cli(env, "swarm", "up", "--nodes", str(nodes), "--users", str(users), *base, limit=LIMIT)
        up = time.perf_counter() - start
        status = json.loads(cli(env, "swarm", "status", "--json", *base, limit=LIMIT))
        states = [node["state"] for node in status["nodes"]]
        if states != ["up"] * nodes:
            raise RuntimeError(f"not every node answers: {states}")
    finally:
        start = time.perf_counter()
        if (directory / "swarm.json").exists():
            cli(env, "swarm", "down", *base, limit=LIMIT)
        down = time.perf_counter() - start
    left = node_processes(directory)
    if left:
        raise RuntimeError(f"`swarm down` left {left} node processes")
    shutil.rmtree(directory)
    return up, down


def run_swarm(work: Path) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    ones = [one_swarm(work, 1) for _ in range(RUNS)]
    up1 = statistics.median(up for up, _ in ones)
    down1 = statistics.median(down for _, down in ones)
    up_many, down_many = one_swarm(work, MANY)
    up_users, _ = one_swarm(work, 5, 10)
    return [
        Row("swarm up, 1 node (CLI)", up1, "s", f"median of {RUNS}", None, "-", None),
        Row(
            f"swarm up, {MANY} nodes (CLI)",
            up_many,
            "s",
            f"1 node {up1:.1f} s",
            up_many / up1,
            f"< {GOAL:.0f} s",
            up_many < GOAL,
        ),
        Row(
            "swarm up, 5 nodes and 10 users (CLI)",
            up_users,
            "s",
            f"1 node {up1:.1f} s",
            up_users / up1,
            "-",
            None,
        ),
        Row(
            f"swarm down, {MANY} nodes (CLI)",
            down_many,
            "s",
            f"1 node {down1:.1f} s",
            down_many / down1,
            "-",
            None,
        ),
    ]
