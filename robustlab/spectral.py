"""The singular-value spectrum of a feature matrix, as NMTune reads it (Chen et al., ICLR 2024).

Label noise in pre-training reshapes the feature space. The paper measures that with two numbers of
the spectrum ``s_1 >= s_2 >= ...`` of the (N, D) matrix of features of N samples:

* singular value entropy, ``SVE = -sum_i p_i log p_i`` with ``p_i = s_i / sum_j s_j``: how evenly the
  variance spreads over directions (the paper: noise raises it, which helps in-domain transfer);
* largest singular value ratio, ``LSVR = s_1 / sum_j s_j``: how much one direction dominates (the
  paper: noise lowers it, which hurts out-of-domain transfer). The paper may report it in a log form;
  the ratio is what NMTune's SVD regulariser raises, so the ratio is what is recorded here.

:func:`feature_spectrum` prepares features as the official analysis script does before its SVD: each
feature vector L2-normalised, then centred over its own dimensions (not over samples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.errors import ConfigError

__all__ = ["feature_spectrum", "largest_singular_value_ratio", "singular_value_entropy", "spectral_summary"]


def feature_spectrum(features: Tensor) -> Tensor:
    """Singular values, descending, of the L2-normalised, per-sample-centred ``(N, D)`` features (float64).

    Example:
        >>> feature_spectrum(torch.eye(3)[:, :2] * 5).shape
        torch.Size([2])
    """
    if features.dim() != 2 or min(features.shape) < 1:
        raise ConfigError(f"features must be a non-empty (N, D) matrix, got shape {tuple(features.shape)}")
    unit = F.normalize(features.detach().double(), dim=1)
    values: Tensor = torch.linalg.svdvals(unit - unit.mean(dim=1, keepdim=True))
    return values


def _proportions(singular_values: Tensor) -> Tensor:
    if singular_values.dim() != 1 or (singular_values < 0).any() or singular_values.sum() <= 0:
        raise ConfigError("singular values must be a non-negative vector with a positive sum")
    return singular_values / singular_values.sum()


def singular_value_entropy(singular_values: Tensor) -> float:
    """``-sum p_i log p_i`` over ``p_i = s_i / sum s``: 0 for rank one, ``log k`` for ``k`` equal values.

    Example:
        >>> round(singular_value_entropy(torch.ones(4)), 4)  # log 4
        1.3863
    """
    p = _proportions(singular_values)
    p = p[p > 0]  # 0 log 0 = 0
    return float(-(p * p.log()).sum())


def largest_singular_value_ratio(singular_values: Tensor) -> float:
    """``max s / sum s``: 1 for rank one, ``1 / k`` for ``k`` equal values.

    Example:
        >>> largest_singular_value_ratio(torch.tensor([3.0, 1.0]))
        0.75
    """
    return float(_proportions(singular_values).max())


def spectral_summary(features: Tensor) -> dict[str, float]:
    """``{"sve": ..., "lsvr": ...}`` of :func:`feature_spectrum` of ``features``."""
    values = feature_spectrum(features)
    return {"sve": singular_value_entropy(values), "lsvr": largest_singular_value_ratio(values)}
