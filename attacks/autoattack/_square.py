"""robustlab's own Square Attack (Andriushchenko et al., ECCV 2020, https://arxiv.org/abs/1912.00049).

A score-based random search on the margin ``z_y - max_{k != y} z_k``, with the reference's arithmetic
(the ``autoattack`` package's ``SquareAttack``): L∞ starts from vertical stripes of ``±eps`` and
each step overwrites one square window with one ``±2 eps`` colour per channel, projected back;
L2 starts from a 5x5 grid of "meta-pseudo-gaussian" ``eta`` windows with random signs, and each step
moves the mass of a second window into the first, rebuilt as ``±eta`` plus the first window's old
content, the whole perturbation kept on the sphere of radius ``eps``. The fraction ``p`` of pixels a
window covers halves on the reference's schedule (``p_selection``, optionally stretched to
``n_queries``). A candidate replaces a sample's best point when its margin is lower; a sample stops
querying once its margin is <= 0, and only samples the clean input classifies correctly are queried.

Deviation from the reference: every random draw (the start, window positions, signs, the ``eta``
transposition) comes from the sample's own stream, seeded by ``seed`` and the sample's index, so a
sample's result does not depend on the other samples of its batch. The reference draws one window
position per iteration for the whole batch; per sample, the law of the draws is the reference's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustlab.errors import ConfigError
from robustlab.progress import advance
from robustlab.seeding import stream_seed
from robustlab.threat import Norm

__all__ = ["SquareConfig", "eta", "margin", "p_selection", "square_attack", "window_side"]

CHUNK = 100
"""Iterations whose uniform numbers a sample draws at once from its stream."""


@dataclass(frozen=True)
class SquareConfig:
    """One Square Attack run; the defaults are the reference's."""

    norm: Norm
    eps: float
    n_queries: int = 5000
    """Iterations per restart after the random start (the reference's count)."""
    n_restarts: int = 1
    p_init: float = 0.8
    rescale_schedule: bool = True


