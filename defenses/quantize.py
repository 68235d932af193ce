"""Bit-depth reduction (Xu, Evans & Qi, NDSS 2018, "Feature Squeezing"), a shattered-gradient defense."""

from __future__ import annotations

from torch import Tensor, nn

from robustlab.defense import DEFENSES, Preprocessed, PreprocessingDefense

__all__ = ["Quantize"]


@DEFENSES.register("quantize", summary="Bit-depth reduction to a few levels (feature squeezing); BPDA-identity attack.")
class Quantize(PreprocessingDefense):
    """Rounds every pixel to ``levels`` evenly spaced values, https://arxiv.org/abs/1704.01155.

    Not differentiable (rounding has zero gradient almost everywhere), deterministic, nothing to fit.
    The adaptive attacker uses BPDA with the identity surrogate (Athalye et al., ICML 2018). With
    ``bpda=False`` the attacker differentiates the rounding itself and gets zero gradients: a
    deliberately gradient-masking configuration that the diagnostics must flag.

    Args:
        levels: number of output values per channel (8 = 3 bits).
        bpda: let the adaptive attacker use BPDA.
    """

    differentiable = False

    def __init__(self, *, levels: int = 8, bpda: bool = True) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.levels = levels
        self.bpda = bpda

    def transform(self, x: Tensor) -> Tensor:
        return (x * (self.levels - 1)).round() / (self.levels - 1)

    def wrap(self, model: nn.Module, *, adaptive: bool = False) -> nn.Module:
        return Preprocessed(self, model, use_bpda=adaptive and self.bpda).eval()
