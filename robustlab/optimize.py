"""One optimisation step, taken the same way by every training loop in robustlab (models, heads, defenses)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["descend"]


def descend(
    optimizer: torch.optim.Optimizer, loss: Tensor, schedule: torch.optim.lr_scheduler.LRScheduler | None = None
) -> None:
    """Clear the gradients, backpropagate ``loss``, step ``optimizer``, then its learning-rate ``schedule``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if schedule is not None:
        schedule.step()
