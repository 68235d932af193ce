"""The evaluator: the metrics of every model x defense x threat mode x attack, for any victim and task.

For classifiers the semantics follow AutoAttack's: each attack runs only on the samples the scored
model classifies correctly; a sample counts as robust against an attack when it stays correct, and as
robust overall (the worst case) only when every attack failed on it. Other tasks bring their own
metrics (:mod:`robustlab.tasks`); other kinds of attack their own runner (:mod:`robustlab.runners`).
Work is done in units (one batch of one grid cell, one fitted perturbation, one set of generated
images); each unit runs inside its own RNG fork seeded from ``(seed, unit key)``, so results do not
depend on the order units run in, on a resume, or on which process ran them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attack import ATTACKS, Attack
from robustlab.components import ComponentSpec, load_builtin_components
from robustlab.data import load_dataset
from robustlab.data.adv import AdversarialDataset
from robustlab.data.base import ImageDataset, load_batches
from robustlab.defense import DEFENSES, PreprocessingDefense
from robustlab.diagnostics.convergence import audit_verdicts
from robustlab.diagnostics.masking import attack_gaps, threat_mode_gaps
from robustlab.diagnostics.sanity import made_by
from robustlab.diagnostics.target import EvaluatedTarget, classifier_diagnostics, defense_fidelity, first_batch
from robustlab.distributed import Shard, gather_units
from robustlab.errors import ConfigError
from robustlab.eval_config import EvalConfig, run_config_hash
from robustlab.fast_paths import accelerated, fast_path_check
from robustlab.models.loading import ModelSpec
from robustlab.preprocessing import preprocessing_of
from robustlab.progress import on_bar, reporting
from robustlab.randomized import attacked_by, for_randomized
from robustlab.reports.report import Diagnostic, Fidelity, Report, Row, environment
from robustlab.rows import aggregate, concat
from robustlab.runners import RUNNERS, BatchLimit, Cell, RunContext, attack_and_score
from robustlab.sampling import sample_indices
from robustlab.seeding import seeded, stream_seed
from robustlab.store import KeyedStore, MemoryStore, RunStore
from robustlab.tasks import TASKS, GenerativeTask, InputTask, Task
from robustlab.victims import Target, TargetRequest, Victim

__all__ = ["EvalConfig", "Evaluator", "run_config_hash"]

ADVERSARIAL_CHECK = (
    "its clean accuracy is the attack's robust accuracy, so instead of the chance-level check the model and "
    "defense that made it must score what generate recorded (NaN and constant outputs are still checked)"
)


class Evaluator:
    """Runs an :class:`EvalConfig` and returns its :class:`Report`.

    Args:
        store: where per-unit results go; a :class:`robustlab.store.SqliteStore` makes runs resumable.
        progress: tqdm bars on stderr.
        shard: this process's rank under ``torchrun``: it computes the batches it owns, and rank 0 merges
            everyone's units and returns the full report (other ranks return one without rows).
        artifacts: a path prefix (``runs/r1`` for ``runs/r1.json``) under which what universal attacks
            learned is written as safetensors (``runs/r1.uap.m0-d0-a0.safetensors``); ``None``: not written.
        workers: processes that read and decode the next batches while the model computes (0: in this process);
            the images and results are the same either way.
    """

    def __init__(
        self,
        store: RunStore | None = None,
        *,
        progress: bool = True,
        shard: Shard | None = None,
        artifacts: Path | None = None,
        workers: int = 0,
    ) -> None:
        self.store: RunStore = store if store is not None else MemoryStore()
        self.progress = progress
        self.shard = shard or Shard()
        self.artifacts = artifacts
        self.workers = workers
        self._limit = BatchLimit()
        self._diagnostics: list[Diagnostic] = []

    def run(self, config: EvalConfig) -> Report:
        """Evaluate the whole grid."""
        started = time.perf_counter()
        self._limit, self._diagnostics = BatchLimit(), []
        load_builtin_components()
        attacks = [(spec, spec.build(ATTACKS)) for spec in config.attacks]
        defenses = [(spec, spec.build(DEFENSES)) for spec in config.defenses]
        device = torch.device(config.device)
        rows: list[Row] = []
        samples: list[dict[str, Any]] = []
        diagnostics: list[Diagnostic] = []
        fidelity: list[Fidelity] = []
        inputs: list[str] = []
        victim = config.victim()
        for mi, model_spec in enumerate(config.models):
            model = victim.load(model_spec, config, progress=self.progress).to(device)
            dataset, indices, said = _inputs(victim, model, model_spec, [attack for _, attack in attacks], config)
            inputs += said
            for di, (defense_spec, defense) in enumerate(defenses):
                names = (model_spec.label(), defense_spec.label())
                targets = victim.targets(TargetRequest(model, defense, dataset, config, names, self.progress))
                fit_key = f"m{mi}/d{di}"  # a universal attack fits once per model and defense, whatever the heads
                for ti, target in enumerate(targets):
                    head = f"/h{ti}" if target.head else ""
                    run = TargetRun(
                        target, indices, attacks, config, key=fit_key + head, fit_key=fit_key, streams=f"m{mi}{head}"
                    )
                    if victim.classifier_checks:
                        run, found = _for_randomized(run)
                        diagnostics += found
                    block_rows, block_samples = self._evaluate_target(run)
                    rows += block_rows
                    samples += block_samples
                    labelled = [(spec.label(), attack) for spec, attack in run.attacks]
                    diagnostics += audit_verdicts(block_samples, labelled, names)
                    if victim.classifier_checks and config.diagnostics:
                        evaluated = EvaluatedTarget(
                            model, defense, run.target, indices, run.attacks, config, block_rows, block_samples
                        )
                        diagnostics += classifier_diagnostics(evaluated, model_spec, progress=self.progress)
                if isinstance(defense, PreprocessingDefense):
                    fidelity.append(defense_fidelity(defense, dataset, indices, config, names=names))
        diagnostics += threat_mode_gaps(rows)
        diagnostics += attack_gaps(rows)
        return Report(
            config=config.to_dict(),
            environment=environment(str(device)),
            rows=rows,
            diagnostics=[*diagnostics, *self._diagnostics],
            samples=samples,
            seconds=time.perf_counter() - started,
            fidelity=fidelity,
            inputs=list(dict.fromkeys(inputs)),
        )

    def _evaluate_target(self, run: TargetRun) -> tuple[list[Row], list[dict[str, Any]]]:
        """Rows and per-sample blocks of one target."""
        target, indices, config, key = run.target, run.indices, run.config, run.key
        scored = accelerated(target.scored, config)
        attacked = {mode: accelerated(module, config) for mode, module in target.attacked.items()}
        cells = self._prepared_cells(run, scored)
        batched = [cell for cell in cells if RUNNERS[cell.attack.kind].batched]
        tasks = {cell.task.name: cell.input_task for cell in batched}
        n_batches = -(-len(indices) // config.batch_size) if batched else 0
        own = [b for b in range(n_batches) if self.shard.owns(b)]
        bar = tqdm(
            total=len(own) * (len(tasks) + len(batched)),
            desc=" / ".join(filter(None, (*target.names, target.head))),
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        batches = _Batches(self, run, (scored, attacked), tasks, batched, bar)
        todo = [b for b in own if not batches.resumed(b)]  # a resumed batch is left out: not even its images load
        chunks = [indices[b * config.batch_size : (b + 1) * config.batch_size] for b in todo]
        for b, chunk, (x, y) in zip(
            todo, chunks, load_batches(target.dataset, chunks, workers=self.workers), strict=True
        ):
            batches.run(b, chunk, x, y)
        bar.close()
        units = gather_units(self.shard, batches.units)
        if not self.shard.is_main:
            return [], []
        cleans: dict[str, list[dict[str, Tensor]]] = {name: [] for name in tasks}
        for b in range(n_batches):
            for name in tasks:
                cleans[name].append(units[f"{key}/clean/{name}/b{b}"])
            for cell in batched:
                cell.results.append(units[_cell_key(key, cell, b)])
        self._report_halvings(batched, target.names)
        return aggregate(target, cells, {name: concat(parts) for name, parts in cleans.items()}, indices)

    def _prepared_cells(self, run: TargetRun, scored: nn.Module) -> list[Cell]:
        """A cell per threat mode and attack, each prepared by its runner (universal perturbations fitted...)."""
        target, config = run.target, run.config
        plain = target.scored
        cells = [
            Cell(mode, ai, spec, attack, self._task(attack, target))
            for mode in target.attacked
            for ai, (spec, attack) in enumerate(run.attacks)
        ]
        context = RunContext(
            store=self.store,
            unit=lambda unit_key, compute: self._unit(unit_key, config.seed, compute),
            key=run.key,
            fit_key=run.fit_key,
            fit_data=lambda: load_dataset(
                config.fit_data or config.data,
                split="train",
                image_size=getattr(plain, "input_size", None),
                preprocessing=preprocessing_of(plain),
            ),
            artifacts=self.artifacts if self.shard.is_main else None,
            progress=self.progress,
        )
        for cell in cells:
            RUNNERS[cell.attack.kind].prepare(cell, target.fit_on[cell.mode], scored, context)
        return cells

    def _task(self, attack: Attack, target: Target) -> Task:
        """The task that scores ``attack`` on ``target``: the attack's own, else the victim's."""
        entry = TASKS.get(attack.task or target.task)
        draws = {"draws": target.draws} if target.draws > 1 and "draws" in entry.params() else {}
        task: Task = entry.factory(**draws).bind(attack, target.scored)
        generative = not RUNNERS[attack.kind].batched
        if not isinstance(task, GenerativeTask if generative else InputTask):
            what = "images made from nothing" if generative else "attacked inputs"
            name = type(attack).__name__
            raise ConfigError(f"{attack.kind} attack {name} is scored by task {task.name}, which does not score {what}")
        return task

    def _unit(self, key: str, seed: int, compute: Callable[[torch.Generator], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Return the stored result of ``key`` or compute and store it inside a seeded RNG fork.

        What the computation saved under ``key/`` to resume mid-way is discarded once the result is stored.
        """
        stored = self.store.get(key)
        if stored is not None:
            return stored
        with seeded(seed, key) as generator:
            result = compute(generator)
        self.store.put(key, result)
        self.store.discard(f"{key}/")
        return result

    def _report_halvings(self, cells: list[Cell], names: tuple[str, str]) -> None:
        for cell in cells:
            halvings = sum(int(r["halvings"].sum()) for r in cell.results if "halvings" in r)
            if halvings:
                self._diagnostics.append(
                    Diagnostic(
                        "batch-halved",
                        f"{cell.spec.label()} ran out of CUDA memory {halvings} times and was retried "
                        f"with half the batch (now at most {self._limit.size} samples per attack call)",
                        model=names[0],
                        defense=names[1],
                    )
                )


