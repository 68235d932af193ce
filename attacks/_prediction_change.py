"""The AdvEncoder paper's attack success rate as a task: the share of inputs whose prediction changed.

The ``classification`` task attacks only correctly classified inputs and counts a success when one
becomes wrong (AutoAttack's semantics). The AdvEncoder code attacks *every* input and counts any change
of the prediction against the clean one, including on inputs that were already wrong (its "fooling
rate"). This task keeps the classification metrics (label-based) and adds that rate, so both can be
reported side by side.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustlab.tasks import TASKS, Classification, Metric

__all__ = ["PredictionChange"]


@TASKS.register(
    "prediction_change",
    summary="Classification with every input attacked, plus the share of predictions changed (AdvEncoder's ASR).",
)
class PredictionChange(Classification):
    """Classification metrics over all inputs, plus ``prediction_change_rate`` (vs the clean prediction).

    Example:
        >>> task = PredictionChange()
        >>> y = torch.tensor([0, 1, 2, 3])
        >>> clean, adversarial = {"pred": torch.tensor([0, 1, 0, 0])}, {"adv_pred": torch.tensor([1, 1, 0, 3])}
        >>> metrics = task.aggregate(y, clean, adversarial)
        >>> metrics["prediction_change_rate"], metrics["attack_success_rate"]
        (0.5, 0.5)
    """

    name = "prediction_change"
    classifies = False  # every input is attacked, so its success rate is not AutoAttack's
    metrics = (
        *Classification.metrics,
        Metric("prediction_change_rate", higher_is_better=False, gated=False),
    )

    def attackable(self, clean: dict[str, Tensor], y: Tensor) -> Tensor:
        return torch.ones_like(y, dtype=torch.bool)

    def aggregate(self, y: Tensor, clean: dict[str, Tensor], adversarial: dict[str, Tensor]) -> dict[str, float]:
        changed = (adversarial["adv_pred"] != clean["pred"]).double().mean().item()
        return {**super().aggregate(y, clean, adversarial), "prediction_change_rate": changed}
