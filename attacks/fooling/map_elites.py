"""MAP-Elites over a classifier's classes, as the fooling-images code runs it (``modules/map_elite/map_elite.hpp``).

The archive has one cell per class. A cell keeps the best image seen so far *for that class*: a new image
replaces the occupant of every cell ``j`` whose confidence ``p_j`` it beats, so one individual may hold many
cells. Each generation draws ``population / 2`` parent pairs uniformly from the occupied cells (an individual
holding ``m`` cells is drawn ``m`` times as often, as in the official pool of cell occupants), makes two
children per pair, scores all children in one batched call and offers each to the archive.

MAP-Elites: Mouret & Clune, "Illuminating search spaces by mapping elites", https://arxiv.org/abs/1504.04909.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from robustlab.attacks.fooling.evolution import rand
from torch import Tensor

__all__ = ["Archive", "Encoding", "MapElites"]


class Encoding(Protocol):
    """How genomes are made, varied and drawn; a genome batch is a dict of tensors with a leading batch dim."""

    def random(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, Tensor]: ...

    def vary(
        self, mothers: dict[str, Tensor], fathers: dict[str, Tensor], generation: int, generator: torch.Generator
    ) -> dict[str, Tensor]: ...

    def render(self, genomes: dict[str, Tensor]) -> Tensor: ...


@dataclass
class Archive:
    """One elite per class: its genome, its confidence for that class, and the run's counters.

    ``confidence[j]`` is ``-1`` while cell ``j`` is empty; ``genomes[key][j]`` is cell ``j``'s elite.
    """

    confidence: Tensor
    genomes: dict[str, Tensor]
    generation: int = 0
    queries: int = 0

    def insert(self, children: dict[str, Tensor], probs: Tensor) -> None:
        """Offer scored children (``probs`` ``(B, K)``) to every cell, in place.

        Equivalent to inserting the children one by one with a strict ``>``: each cell takes its best child
        (the first on ties, as ``argmax`` returns the first maximum) if that child beats the occupant.
        """
        best, child = probs.max(dim=0)
        better = best > self.confidence
        cells = torch.nonzero(better).squeeze(1)
        self.confidence = torch.where(better, best, self.confidence)
        for key, value in children.items():
            self.genomes[key][cells] = value[child[cells]]

    def to_tensors(self) -> dict[str, Tensor]:
        """The archive as flat tensors, for a store."""
        counters = torch.tensor([self.generation, self.queries], dtype=torch.long)
        return {"confidence": self.confidence, "counters": counters} | {
            f"genome.{k}": v for k, v in self.genomes.items()
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], device: torch.device) -> Archive:
        """Rebuild an archive saved with :meth:`to_tensors`."""
        genomes = {k.removeprefix("genome."): v.to(device) for k, v in tensors.items() if k.startswith("genome.")}
        generation, queries = (int(v) for v in tensors["counters"])
        return cls(tensors["confidence"].to(device), genomes, generation, queries)


@dataclass(frozen=True)
class MapElites:
    """The loop: ``start`` fills the archive from random genomes, ``step`` runs one generation.

    Args:
        encoding: makes, varies and renders genomes.
        score: images ``(B, C, H, W)`` in ``[0, 1]`` -> class probabilities ``(B, K)`` (the fitness).
        num_classes: archive cells.
        population: children per generation (the official ``pop::size``).
        init_size: random genomes at the start (``pop::init_size``).
    """

    encoding: Encoding
    score: Callable[[Tensor], Tensor]
    num_classes: int
    population: int
    init_size: int

    def start(self, generator: torch.Generator, device: torch.device) -> Archive:
        """Evaluate ``init_size`` random genomes and insert them into an empty archive."""
        genomes = self.encoding.random(self.init_size, generator, device)
        archive = Archive(
            torch.full((self.num_classes,), -1.0, device=device),
            {k: v[:1].expand(self.num_classes, *v.shape[1:]).clone() for k, v in genomes.items()},
        )
        archive.insert(genomes, self.score(self.encoding.render(genomes)))
        archive.queries = self.init_size
        return archive

    def step(self, archive: Archive, generator: torch.Generator) -> None:
        """One generation, in place: pairs of uniformly drawn elites, two children each, batched scoring."""
        occupied = torch.nonzero(archive.confidence >= 0).squeeze(1)
        pairs = self.population // 2
        draws = (rand((2, pairs), generator, occupied.device) * len(occupied)).long().clamp(max=len(occupied) - 1)
        mothers = {k: v[occupied[draws[0]]] for k, v in archive.genomes.items()}
        fathers = {k: v[occupied[draws[1]]] for k, v in archive.genomes.items()}
        children = self.encoding.vary(mothers, fathers, archive.generation, generator)
        archive.insert(children, self.score(self.encoding.render(children)))
        archive.generation += 1
        archive.queries += 2 * pairs
