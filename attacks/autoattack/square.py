"""Square Attack (Andriushchenko et al., ECCV 2020): score-based black-box random search, on robustlab's own loop."""

from __future__ import annotations

from dataclasses import dataclass

from robustlab.attacks._torchattacks import stream_ids
from robustlab.attacks.autoattack._square import SquareConfig, square_attack
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack, CallContext
from robustlab.threat import Norm

__all__ = ["Square"]


@ATTACKS.register(
    "square", summary="Square Attack, score-based black-box random search, L∞/L2; no gradients.", stochastic=True
)
@dataclass(kw_only=True, eq=False)
class Square(Attack):
    """Square Attack: a query-efficient black-box adversarial attack via random search,
    https://arxiv.org/abs/1912.00049.

    Uses only the model's scores (no gradients): one forward pass of the clean batch, then per restart
    one for the random start and up to ``n_queries`` more per sample; a sample stops once misclassified,
    and one the clean input already misclassifies is queried no further. Each sample draws from its own
    random stream (the evaluator's per-sample seed, else the generator's seed and its index), so its
    result does not depend on its batch; the reference shares one square position across the batch.
    A black-box attack that beats the white-box ones is a gradient-masking symptom.

    Args:
        eps: budget in [0, 1] pixel units.
        norm: ``linf`` or ``l2``.
        n_queries: query budget per sample.
        n_restarts: random restarts.
        p_init: initial fraction of pixels changed per square.
        rescale_schedule: stretch the schedule of square sizes to ``n_queries`` (the reference's
            default); AutoAttack's standard version keeps the schedule of 10000 queries.
    """

    uses_gradients = False
    per_sample_streams = True
    tracks_scored = True

    eps: float = 8 / 255
    norm: Norm | str = Norm.LINF
    n_queries: int = 5000
    n_restarts: int = 1
    p_init: float = 0.8
    rescale_schedule: bool = True

    def __post_init__(self) -> None:
        self.norm = Norm(self.norm)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        norm = self.threat.norm
        config = SquareConfig(norm, self.eps, self.n_queries, self.n_restarts, self.p_init, self.rescale_schedule)
        seed, index = stream_ids(context.generator, context.sample_seeds)
        return square_attack(model, x, y, config, seed=seed, index=index, scored=context.scored)
