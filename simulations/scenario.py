"""Model-checked scenarios on a simulated swarm, and their report (docs/simulation.md).

Users sign up on random nodes and fall into circles of friends who all follow each other;
each circle runs random operations (simulations/model.py) against its own model, circles
concurrently. Midway, faults strike (a partition of one node, a crash of another) and heal.
An operation that failed may or may not have taken effect: its owner's folders are settled
after the heal by reading them, and each must equal the model with or without that
operation. At the end every view must equal the model.

Everything in the report but its last line (wall-clock time) is a function of the scenario
and its seed: `Report.text` is the same bytes on every run.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import trio
import trio.testing

from node.client import (
    TEST_KDF_ENV,
    FileSystem,
    NodeApi,
    Session,
    mirror_token,
    publish_mirrors,
    sharing,
    signup,
)
from protocols.errors import PyrgosError
from simulations import model as m
from simulations.determinism import deterministic
from simulations.links import LinkSpec
from simulations.network import SimNetwork, SimNode, open_network

PASSWORD: Final = "correct horse battery"
SHM: Final = Path("/dev/shm")  # stores on tmpfs: a simulation is no test of fsync
CONVERGE_TIMEOUT: Final = 600.0  # virtual seconds the views may take to agree after a heal
GC_THRESHOLDS: Final = (10_000, 20, 50)  # the collector's, inside `simulate` (700, 10, 10 outside)
# A node's PKI log and index, per entry it holds (every node record and claim), in memory and
# in its store: 1,000 nodes with 11,000 entries each peaked at 9.2 GB resident and 7 GB of
# store on tmpfs.
MEMORY_PER_NODE_ENTRY: Final = 1500
STORE_PER_NODE_ENTRY: Final = 650
BASE_MEMORY: Final = 512 * 1024 * 1024  # the process, its modules and the model


@dataclass(frozen=True)
class Scenario:
    seed: int = 1
    nodes: int = 10
    users: int = 30
    circle: int = 3  # users who follow each other and share among themselves
    social: int | None = None  # users in circles (default all); the others act alone
    ops: int = 120  # operations drawn, over all circles
    faults: bool = True
    think: float = 3.0  # mean virtual seconds a circle waits between operations
    fault_at: float = 10.0  # virtual seconds into the operations
    fault_for: float = 30.0  # virtual seconds until the faults heal
    link: LinkSpec = field(default_factory=LinkSpec)  # between nodes
    client_link: LinkSpec = field(default_factory=lambda: LinkSpec(latency=0.002))
    check: bool = True  # check every view against the model at the end
    mirrors: bool = False  # `mirror` among the operations: a node mirrors the owner

    def memory_needed(self) -> int:
        """Bytes of memory a run takes at its peak, roughly, its stores on tmpfs included:
        every node holds every node record and claim of the PKI."""
        return BASE_MEMORY + MEMORY_PER_NODE_ENTRY * self.nodes * (self.nodes + self.users)

    def store_needed(self) -> int:
        """Bytes the nodes' stores take on disk (or tmpfs) at the end, roughly."""
        return STORE_PER_NODE_ENTRY * self.nodes * (self.nodes + self.users)


@dataclass
class Report:
    scenario: Scenario
    counts: Counter[str] = field(default_factory=Counter)
    virtual: float = 0.0
    setup: float = 0.0  # virtual seconds until every user had signed up and befriended
    heal_at: float | None = None
    ops_done: float = 0.0  # virtual time the last operation ended
    converged_after: float | None = None
    traffic: dict[str, int] = field(default_factory=dict)
    node_stats: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    mirrored: int = 0  # users with a mirror
    mirrors_caught_up: float | None = None  # virtual seconds after the views agreed
    wall: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds of each phase
    _last: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def text(self) -> str:
        """The report, without wall-clock time: the same bytes for the same scenario."""
        s = self.scenario
        lines = [
            f"scenario   seed {s.seed}, {s.nodes} nodes, {s.users} users "
            f"({s.users if s.social is None else s.social} in circles of {s.circle}), "
            f"{s.ops} operations drawn, faults {'on' if s.faults else 'off'}",
            f"links      {_link(s.link)}; clients {_link(s.client_link)}",
            "ops        "
            + ", ".join(f"{kind} {n}" for kind, n in sorted(self.counts.items()) if n),
            f"virtual    {self.virtual:.3f} s (setup {self.setup:.3f} s)",
            "heal       "
            + ("none" if self.heal_at is None else f"at {self.heal_at:.3f} s; ")
            + ("" if self.heal_at is None else f"operations ended {self.ops_done:.3f} s; ")
            + ("" if self.heal_at is None else "every view equal to the model after ")
            + ("" if self.heal_at is None else _seconds(self.converged_after)),
            f"traffic    {self.traffic.get('bytes', 0)} bytes in {self.traffic.get('writes', 0)}"
            f" writes, {self.traffic.get('streams', 0)} streams, "
            f"{self.traffic.get('stalls', 0)} stalls, {self.traffic.get('resets', 0)} resets",
            f"blocks     {self.node_stats['blocks_stored']} stored, "
            f"{self.node_stats['blocks_duplicate']} duplicate, "
            f"{self.node_stats['blocks_served']} served, "
            f"{self.node_stats['blocks_relayed']} relayed",
            f"calls      {self.node_stats['calls']} at nodes, "
            f"{self.node_stats['forwarded']} forwarded home",
            *(
                [
                    f"mirrors    {self.mirrored} users mirrored, every mirror caught up "
                    f"{_seconds(self.mirrors_caught_up)} after the views agreed"
                ]
                if s.mirrors
                else []
            ),
            f"model      {'every view equals the model' if self.ok else 'MISMATCHES'}",
            *(f"  {line}" for line in self.mismatches),
        ]
        return "\n".join(lines) + "\n"

    def render(self) -> str:
        """The report and the wall-clock time it took."""
        rate = self.scenario.nodes * self.scenario.users * self.virtual / 3600 / self.wall
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phases.items())
        return (
            self.text()
            + f"wall       {self.wall:.2f} s ({phases}; {rate:,.1f} node-user-hours a wall"
            " second)\n"
        )

    def mark(self, phase: str) -> None:
        """End `phase` now (wall clock): the phases add up to the run."""
        now = time.perf_counter()
        self.phases[phase] = now - self._last
        self._last = now


