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
# for one worst-case shape of it. Value: the issue item that fixes it. Remove an entry once
# its fix is merged; the budget then holds for it again.
_ITEM_2 = "issue 7 item 2: CBOR decoding bounded in items before the work is done"
_ITEMS_2_5 = "issue 7 items 2 and 5: structured blocks validated (and bounded) at put"
_BOMBS = ("empty-arrays", "small-ints", "many-keys", "cids")
# Costs below: process CPU time under `python -X dev`, measured on the shapes of SHAPES.
KNOWN_FINDINGS: Final[dict[str, str]] = {
    # protocols/cbor.py bounds bytes, not items: cbor2 builds every list and map, then
    # _check_types and the canonical re-encode walk them again in Python. At 1 MiB: empty
    # arrays ~830 ms, small ints ~375 ms, short map keys ~190 ms, CID links ~95 ms. Every
    # decoder whose cap is 1 MiB or more inherits it: the block decoder (cbor.decode's
    # default), block answers, the rpc frame (9 MiB: ~11 s), a PKI page, a stored block's BATs.
    **{
        f"{decoder}/{bomb}": _ITEM_2
        for decoder in (
            "cbor.decode",
            "frames.rpc",
            "frames.block-answer",
            "pki.page",
            "bats.block_bat_ids",
        )
        for bomb in _BOMBS
    },
    # A block request frame (64 KiB cap) of empty arrays: ~51 ms; of small ints ~24 ms, which
    # a loaded machine can push over.
    "frames.block-request/empty-arrays": _ITEM_2,
    "frames.block-request/small-ints": _ITEM_2,
    # The HTTP API and the rpc server decode the whole body (9 MiB) or frame before they look
    # at the method, for any caller: node.info with 9 MiB of empty arrays ~11.6 s, small ints
    # ~3.7 s, map keys ~2.4 s, CID links ~1.3 s; an rpc frame of empty arrays ~11 s.
    **{f"{transport}/{bomb}": _ITEM_2 for transport in ("http", "rpc") for bomb in _BOMBS},
    # block.put and account.signup decode each dag-cbor block of a put again, and store it:
    # 8 blocks of 1 MiB of empty arrays, signed by the user's writer, ~13 s, accepted.
    "block.put/dag-cbor-bombs": _ITEMS_2_5,
    "account.signup/dag-cbor-bombs": _ITEMS_2_5,
    # Once stored, such a block costs its decoding again at every read, anonymous included:
    # get_block parses a dag-cbor block for its BATs (1 MiB of empty arrays: ~0.85-1.5 s).
    "block.get/dag-cbor-bombs": _ITEMS_2_5,
    # And at every put that would cross the quota: the exact recount (_charge, under the
    # write lock) decodes every dag-cbor block the user's root reaches, so bombs linked from
    # WriterData `owned` make each such put cost their decoding while all writers wait (four
    # 1 MiB bombs: ~1.9 s per put of one small block; 64 MiB of them would be a minute).
    "block.put/over-quota-recount": "issue 7 items 4 and 5: bounded blocks, no long lock",
    # Not in issue 7: champ.get bounds the keys (64) but not the nodes walked. A user's CHAMP
    # of 64 chains of 4 keys sharing 248 bits (3,165 nodes of ~100 bytes, 0.3 MiB of quota)
    # makes one anonymous champ.get walk and return every node: ~85 ms of CPU on the event
    # loop (node decoding in protocols/champ.py, LevelDB reads). Needs a bound on the nodes
    # one lookup may visit (or on the blocks one answer may carry).
    "champ.get/deep-chains": "new: bound the nodes one champ.get may walk",
}

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
