"""Reading third-party and robustlab checkpoints without unpickling code, and loading them strictly.

Shared by every model family (torchvision, embedded nets, timm, RobustBench, user factories): a checkpoint
is a state dict of tensors from safetensors or ``torch.load(weights_only=True)``, and a checkpoint that
does not fit its net is one line naming the first key that differs, never a silently random layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.errors import CheckpointMismatchError, WeightsUnavailableError

__all__ = ["load_state_dict_file", "load_strict"]


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """Read a state dict without unpickling code: safetensors, or ``torch.load(weights_only=True)``.

    Accepts plain state dicts and the common ``{"state_dict": ...}`` / ``{"model": ...}`` envelopes, and
    strips a ``module.`` prefix left by ``DataParallel``.
    """
    if not path.is_file():
        raise WeightsUnavailableError(
            f"no checkpoint file at {path}: make one with robustlab train --model NAME --out model.safetensors "
            f"(then --weights model.safetensors), or use --weights synth"
        )
    if path.suffix == ".safetensors":
        from robustlab.cache import load_weights

        state: Any = load_weights(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
            reason = (str(error).splitlines() or [f"{type(error).__name__}, empty or truncated file?"])[0]
            raise CheckpointMismatchError(f"cannot read checkpoint {path}: {reason}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_strict(net: nn.Module, state: dict[str, Tensor], *, source: Path) -> None:
    """``load_state_dict(strict=True)``, with a one-line error naming what does not fit."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"shape of {k} is {tuple(state[k].shape)}, expected {tuple(own[k].shape)} (--num-classes?)")
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:3])}...)")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])}...)")
        raise CheckpointMismatchError(f"checkpoint {source} does not fit {type(net).__name__}: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)
