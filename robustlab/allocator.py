"""Peak memory that does not grow with ``n``: glibc's malloc is told to keep its mmap threshold where it is.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB); from then on
batch-sized tensors come from the heap, which fragments as batches of varying size come and go, so
the peak RSS of a long ``robustlab eval`` grew with the number of batches although no per-sample image
was kept (experiments/RESULTS-bench.md, "Memory against n"). A fixed threshold serves every tensor of
1 MiB or more with its own mapping, returned to the system when freed.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]

MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``size`` bytes (which also stops its dynamic growth); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another C library: nothing to tune
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, size))
