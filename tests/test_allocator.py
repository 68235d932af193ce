"""The allocator tuning that keeps peak memory flat in n (experiments/RESULTS-memory.md) and training fast."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from robustlab.allocator import fix_mmap_threshold

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def test_the_mmap_threshold_is_fixed_where_glibc_runs() -> None:
    assert fix_mmap_threshold() is GLIBC


@pytest.mark.skipif(not GLIBC, reason="tunes glibc's malloc")
def test_steady_shapes_reuses_the_heap_instead_of_faulting_in_fresh_pages() -> None:
    # A fresh process: the threshold is process-wide. 40 allocations of the same 4 MiB tensor, as a training
    # loop makes them, fault in 40 x 1024 pages each with the threshold fixed, about 1024 from the heap.
    script = textwrap.dedent(
        """
        import resource, torch
        from robustlab.allocator import fix_mmap_threshold, steady_shapes

        def faults(loop):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            loop()
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        def steps():
            for _ in range(40):
                torch.ones(1 << 20).sum()

        fix_mmap_threshold()
        fixed = faults(steps)
        with steady_shapes():
            with steady_shapes():  # an inner block (a defense trained inside the diagnostics) leaves the outer one
                pass
            heap = faults(steps)
        print(fixed, heap, faults(steps))
        """
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    fixed, heap, fixed_again = map(int, output.split())
    assert fixed > 30 * 1024 and fixed_again > 30 * 1024
    assert heap < fixed / 4
