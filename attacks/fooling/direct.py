"""Direct encoding of fooling images: one gene per pixel and channel (Nguyen et al., CVPR 2015, §2.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from robustlab.attacks.fooling.evolution import decode_8bit, polynomial_mutation, rand, sbx_crossover
from torch import Tensor

__all__ = ["DirectEncoding"]


@dataclass(frozen=True)
class DirectEncoding:
    """Per-pixel genes in ``[0, 1]``, decoded as 8-bit HLS like the official ``phen_image_direct``.

    Variation as in the official run file (``dl_map_elites_images_imagenet_direct_encoding.cpp``): SBX
    crossover (η_c = 10, pair rate 0.5), then polynomial mutation (η_m = 15) of each gene with probability
    ``mutation_rate``. The paper's schedule halves that rate every ``halve_every`` generations; the official
    code keeps it constant (nothing there changes it), which ``halve_every=0`` reproduces.

    Example:
        >>> enc = DirectEncoding(channels=3, size=8)
        >>> g = torch.Generator().manual_seed(0)
        >>> genomes = enc.random(4, g, torch.device("cpu"))
        >>> enc.render(enc.vary(genomes, genomes, 0, g)).shape
        torch.Size([8, 3, 8, 8])
    """

    channels: int
    size: int
    color: str = "hls"
    mutation_rate: float = 0.1
    halve_every: int = 1000
    eta_m: float = 15.0
    eta_c: float = 10.0
    cross_rate: float = 0.5

    def random(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        """``n`` genomes with uniform genes, as Sferes' ``EvoFloat::random``."""
        return {"genes": rand((n, self.channels, self.size, self.size), generator, device)}

    def rate(self, generation: int) -> float:
        """The per-gene mutation probability at ``generation`` (the paper's halving schedule)."""
        halvings = generation // self.halve_every if self.halve_every > 0 else 0
        return self.mutation_rate * 0.5**halvings

    def vary(
        self, mothers: dict[str, Tensor], fathers: dict[str, Tensor], generation: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Two mutated children per ``(mother, father)`` pair, all first children first."""
        first, second = sbx_crossover(
            mothers["genes"], fathers["genes"], rate=self.cross_rate, eta=self.eta_c, generator=generator
        )
        children = torch.cat([first, second])
        return {"genes": polynomial_mutation(children, rate=self.rate(generation), eta=self.eta_m, generator=generator)}

    def render(self, genomes: dict[str, Tensor]) -> Tensor:
        """Images ``(N, C, size, size)`` in ``[0, 1]``, on 256 levels."""
        return decode_8bit(genomes["genes"], color=self.color)
