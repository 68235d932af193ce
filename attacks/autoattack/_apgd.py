"""robustlab's own APGD loop (Croce & Hein, ICML 2020), shared by ``apgd``, ``apgdt`` and the AutoAttack versions.

The arithmetic follows the reference implementation (the ``autoattack`` package): a random start on the
sphere of radius ``eps``, a first step of ``2 eps``, momentum 0.75, and checkpoints after 22% of the
iterations, then every 3% fewer down to 6%, where a sample whose loss rose in at most ``rho`` of the
steps since the last checkpoint (or that did not improve and was not halved last time) halves its
step and restarts from its best point. Everything but the checkpoint schedule is per sample, so a
sample's trajectory does not depend on the others in the batch. That is what makes two savings exact:

* **early stop**: a sample leaves the batch at the first iterate the model misclassifies, keeping it;
* **runs as rows**: every (sample, target class, restart) is one row of a single batch, and a sample
  stops at the first of its rows that fools the model, instead of running the targets one after another.

Each sample draws its random starts from its own stream (``seed`` and its index), so neither the batch
it is in nor early stopping changes its result: without ``early_stop`` the loop runs every row for
all its iterations and returns, per sample, the same first fooling iterate (earliest iteration, then
lowest row) that the early-stopping run stops at. The reference instead returns the *last* fooling
iterate of its *first* successful target and shares one stream across the batch; which samples are
fooled is the same in law, which is what robust accuracy measures.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from robustlab.attacks._torchattacks import num_classes_of, stream_ids
from torch import Tensor, nn

from robustlab.attack import Attack, CallContext, misclassified
from robustlab.errors import ConfigError
from robustlab.progress import advance
from robustlab.threat import Norm

__all__ = [
    "APGDAttack",
    "APGDConfig",
    "FirstFooling",
    "RowLoop",
    "RowLoopAttack",
    "Rows",
    "apgd",
    "best_rows_per_sample",
    "dlr_loss",
    "keep_first",
    "normalize",
    "sample_streams",
    "targeted_dlr_loss",
    "top_targets",
]


@dataclass(frozen=True)
class APGDConfig:
    """One APGD run: the reference's defaults are those of AutoAttack's standard version."""

    norm: Norm
    eps: float
    steps: int = 100
    loss: str = "ce"
    """``ce``, ``dlr`` (untargeted) or ``dlr-targeted`` (needs at least 4 classes)."""
    n_restarts: int = 1
    n_targets: int = 0
    """Targeted only: the ``n_targets`` highest-scoring wrong classes of the clean input, 2nd to (n+1)th."""
    eot: int = 1
    """Gradients averaged over this many forward passes (Expectation over Transformation, randomized models)."""
    rho: float = 0.75
    focus: int = 0
    """At the first checkpoint each sample keeps only its ``focus`` rows (target, restart) with the highest loss so
    far (0 keeps all): the remaining iterations go to the runs that moved most, not to all (``autoattack-fast``)."""


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Difference of Logits Ratio, per sample: shift- and scale-invariant, so it survives logit rescaling.

    Untargeted: ``target`` is ignored."""
    ranked = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    top_is_y = logits.argmax(dim=1) == y
    z_other = torch.where(top_is_y, ranked[:, -2], ranked[:, -1])
    return -(z_y - z_other) / (ranked[:, -1] - ranked[:, -3] + 1e-12)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR: pull the target's logit above the label's, scaled by the gap between the top logits."""
    ranked = logits.sort(dim=1).values
    gap = logits.gather(1, y[:, None])[:, 0] - logits.gather(1, target[:, None])[:, 0]
    return -gap / (ranked[:, -1] - 0.5 * (ranked[:, -3] + ranked[:, -4]) + 1e-12)


def _ce_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "ce": _ce_loss,
    "dlr": dlr_loss,
    "dlr-targeted": targeted_dlr_loss,
}


def top_targets(model: nn.Module, x: Tensor, n_targets: int) -> Tensor:
    """``(B, n_targets)``: the 2nd, 3rd, ... highest-scoring classes of the clean input, as the reference picks them."""
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)
    return order[:, 1 : n_targets + 1]


def sample_streams(seed: int, index: Tensor, shape: tuple[int, ...], norm: Norm, runs: int) -> Tensor:
    """``(len(index) * runs, *shape)`` start directions, ``runs`` per sample, each sample from its own stream."""
    draws = []
    for i in index.tolist():
        generator = torch.Generator().manual_seed((seed * 1_000_003 + i) % 2**63)
        if norm is Norm.LINF:
            draws.append(torch.rand((runs, *shape), generator=generator) * 2 - 1)
        else:
            draws.append(torch.randn((runs, *shape), generator=generator))
    return torch.cat(draws) if draws else torch.empty((0, *shape))


def normalize(t: Tensor, norm: Norm) -> Tensor:
    flat = t.flatten(1)
    size = flat.abs().amax(dim=1) if norm is Norm.LINF else flat.norm(p=2, dim=1)
    return t / (size.view(-1, 1, 1, 1) + 1e-12)


def _project(x: Tensor, point: Tensor, norm: Norm, eps: float) -> Tensor:
    """The reference's projection onto the eps-ball around ``x`` and the [0, 1] box."""
    if norm is Norm.LINF:
        return torch.clamp(torch.min(torch.max(point, x - eps), x + eps), 0.0, 1.0)
    delta = point - x
    length = delta.flatten(1).norm(p=2, dim=1).view(-1, 1, 1, 1)
    return torch.clamp(x + normalize(delta, norm) * torch.clamp(length, max=eps), 0.0, 1.0)


