"""Variation operators and colour decoding shared by the fooling-image encodings, vectorised over a population.

The operators follow Sferes' ``EvoFloat`` (Deb's polynomial mutation and simulated binary crossover on genes in
``[0, 1]``), which is what the official fooling-images code (Evolving-AI-Lab/fooling) evolves. Every random draw
comes from the caller's generator, on the generator's device, so a seed fixes the run bit for bit.
"""

from __future__ import annotations

import math

import kornia
import torch
from torch import Tensor

__all__ = ["decode_8bit", "pick_uniform", "polynomial_mutation", "quantize_8bit", "rand", "sbx_crossover"]


def rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform ``[0, 1)`` draws from ``generator`` (on its own device), moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def polynomial_mutation(
    genes: Tensor, *, rate: float | Tensor, eta: float, generator: torch.Generator, where: Tensor | None = None
) -> Tensor:
    """Deb's polynomial mutation as Sferes applies it: each gene mutates with probability ``rate``.

    ``δ = (2r)^(1/(η+1)) − 1`` for ``r < 0.5``, else ``1 − (2(1−r))^(1/(η+1))``; the gene becomes
    ``clip(gene + δ, 0, 1)``. ``where`` (broadcastable bool) restricts mutation to existing genes.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = polynomial_mutation(torch.full((4, 8), 0.5), rate=1.0, eta=15.0, generator=g)
        >>> bool(((x >= 0) & (x <= 1)).all()) and bool((x != 0.5).all())
        True
    """
    chosen = rand(tuple(genes.shape), generator, genes.device) < rate
    r = rand(tuple(genes.shape), generator, genes.device)
    power = 1.0 / (eta + 1.0)
    delta = torch.where(r < 0.5, (2 * r).pow(power) - 1, 1 - (2 * (1 - r)).pow(power))
    if where is not None:
        chosen = chosen & where
    return torch.where(chosen, (genes + delta).clamp(0, 1), genes)


def sbx_crossover(
    mothers: Tensor, fathers: Tensor, *, rate: float, eta: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Simulated binary crossover (Deb & Agrawal 1995) in Sferes' form, one pair per leading index.

    A pair crosses with probability ``rate``; then every gene where the parents differ gets Deb's two children
    values (one uniform draw per gene shared by both, bounds ``[0, 1]``), each child taking either at random.
    Genes where the parents agree stay as they are. A pair that does not cross yields copies of its parents
    in random order.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.zeros(3, 5), torch.ones(3, 5)
        >>> c, d = sbx_crossover(a, b, rate=1.0, eta=10.0, generator=g)
        >>> bool(torch.allclose(c + d, a + b))
        True
    """
    n, device = mothers.shape[0], mothers.device
    per_pair = (n,) + (1,) * (mothers.dim() - 1)
    cross = rand(per_pair, generator, device) < rate
    swap_pair = rand(per_pair, generator, device) < 0.5
    r = rand(tuple(mothers.shape), generator, device)
    swap_gene = rand(tuple(mothers.shape), generator, device) < 0.5
    low, high = torch.minimum(mothers, fathers), torch.maximum(mothers, fathers)
    gap = high - low
    differ = gap > torch.finfo(mothers.dtype).eps
    gap = torch.where(differ, gap, torch.ones_like(gap))
    exponent = 1.0 / (eta + 1.0)

    def spread(beta: Tensor) -> Tensor:
        alpha = 2.0 - beta.pow(-(eta + 1.0))
        return torch.where(r <= 1.0 / alpha, (r * alpha).pow(exponent), (1.0 / (2.0 - r * alpha)).pow(exponent))

    child_low = (0.5 * ((low + high) - spread(1.0 + 2.0 * low / gap) * gap)).clamp(0, 1)
    child_high = (0.5 * ((low + high) + spread(1.0 + 2.0 * (1.0 - high) / gap) * gap)).clamp(0, 1)
    first = torch.where(swap_gene, child_high, child_low)
    second = torch.where(swap_gene, child_low, child_high)
    first, second = torch.where(differ, first, mothers), torch.where(differ, second, fathers)
    copy_first = torch.where(swap_pair, fathers, mothers)
    copy_second = torch.where(swap_pair, mothers, fathers)
    return torch.where(cross, first, copy_first), torch.where(cross, second, copy_second)


def pick_uniform(allowed: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One index per row, uniform over the row's ``True`` entries; also whether the row had any.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> pick_uniform(torch.tensor([[False, True, False], [False, False, False]]), g)
        (tensor([1, 0]), tensor([ True, False]))
    """
    scores = torch.where(allowed, rand(tuple(allowed.shape), generator, allowed.device), -1.0)
    return scores.argmax(dim=1), allowed.any(dim=1)


def decode_8bit(values: Tensor, *, color: str) -> Tensor:
    """Turn network outputs or genes (``(N, 3 or 1, H, W)``, any sign) into ``[0, 1]`` 8-bit images.

    As the official phenotypes do, each value becomes ``int(|v| · 255)``. With ``color="hls"`` the three
    channels are OpenCV 8-bit H, L, S, converted to RGB: OpenCV reads an 8-bit hue as half-degrees, so hue
    values above 180 wrap round the colour circle (the code writes up to 255). ``color="rgb"`` uses the
    values as RGB directly; one channel is grey.
    """
    levels = torch.floor(values.abs().clamp(max=1.0) * 255)
    if color == "rgb" or values.shape[1] == 1:
        return levels / 255
    hue = levels[:, :1] * (2.0 * math.pi / 180.0)
    hls = torch.cat([hue, levels[:, 1:] / 255], dim=1)
    return quantize_8bit(kornia.color.hls_to_rgb(hls).clamp(0, 1))


def quantize_8bit(images: Tensor) -> Tensor:
    """Round ``[0, 1]`` images to the nearest of 256 levels, so that a PNG stores them exactly."""
    return torch.round(images.clamp(0, 1) * 255) / 255
