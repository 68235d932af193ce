"""The allocator tuning that keeps peak memory flat in n (measured in experiments/RESULTS-bench.md)."""

from __future__ import annotations

import platform
import sys

from robustlab.allocator import fix_mmap_threshold


def test_the_mmap_threshold_is_fixed_where_glibc_runs() -> None:
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert fix_mmap_threshold() is glibc
