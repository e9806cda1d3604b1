"""How a pyrgos process uses glibc's heap: fixed thresholds instead of adaptive ones.

Transfers allocate and free many buffers of 1-6 MiB, from worker threads too. Left adaptive,
glibc serves them from per-thread arenas that fragment and grow with the file size, and now and
then gives the heap back and faults it in again; set too low, every buffer is mapped afresh and
page-faulted (256 faults a megabyte). Elsewhere than glibc all of this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any, Final

from protocols.cryptree import MAX_BLOCK_BYTES

MiB: Final = 1024 * 1024
M_MMAP_THRESHOLD: Final = -3  # glibc mallopt parameters
M_TRIM_THRESHOLD: Final = -1
M_ARENA_MAX: Final = -8

# A client keeps a pool: whole puts and chunks come from the heap and up to 32 MiB stays free.
CLIENT_MMAP_THRESHOLD: Final = 2 * MiB
CLIENT_TRIM_THRESHOLD: Final = 32 * MiB
# A node keeps just its blocks: every block, answer frame and copy of one (up to a block and
# 64 KiB) comes from the heap and is reused; larger bodies (2 MiB puts) are mapped and handed
# straight back. Mapping each block afresh cost a third of the rate between nodes in faults.
NODE_MMAP_THRESHOLD: Final = MAX_BLOCK_BYTES + 64 * 1024
NODE_TRIM_THRESHOLD: Final = 4 * MiB


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None  # not glibc
    return libc


_LIBC = _libc()


def tune(mmap_threshold: int, trim_threshold: int) -> None:
    """Buffers under `mmap_threshold` come from the heap and are reused, larger ones are mapped
    and handed back; at most `trim_threshold` is kept free at the top of the heap."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        _LIBC.mallopt(M_TRIM_THRESHOLD, trim_threshold)
        _LIBC.mallopt(M_ARENA_MAX, 2)


def release_free_pages() -> None:
    """Give the system back every free page of the heap, wherever it lies. The trim threshold
    only reaches the top of the heap; blocks freed below a live object stay resident until
    this, which a long-running node calls often (it costs tens of microseconds)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