def p_selection(c: SquareConfig, iteration: int) -> float:
    """The fraction of pixels a window covers at ``iteration``: ``p_init``, halved after each of the reference's
    iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (out of 10000: with ``rescale_schedule``,
    the iteration is first mapped from ``n_queries`` to 10000)."""
    it = int(iteration / c.n_queries * 10000) if c.rescale_schedule else iteration
    halvings = sum(it > bound for bound in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return c.p_init / 2**halvings


def window_side(c: SquareConfig, iteration: int, height: int, width: int) -> int:
    """The side of the square window: ``sqrt(p * H * W)`` rounded, at least 1 (L∞) or odd and at least 3 (L2)."""
    side = round(math.sqrt(p_selection(c, iteration) * height * width))
    if c.norm is Norm.L2:
        side = max(side, 3)
        side += 1 - side % 2
    return min(max(side, 1), height, width)


def _stream(seed: int, index: int, restart: int, block: int, shape: tuple[int, ...]) -> Tensor:
    """Uniform numbers in [0, 1) of one block of one sample's stream: the same whatever batch it is in."""
    generator = torch.Generator().manual_seed(stream_seed(seed, f"square/s{index}/r{restart}/b{block}"))
    return torch.rand(shape, generator=generator)


def _draws(seed: int, owners: list[int], restart: int, block: int, shape: tuple[int, ...], x: Tensor) -> Tensor:
    """``(len(owners), *shape)``: block ``block`` of each owner's stream, on ``x``'s device."""
    if not owners:
        return x.new_empty((0, *shape))
    return torch.stack([_stream(seed, i, restart, block, shape) for i in owners]).to(x)


def _signs(u: Tensor) -> Tensor:
    """±1 from uniform numbers, each sign with probability 1/2."""
    return torch.where(u < 0.5, -1.0, 1.0).to(u)


def _corner(u: Tensor, side: int, size: int) -> Tensor:
    """A window's first row (column): uniform over ``0 .. size - side - 1``, as the reference draws it."""
    return (u * (size - side)).long().clamp(0, max(size - side - 1, 0))


def _window_mask(top: Tensor, left: Tensor, side: int, height: int, width: int) -> Tensor:
    """``(N, 1, H, W)`` float mask of each sample's ``side``-square window at ``(top, left)``."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return (in_rows[:, None, :, None] & in_cols[:, None, None, :]).float()


def margin(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The label's logit minus the highest other one (<= 0: misclassified), per sample."""
    logits = model(x)
    label = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return label - other


def _l2_normalize(t: Tensor) -> Tensor:
    return t / (t.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)


def _rectangles(rows: int, cols: int) -> Tensor:
    """Concentric rectangles centred in a ``rows x cols`` window, ring ``k`` weighing ``1 / (k + 1)^2``; unit norm."""
    weights = torch.zeros(rows, cols, dtype=torch.float64)
    top, left = rows // 2, cols // 2
    for ring in range(max(top, left) + 1):
        weights[max(top - ring, 0) : top + ring + 1, max(left - ring, 0) : left + ring + 1] += 1.0 / (ring + 1) ** 2
    return weights / weights.norm()


def eta(side: int) -> Tensor:
    """The reference's L2 window pattern: ``+`` rectangles on the top half, ``-`` on the bottom, unit L2 norm."""
    half = side // 2
    pattern = torch.cat([_rectangles(half, side), -_rectangles(side - half, side)])
    return (pattern / pattern.norm()).float()


def _etas(u: Tensor, side: int) -> Tensor:
    """``(N, side, side)``: ``eta(side)``, transposed where ``u > 0.5`` (the reference's coin)."""
    pattern = eta(side).to(u.device)
    return torch.where((u > 0.5).view(-1, 1, 1), pattern.t(), pattern)


def _place(patterns: Tensor, top: Tensor, left: Tensor, height: int, width: int) -> Tensor:
    """``(N, 1, H, W)``: each ``(side, side)`` pattern at its sample's window, zero elsewhere."""
    side = patterns.shape[1]
    local_rows = torch.arange(height, device=top.device) - top[:, None]  # (N, H)
    local_cols = torch.arange(width, device=top.device) - left[:, None]
    rows = patterns.gather(1, local_rows.clamp(0, side - 1)[:, :, None].expand(-1, -1, side))  # (N, H, side)
    full = rows.gather(2, local_cols.clamp(0, side - 1)[:, None, :].expand(-1, height, -1))  # (N, H, W)
    inside = ((local_rows >= 0) & (local_rows < side))[:, :, None] & ((local_cols >= 0) & (local_cols < side))[:, None]
    return (full * inside)[:, None]


def _linf_start(x: Tensor, eps: float, u: Tensor) -> Tensor:
    """Vertical stripes: one ``±eps`` per channel and column."""
    return (x + eps * _signs(u).view(len(x), x.shape[1], 1, x.shape[3])).clamp(0.0, 1.0)


def _l2_start(x: Tensor, eps: float, u: Tensor) -> Tensor:
    """A grid of ``±eta`` windows of side ``H // 5`` (one coin and one sign per channel per window), on the sphere."""
    n, channels, height, width = x.shape
    side, offset = height // 5, (height - height // 5 * 5) // 2
    cells = [(offset + i * side, offset + j * side) for i in range(height // side) for j in range(width // side)]
    u = u.view(n, len(cells), 1 + channels)
    delta = torch.zeros_like(x)
    for k, (top, left) in enumerate(cells):
        window = _etas(u[:, k, 0], side)[:, None] * _signs(u[:, k, 1:]).view(n, channels, 1, 1)
        rows, cols = delta[:, :, top : top + side, left : left + side].shape[2:]
        delta[:, :, top : top + rows, left : left + cols] += window[:, :, :rows, :cols]
    return (x + eps * _l2_normalize(delta)).clamp(0.0, 1.0)


def _l2_cells(height: int, width: int) -> int:
    side = height // 5
    return (height // side) * (width // side)


def _linf_candidate(x: Tensor, best: Tensor, u: Tensor, side: int, eps: float) -> Tensor:
    """``best`` with one window set to ``x ± 2 eps`` per channel, projected onto the budget and the box."""
    channels, height, width = x.shape[1:]
    mask = _window_mask(_corner(u[:, 0], side, height), _corner(u[:, 1], side, width), side, height, width)
    step = 2.0 * eps * _signs(u[:, 2 : 2 + channels]).view(-1, channels, 1, 1)
    candidate = best + mask * step
    return torch.min(torch.max(candidate, x - eps), x + eps).clamp(0.0, 1.0)


def _l2_candidate(x: Tensor, best: Tensor, u: Tensor, side: int, eps: float) -> Tensor:
    """``best`` with window 2 emptied into window 1, rebuilt as ``±eta`` plus its old direction (the L2 step)."""
    channels, height, width = x.shape[1:]
    delta = best - x
    top, left = _corner(u[:, 0], side, height), _corner(u[:, 1], side, width)
    first = _window_mask(top, left, side, height, width)
    second = _window_mask(_corner(u[:, 2], side, height), _corner(u[:, 3], side, width), side, height, width)

    def channel_norms(t: Tensor) -> Tensor:
        return t.square().sum(dim=(2, 3), keepdim=True).sqrt()

    image_norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    windows_norm = channel_norms(delta * torch.max(first, second))
    old = delta * first / (1e-12 + channel_norms(delta * first))
    new = _place(_etas(u[:, 4], side), top, left, height, width) * _signs(u[:, 5 : 5 + channels]).view(
        -1, channels, 1, 1
    )
    new = new + old
    budget = ((eps**2 - image_norm.square()).clamp(min=0.0) / channels + windows_norm.square()).sqrt()
    new = new / (1e-12 + channel_norms(new)) * budget
    delta = torch.where(first.bool(), new, delta * (1.0 - second))
    return (x + eps * _l2_normalize(delta)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class _Scheme:
    """A norm's start and proposal steps, and how many uniform numbers each draws per sample."""

    start: Callable[[Tensor, float, Tensor], Tensor]
    candidate: Callable[[Tensor, Tensor, Tensor, int, float], Tensor]
    start_draws: int
    step_draws: int

    @classmethod
    def of(cls, norm: Norm, channels: int, height: int, width: int) -> _Scheme:
        """The scheme of ``norm`` on images of that shape; Square has one for L∞ and L2 (on at least 5x5 pixels)."""
        if norm is Norm.L2 and min(height, width) < 5:
            raise ConfigError(f"Square L2 needs images of at least 5x5 pixels, got {height}x{width}")
        if norm is Norm.LINF:
            return cls(_linf_start, _linf_candidate, channels * width, 2 + channels)
        if norm is Norm.L2:
            return cls(_l2_start, _l2_candidate, _l2_cells(height, width) * (1 + channels), 5 + channels)
        raise ConfigError(f"Square supports linf and l2, got {norm}")


def _fooled(scored: nn.Module | None, points: Tensor, labels: Tensor, margins: Tensor) -> Tensor:
    """Whether ``points`` fool the scored model: by their ``margins`` on the attacked one, or ``scored``'s verdict."""
    if scored is None or not len(points):
        return margins <= 0
    return scored(points).argmax(dim=1) != labels


@dataclass
class _Best:
    """Each queried sample's best point so far, its margin, and whether it fools the scored model."""

    point: Tensor
    margin: Tensor
    fooled: Tensor

    @classmethod
    def at(cls, model: nn.Module, point: Tensor, y: Tensor, scored: nn.Module | None) -> _Best:
        """The start ``point`` of samples labelled ``y``, scored."""
        point_margin = margin(model, point, y)
        return cls(point, point_margin, _fooled(scored, point, y, point_margin))

    def accept(
        self, live: Tensor, proposal: Tensor, proposal_margin: Tensor, y: Tensor, scored: nn.Module | None
    ) -> None:
        """Replace the point of each ``live`` row whose ``proposal`` has a lower margin (``y``: every row's label)."""
        better = proposal_margin < self.margin[live]
        self.point[live[better]] = proposal[better]
        self.margin[live[better]] = proposal_margin[better]
        self.fooled[live[better]] = _fooled(scored, proposal[better], y[live[better]], proposal_margin[better])


def square_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    c: SquareConfig,
    *,
    seed: int,
    index: Tensor | None = None,
    scored: nn.Module | None = None,
) -> Tensor:
    """Run Square on every sample; return ``x_adv``: a fooled sample's first point with margin <= 0, else ``x``.

    ``index`` numbers the samples for their random streams (default ``0..B-1``). With ``scored`` (the model
    scored, when it is not ``model``) a sample is fooled, and stops, at its first point ``scored`` misclassifies:
    one more forward pass of ``scored`` per accepted proposal.
    """
    channels, height, width = x.shape[1:]
    scheme = _Scheme.of(c.norm, channels, height, width)
    owners = (torch.arange(len(x)) if index is None else index.cpu()).tolist()
    result = x.clone()
    with torch.no_grad():
        todo = (~_fooled(scored, x, y, margin(model, x, y))).nonzero().flatten()
        for restart in range(c.n_restarts):
            if not len(todo):
                break
            rows = todo.tolist()
            xa, ya = x[todo], y[todo]
            u = _draws(seed, [owners[i] for i in rows], restart, -1, (scheme.start_draws,), x)
            best = _Best.at(model, scheme.start(xa, c.eps, u), ya, scored)
            live = torch.arange(len(rows), device=x.device)  # rows of ``xa`` still querying
            uniforms = x.new_empty((0, CHUNK, scheme.step_draws))
            for i in range(c.n_queries + 1):
                advance("square queries", restart * c.n_queries + i, c.n_restarts * c.n_queries)
                done = live[best.fooled[live]]
                if len(done):
                    result[todo[done]] = best.point[done]
                    keep = ~best.fooled[live]
                    live, uniforms = live[keep], uniforms[keep] if i % CHUNK else uniforms
                if not len(live) or i == c.n_queries:
                    break
                if i % CHUNK == 0:
                    block = (min(CHUNK, c.n_queries - i), scheme.step_draws)
                    uniforms = _draws(seed, [owners[rows[j]] for j in live.tolist()], restart, i // CHUNK, block, x)
                side = window_side(c, i, height, width)
                proposal = scheme.candidate(xa[live], best.point[live], uniforms[:, i % CHUNK], side, c.eps)
                best.accept(live, proposal, margin(model, proposal, ya[live]), ya, scored)
            todo = todo[~best.fooled]
    return result
