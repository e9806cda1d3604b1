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
from protocols import cbor, crypto
from protocols.errors import InvalidSignature, MalformedInput
from protocols.pki import Claim, Entry
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


# Any command refuses before it runs (`--help` only prints, and ends before the check).
COMMAND = ["--profile", "/nonexistent/pyrgos-profile", "whoami"]


def test_nodes_and_commands_refuse_to_run_on_a_seed_or_on_shared_results() -> None:
    with crypto.deterministic_randomness(b"seed"):
        with pytest.raises(RuntimeError, match="deterministic randomness"):
            crypto.require_system_randomness()
        with pytest.raises(RuntimeError, match="deterministic randomness"):
            main(COMMAND)
    with crypto.shared_results():
        with pytest.raises(RuntimeError, match="shared results"):
            crypto.require_system_randomness()
        with pytest.raises(RuntimeError, match="shared results"):
            main(COMMAND)
    assert crypto.shared_memo() is None


KEY = crypto.SigningKey.from_seed(bytes(range(32)))


def verdict(key: crypto.VerifyKey, message: bytes, signature: bytes, context: bytes) -> str:
    try:
        key.verify(message, signature, context)
    except InvalidSignature as exc:
        return f"refused: {exc}"
    return "verified"


def test_a_kept_signature_verdict_is_the_one_verifying_gives() -> None:
    good = KEY.sign(b"message", b"ctx")
    bad = bytes([good[0] ^ 1]) + good[1:]
    other = crypto.SigningKey.from_seed(bytes(32)).public
    cases = [
        (KEY.public, b"message", good, b"ctx"),
        (KEY.public, b"message", bad, b"ctx"),  # a bad signature stays bad
        (KEY.public, b"message", good, b"ct"),  # the context is part of the input
        (KEY.public, b"messagf", good, b"ctx"),
        (other, b"message", good, b"ctx"),
    ]
    expected = [verdict(*case) for case in cases]  # no memo
    assert expected[0] == "verified"
    assert all(v.startswith("refused") for v in expected[1:])
    with crypto.shared_results() as memo:
        first = [verdict(*case) for case in cases]  # every one a miss
        assert (memo.hits, memo.misses, len(memo)) == (0, 5, 5)
        second = [verdict(*case) for case in cases]  # every one a hit
        assert (memo.hits, memo.misses) == (5, 5)
    assert first == second == expected


def test_a_kept_pki_entry_is_the_one_decoding_gives() -> None:
    claim = Claim.create(KEY, "alice", "12D3KooWQiKgeC2Dw6wRJPFWzRpE4QvjHrmyyuLF3J7kXdEutQrX", 99)
    raw = Entry(1, None, 10, claim).encoded
    with crypto.shared_results() as memo:
        first = Entry.decode(raw)
        again = Entry.decode(bytearray(raw))
        assert again is first
        assert memo.hits == 1
        assert again == Entry.decode(raw)
        assert first.hash == Entry(1, None, 10, claim).hash
        # Refusals are not kept: each decode refuses afresh, and the same way.
        for _ in range(2):
            with pytest.raises(MalformedInput):
                Entry.decode(raw + b"\x00")  # a trailing byte
        with pytest.raises(MalformedInput):
            Entry.decode(cbor.encode({"seq": 1}))
        assert len(memo) == 1


def test_the_memo_keeps_the_recently_used_within_its_bound() -> None:
    memo = crypto.Memo(max_bytes=30)
    for n in range(3):
        memo.put("k", bytes([n]) * 10, n)
    assert memo.get("k", bytes([0]) * 10) == 0  # used: it gets a second chance
    memo.put("k", bytes([3]) * 10, 3)  # over the bound: the oldest not used since goes
    assert memo.size == 30
    assert len(memo) == 3
    assert memo.get("k", bytes([1]) * 10) is None
    assert [memo.get("k", bytes([n]) * 10) for n in (0, 2, 3)] == [0, 2, 3]
    memo.put("k", bytes(31), 4)  # larger than the whole bound: not kept
    assert memo.size == 30
    assert memo.get("k", bytes(31)) is None
    memo.put("other", bytes([9]) * 10, 9)  # kinds share the bound; all used: the oldest goes
    assert [memo.get("k", bytes([n]) * 10) for n in (0, 2, 3)] == [0, None, 3]
    assert (memo.get("other", bytes([9]) * 10), memo.get("other", bytes([0]) * 10)) == (9, None)
    assert (memo.size, len(memo)) == (30, 3)


def test_nothing_outside_simulations_turns_it_on() -> None:
    sim_only = "deterministic_randomness\\|shared_results\\|inline_threads"
    found = subprocess.run(
        ["grep", "-rln", "--include=*.py", sim_only, "node"],
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