def _step(
    x: Tensor, x_adv: Tensor, previous: Tensor, grad: Tensor, step: Tensor, momentum: float, c: APGDConfig
) -> Tensor:
    """One APGD update: a projected gradient step, then momentum towards the previous move, projected again."""
    direction = grad.sign() if c.norm is Norm.LINF else normalize(grad, c.norm)
    z = _project(x, x_adv + step * direction, c.norm, c.eps)
    return _project(x, x_adv + (z - x_adv) * momentum + (x_adv - previous) * (1 - momentum), c.norm, c.eps)


def _loss_and_grad(
    model: nn.Module, x_adv: Tensor, y: Tensor, target: Tensor, c: APGDConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """``(logits, per-sample loss, gradient)``; the gradient averaged over ``c.eot`` draws, the rest from the last."""
    grad = torch.zeros_like(x_adv)
    for _ in range(c.eot):
        point = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(point)
            loss = LOSSES[c.loss](logits, y, target)
            (g,) = torch.autograd.grad(loss.sum(), point)
        grad += g
    return logits.detach(), loss.detach(), grad / c.eot


def apgd(model: nn.Module, x: Tensor, y: Tensor, c: APGDConfig, loop: RowLoop) -> tuple[Tensor, Tensor]:
    """Run APGD on every sample as ``loop`` says; return ``(x_adv, fooled)``.

    ``x_adv`` is, for a fooled sample, the first iterate that fooled the scored model (``loop.scored``, else
    ``model``), else ``x``; every (restart, target) of a sample is a row, ``loop.max_rows`` rows at a time (at
    least one sample's).
    """
    needed = {"dlr": 3, "dlr-targeted": 4}.get(c.loss, 2)  # the DLR denominator reads the 3rd (4th) logit
    if len(x) and (classes := num_classes_of(model, x)) < needed:
        raise ConfigError(f"APGD's {c.loss} loss needs a model with at least {needed} classes, this one has {classes}")
    return loop.by_rows(model, x, y, c.n_targets, c.n_restarts, lambda rows: _apgd_rows(model, rows, c, loop))


@dataclass(frozen=True)
class Rows:
    """The samples one call of a row loop attacks, ``runs`` rows each (targets outer, restarts inner)."""

    x: Tensor
    y: Tensor
    target: Tensor | None
    """Each row's target class; ``None``: untargeted."""
    index: Tensor
    """The samples' stream ids."""
    runs: int

    @property
    def owner(self) -> Tensor:
        """The sample each row attacks (rows of a sample are adjacent and in order)."""
        return torch.arange(len(self.x), device=self.x.device).repeat_interleave(self.runs)

    def directions(self, seed: int, norm: Norm) -> Tensor:
        """Each row's random start direction, drawn from its sample's stream."""
        return sample_streams(seed, self.index, tuple(self.x.shape[1:]), norm, self.runs).to(self.x)


@dataclass(frozen=True)
class RowLoop:
    """How one call runs a row loop (:func:`apgd`, :func:`robustlab.attacks.autoattack._fab.fab`): ``seed`` and
    ``index`` (default ``0..B-1``) name each sample's random stream, ``max_rows`` bounds the rows differentiated at
    once, and ``scored`` is the model whose first misclassified iterate is kept, when it is not the attacked one."""

    seed: int
    early_stop: bool
    max_rows: int
    index: Tensor | None = None
    scored: nn.Module | None = None

    def by_rows(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        n_targets: int,
        n_restarts: int,
        attack_rows: Callable[[Rows], tuple[Tensor, Tensor]],
    ) -> tuple[Tensor, Tensor]:
        """``(x_adv, fooled)`` from ``attack_rows`` on the samples, as many at a time as ``max_rows`` rows allow (at
        least one): each (target, restart) of a sample is a row, the targets its ``n_targets`` runner-up classes."""
        index = torch.arange(len(x)) if self.index is None else self.index.cpu()
        targets = top_targets(model, x, n_targets) if n_targets else None  # fewer on a model with few classes
        runs = n_restarts * (1 if targets is None else targets.shape[1])
        per_chunk = max(1, self.max_rows // runs)
        x_adv, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for start in range(0, len(x), per_chunk):
            part = slice(start, start + per_chunk)
            row_targets = None if targets is None else targets[part].repeat_interleave(n_restarts, dim=1).flatten()
            x_adv[part], fooled[part] = attack_rows(Rows(x[part], y[part], row_targets, index[part], runs))
        return x_adv, fooled


@dataclass
class FirstFooling:
    """Each sample's first fooling iterate (its lowest row on a tie), gathered as a row loop finds them."""

    result: Tensor
    """Per sample: its first fooling iterate, else its clean point."""
    fooled: Tensor
    early_stop: bool

    @classmethod
    def start(cls, x: Tensor, early_stop: bool) -> FirstFooling:
        """Nothing fooled yet among the samples ``x``."""
        return cls(x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device), early_stop)

    def record(self, new: Tensor, owner: Tensor, points: Tensor) -> Tensor:
        """Keep the point of each sample's first row that ``new`` says fools (if none did before); return which
        rows go on: all of them, or with early stop those of samples still not fooled."""
        keep_first(new & ~self.fooled[owner], owner, points, self.result, self.fooled)
        return ~self.fooled[owner] if self.early_stop else torch.ones_like(new)


def keep_first(new: Tensor, owner: Tensor, points: Tensor, result: Tensor, fooled: Tensor) -> None:
    """For each sample with ``new`` fooling rows, store the point of its lowest such row in ``result`` and mark it
    ``fooled`` (rows of a sample are adjacent and in order)."""
    if new.any():
        rows = new.nonzero().flatten()
        first = torch.ones_like(rows, dtype=torch.bool)
        first[1:] = owner[rows[1:]] != owner[rows[:-1]]
        rows = rows[first]
        result[owner[rows]], fooled[owner[rows]] = points[rows], True


def best_rows_per_sample(owner: Tensor, score: Tensor, k: int = 1) -> Tensor:
    """Mask of each sample's ``k`` rows with the highest ``score`` (the lower rows first on a tie; rows of a
    sample are adjacent and in order)."""
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(owner[order], stable=True)]  # by sample, each sample's best first
    grouped = owner[order]
    rank = torch.arange(len(order), device=owner.device) - torch.searchsorted(grouped, grouped)
    best = torch.zeros_like(score, dtype=torch.bool)
    best[order[rank < k]] = True
    return best


