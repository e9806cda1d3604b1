"""Scenarios: one seed, one report; and a swarm of 100 nodes and 1,000 users, model-checked."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from simulations.scenario import DEFAULTS, Scenario, simulate

ROOT = Path(__file__).resolve().parents[2]
TINY = "Scenario(seed=5, nodes=3, users=6, ops=20, think=1.0, fault_at=3.0, fault_for=10.0)"

SMALL = Scenario(
    seed=7, nodes=5, users=9, ops=45, think=2.0, fault_at=6.0, fault_for=20.0, mirrors=True
)


def test_the_same_seed_gives_the_same_report() -> None:
    first, second = simulate(SMALL), simulate(SMALL)
    assert first.ok, first.text()
    assert first.text() == second.text()
    assert first.counts["fault crash"] == 1
    # Operations the faults made fail were settled after the heal, each to one outcome.
    assert first.counts["failed Unavailable"] == first.counts["settled"] > 0
    assert first.heal_at is not None
    assert first.mirrored > 0
    assert first.mirrors_caught_up is not None
    assert first.converged_after is not None
    other = simulate(replace(SMALL, seed=8))
    assert other.ok, other.text()
    assert other.text() != first.text()


def test_the_same_seed_gives_the_same_report_in_another_process() -> None:
    """Nothing in a run depends on the process: not str hashing, not memory addresses."""
    script = (
        "import sys\nfrom simulations.scenario import Scenario, simulate\n"
        f"sys.stdout.write(simulate({TINY}).text())\n"
    )
    texts = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=300, check=True,
        )  # fmt: skip
        texts.append(done.stdout)
    assert "every view equals the model" in texts[0]
    assert texts[0] == texts[1]


def test_a_hundred_nodes_and_a_thousand_users_agree_with_the_model() -> None:
    # 60 of them in circles that follow each other and share; the rest write alone.
    report = simulate(Scenario(seed=1, nodes=100, users=1000, social=60, ops=300))
    assert report.ok, report.text()
    assert report.counts["signup"] == 1000
    assert report.counts["follow"] == 120
    assert sum(n for kind, n in report.counts.items() if kind in ("write", "mkdir")) > 100
    assert report.node_stats["forwarded"] > 0
    assert report.converged_after is not None


def test_a_scenario_too_large_for_the_memory_is_refused_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations import __main__ as cli

    ran: list[Scenario] = []
    monkeypatch.setattr(cli, "simulate", ran.append)
    large = DEFAULTS["large"](1).memory_needed()
    assert large > 15 * 1024**3 > DEFAULTS["scale"](1).memory_needed() * 10
    monkeypatch.setattr(cli, "available_memory", lambda: large - 1)
    assert cli.main(["faults", "large"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "large needs about" in err
    assert "SIM=" in err
    assert ran == []  # not even the small one first