@dataclass(frozen=True)
class TargetRun:
    """One target of the grid, the samples and attacks it runs, and the keys its units and random streams go by."""

    target: Target
    indices: Tensor
    attacks: Sequence[tuple[ComponentSpec, Attack]]
    config: EvalConfig
    key: str
    """``m{model}/d{defense}[/h{head}]``: every unit of the target."""
    fit_key: str
    """``m{model}/d{defense}``: what a universal attack fits, shared by the heads of one encoder."""
    streams: str
    """``m{model}[/h{head}]``: the samples' random streams. The model's, not the defense's or the threat mode's, so
    every row of a model draws the same random starts and its defended rows compare with the bare one sample for
    sample (a defense that changes nothing changes no number)."""


def _for_randomized(run: TargetRun) -> tuple[TargetRun, list[Diagnostic]]:
    """Check the scored model for randomness on the first samples; a random one is run as it must be (its target
    and attacks replaced)."""
    config = run.config
    x, _ = first_batch(run.target.dataset, run.indices, config)
    with seeded(config.seed, f"{run.key}/randomness"):
        target, attacks, found = for_randomized(
            run.target, run.attacks, x, eot_samples=config.eot_samples, draws=config.draws
        )
    return replace(run, target=target, attacks=attacks), found


class _Batches:
    """The batches of one target: each batch's clean units, then one unit per batched cell, stored as they finish."""

    def __init__(
        self,
        evaluator: Evaluator,
        run: TargetRun,
        modules: tuple[nn.Module, dict[str, nn.Module]],
        tasks: dict[str, InputTask],
        cells: list[Cell],
        bar: tqdm[Any],
    ) -> None:
        self.evaluator, self.target, self.config = evaluator, run.target, run.config
        self.key, self.streams = run.key, run.streams
        self.scored, self.attacked = modules  # the scored module, and per threat mode the attacked one
        self.tasks, self.cells, self.bar = tasks, cells, bar
        self.check_fast_path = run.config.amp is not None or run.config.compile
        self.units: dict[str, dict[str, Tensor]] = {}

    def resumed(self, b: int) -> bool:
        """Whether batch ``b`` is all in the store already (its units are then taken from there)."""
        store = self.evaluator.store
        keys = (*_clean_keys(self.key, self.tasks, b).values(), *_cell_keys(self.key, self.cells, b))
        stored = {k: store.get(k) for k in keys}
        if not all(unit is not None for unit in stored.values()):
            return False
        self.units.update({k: unit for k, unit in stored.items() if unit is not None})
        self.bar.update(len(stored))
        return True

    def run(self, b: int, chunk: Tensor, x: Tensor, y: Tensor) -> None:
        """Score batch ``b`` (the samples ``chunk``) clean under each task, then attack and score it per cell."""
        config, evaluator, device = self.config, self.evaluator, torch.device(self.config.device)
        clean_keys, cell_keys = _clean_keys(self.key, self.tasks, b), _cell_keys(self.key, self.cells, b)
        x, y = x.to(device), y.to(device)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.check_fast_path:
            self.check_fast_path = False
            evaluator._diagnostics.append(
                fast_path_check(self.target.scored, self.scored, x, config, self.target.names)
            )
        clean: dict[str, dict[str, Tensor]] = {}
        for name, task in self.tasks.items():
            compute = partial(_clean_unit, task, self.scored, x, y)
            clean[name] = self.units[clean_keys[name]] = evaluator._unit(clean_keys[name], config.seed, compute)
            self.bar.update()
        for cell, cell_key in zip(self.cells, cell_keys, strict=True):
            cell_clean = {k: v.to(device) for k, v in clean[cell.task.name].items() if k != "label"}
            mask = cell.input_task.attackable(cell_clean, y)
            attacked = attacked_by(cell.attack, self.attacked[cell.mode])
            compute = partial(
                attack_and_score,
                *(cell.attack, attacked, self.scored, cell.input_task, x, y, cell_clean, mask),
                early_stop=self.target.early_stop,
                track_scored=self.target.tracks_scored(cell.mode),
                limit=evaluator._limit,
                sample_seeds=_sample_seeds(config.seed, f"{self.streams}/a{cell.index}", chunk),
                state=KeyedStore(evaluator.store, cell_key),
            )
            with reporting(on_bar(self.bar, cell.spec.label()) if evaluator.progress else None):  # a long call moves
                self.units[cell_key] = evaluator._unit(cell_key, config.seed, compute)
            self.bar.update()


