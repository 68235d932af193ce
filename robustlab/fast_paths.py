"""The fast paths a run may ask for (channels-last, bf16 autocast, torch.compile) and the check that they agree."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlab.eval_config import EvalConfig
from robustlab.reports.report import Diagnostic
from robustlab.tasks import predict

__all__ = ["accelerated", "fast_path_check"]


class _Autocast(nn.Module):
    """Runs a model under ``torch.autocast`` and hands float32 logits back, so losses and argmax stay float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            logits: Tensor = self.model(x)
        return logits.float()


def accelerated(module: nn.Module, config: EvalConfig) -> nn.Module:
    """The module with the fast paths asked for (channels-last, bf16 autocast, torch.compile), else itself."""
    if config.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if config.amp == "bf16":
        module = _Autocast(module, torch.bfloat16).eval()
    if config.compile:
        module = torch.compile(module)  # type: ignore[assignment]
    return module


def fast_path_check(
    plain: nn.Module, fast: nn.Module, x: Tensor, config: EvalConfig, names: tuple[str, str]
) -> Diagnostic:
    """Compare the fast path's clean predictions with plain float32 ones on the first batch."""
    agree = (predict(plain, x) == predict(fast, x)).double().mean().item()
    paths = ", ".join(p for p, on in (("amp bf16", config.amp), ("compile", config.compile)) if on)
    code = "fast-path-check" if agree >= 0.99 else "fast-path-mismatch"
    message = f"{paths}: clean predictions agree with float32 on {agree:.1%} of {len(x)} samples"
    return Diagnostic(code, message, model=names[0], defense=names[1])
