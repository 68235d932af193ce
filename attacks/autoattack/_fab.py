"""robustlab's own FAB loop (Croce & Hein, ICML 2020, https://arxiv.org/abs/1907.02044), targeted and untargeted.

FAB walks to the decision boundary: at each iterate it linearizes the boundary (targeted: the label's
logit against the target's; untargeted: the nearest of all classes' boundaries), projects both the
iterate and the clean point onto that hyperplane within the [0, 1] box, and moves to a mix of the two
projections biased towards the clean point (``alpha`` at most ``alpha_max``), overshooting by ``eta``;
an iterate the model misclassifies is pulled back towards the clean point by ``beta``. The constants,
the start points (the clean point, then random points at radius ``eps / 2``), the targets (the 2nd to
(n+1)th highest clean logits) and the arithmetic are the reference's (the ``autoattack`` package).

robustlab deviates where the evaluation needs it, as its APGD loop does (:mod:`robustlab.attacks.autoattack._apgd`):

* **eps-bounded**: a sample counts as fooled at its first iterate that is misclassified *and* within
  ``eps``, and that iterate is what comes back. The reference keeps the smallest adversarial iterate
  and then tests it against ``eps``; both say a sample is fooled exactly when some iterate is
  misclassified within ``eps``, so robust accuracy is the same, while the returned point differs;
* **early stop**: a fooled sample's rows leave the batch at once. Without ``early_stop`` every row
  runs all its iterations (the trajectory is the reference's: the pull-back after every adversarial
  iterate, inside ``eps`` or not) and the same first fooling iterate (earliest iteration, then lowest
  row) comes back, so early stopping changes no result;
* **rows**: every (sample, target, restart) is one row of one batch, ``max_rows`` rows at a time,
  instead of the reference's targets and restarts one after another;
* **streams**: each sample draws its random starts from its own stream, so its result does not depend
  on the batch it is in; the reference shares one global stream across the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from robustlab.attacks.autoattack._apgd import FirstFooling, RowLoop, Rows, normalize
from torch import Tensor, nn

from robustlab.attack import misclassified
from robustlab.progress import advance
from robustlab.threat import Norm, perturbation_norm

__all__ = ["FABConfig", "fab", "project_onto_hyperplane"]


@dataclass(frozen=True)
class FABConfig:
    """One FAB run: the reference's constants, with AutoAttack's 100 iterations."""

    norm: Norm
    eps: float
    steps: int = 100
    n_restarts: int = 1
    n_targets: int = 9
    """Targeted: the ``n_targets`` highest-scoring wrong classes of the clean input; 0: untargeted."""
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9


def project_onto_hyperplane(point: Tensor, w: Tensor, b: Tensor, norm: Norm) -> Tensor:
    """Rows ``(R, D)``: the step ``d`` of least ``norm`` with ``w · (point + d) = b`` and ``point + d`` in
    ``[0, 1]``; where the box cannot reach the hyperplane, the step to the box corner that gets closest.

    Both norms reduce to one problem. With the sign of ``w`` chosen so that ``w · point - b = need >= 0``,
    the optimal step moves each coordinate against ``w`` by ``min(level, room_i)`` -- L∞: a common
    distance, L2: ``level · |w_i|`` (the KKT point ``d = -level · w`` clipped to the box) -- until the
    coordinate hits the box at ``room_i``; the step lowers ``w · point`` by ``sum_i weight_i min(level,
    room_i)`` (weight ``|w_i|``, resp. ``w_i²``), which is piecewise linear and nondecreasing in ``level``, so
    the least sufficient level is found exactly on the sorted breakpoints ``room_i``. Coordinates whose
    ``w_i`` vanishes (L2: below ``1e-8``, as in the reference) do not move.
    """
    gap = (w * point).sum(dim=1) - b
    w = torch.where((gap >= 0)[:, None], w, -w)
    need = gap.abs()
    if norm is Norm.LINF:
        moving = w != 0
        weight, direction = w.abs(), w.sign()
        room = torch.where(w > 0, point, 1 - point)
    else:
        moving = w.abs() > 1e-8
        safe = torch.where(moving, w, torch.ones_like(w))
        weight, direction = torch.where(moving, w * w, 0.0), w
        room = torch.where(moving, torch.where(w > 0, point, point - 1) / safe, 0.0)
    level = _least_level(weight, room, need)
    return -direction * torch.minimum(level[:, None], room) * moving


def _least_level(weight: Tensor, room: Tensor, need: Tensor) -> Tensor:
    """Per row, the least ``level >= 0`` with ``sum_i weight_i min(level, room_i) >= need`` (``inf`` if none)."""
    room, order = room.sort(dim=1)
    weight = weight.gather(1, order)
    below = (weight * room).cumsum(dim=1) - weight * room  # from coordinates saturated before breakpoint i
    above = weight.flip(1).cumsum(dim=1).flip(1)  # weight of the coordinates still moving at breakpoint i
    reached = below + above * room  # the sum at level = room_i, nondecreasing in i
    segment = (reached < need[:, None]).sum(dim=1, keepdim=True)
    feasible = segment[:, 0] < room.shape[1]
    segment = segment.clamp(max=room.shape[1] - 1)
    level = (need - below.gather(1, segment)[:, 0]) / above.gather(1, segment)[:, 0].clamp_min(1e-30)
    return torch.where(feasible, level.clamp_min(0.0), torch.inf)


def _size(t: Tensor, norm: Norm) -> Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(dim=1) if norm is Norm.LINF else flat.norm(p=2, dim=1)


def _boundary(model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, norm: Norm) -> tuple[Tensor, Tensor]:
    """``(f, w)``: the linearized boundary ``f + w · (z - x) = 0`` each row moves to.

    Targeted: the target's logit minus the label's, one backward pass. Untargeted: the same for every
    class (one backward pass per class), keeping the class whose boundary is nearest in ``norm``.
    """
    point = x.detach().requires_grad_(True)
    rows = torch.arange(len(x), device=x.device)
    with torch.enable_grad():
        logits = model(point)
        if target is not None:
            f = logits[rows, target] - logits[rows, y]
            (w,) = torch.autograd.grad(f.sum(), point)
            return f.detach(), w
        classes = logits.shape[1]
        grads = [
            torch.autograd.grad(logits[:, k].sum(), point, retain_graph=k < classes - 1)[0] for k in range(classes)
        ]
    logits, jacobian = logits.detach(), torch.stack(grads, dim=1)
    f = logits - logits[rows, y][:, None]
    w = jacobian - jacobian[rows, y][:, None]
    dual = w.flatten(2).abs().sum(dim=2) if norm is Norm.LINF else w.flatten(2).norm(p=2, dim=2)
    distance = f.abs() / (dual + 1e-12)
    distance[rows, y] = torch.inf  # the reference sets the label's f to 1e10: never the nearest
    nearest = distance.argmin(dim=1)
    return f[rows, nearest], w[rows, nearest]


def _step(x1: Tensor, x0: Tensor, f: Tensor, w: Tensor, c: FABConfig) -> Tensor:
    """One FAB update: project the iterate and the clean point onto the boundary, move to their biased mix."""
    n = len(x1)
    w = w.flatten(1)
    b = (w * x1.flatten(1)).sum(dim=1) - f
    steps = project_onto_hyperplane(torch.cat((x1, x0)).flatten(1), torch.cat((w, w)), torch.cat((b, b)), c.norm)
    steps = steps.view(2 * n, *x1.shape[1:])
    sizes = _size(steps, c.norm).clamp_min(1e-8).view(-1, 1, 1, 1)
    alpha = (sizes[:n] / (sizes[:n] + sizes[n:])).clamp(0.0, c.alpha_max)
    return ((x1 + c.eta * steps[:n]) * (1 - alpha) + (x0 + c.eta * steps[n:]) * alpha).clamp(0.0, 1.0)


def fab(model: nn.Module, x: Tensor, y: Tensor, c: FABConfig, loop: RowLoop) -> tuple[Tensor, Tensor]:
    """Run FAB on every sample as ``loop`` says; return ``(x_adv, fooled)``.

    ``x_adv`` is, for a fooled sample, its first iterate within ``eps`` that the scored model (``loop.scored``,
    else ``model``) misclassifies, else ``x``; every (target, restart) of a sample is a row, ``loop.max_rows``
    rows at a time (at least one sample's).
    """
    return loop.by_rows(model, x, y, c.n_targets, c.n_restarts, lambda rows: _fab_rows(model, rows, c, loop))


def _fab_rows(model: nn.Module, chunk: Rows, c: FABConfig, loop: RowLoop) -> tuple[Tensor, Tensor]:
    """FAB on the rows of ``chunk``; a sample stops at its first fooling row."""
    owner = chunk.owner
    x0, yr = chunk.x[owner], chunk.y[owner]
    x1 = x0.clone()
    if c.n_restarts > 1:  # the first restart starts from the clean point, the others at random at radius eps / 2
        start = x0 + c.eps / 2 * normalize(chunk.directions(loop.seed, c.norm), c.norm)
        randomized = (torch.arange(len(owner), device=x0.device) % c.n_restarts > 0).view(-1, 1, 1, 1)
        x1 = torch.where(randomized, start.clamp(0.0, 1.0), x0)
    first = FirstFooling.start(chunk.x, loop.early_stop)

    def record(adversarial: Tensor, x0: Tensor, points: Tensor, owner: Tensor) -> Tensor:
        """Keep the first fooling iterate within eps of each sample not fooled before (its lowest row on a tie);
        return which rows go on."""
        within = perturbation_norm(x0, points, c.norm) <= c.eps
        return first.record(adversarial & within, owner, points)

    with torch.no_grad():
        keep = record(misclassified(model(x1), yr, x1, loop.scored), x0, x1, owner)
    rows: dict[str, Tensor] = {"x0": x0, "y": yr, "owner": owner, "x1": x1}
    if chunk.target is not None:
        rows["target"] = chunk.target
    for i in range(c.steps):
        advance("fab iterations", i, c.steps)
        if not keep.all():
            rows = {name: value[keep] for name, value in rows.items()}
            if not len(rows["y"]):
                break
        f, w = _boundary(model, rows["x1"], rows["y"], rows.get("target"), c.norm)
        x1 = _step(rows["x1"], rows["x0"], f, w, c)
        with torch.no_grad():
            logits = model(x1)
        adversarial = logits.argmax(dim=1) != rows["y"]  # what the walk reacts to: the attacked model's verdict
        keep = record(misclassified(logits, rows["y"], x1, loop.scored), rows["x0"], x1, rows["owner"])
        rows["x1"] = torch.where(adversarial.view(-1, 1, 1, 1), rows["x0"] + (x1 - rows["x0"]) * c.beta, x1)
    return first.result, first.fooled
