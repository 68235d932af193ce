"""One optimisation step, taken the same way by every training loop in robustlab (models, heads, defenses)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["descend", "one_cycle"]


def descend(
    optimizer: torch.optim.Optimizer, loss: Tensor, schedule: torch.optim.lr_scheduler.LRScheduler | None = None
) -> None:
    """Clear the gradients, backpropagate ``loss``, step ``optimizer``, then its learning-rate ``schedule``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if schedule is not None:
        schedule.step()


def one_cycle(
    optimizer: torch.optim.Optimizer, *, max_lr: float, steps: int, warmup: float
) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle schedule over ``steps`` steps, warming up for the fraction ``warmup`` of them.

    torch divides by the warm-up's length in steps less one, so a warm-up of exactly one step (10 steps at
    10%) raised ZeroDivisionError; such a run warms up for two steps. Every other length is torch's own.

    Example:
        >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> one_cycle(optimizer, max_lr=1.0, steps=10, warmup=0.1).total_steps
        10
    """
    if warmup * steps == 1 and steps > 2:
        warmup = 2 / steps
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps, pct_start=warmup)