def _apgd_rows(model: nn.Module, chunk: Rows, c: APGDConfig, loop: RowLoop) -> tuple[Tensor, Tensor]:
    """APGD on the rows of ``chunk``; a sample stops at its first fooling row."""
    owner = chunk.owner
    xr, yr = chunk.x[owner], chunk.y[owner]
    target = yr if chunk.target is None else chunk.target  # untargeted losses ignore it
    x_adv = (xr + c.eps * normalize(chunk.directions(loop.seed, c.norm), c.norm)).clamp(0.0, 1.0)
    first = FirstFooling.start(chunk.x, loop.early_stop)
    logits, loss, grad = _loss_and_grad(model, x_adv, yr, target, c)
    keep = first.record(misclassified(logits, yr, x_adv, loop.scored), owner, x_adv)
    r = _row_state(xr, yr, target, owner, x_adv, loss, grad, c)
    checkpoint, since = max(int(0.22 * c.steps), 1), 0
    focus_at = checkpoint - 1 if c.focus > 0 else -1
    shrink, shortest = max(int(0.03 * c.steps), 1), max(int(0.06 * c.steps), 1)
    for i in range(c.steps):
        advance(f"apgd-{c.loss} iterations", i, c.steps)
        if not keep.all():
            r = {name: value[keep] for name, value in r.items()}
            if not len(r["y"]):
                break
        previous = r["x_adv"]
        r["x_adv"] = _step(r["x"], r["x_adv"], r["previous"], r["grad"], r["step"], 0.75 if i > 0 else 1.0, c)
        r["previous"] = previous
        logits, loss, r["grad"] = _loss_and_grad(model, r["x_adv"], r["y"], r["target"], c)
        keep = first.record(misclassified(logits, r["y"], r["x_adv"], loop.scored), r["owner"], r["x_adv"])
        _track_best(r, i, loss)
        since += 1
        if since == checkpoint:
            _halve_stalled(r, i, checkpoint, c)
            if i == focus_at:
                keep &= best_rows_per_sample(r["owner"], r["loss_best"], c.focus)
            checkpoint, since = max(checkpoint - shrink, shortest), 0
    return first.result, first.fooled


