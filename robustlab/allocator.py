"""Peak memory that does not grow with ``n``: glibc's malloc is told to keep its mmap threshold where it is.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB); from then on
batch-sized tensors come from the heap, which fragments as batches of varying size come and go, so
the peak RSS of a long ``robustlab eval`` grew with the number of batches although no per-sample image
was kept (experiments/RESULTS-memory.md). A fixed threshold serves every tensor of 1 MiB or more with
its own mapping, returned to the system when freed.

Fresh mappings cost page faults: a training step allocates the same tensors again and again, and
faulting them in each time made training half as slow again. Work whose memory does not grow with ``n``
(training, the fit of universal attacks, generative attacks and ``fool``, the diagnostics' probes) runs under
:func:`steady_shapes`, which serves it from the heap: blocks of the same sizes do not fragment it.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["HEAP_THRESHOLD", "MMAP_THRESHOLD", "fix_mmap_threshold", "steady_shapes"]

MMAP_THRESHOLD = 1 << 20
HEAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic mmap threshold on 64-bit machines
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_TRIM_THRESHOLD = 128 << 10  # glibc's default: free heap above this at its top goes back to the system
_fixed_at: int | None = None
_steady_depth = 0


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``size`` bytes (which also stops its dynamic growth); False elsewhere."""
    global _fixed_at
    libc = _glibc()
    if libc is None or not libc.mallopt(_M_MMAP_THRESHOLD, size):
        return False
    _fixed_at = size
    return True


@contextmanager
def steady_shapes() -> Iterator[None]:
    """Serve tensors up to :data:`HEAP_THRESHOLD` from the heap while work whose memory does not grow with ``n``
    runs: a loop of same-sized steps (training, an attack's fit) or the diagnostics' probes on 128 samples.

    Only where the threshold was fixed (the CLI): elsewhere glibc's dynamic threshold does so already. On
    exit the threshold is fixed again and the heap's free pages go back to the system (``malloc_trim``).
    """
    global _steady_depth
    libc, fixed = _glibc(), _fixed_at
    if libc is None or fixed is None or _steady_depth:  # nothing fixed, or an outer block already switched
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, HEAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * HEAP_THRESHOLD)  # as glibc's dynamic threshold does: keep the freed top
    _steady_depth += 1
    try:
        yield
    finally:
        _steady_depth -= 1
        libc.mallopt(_M_MMAP_THRESHOLD, fixed)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another C library: nothing to tune
        return None
