"""How a pyrgos process uses glibc's heap: fixed thresholds instead of adaptive ones.

Transfers allocate and free many buffers of 1-6 MiB, from worker threads too. Left adaptive,
glibc serves them from per-thread arenas that fragment and grow with the file size, and now and
then gives the heap back and faults it in again; set too low, every buffer is mapped afresh and
page-faulted (256 faults a megabyte). Elsewhere than glibc all of this does nothing.
"""

from __future__ import annotations

import ctypes
from typing import Any, Final

MiB: Final = 1024 * 1024
M_MMAP_THRESHOLD: Final = -3  # glibc mallopt parameters
M_TRIM_THRESHOLD: Final = -1
M_ARENA_MAX: Final = -8

# A client keeps a pool: whole puts and chunks come from the heap and up to 32 MiB stays free.
CLIENT_MMAP_THRESHOLD: Final = 2 * MiB
CLIENT_TRIM_THRESHOLD: Final = 32 * MiB
# One heap for all its threads: a buffer is made in one thread and freed in another (a block
# fetched on the event loop, decrypted in a worker), and two heaps each kept their own free
# megabytes (peak RSS over a 1 GiB download 81-87 MiB with two, 77-84 with one; same CPU).
CLIENT_ARENAS: Final = 1
# A node reuses its transfer buffers: every block, answer frame, put body (2 MiB), LevelDB
# write batch and memtable entry (up to 5 MiB) comes from the heap. Mapping each afresh cost a
# third of the rate between nodes in faults, and with puts mapped, a fifth of an upload's
# node CPU (150,000 faults per 200 MiB).
NODE_MMAP_THRESHOLD: Final = 5 * MiB
NODE_TRIM_THRESHOLD: Final = 4 * MiB
NODE_ARENAS: Final = 2  # its threads (LevelDB's, the workers) allocate at once, often
# Free heap a node keeps between its page releases: what a stream of puts reuses (an upload
# turns over about 30 MiB: at 16 MiB kept, 125,000 faults per 200 MiB; at 32, 20,000-40,000).
NODE_KEEP_FREE: Final = 32 * MiB


def _libc() -> Any:
    try:
        # glibc by its soname: finding it by name (ctypes.util) runs ldconfig in a subprocess
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None  # not glibc
    return libc


_LIBC = _libc()


def tune(mmap_threshold: int, trim_threshold: int, arenas: int) -> None:
    """Buffers under `mmap_threshold` come from the heap and are reused, larger ones are mapped
    and handed back; at most `trim_threshold` is kept free at the top of the heap; threads
    share at most `arenas` heaps."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        _LIBC.mallopt(M_TRIM_THRESHOLD, trim_threshold)
        _LIBC.mallopt(M_ARENA_MAX, arenas)


_MALLINFO2_FIELDS: Final = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)


class _MallInfo2(ctypes.Structure):
    _fields_ = tuple((name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS)


def _free_bytes() -> int | None:
    """The heap's free bytes (glibc 2.33+ `mallinfo2`), None where it cannot say."""
    if _LIBC is None or not hasattr(_LIBC, "mallinfo2"):
        return None
    _LIBC.mallinfo2.restype = _MallInfo2
    return int(_LIBC.mallinfo2().fordblks)


def release_free_pages(keep: int = 0) -> None:
    """Give the system back every free page of the heap, wherever it lies, once more than
    `keep` bytes of it are free. The trim threshold only reaches the top of the heap; blocks
    freed below a live object stay resident until this, which a long-running node calls often
    (it costs tens of microseconds). While blocks stream through, the few megabytes freed
    between two calls are allocated again at once: giving them back would only fault them in
    again (256 faults a megabyte), so up to `keep` stays."""
    if _LIBC is None:
        return
    if keep:
        free = _free_bytes()
        if free is not None and free <= keep:
            return
    _LIBC.malloc_trim(0)
