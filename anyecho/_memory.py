"""Process-wide memory settings that bulk echoes depend on."""

from __future__ import annotations

import functools
from typing import Final

__all__ = ["ALLOCATOR_PRIMER", "keep_freed_memory"]

#: The block :func:`keep_freed_memory` frees (bytes): above the largest chunk a
#: receive returns on asyncio (256 KiB, one transport read) and on Trio (up to
#: :data:`~anyecho.RECEIVE_SIZE`, one ``recv()``), with room for several in flight.
ALLOCATOR_PRIMER: Final = 4 * 1024 * 1024


@functools.cache  # once per process
def keep_freed_memory() -> None:
    """Let glibc's allocator keep freed memory for reuse; once per process.

    Every chunk an echo receives is a new bytes object: up to 256 KiB from an
    asyncio transport (and read-ahead holds a receive's worth of them), or, on
    Trio, the buffer of a ``recv()`` of the whole receive size, shrunk to what
    arrived. How many are alive rises and falls from one event loop iteration to
    the next. glibc starts out handing any free memory above 128 KiB at the top
    of its heap back to the kernel (and serving blocks above 128 KiB with
    ``mmap``), so the heap shrinks and grows all the time, and every 4 KiB that
    comes back costs a page fault and zeroing: twice the CPU for a 1 MiB echo on
    one asyncio connection, a sixth more at 64 KiB over 50, on either backend.

    glibc raises both thresholds by itself once the program frees an ``mmap``-ed
    block bigger than the first (to the block's size, and twice that), and
    freeing one here does just that. It then keeps up to twice the block of free
    memory for reuse. With another allocator this is just a short-lived
    allocation, and glibc ignores it when the thresholds were set explicitly
    (``MALLOC_MMAP_THRESHOLD_`` and the like).
    """
    # bytes() of a size zero-fills through calloc(), which takes fresh (already
    # zero) pages from mmap without touching them.
    block = bytes(ALLOCATOR_PRIMER)
    del block
