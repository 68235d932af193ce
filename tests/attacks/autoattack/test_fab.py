"""robustlab's FAB loop: the reference's projections and strength; early stop and batching change nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from pyautoattack.fab_projections import projection_l2, projection_linf
from pyautoattack.fab_pt import FABAttack_PT
from robustlab.attacks.autoattack._apgd import RowLoop
from robustlab.attacks.autoattack._fab import FABConfig, fab, project_onto_hyperplane
from robustlab.attacks.autoattack.ensemble import FABT

from robustlab.threat import Norm, perturbation_norm

N = 32
LINF_EPS, L2_EPS = 4 / 255, 0.5  # leave samples of the trained model on both sides at 10 iterations


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
@pytest.mark.parametrize("dims", [7, 3072])
def test_projection_equals_the_reference(norm: Norm, dims: int) -> None:
    # Points in the box, hyperplanes near and far (some out of the box's reach), some coordinates with w = 0.
    generator = torch.Generator().manual_seed(dims)
    rows = 300
    point = torch.rand(rows, dims, generator=generator)
    w = torch.randn(rows, dims, generator=generator) * (torch.rand(rows, dims, generator=generator) > 0.2)
    offset = torch.randn(rows, generator=generator) * torch.logspace(-2, 1.5, rows) * w.abs().sum(1) / dims**0.5
    b = (w * point).sum(1) + offset
    reference = {Norm.LINF: projection_linf, Norm.L2: projection_l2}[norm]
    ours = project_onto_hyperplane(point, w, b, norm)
    theirs = reference(point.clone(), w.clone(), b.clone())
    assert torch.allclose(ours, theirs, atol=1e-4)
    reached = ((w * (point + ours)).sum(1) - b).abs() < 1e-3
    assert 0 < int(reached.sum()) < rows, "both hyperplanes the box reaches and ones it does not"
    assert bool(((point + ours) >= -1e-6).all() and ((point + ours) <= 1 + 1e-6).all())


@pytest.mark.parametrize(
    ("config", "n"),
    [
        (FABConfig(Norm.LINF, LINF_EPS, steps=10, n_targets=3), N),
        (FABConfig(Norm.L2, L2_EPS, steps=10, n_targets=2, n_restarts=2), N),
        (FABConfig(Norm.LINF, LINF_EPS, steps=8, n_targets=0, n_restarts=2), 16),
        (FABConfig(Norm.L2, L2_EPS, steps=8, n_targets=0), 16),
    ],
    ids=["linf-targeted", "l2-targeted-restarts", "linf-untargeted-restarts", "l2-untargeted"],
)
def test_early_stop_returns_the_same_points(
    synth_batch: tuple[torch.Tensor, torch.Tensor], config: FABConfig, n: int, same_with_early_stop: Callable[..., Any]
) -> None:
    # A sample stopped at its first fooling iterate within eps is the one the full run reports.
    x, y = synth_batch[0][:n], synth_batch[1][:n]
    full, fooled_full = same_with_early_stop(fab, x, y, config, seed=3, max_rows=128)
    assert torch.equal(full[~fooled_full], x[~fooled_full])
    assert bool((perturbation_norm(x, full, config.norm) <= config.eps).all())


def test_a_sample_does_not_depend_on_its_batch(
    trained_model: torch.nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Own random stream per sample and per-sample state: the same sample gives the same point in any batch.
    x, y = synth_batch[0][:N], synth_batch[1][:N]
    config = FABConfig(Norm.LINF, LINF_EPS, steps=6, n_targets=2, n_restarts=2)
    whole, fooled = fab(trained_model, x, y, config, RowLoop(seed=5, early_stop=True, max_rows=4 * N))
    index = torch.arange(8, 16)
    part, _ = fab(trained_model, x[index], y[index], config, RowLoop(seed=5, early_stop=True, max_rows=4, index=index))
    assert bool(fooled[8:16].any()), "some samples of the slice should be fooled"
    assert torch.allclose(whole[8:16], part, atol=1e-6)


def test_fab_t_is_as_strong_as_the_reference(
    trained_model: torch.nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Same samples, targets and iterations, no random restart: the trajectories are the reference's, so the
    # fooled counts agree but for float rounding (batches of other sizes, the projection's own arithmetic);
    # robustlab's may fall short of the reference's by at most 1 of 32 samples (here they fool the same 17).
    x, y = synth_batch[0][:N], synth_batch[1][:N]
    attack = FABT(eps=LINF_EPS, norm=Norm.LINF, steps=10, n_restarts=1, n_target_classes=3)
    ours = attack(trained_model, x, y, generator=torch.Generator().manual_seed(0), early_stop=True)  # verified
    reference = FABAttack_PT(
        trained_model, norm="Linf", n_restarts=1, n_iter=10, eps=LINF_EPS, targeted=True, n_target_classes=3
    ).perturb(x, y)
    with torch.no_grad():
        ours_fooled = trained_model(ours).argmax(1) != y
        reference_fooled = (trained_model(reference).argmax(1) != y) & (
            perturbation_norm(x, reference, Norm.LINF) <= LINF_EPS
        )
        correct = trained_model(x).argmax(1) == y
    changed = (ours != x).flatten(1).any(1)
    assert torch.equal(changed[correct], ours_fooled[correct]), "a point differs from x exactly where it fools"
    assert int(reference_fooled.sum()) > 0
    assert int(ours_fooled.sum()) >= int(reference_fooled.sum()) - 1
