"""The node's heap policy: blocks come from the heap, and its free pages go back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from node import heap

# Run in a child: mallopt settings last for the life of a process.
CHILD = textwrap.dedent(
    """
    from node import heap

    def resident():
        return int(open("/proc/self/statm").read().split()[1]) * 4096

    heap.tune(heap.NODE_MMAP_THRESHOLD, heap.NODE_TRIM_THRESHOLD, heap.NODE_ARENAS)
    blocks, pins = [], []
    for _ in range(64):
        block = bytearray(1 << 20)  # a block's worth, from the heap
        block[::4096] = b"x" * 256  # resident, every page
        blocks.append(block)
        pins.append(bytearray(2000))  # a live object above it keeps it off the heap's top
    before = resident()
    del blocks
    freed = resident()
    heap.release_free_pages()
    print((before - freed) >> 20, (freed - resident()) >> 20)
    """
)


@pytest.mark.skipif(
    heap._LIBC is None or not sys.platform.startswith("linux"), reason="glibc's heap on Linux"
)
def test_freed_blocks_below_live_objects_stay_until_the_free_pages_are_released() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    kept_after_free, released = map(int, done.stdout.split())
    assert kept_after_free < 8  # MiB: the trim threshold alone gives back nothing below the top
    assert released >= 56  # of the 64 MiB freed


KEEP_CHILD = textwrap.dedent(
    """
    from node import heap

    def resident():
        return int(open("/proc/self/statm").read().split()[1]) * 4096

    heap.tune(heap.NODE_MMAP_THRESHOLD, heap.NODE_TRIM_THRESHOLD, heap.NODE_ARENAS)

    def burst(count):
        blocks, pins = [], []
        for _ in range(count):
            block = bytearray(1 << 20)
            block[::4096] = b"x" * 256
            blocks.append(block)
            pins.append(bytearray(2000))
        del blocks
        before = resident()
        heap.release_free_pages(heap.NODE_KEEP_FREE)
        return pins, (before - resident()) >> 20

    small_pins, small = burst(8)  # 8 MiB free: kept for the next blocks
    large_pins, large = burst(64)  # past NODE_KEEP_FREE: all of it goes back
    print(small, large)
    """
)


@pytest.mark.skipif(
    heap._free_bytes() is None or not sys.platform.startswith("linux"),
    reason="glibc's mallinfo2 on Linux",
)
def test_a_node_keeps_a_little_free_heap_for_the_next_blocks() -> None:
    done = subprocess.run(
        [sys.executable, "-c", KEEP_CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    small, large = map(int, done.stdout.split())
    # MiB released: none, 8 MiB free being under NODE_KEEP_FREE (-1 when the process grew
    # by a few pages meanwhile)
    assert small <= 0
    assert large >= 56  # of the 64 MiB freed
