"""One seed, one run: trio's scheduler, every random draw and all blocking work made
deterministic for a simulation (DESIGN §12, docs/simulation.md)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import trio._core._run as trio_run  # the scheduler's own switch, which Hypothesis uses too

from node import threads
from protocols import crypto


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Within this block (for the tasks started in it, and a `trio.run` started in it):
    trio runs each batch of ready tasks in an order given by the seed, not by chance;
    `crypto.random_bytes` draws from the seed; blocking work runs inline instead of in
    worker threads that finish in any order. With a MockClock, virtual time then depends on
    nothing but the seed. Signature verdicts and parsed PKI entries are shared between the
    nodes of the process (`crypto.shared_results`), which changes no outcome, only the cost."""
    saved = trio_run._ALLOW_DETERMINISTIC_SCHEDULING, trio_run._r.getstate()
    setattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)  # noqa: B010 (a Final)
    trio_run._r.seed(seed)
    material = hashlib.sha256(f"pyrgos-sim randomness {seed}".encode()).digest()
    try:
        with (
            crypto.deterministic_randomness(material),
            crypto.shared_results(),
            threads.inline_threads(),
        ):
            yield
    finally:
        setattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING", saved[0])  # noqa: B010
        trio_run._r.setstate(saved[1])
