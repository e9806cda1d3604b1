"""Deterministic randomness exists only where a simulation asks for it."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
import trio
import trio._core._run as trio_run

from node import threads
from node.cli import main
from protocols import crypto
from simulations.determinism import deterministic

ROOT = Path(__file__).resolve().parents[2]


def test_a_seed_gives_the_same_draws_and_outside_it_randomness_is_the_systems() -> None:
    with crypto.deterministic_randomness(b"seed"):
        first = [crypto.random_bytes(40), crypto.random_key(), crypto.SigningKey.generate()]
    with crypto.deterministic_randomness(b"seed"):
        again = [crypto.random_bytes(40), crypto.random_key(), crypto.SigningKey.generate()]
    with crypto.deterministic_randomness(b"other"):
        other = crypto.random_bytes(40)
    assert first == again
    assert other != first[0]
    assert crypto.random_bytes(40) != first[0]  # off again once the block ends
    crypto.require_system_randomness()


def test_nodes_and_commands_refuse_to_run_on_a_seed() -> None:
    with crypto.deterministic_randomness(b"seed"):
        with pytest.raises(RuntimeError, match="deterministic randomness"):
            crypto.require_system_randomness()
        with pytest.raises(RuntimeError, match="deterministic randomness"):
            main(["--help"])


def test_nothing_outside_simulations_turns_it_on() -> None:
    found = subprocess.run(
        ["grep", "-rln", "deterministic_randomness\\|inline_threads", "node"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert sorted(found) == ["node/threads.py"]


def test_a_simulation_runs_blocking_work_inline_and_restores_trio_after() -> None:
    async def worker_thread() -> int:
        return await threads.run_sync(threading.get_ident)

    before = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    with deterministic(1):
        assert trio.run(worker_thread) == threading.get_ident()
        assert trio_run._ALLOW_DETERMINISTIC_SCHEDULING is True
    assert trio.run(worker_thread) != threading.get_ident()
    assert trio_run._ALLOW_DETERMINISTIC_SCHEDULING is before
