"""Seeds: a unit's and a sample's derived from ``(seed, key)`` alone, and the global RNG seeded for code that
draws from it (module constructors, third-party attacks) without disturbing the caller's."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["global_rng_seeded", "seeded", "stream_seed"]


@contextmanager
def global_rng_seeded(seed: int, *, device: torch.device | None = None) -> Iterator[None]:
    """The global RNG forked and seeded with ``seed`` for the block, and as it was afterwards.

    Module constructors (layer inits) and third-party attacks draw from the global RNG: built or run inside
    this block, what they draw is a function of ``seed`` alone, and the caller's RNG is left untouched. The CPU
    RNG is always forked; a CUDA ``device`` (the one the block draws on) has its RNG forked too.
    """
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def stream_seed(seed: int, key: str) -> int:
    """A 60-bit seed that depends on ``(seed, key)`` alone: the seed of a unit, or of one sample's stream."""
    return int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:15], 16)


@contextmanager
def seeded(seed: int, key: str) -> Iterator[torch.Generator]:
    """A generator and a forked global RNG, both seeded from ``(seed, key)`` alone."""
    unit_seed = stream_seed(seed, key)
    initialized = torch.cuda.is_available() and torch.cuda.is_initialized()
    device = torch.device("cuda", torch.cuda.current_device()) if initialized else None
    with global_rng_seeded(unit_seed, device=device):  # randomized defenses and third-party code draw from it
        yield torch.Generator().manual_seed(unit_seed)
