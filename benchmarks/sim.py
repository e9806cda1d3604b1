"""Simulation benchmarks: how much swarm the harness simulates per wall second.

The figure is nodes x users x virtual hours per wall second of a model-checked scenario
(simulations/scenario.py) at 100 and at 1,000 nodes, each with its wall time broken down
into the swarm's start, the signups and the operations with their checks. Run by `make bench`
(or alone: `benchmarks/run.py --sim-only`).
"""

from __future__ import annotations

from run import Row

from simulations.scenario import Scenario, simulate

# (nodes, users): the 100-node case is the one `make test` runs; 60 users of each run follow
# each other in circles of three and share, the rest write alone.
CASES = ((100, 1_000), (1_000, 2_000))


def run_sim() -> list[Row]:
    rows = []
    for nodes, users in CASES:
        report = simulate(Scenario(seed=1, nodes=nodes, users=users, social=60, ops=300))
        print(f"-- sim, {nodes} nodes\n{report.render()}", flush=True)  # the breakdown
        rate = nodes * users * report.virtual / 3600 / report.wall
        rows.append(
            Row(
                f"sim {nodes} nodes x {users} users",
                rate,
                "nuh/s",
                f"{report.wall:.0f} s wall, {report.virtual:.0f} s virtual",
                None,
                "model holds",
                report.ok,
            )
        )
    return rows
