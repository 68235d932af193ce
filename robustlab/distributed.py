"""Many devices through ``torchrun``: which batches a rank owns, and how rank 0 collects the others' units.

Every unit's seed depends only on ``(seed, unit key)``, so which process computes a unit cannot change its
result; batch ``b`` goes to rank ``b % world_size`` and rank 0 merges, which makes the merged report equal
to a single-process one. One process per device: gloo on CPU, NCCL on CUDA.

An *independent* shard (``robustlab eval --shard K/N``, one Slurm array job each) owns its batches the same
way but joins no process group: it only fills its own store, and ``robustlab merge`` reports over them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from robustlab.errors import ConfigError

__all__ = ["Shard", "gather_units", "init_from_env", "parse_shard"]


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world_size`` ranks (the default is a single process)."""

    rank: int = 0
    world_size: int = 1
    independent: bool = False

    def owns(self, batch: int) -> bool:
        """Whether this rank computes batch ``batch``."""
        return batch % self.world_size == self.rank

    @property
    def is_main(self) -> bool:
        """Rank 0 merges, prints and writes; the others stay silent. No independent shard reports: merge does."""
        return self.rank == 0 and not self.independent


def init_from_env(device: str) -> Shard:
    """Join the process group ``torchrun`` describes in the environment, or return the single-process shard.

    On CUDA each rank takes the device ``LOCAL_RANK`` (made current, so ``cuda`` means it everywhere).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Shard()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size())


def gather_units(shard: Shard, units: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    """On rank 0, every rank's ``units`` merged (CPU tensors); on the other ranks, an empty dict."""
    if shard.world_size == 1 or shard.independent:
        return units
    local = {key: {k: v.cpu() for k, v in tensors.items()} for key, tensors in units.items()}
    received: list[dict[str, dict[str, Tensor]]] | None = (
        [{} for _ in range(shard.world_size)] if shard.is_main else None
    )
    dist.gather_object(local, received, dst=0)
    merged: dict[str, dict[str, Tensor]] = {}
    for part in received or []:
        merged.update(part)
    return merged


def parse_shard(text: str) -> Shard:
    """The independent shard ``K/N`` names: batch ``b`` is its own when ``b % N == K``."""
    try:
        rank, world_size = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes K/N (this job's share K of N, e.g. 0/4), got {text!r}") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"--shard {text}: K must be in 0..N-1 and N at least 1")
    return Shard(rank, world_size, independent=True)