def _link(spec: LinkSpec) -> str:
    return (
        f"latency {spec.latency * 1000:g} ms, jitter {spec.jitter * 1000:g} ms, "
        f"{spec.bandwidth * 8 / 1e6:g} Mbit/s, loss {spec.loss:g}, resets {spec.reset:g}"
    )


def _seconds(value: float | None) -> str:
    return "never (within the timeout)" if value is None else f"{value:.3f} s"


class _Circle:
    """Users who follow each other, their model, and the operations in doubt."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.model = m.Model.empty(names)
        self.doubtful: dict[str, list[m.Op]] = {}  # owner -> failed ops, effect unknown


class _Run:
    def __init__(self, scenario: Scenario, net: SimNetwork, report: Report) -> None:
        self.s = scenario
        self.net = net
        self.report = report
        self.rng = random.Random(scenario.seed)
        self.sessions: dict[str, Session] = {}
        self.clients = 0
        self.mirrors: dict[str, str] = {}  # user -> the node that mirrors them
        self.kinds = m.KINDS + (("mirror",) if scenario.mirrors else ())
        self.extra = {"mirror": self.mirror}

    def fs(self, name: str) -> FileSystem:
        return sharing.filesystem(self.sessions[name])

    async def anyone(self) -> NodeApi:
        self.clients += 1
        node = self.net.order[self.rng.randrange(len(self.net.order))]
        return self.net.client(f"anyone{self.clients}", node)

    def node_of(self, name: str) -> SimNode:
        api = self.sessions[name].api
        return self.net.nodes[api.url.removeprefix("sim://")]

    async def sign_up(self, names: list[str]) -> None:
        homes = {name: self.rng.choice(self.net.order) for name in names}

        async def one(name: str) -> None:
            api = self.net.client(f"client-{name}", homes[name])
            self.sessions[name] = await signup(api, name, PASSWORD)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)

    async def circle_ops(self, circle: _Circle, count: int, rng: random.Random) -> None:
        node_url = f"https://{self.net.order[0].node_id[-8:].lower()}.sim"
        for _ in range(count):
            await trio.sleep(rng.expovariate(1 / self.s.think))
            users = [u for u in circle.names if u not in circle.doubtful]
            if not users:
                return
            op = m.choose(circle.model, users, rng, self.kinds)
            if op is None:
                self.report.counts["skipped"] += 1
                continue
            if op.actor in circle.doubtful or (op.target in circle.doubtful):
                self.report.counts["skipped"] += 1
                continue
            try:
                await m.run(op, self.fs, node_url, self.anyone, circle.model, self.extra)
            except PyrgosError as exc:
                # Acknowledged or not, it may have happened: its owner waits for the heal.
                self.report.counts[f"failed {type(exc).__name__}"] += 1
                circle.doubtful.setdefault(op.owner, []).append(op)
                continue
            m.apply(circle.model, op)
            self.report.counts[op.kind] += 1

    async def mirror(self, op: m.Op) -> None:
        """`op.owner` has a node other than their home mirror them, and lists it in their
        claim: reads fail over to it while the home is down."""
        session = self.sessions[op.owner]
        home = self.node_of(op.owner).node_id
        taken = self.mirrors.get(op.owner)
        choices = [n for n in self.net.order if n.node_id not in (home, taken)]
        node = choices[self.rng.randrange(len(choices))]
        await self.net.admin(node, "admin.mirror.add", mirror=mirror_token(session))
        await publish_mirrors(session, [node.node_id])
        self.mirrors[op.owner] = node.node_id

    async def faults(self, start: float) -> None:
        """A partition of one node, a crash of another, a corrupted block; all healed."""
        await trio.sleep_until(start + self.s.fault_at)
        candidates = self.net.order[1:]  # the PKI node stays up: signups need it
        if len(candidates) < 2:
            return
        cut, crashed = self.rng.sample(candidates, 2)
        self.net.partition([cut.node_id])
        await self.net.crash(crashed)
        self.report.counts["fault partition"] += 1
        self.report.counts["fault crash"] += 1
        await trio.sleep(self.s.fault_for)
        self.net.heal()
        await self.net.restart(crashed)
        self.report.heal_at = trio.current_time()

    async def settle(self, circle: _Circle) -> None:
        """Adopt, for each owner with operations in doubt, whichever outcome their folders
        show, if it is one the operations allow (each applied or not, in order)."""
        node_url = f"https://{self.net.order[0].node_id[-8:].lower()}.sim"
        for owner, ops in sorted(circle.doubtful.items()):
            # A share or an unshare leaves the folders as they were: made again, it settles.
            for op in [op for op in ops if op.kind in ("share", "unshare")]:
                with contextlib.suppress(PyrgosError):  # an unshare done before fails again
                    await m.run(op, self.fs, node_url, self.anyone, circle.model)
                m.apply(circle.model, op)
            ops = [op for op in ops if op.kind not in ("share", "unshare")]
            outcomes = [circle.model]
            for op in ops:
                applied = []
                for outcome in outcomes:
                    after = copy.deepcopy(outcome)
                    m.apply(after, op)
                    applied.append(after)
                outcomes += applied
            seen = {top: await _walk_or_none(self.fs(owner), owner, top) for top in m.TOPS}
            for outcome in outcomes:
                if all(seen[top] == outcome.below(owner, top) for top in m.TOPS):
                    circle.model = outcome
                    self.report.counts["settled"] += 1
                    break
            else:
                self.report.mismatches.append(f"{owner}'s folders match no outcome of {ops}")
        circle.doubtful.clear()


async def _walk_or_none(fs: FileSystem, owner: str, top: str) -> m.Tree | None:
    try:
        return await m.walk(fs, f"/{owner}", top)
    except PyrgosError:
        return None


async def run_scenario(scenario: Scenario, root: Path) -> Report:
    """Run `scenario` with stores under `root`; call inside `deterministic(seed)` on a
    MockClock (as `simulate` does)."""
    report = Report(scenario)
    names = [f"u{i:05d}" for i in range(scenario.users)]
    # Resets strike during the operations only: signing up and befriending do not retry.
    calm, calm_clients = replace(scenario.link, reset=0.0), replace(scenario.client_link, reset=0.0)
    async with open_network(
        root, scenario.seed, scenario.nodes, link=calm, client_link=calm_clients
    ) as net:
        report.mark("start")
        run = _Run(scenario, net, report)
        await run.sign_up(names)
        report.mark("signups")
        report.counts["signup"] = len(names)
        shuffled = names[:]
        run.rng.shuffle(shuffled)
        social = len(names) if scenario.social is None else scenario.social
        circles = [
            _Circle(sorted(shuffled[i : min(i + scenario.circle, social)]))
            for i in range(0, social, scenario.circle)
        ] + [_Circle([name]) for name in sorted(shuffled[social:])]
        async with trio.open_nursery() as nursery:
            for circle in circles:
                nursery.start_soon(_befriend, run, circle)
        report.setup = trio.current_time()
        report.mark("follows")
        net.set_default_links(scenario.link, scenario.client_link)
        # Each operation goes to a circle drawn by its size: every user acts about as often.
        drawn = run.rng.choices(
            range(len(circles)), [len(c.names) for c in circles], k=scenario.ops
        )
        per_circle = Counter(drawn)
        async with trio.open_nursery() as nursery:
            if scenario.faults:
                nursery.start_soon(run.faults, trio.current_time())
            for index, circle in enumerate(circles):
                seed = run.rng.getrandbits(64)
                count = per_circle[index]
                nursery.start_soon(run.circle_ops, circle, count, random.Random(seed))
        report.ops_done = trio.current_time()
        report.mark("operations")
        if scenario.check:
            await _converge(run, circles)
            await _mirrors_catch_up(run)
            report.mark("check")
        report.virtual = trio.current_time()
        report.traffic = dict(vars(net.traffic))
        for node in net.order:
            if node.service is not None:
                report.node_stats.update(node.service.stats)
    return report


async def _befriend(run: _Run, circle: _Circle) -> None:
    if len(circle.names) > 1:  # one who acts alone has no one to follow, nothing to answer
        await m.befriend(run.fs, circle.names)
    await m.make_tops(run.fs, circle.names)
    run.report.counts["follow"] += len(circle.names) * (len(circle.names) - 1)


async def _converge(run: _Run, circles: list[_Circle]) -> None:
    """Settle the operations in doubt, then check every view until all equal the model (or
    CONVERGE_TIMEOUT passes): the time that takes after the heal is the convergence time."""
    async with trio.open_nursery() as nursery:
        for circle in circles:
            nursery.start_soon(run.settle, circle)

    async def check(circle: _Circle, into: list[str]) -> None:
        try:
            into += await m.mismatches(run.fs, circle.model, circle.names)
        except PyrgosError as exc:
            into.append(f"{circle.names}: {type(exc).__name__}: {exc.message}")

    deadline = trio.current_time() + CONVERGE_TIMEOUT
    while True:
        by_circle: list[list[str]] = [[] for _ in circles]
        async with trio.open_nursery() as nursery:  # every user checks at once
            for circle, into in zip(circles, by_circle, strict=True):
                nursery.start_soon(check, circle, into)
        found = [line for lines in by_circle for line in lines]
        if not found or trio.current_time() >= deadline:
            break
        await trio.sleep(5)
    run.report.mismatches += found
    if not found and run.report.heal_at is not None:
        since = max(run.report.heal_at, run.report.ops_done)
        run.report.converged_after = trio.current_time() - since


async def _mirrors_catch_up(run: _Run) -> None:
    """Wait until every mirror holds its user as the home has them (`admin.mirror.list` says
    ok, after a round that ended once the views agreed), or CONVERGE_TIMEOUT passes."""
    run.report.mirrored = len(run.mirrors)
    if not run.mirrors:
        return
    agreed = run.net.clock()
    start = trio.current_time()
    pending = dict(run.mirrors)
    while pending and trio.current_time() - start < CONVERGE_TIMEOUT:
        for user, node_id in sorted(pending.items()):
            node = run.net.nodes[node_id]
            rows = (await run.net.admin(node, "admin.mirror.list"))["mirrors"]
            row = next((r for r in rows if r["username"] == user), None)
            if row is not None and row["state"] == "ok" and (row["synced"] or 0) >= agreed:
                del pending[user]
        if pending:
            await trio.sleep(1)
    for user, node_id in sorted(pending.items()):
        run.report.mismatches.append(f"the mirror of {user} on {node_id} never caught up")
    if not pending:
        run.report.mirrors_caught_up = trio.current_time() - start


def simulate(scenario: Scenario, root: Path | None = None) -> Report:
    """Run `scenario` deterministically on virtual time, stores in a fresh directory (under
    `root`, by default on tmpfs where there is one with room), and report."""
    base = root
    if base is None and SHM.is_dir() and shutil.disk_usage(SHM).free > scenario.store_needed():
        base = SHM
    started = time.perf_counter()
    before = os.environ.get(TEST_KDF_ENV)
    os.environ[TEST_KDF_ENV] = "1"  # simulated users are test users on test-mode nodes
    thresholds = gc.get_threshold()
    # Every node's objects share one heap here, where each real node has its own: collect
    # young objects as usual, the whole heap seldom (each full pass walks every node's).
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        with (
            tempfile.TemporaryDirectory(dir=base, prefix="pyrgos-sim-") as where,
            deterministic(scenario.seed),
        ):
            clock = trio.testing.MockClock(autojump_threshold=0)
            report = trio.run(run_scenario, scenario, Path(where), clock=clock)
    finally:
        gc.set_threshold(*thresholds)
        if before is None:
            del os.environ[TEST_KDF_ENV]
        else:
            os.environ[TEST_KDF_ENV] = before
    report.wall = time.perf_counter() - started
    return report


DEFAULTS: Final[dict[str, Callable[[int], Scenario]]] = {
    "faults": lambda seed: Scenario(seed=seed, mirrors=True),
    "lossy": lambda seed: Scenario(
        seed=seed,
        faults=False,
        link=LinkSpec(latency=0.04, jitter=0.02, bandwidth=1.25e6, loss=0.01, reset=0.002),
        client_link=LinkSpec(latency=0.02, jitter=0.01, bandwidth=1.25e6, loss=0.01),
    ),
    "scale": lambda seed: Scenario(seed=seed, nodes=100, users=1000, social=60, ops=300),
    # About 8 minutes of wall time and 18 GB of memory and tmpfs (docs/benchmarks.md).
    "large": lambda seed: Scenario(seed=seed, nodes=1000, users=10000, social=60, ops=300),
}
