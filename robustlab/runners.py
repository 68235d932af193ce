"""One runner per attack kind, and the one attack-and-score path every command goes through.

:func:`attack_and_score` attacks the chosen samples of a batch (halving on CUDA out-of-memory) and
scores the outputs with the task; the evaluator, ``generate``, the report's image grid and the masking
probes all call it. What differs between kinds is what happens before the batches: nothing for
per-input attacks, ``fit`` once per grid cell for universal and task attacks (the result is a stored
unit, so a resumed run does not refit), and for generative attacks there are no batches at all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from robustlab.allocator import steady_shapes
from robustlab.attack import Attack, AttackKind
from robustlab.cache import save_weights
from robustlab.components import ComponentSpec
from robustlab.store import KeyedStore, RunStore
from robustlab.tasks import GenerativeTask, InputTask, Task
from robustlab.threat import perturbation_norm

__all__ = ["RUNNERS", "BatchLimit", "Cell", "Runner", "attack_and_score"]


@dataclass
class BatchLimit:
    """Most samples one attack call may take; ``None`` until a CUDA out-of-memory error halves it."""

    size: int | None = None


@dataclass
class Cell:
    """One (threat mode, attack) cell of a target, and the per-batch results gathered for it."""

    mode: str
    index: int
    spec: ComponentSpec
    attack: Attack
    task: Task
    results: list[dict[str, Tensor]] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    artifact: str | None = None
    seconds: float = 0.0

    @property
    def input_task(self) -> InputTask:
        """The task, for a cell of attacked inputs (the evaluator matched it to the attack's kind)."""
        if not isinstance(self.task, InputTask):
            raise TypeError(f"task {self.task.name} scores no inputs")
        return self.task

    @property
    def generative_task(self) -> GenerativeTask:
        """The task, for a cell of images made from nothing."""
        if not isinstance(self.task, GenerativeTask):
            raise TypeError(f"task {self.task.name} scores no generated images")
        return self.task


def attack_and_score(
    attack: Attack,
    attacked: nn.Module,
    scored: nn.Module,
    task: InputTask,
    x: Tensor,
    y: Tensor,
    clean: dict[str, Tensor],
    mask: Tensor,
    generator: torch.Generator,
    *,
    early_stop: bool = False,
    track_scored: bool = False,
    limit: BatchLimit | None = None,
    keep_images: bool = False,
    sample_seeds: Tensor | None = None,
    state: RunStore | None = None,
) -> dict[str, Tensor]:
    """Attack the samples of ``mask`` and score them; the others keep the task's unattacked result.

    Returns the task's per-sample tensors plus ``norm`` (float64 perturbation size, 0 where not
    attacked), ``attacked`` (the mask), ``seconds`` and ``halvings``, and ``x_adv`` when ``keep_images``.
    On a CUDA out-of-memory error the attack is retried on halves; ``limit`` remembers the size that fits.
    ``sample_seeds`` (one per sample of ``x``) go to attacks that draw each sample's randomness from its own seed.
    ``state`` is where attacks that save progress within a call keep it, one key prefix per attacked part.
    ``track_scored``: ``attacked`` is not ``scored`` (a transfer attack), so attacks that can check ``scored`` at
    every iterate do, and keep each sample's first point that fools it.
    """
    started = time.perf_counter()
    limit = limit if limit is not None else BatchLimit()
    index = mask.nonzero().flatten()
    gathered = _Gathered.start(task.unattacked(clean, y), x, keep_images)
    halvings, start = 0, 0
    while start < len(index):
        part = index[start : start + (limit.size or len(index))]
        try:
            seeds = sample_seeds[part.cpu()] if sample_seeds is not None else None
            part_state = None if state is None else KeyedStore(state, f"p{start}+{len(part)}")
            x_adv = attack(
                attacked,
                x[part],
                y[part],
                generator=generator,
                early_stop=early_stop,
                sample_seeds=seeds,
                state=part_state,
                scored=scored if track_scored else None,
            )
        except torch.cuda.OutOfMemoryError:
            if len(part) == 1:
                raise
            limit.size, halvings = len(part) // 2, halvings + 1
            torch.cuda.empty_cache()
            continue
        part_clean = {k: v[part] for k, v in clean.items()}
        scores = task.score(scored, x_adv, y[part], part_clean, attack)
        gathered.add(part, scores, perturbation_norm(x[part], x_adv, attack.threat.norm), x_adv)
        start += len(part)
    return gathered.finish(mask, started, halvings)


@dataclass
class _Gathered:
    """What :func:`attack_and_score` gathers per sample, part by part: the task's tensors, the perturbation sizes
    and, when kept, the adversarial images."""

    result: dict[str, Tensor]
    norm: Tensor
    images: Tensor | None

    @classmethod
    def start(cls, unattacked: dict[str, Tensor], x: Tensor, keep_images: bool) -> _Gathered:
        """Before any attack: the task's ``unattacked`` result, zero sizes, and the clean images."""
        norm = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        return cls(unattacked, norm, x.clone() if keep_images else None)

    def add(self, part: Tensor, scores: dict[str, Tensor], norm: Tensor, x_adv: Tensor) -> None:
        """The samples ``part``: their task ``scores``, perturbation sizes and adversarial images."""
        for key, value in scores.items():
            self.result[key][part] = value.to(self.result[key].device)
        self.norm[part] = norm
        if self.images is not None:
            self.images[part] = x_adv

    def finish(self, mask: Tensor, started: float, halvings: int) -> dict[str, Tensor]:
        """The task's tensors with ``norm``, ``attacked``, ``seconds`` since ``started``, ``halvings`` and ``x_adv``."""
        self.result.update(
            norm=self.norm,
            attacked=mask.clone(),
            seconds=torch.tensor([time.perf_counter() - started]),
            halvings=torch.tensor([halvings]),
        )
        if self.images is not None:
            self.result["x_adv"] = self.images
        return self.result


@dataclass(frozen=True)
class RunContext:
    """What a runner needs beyond its cell: the store, seeding, fit data and where artifacts go."""

    store: RunStore
    unit: Callable[[str, Callable[[torch.Generator], dict[str, Tensor]]], dict[str, Tensor]]
    """Return a stored unit by key, or compute it in its seeded RNG fork and store it."""
    key: str
    fit_key: str
    """Where fitted units live: the victim's key, shared by the heads of one encoder (fitted once, scored on each)."""
    fit_data: Any
    artifacts: Path | None
    progress: bool


class Runner(Protocol):
    """What happens to a cell before (and instead of) the per-batch loop."""

    batched: bool

    def prepare(self, cell: Cell, fit_on: nn.Module, scored: nn.Module, context: RunContext) -> None: ...


class PerInputRunner:
    """Per-input attacks need nothing before the batches."""

    batched = True

    def prepare(self, cell: Cell, fit_on: nn.Module, scored: nn.Module, context: RunContext) -> None:
        return None


class FittedRunner:
    """Universal and task attacks: ``fit`` once per cell on the fit split, stored as a unit, then per input.

    A resumed run loads the stored unit instead of fitting again. With an artifacts prefix the fitted
    state (a universal perturbation or patch) is also written as safetensors, which the attack's
    ``load`` parameter reads back to evaluate it on other data or models.
    """

    batched = True

    def prepare(self, cell: Cell, fit_on: nn.Module, scored: nn.Module, context: RunContext) -> None:
        attack = cell.attack

        def fit(generator: torch.Generator) -> dict[str, Tensor]:
            with steady_shapes():  # a training loop on the fit split, whatever the evaluation's n
                attack.fit(fit_on, context.fit_data(), generator=generator, progress=context.progress)
            return attack.fitted()

        attack.load_fitted(context.unit(f"{context.fit_key}/{cell.mode}/a{cell.index}/fit", fit))
        if context.artifacts is not None:
            where = "-".join(
                [*context.fit_key.split("/"), f"a{cell.index}", *([cell.mode] if cell.mode != "-" else [])]
            )
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{cell.spec.label()}.{where}")  # run.uap.m0-d0-a0.safetensors
            path = context.artifacts.with_name(f"{context.artifacts.name}.{name}.safetensors")
            save_weights(path, attack.fitted(), metadata={"attack": cell.spec.name, "threat": attack.threat.describe()})
            cell.artifact = str(path)


class GenerativeRunner:
    """Generative attacks: images from nothing, generated once per cell (a stored unit) and scored by the task."""

    batched = False

    def prepare(self, cell: Cell, fit_on: nn.Module, scored: nn.Module, context: RunContext) -> None:
        prefix = f"{context.key}/{cell.mode}/a{cell.index}/generated"  # its scratch goes once it is stored

        def generate(generator: torch.Generator) -> dict[str, Tensor]:
            started = time.perf_counter()
            with steady_shapes():  # a population evolved or optimised step by step, whatever the evaluation's n
                out = cell.attack.generate(
                    fit_on, generator=generator, store=KeyedStore(context.store, prefix), progress=context.progress
                )
            return {**out, "seconds": torch.tensor([time.perf_counter() - started])}

        generated = context.unit(prefix, generate)
        cell.metrics = cell.generative_task.score_generated(scored, generated)
        cell.seconds = float(generated["seconds"].sum())


RUNNERS: dict[AttackKind, Runner] = {
    AttackKind.PERTURBATION: PerInputRunner(),
    AttackKind.UNIVERSAL: FittedRunner(),
    AttackKind.TASK: FittedRunner(),
    AttackKind.GENERATIVE: GenerativeRunner(),
}
"""How each kind of attack is run: the evaluator looks its cells up here and never branches on the kind."""