def _row_state(
    xr: Tensor, yr: Tensor, target: Tensor, owner: Tensor, x_adv: Tensor, loss: Tensor, grad: Tensor, c: APGDConfig
) -> dict[str, Tensor]:
    """The loop's per-row state at the random start ``x_adv`` (its ``loss`` and ``grad``).

    Each entry is indexed by row along dim 0, so that stopped rows leave all of it at once. The loss
    history is the reference's: ``steps`` entries, zero-filled, so that its first checkpoint compares
    iteration 0 with a zero (index -1) -- a quirk kept because it decides the step-size schedule.
    """
    return {
        "x": xr, "y": yr, "target": target, "owner": owner, "x_adv": x_adv, "previous": x_adv.clone(),
        "grad": grad, "x_best": x_adv.clone(), "grad_best": grad.clone(), "loss_best": loss,
        "step": torch.full((len(xr), 1, 1, 1), 2.0 * c.eps, device=xr.device),
        "history": torch.zeros((len(xr), c.steps), device=xr.device),
        "last_best": loss.clone(), "halved_last": torch.ones(len(xr), dtype=torch.bool, device=xr.device),
    }  # fmt: skip


def _track_best(r: dict[str, Tensor], i: int, loss: Tensor) -> None:
    """Log iteration ``i``'s loss of each row and keep its best point so far, with that point's gradient."""
    r["history"][:, i] = loss
    better = loss > r["loss_best"]
    r["x_best"][better], r["grad_best"][better] = r["x_adv"][better], r["grad"][better]
    r["loss_best"][better] = loss[better]


def _halve_stalled(r: dict[str, Tensor], i: int, length: int, c: APGDConfig) -> None:
    """The checkpoint at iteration ``i``, ``length`` iterations after the last: a row whose loss rose in at most
    ``rho`` of them, or that did not improve and was not halved last time, halves its step and restarts from
    its best point."""
    history = r["history"]
    rises = sum((history[:, i - j] > history[:, i - j - 1]).float() for j in range(length))
    halve = (rises <= length * c.rho) | (~r["halved_last"] & (r["last_best"] >= r["loss_best"]))
    r["halved_last"], r["last_best"] = halve, r["loss_best"].clone()
    r["step"][halve] /= 2.0
    r["x_adv"][halve], r["grad"][halve] = r["x_best"][halve], r["grad_best"][halve]


class RowLoopAttack(Attack):
    """Base of the attacks on a per-sample row loop (APGD here, FAB in :mod:`robustlab.attacks.autoattack._fab`):
    subclasses have ``eps`` and ``norm`` fields (their threat model) and run the loop in :meth:`_attack`."""

    early_stopping = True
    tracks_scored = True
    per_sample_streams = True
    max_rows: int | None = None
    """The most rows (sample x target x restart) differentiated at once; ``None``: as many as the batch has
    samples, so that the caller's batch size bounds the memory, whatever the number of targets."""

    @abstractmethod
    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, loop: RowLoop) -> Tensor:
        """Run the loop as ``loop`` says."""

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        seed, index = stream_ids(context.generator, context.sample_seeds)
        rows = self.max_rows or len(x)
        loop = RowLoop(seed, context.early_stop, rows, index=index, scored=context.scored)
        return self._attack(model, x, y, loop)


class APGDAttack(RowLoopAttack):
    """Base of the attacks on this loop: subclasses say which run :meth:`settings` is."""

    @abstractmethod
    def settings(self) -> APGDConfig:
        """The loop's configuration for this attack."""

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, loop: RowLoop) -> Tensor:
        return apgd(model, x, y, self.settings(), loop)[0]
