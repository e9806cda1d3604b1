"""The fuzz suite's rules: how many inputs, what one input may cost, and the known findings.

Every decoder and every method must end each input in a result or a PyrgosError, within
CPU_BUDGET seconds of CPU time. An input over the budget is a finding; findings that are being
fixed are listed in KNOWN_FINDINGS, the one place that lifts the budget (never the crash
check), so the list can be emptied as the fixes land.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from hypothesis import HealthCheck, settings

from protocols import cbor

# An input that costs more CPU than this to accept or reject is a finding (issue 7): a
# stranger sending such inputs back to back holds a node's CPU with a trickle of bandwidth.
CPU_BUDGET: Final = 0.050  # seconds of process CPU time (all threads) per input
# A measurement over the budget is taken again before it counts: a stray collection of the
# test process's own garbage or a page-fault storm must not fail the suite.
MEASUREMENTS: Final = 3

# The key of a finding is the decoder's or method's name in this suite, or "<name>/<shape>"
# for one worst-case shape of it. Value: what fixes it. List a finding here only until its
# fix is merged; the budget then holds for it again. Empty: every input keeps the budget.
KNOWN_FINDINGS: Final[dict[str, str]] = {}

# Worst-case shapes of a known finding run at this size instead of the decoder's cap, so the
# suite still checks they end in a typed error without spending seconds on each.
KNOWN_FINDING_BYTES: Final = 16 * 1024

# `make test` runs few examples with a fixed seed; `make fuzz` sets PYRGOS_FUZZ=deep for
# many more, with a fresh seed each run.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "pyrgos-fuzz-test", max_examples=25, deadline=None, suppress_health_check=_QUIET
)
settings.register_profile(
    "pyrgos-fuzz-deep", max_examples=1500, deadline=None, suppress_health_check=_QUIET
)
PROFILE: Final = (
    "pyrgos-fuzz-deep" if os.environ.get("PYRGOS_FUZZ") == "deep" else "pyrgos-fuzz-test"
)
FUZZ: Final = settings(settings.get_profile(PROFILE))
# Calls into a node cost a hundred times a decoder's input: fewer of them.
FUZZ_CALLS: Final = settings(FUZZ, max_examples=max(8, FUZZ.max_examples // 3))

T = TypeVar("T")


def is_known(key: str) -> bool:
    """Whether `key` (or the decoder or method it belongs to) is a known finding."""
    return key in KNOWN_FINDINGS or key.split("/")[0] in KNOWN_FINDINGS


def shape_bytes(key: str, cap: int) -> int:
    """The size to build a worst-case shape at: the cap, or small for a known finding."""
    return min(cap, KNOWN_FINDING_BYTES) if is_known(key) else cap


def _over(key: str, spent: float, what: str) -> None:
    if spent > CPU_BUDGET and not is_known(key):
        raise AssertionError(
            f"{key}: {what} cost {spent * 1000:.1f} ms of CPU, over the budget of "
            f"{CPU_BUDGET * 1000:.0f} ms (a finding: fix it, or list it in KNOWN_FINDINGS)"
        )


def _timed(fn: Callable[[], T]) -> tuple[T | None, BaseException | None, float]:
    gc.disable()  # the collector's pauses belong to the whole process, not to this input
    start = time.process_time()
    try:
        return fn(), None, time.process_time() - start
    except Exception as exc:
        return None, exc, time.process_time() - start
    finally:
        gc.enable()


def within_budget(key: str, fn: Callable[[], T], what: str = "one input") -> T | None:
    """Run `fn` (a pure decoder call) and return its result, or None if it raised a
    PyrgosError; any other exception propagates. Fails when it costs over the budget, each of
    MEASUREMENTS times."""
    from protocols.errors import PyrgosError

    best = float("inf")
    for _ in range(MEASUREMENTS):
        result, error, spent = _timed(fn)
        if error is not None and not isinstance(error, PyrgosError):
            raise error
        best = min(best, spent)
        if best <= CPU_BUDGET:
            break
    _over(key, best, what)
    return result


async def within_budget_async(
    key: str, fn: Callable[[], Awaitable[T]], what: str = "one call"
) -> tuple[T | None, BaseException | None, float]:
    """Await `fn()` once; (result, error, CPU seconds). Fails when over the budget."""
    gc.disable()
    start = time.process_time()
    try:
        result, error = await fn(), None
    except Exception as exc:
        result, error = None, exc
    finally:
        spent = time.process_time() - start
        gc.enable()
    _over(key, spent, what)
    return result, error, spent


# -- worst-case shapes: the most work per byte a decoder can be handed --------------------------


def _array_of(item: bytes, size: int) -> bytes:
    """A canonical CBOR array of as many copies of `item` as fit in `size` bytes."""
    count = max(0, (size - 9) // len(item))
    return cbor._head(4, count) + item * count


def _many_keys(size: int) -> bytes:
    """A canonical map of distinct short text keys, each to 0, in about `size` bytes."""
    keys: list[str] = []
    total = 9
    n = 0
    while total < size:
        key = format(n, "x")
        keys.append(key)
        total += len(key) + 2
        n += 1
    return cbor.encode(dict.fromkeys(keys[:-1] if total > size else keys, 0))


def _cids(size: int) -> bytes:
    from protocols.cid import CID, CODEC_DAG_CBOR

    link = cbor.encode(CID.of(CODEC_DAG_CBOR, b"x"))
    return _array_of(link, size)


SHAPES: Final[dict[str, Callable[[int], bytes]]] = {
    "empty-arrays": lambda size: _array_of(b"\x80", size),
    "small-ints": lambda size: _array_of(b"\x00", size),
    "many-keys": _many_keys,
    "cids": _cids,
    "deep": lambda size: b"\x81" * cbor.MAX_DEPTH + b"\x80",
    "one-big-string": lambda size: cbor.encode(b"\x00" * max(0, size - 9)),
}


def shape(name: str, size: int) -> bytes:
    """Worst-case shape `name` of at most `size` bytes, canonical CBOR."""
    data = SHAPES[name](size)
    assert len(data) <= max(size, 80), (name, len(data), size)
    return data


def describe(value: Any) -> str:
    """A short, key-free description of an input, for failure messages."""
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes starting {bytes(value[:16]).hex()}"
    return repr(value)[:200]