def _inputs(
    victim: Victim, model: nn.Module, spec: ModelSpec, attacks: list[Attack], config: EvalConfig
) -> tuple[ImageDataset, Tensor, list[str]]:
    """The test data as ``model`` is fed it, the samples the run scores, and what the report says of them."""
    dataset = load_dataset(
        config.data, split="test", image_size=getattr(model, "input_size", None), preprocessing=preprocessing_of(model)
    )
    indices, chosen = sample_indices(dataset, config.n, seed=config.seed, subset=config.subset)
    batched = any(RUNNERS[attack.kind].batched for attack in attacks)  # else every attack makes images
    said = [f"{config.data}: {chosen if batched else 'no samples scored (the attacks make images)'}"]
    if isinstance(dataset, AdversarialDataset):
        said.append(f"{config.data}: {dataset.provenance(*made_by(dataset))}; {ADVERSARIAL_CHECK}")
    return dataset, indices, said + victim.check_inputs(model, spec, dataset, indices, config)


def _clean_unit(
    task: InputTask, scored: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
) -> dict[str, Tensor]:
    """The clean results of a batch under ``task``, with the labels (what a resumed run reads back)."""
    return {**task.clean(scored, x, y), "label": y}


def _cell_key(key: str, cell: Cell, batch: int | None) -> str:
    """A cell's unit key for ``batch``; without one, the cell's own key."""
    return f"{key}/{cell.mode}/a{cell.index}" + (f"/b{batch}" if batch is not None else "")


def _clean_keys(key: str, tasks: dict[str, InputTask], b: int) -> dict[str, str]:
    """The store keys of batch ``b``'s clean units, per task."""
    return {name: f"{key}/clean/{name}/b{b}" for name in tasks}


def _cell_keys(key: str, batched: list[Cell], b: int) -> list[str]:
    """The store keys of batch ``b``'s units, per batched cell."""
    return [_cell_key(key, cell, b) for cell in batched]


def _sample_seeds(seed: int, key: str, indices: Tensor) -> Tensor:
    """Each sample's own random stream for one attack, keyed by its dataset index: the same in any batch or shard."""
    return torch.tensor([stream_seed(seed, f"{key}/s{int(i)}") for i in indices], dtype=torch.long)
