"""Seeding the global RNG for code that draws from it (module constructors), without disturbing the caller's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["global_rng_seeded"]


@contextmanager
def global_rng_seeded(seed: int) -> Iterator[None]:
    """The global RNG forked and seeded with ``seed`` for the block, and as it was afterwards.

    Module constructors (layer inits) draw from the global RNG: built inside this block, a network's initial
    weights are a function of ``seed`` alone, and the caller's RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
