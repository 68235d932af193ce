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

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attack import ATTACKS, Attack
from robustlab.cache import config_hash
from robustlab.checks import ProbeSettings, attack_gaps, cheap_probes, expensive_probes, threat_mode_gaps
from robustlab.components import ComponentSpec, json_ready, load_builtin_components, seeded, stream_seed
from robustlab.convergence import audit_verdicts, convergence_checks, strongest_gradient_attack
from robustlab.data import ImageDataset, iterate_batches, load_batches, load_dataset
from robustlab.data.adv import AdversarialDataset
from robustlab.defense import DEFENSES, Defense, PreprocessingDefense, ThreatMode
from robustlab.distributed import Shard, gather_units
from robustlab.encoders import Encoder, HeadConfig, load_encoder, trained_heads
from robustlab.errors import ConfigError
from robustlab.inputs import input_note, load_classifier
from robustlab.metrics import psnr
from robustlab.models import ImageClassifier, ModelSpec, check_logits
from robustlab.preprocessing import preprocessing_of
from robustlab.progress import on_bar, reporting
from robustlab.randomized import attacked_by, for_randomized
from robustlab.report import WORST_CASE, Diagnostic, Fidelity, Report, Row, environment
from robustlab.runners import RUNNERS, BatchLimit, Cell, RunContext, attack_and_score
from robustlab.sampling import sample_indices
from robustlab.sanity import adversarial_data, chance_level, output_checks
from robustlab.store import KeyedStore, MemoryStore, RunStore
from robustlab.tasks import TASKS, Task, predict
from robustlab.victims import (
    NO_MODE,
    Target,
    attacked_models,
    classifier_targets,
    downstream_targets,
    frozen,
    prepare_defense,
)

__all__ = [
    "DEFAULT_HEADS",
    "TASK_CHOICES",
    "ComponentSpec",
    "EvalConfig",
    "Evaluator",
    "json_ready",
    "load_builtin_components",
    "prepare_defense",
    "run_config_hash",
]

TASK_CHOICES = ("classification", "downstream", "captioning")
ADVERSARIAL_CHECK = (
    "its clean accuracy is the attack's robust accuracy, so instead of the chance-level check the model and "
    "defense that made it must score what generate recorded (NaN and constant outputs are still checked)"
)
DEFAULT_HEADS = ("shape", "color", "background", "size")


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation grid; its hash identifies a run for resuming.

    ``task="downstream"`` evaluates each model as an encoder: its penultimate features with one head per
    name in ``heads`` (attributes of the synthetic world), trained on ``data``'s train split.
    ``task="captioning"`` loads each model as a captioner (:func:`robustlab.captioning.load_captioner`).
    ``fit_data`` is what universal and task attacks are fitted on (default: the train split of ``data``).
    ``subset``: which ``n`` samples (:func:`robustlab.sampling.sample_indices`; ``first`` and ``list:FILE`` are
    RobustBench's protocols).
    ``draws`` is how many forward passes score each input of a randomized model. ``diagnostics``: the
    cheap masking probes and the sanity gate on every model, the expensive probes behind defenses
    (``True``), the expensive ones on every model (``"full"``), or none (``False``).
    """

    models: tuple[ModelSpec, ...] = (ModelSpec("smallcnn"),)
    defenses: tuple[ComponentSpec, ...] = (ComponentSpec("none"),)
    attacks: tuple[ComponentSpec, ...] = (ComponentSpec("pgd"),)
    data: str = "synth"
    train_data: str | None = None
    fit_data: str | None = None
    n: int | None = 1000
    subset: str = "stratified"
    batch_size: int = 256
    seed: int = 0
    threat_modes: tuple[ThreatMode, ...] = (ThreatMode.TRANSFER, ThreatMode.ADAPTIVE)
    eot_samples: int = 20
    draws: int = 10
    device: str = "cpu"
    diagnostics: bool | str = True
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    task: str = "classification"
    heads: tuple[str, ...] = DEFAULT_HEADS
    head_kind: str = "mlp"

    def __post_init__(self) -> None:
        if self.n is not None and self.n <= 0:
            raise ConfigError(f"n must be a positive number of samples, got {self.n}")
        if self.subset not in ("stratified", "first") and not self.subset.startswith("list:"):
            raise ConfigError(f"subset must be stratified, first or list:FILE, got {self.subset!r}")
        if self.batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        if not (self.models and self.defenses and self.attacks and self.threat_modes):
            raise ConfigError("the grid needs at least one model, defense, attack and threat mode")
        if self.amp not in (None, "bf16"):
            raise ConfigError(f"--amp takes bf16, got {self.amp!r}")
        if self.compile and torch.device(self.device).type != "cuda":
            raise ConfigError("--compile is for CUDA devices; on the CPU it only adds compile time, so it is refused")
        if self.task not in TASK_CHOICES:
            raise ConfigError(f"task must be one of {', '.join(TASK_CHOICES)}, got {self.task!r}")
        if self.diagnostics not in (True, False, "full"):
            raise ConfigError(f"diagnostics must be on, off or full, got {self.diagnostics!r}")
        if self.draws < 1:
            raise ConfigError(f"draws must be at least 1, got {self.draws}")
        if self.task == "downstream" and not self.heads:
            raise ConfigError("the downstream task needs at least one head (--head shape ...)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, recorded in the report."""
        return json_ready(dataclasses.asdict(self))


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
        for mi, model_spec in enumerate(config.models):
            model = _load_victim(model_spec, config, progress=self.progress).to(device)
            dataset = load_dataset(
                config.data,
                split="test",
                image_size=getattr(model, "input_size", None),
                preprocessing=preprocessing_of(model),
            )
            indices, chosen = sample_indices(dataset, config.n, seed=config.seed, subset=config.subset)
            batched = any(RUNNERS[attack.kind].batched for _, attack in attacks)  # else every attack makes images
            inputs.append(f"{config.data}: {chosen if batched else 'no samples scored (the attacks make images)'}")
            if isinstance(dataset, AdversarialDataset):
                inputs.append(f"{config.data}: {dataset.provenance()}; {ADVERSARIAL_CHECK}")
            fed = ""
            if isinstance(model, ImageClassifier):
                _check_classes(model, dataset, config.data)
                first = indices[: config.batch_size]
                _, x, _ = next(iterate_batches(dataset, first, len(first)))
                classes, label = dataset.num_classes, model_spec.label()
                half = check_logits(model, x.to(device), batch_size=config.batch_size, data_classes=classes, name=label)
                fed = input_note(model, model_spec, config.data)
                inputs += [fed, *([half] if half else [])]
            for di, (defense_spec, defense) in enumerate(defenses):
                names = (model_spec.label(), defense_spec.label())
                targets = self._targets(model, defense, dataset, config, names=names)
                for ti, target in enumerate(targets):
                    head = f"/h{ti}" if target.head else ""
                    key = f"m{mi}/d{di}{head}"
                    target_attacks: list[tuple[ComponentSpec, Attack]] = list(attacks)
                    if config.task == "classification":
                        target, target_attacks, found = self._for_randomized(target, indices, attacks, config, key)
                        diagnostics += found
                    block_rows, block_samples = self._evaluate_target(
                        target, indices, target_attacks, config, key=key, fit_key=f"m{mi}/d{di}", streams=f"m{mi}{head}"
                    )
                    rows += block_rows
                    samples += block_samples
                    labelled = [(spec.label(), attack) for spec, attack in target_attacks]
                    diagnostics += audit_verdicts(block_samples, labelled, names)
                    if isinstance(model, ImageClassifier) and config.diagnostics and config.task == "classification":
                        labels = torch.tensor(block_samples[0]["label"]) if block_samples else torch.empty(0)
                        if isinstance(dataset, AdversarialDataset):
                            exact = target.draws == 1
                            diagnostics += adversarial_data(block_rows, dataset, indices, names=names, exact=exact)
                        else:
                            diagnostics += chance_level(block_rows, labels, names=names, fed=fed)
                        diagnostics += self._probe(
                            model, defense, target, indices, target_attacks, config, block_rows, block_samples
                        )
                if isinstance(defense, PreprocessingDefense):
                    fidelity.append(_fidelity(defense, dataset, indices, config, names=names))
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

    def _for_randomized(
        self,
        target: Target,
        indices: Tensor,
        attacks: Sequence[tuple[ComponentSpec, Attack]],
        config: EvalConfig,
        key: str,
    ) -> tuple[Target, list[tuple[ComponentSpec, Attack]], list[Diagnostic]]:
        """Check the scored model for randomness on the first samples; a random one is run as it must be."""
        x, _ = _first_batch(target.dataset, indices, config)
        with seeded(config.seed, f"{key}/randomness"):
            return for_randomized(target, attacks, x, eot_samples=config.eot_samples, draws=config.draws)

    def _targets(
        self,
        model: nn.Module,
        defense: Defense,
        dataset: ImageDataset,
        config: EvalConfig,
        *,
        names: tuple[str, str],
    ) -> list[Target]:
        """The victim of one model and defense: a classifier, or an encoder with one target per head."""
        if config.task != "downstream":
            prepare_defense(defense, model, config.train_data or config.data, seed=config.seed, progress=self.progress)
            targets = classifier_targets(
                model, defense, dataset, config.threat_modes, eot_samples=config.eot_samples, names=names
            )
            return [replace(target, task=config.task) for target in targets]
        encoder = cast(Encoder, model)  # load_encoder gave the features
        head_data = config.train_data or config.data
        if defense.tunes_encoders:  # the defense is the head: one fit per attribute, on that attribute's labels
            heads: dict[str, nn.Module] = {}
            for head in config.heads:
                data = _with_target(head_data, head)
                prepare_defense(defense, encoder, data, seed=config.seed, progress=self.progress)
                heads[head] = frozen(defense.wrap(encoder))
        elif defense.changes_model:
            raise ConfigError(
                f"the downstream task scores an encoder's heads; --defense {names[1]} does not tune an encoder's "
                "features into heads (nmtune does)"
            )
        else:
            configs = [
                HeadConfig(task=head, kind=config.head_kind, data=head_data, seed=config.seed) for head in config.heads
            ]
            heads = dict(trained_heads(encoder, configs, progress=self.progress))
        datasets = {
            head: load_dataset(_with_target(config.data, head), split="test", image_size=encoder.input_size)
            for head in config.heads
        }
        return downstream_targets(encoder, heads, datasets, names=names)

    def _evaluate_target(
        self,
        target: Target,
        indices: Tensor,
        attacks: Sequence[tuple[ComponentSpec, Attack]],
        config: EvalConfig,
        *,
        key: str,
        fit_key: str,
        streams: str,
    ) -> tuple[list[Row], list[dict[str, Any]]]:
        """Rows and per-sample blocks of one target. ``streams`` keys the samples' random streams: the model's,
        not the defense's or the threat mode's, so every row of a model draws the same random starts and its
        defended rows compare with the bare one sample for sample (a defense that changes nothing changes no
        number)."""
        device = torch.device(config.device)
        plain = target.scored
        scored = _accelerated(plain, config)
        attacked = {mode: _accelerated(module, config) for mode, module in target.attacked.items()}
        cells = [
            Cell(mode, ai, spec, attack, self._task(attack, target))
            for mode in attacked
            for ai, (spec, attack) in enumerate(attacks)
        ]
        context = RunContext(
            store=self.store,
            unit=lambda unit_key, compute: self._unit(unit_key, config.seed, compute),
            key=key,
            fit_key=fit_key,
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
        batched = [cell for cell in cells if RUNNERS[cell.attack.kind].batched]
        tasks = {cell.task.name: cell.task for cell in batched}
        check_fast_path = config.amp is not None or config.compile
        n_batches = -(-len(indices) // config.batch_size) if batched else 0
        own = [b for b in range(n_batches) if self.shard.owns(b)]
        bar = tqdm(
            total=len(own) * (len(tasks) + len(batched)),
            desc=" / ".join(filter(None, (*target.names, target.head))),
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        units: dict[str, dict[str, Tensor]] = {}
        todo = []
        for b in own:
            stored = {
                k: self.store.get(k) for k in (*_clean_keys(key, tasks, b).values(), *_cell_keys(key, batched, b))
            }
            if all(unit is not None for unit in stored.values()):
                units.update({k: unit for k, unit in stored.items() if unit is not None})
                bar.update(len(stored))
            else:  # a resumed batch is left out: not even its images are needed again
                todo.append(b)
        chunks = [indices[b * config.batch_size : (b + 1) * config.batch_size] for b in todo]
        for b, chunk, (x, y) in zip(
            todo, chunks, load_batches(target.dataset, chunks, workers=self.workers), strict=True
        ):
            clean_keys, cell_keys = _clean_keys(key, tasks, b), _cell_keys(key, batched, b)
            x, y = x.to(device), y.to(device)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if check_fast_path:
                check_fast_path = False
                self._diagnostics.append(_fast_path_check(plain, scored, x, config, target.names))
            clean: dict[str, dict[str, Tensor]] = {}
            for name, task in tasks.items():
                clean[name] = units[clean_keys[name]] = self._unit(
                    clean_keys[name], config.seed, partial(_clean_unit, task, scored, x, y)
                )
                bar.update()
            for cell, cell_key in zip(batched, cell_keys, strict=True):
                cell_clean = {k: v.to(device) for k, v in clean[cell.task.name].items() if k != "label"}
                mask = cell.task.attackable(cell_clean, y)
                with reporting(on_bar(bar, cell.spec.label()) if self.progress else None):  # a long call moves too
                    units[cell_key] = self._unit(
                        cell_key,
                        config.seed,
                        partial(
                            attack_and_score,
                            *(cell.attack, attacked_by(cell.attack, attacked[cell.mode]), scored, cell.task, x, y),
                            *(cell_clean, mask),
                            early_stop=target.early_stop,
                            track_scored=target.tracks_scored(cell.mode),
                            limit=self._limit,
                            sample_seeds=_sample_seeds(config.seed, f"{streams}/a{cell.index}", chunk),
                            state=KeyedStore(self.store, cell_key),
                        ),
                    )
                bar.update()
        bar.close()
        units = gather_units(self.shard, units)
        if not self.shard.is_main:
            return [], []
        cleans: dict[str, list[dict[str, Tensor]]] = {name: [] for name in tasks}
        for b in range(n_batches):
            for name in tasks:
                cleans[name].append(units[f"{key}/clean/{name}/b{b}"])
            for cell in batched:
                cell.results.append(units[_cell_key(key, cell, b)])
        self._report_halvings(batched, target.names)
        return _aggregate(target, cells, {name: _concat(parts) for name, parts in cleans.items()}, indices)

    def _task(self, attack: Attack, target: Target) -> Task:
        """The task that scores ``attack`` on ``target``: the attack's own, else the victim's."""
        entry = TASKS.get(attack.task or target.task)
        draws = {"draws": target.draws} if target.draws > 1 and "draws" in entry.params() else {}
        task: Task = entry.factory(**draws).bind(attack, target.scored)
        generative = not RUNNERS[attack.kind].batched
        method = "score_generated" if generative else "score"
        if getattr(type(task), method) is getattr(Task, method):
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

    def _probe(
        self,
        model: ImageClassifier,
        defense: Defense,
        target: Target,
        indices: Tensor,
        attacks: Sequence[tuple[ComponentSpec, Attack]],
        config: EvalConfig,
        rows: list[Row],
        samples: list[dict[str, Any]],
    ) -> list[Diagnostic]:
        """The sanity gate and the masking probes on up to 128 samples (the probes on the clean-correct ones).

        The cheap probes run on every model; the attack-based ones, and the check that a stronger attack would
        not move the run's strongest gradient attack (:mod:`robustlab.convergence`), behind a defense or with
        full diagnostics.
        """
        from robustlab.threat import Norm

        names = target.names
        x, y = _first_batch(target.dataset, indices, config)
        scored = target.scored
        found = output_checks(scored, x, names=names)
        if found:
            return found  # NaN or constant outputs: the probes would only repeat it
        keep = predict(scored, x) == y
        x, y = x[keep], y[keep]
        adaptive = ThreatMode.ADAPTIVE.value  # the pipeline a white-box attacker differentiates, built if not run
        attacked = target.attacked.get(NO_MODE, target.attacked.get(adaptive))
        if attacked is None:
            attacked = attacked_models(model, defense, (ThreatMode.ADAPTIVE,), eot_samples=config.eot_samples)[adaptive]
        budgets = [a.threat.eps for _, a in attacks if a.threat.norm is Norm.LINF and a.threat.eps]
        settings = ProbeSettings(eps=budgets[0] if budgets else ProbeSettings.eps)
        with seeded(config.seed, f"{'/'.join(names)}/probes") as generator:
            cheap = cheap_probes(
                attacked, scored, x, y, settings=settings, generator=generator, model=names[0], defense=names[1]
            )
            said = target.draws > 1  # the ``randomized`` line already says so
            found += [d for d in cheap if not (said and d.code == "masking.randomized_outputs")]
            if defense.changes_model or config.diagnostics == "full":
                bar = tqdm(total=0, desc=f"{' / '.join(names)}: masking probes", disable=not self.progress, leave=False)
                with bar, reporting(on_bar(bar, "probe") if self.progress else None):
                    found += expensive_probes(
                        *(attacked, scored, x, y),
                        settings=settings,
                        generator=generator,
                        model=names[0],
                        defense=names[1],
                        deterministic=target.draws == 1,
                    )
                    labelled = [(spec.label(), attack) for spec, attack in attacks]
                    mode = NO_MODE if NO_MODE in target.attacked else adaptive
                    strongest = strongest_gradient_attack(labelled, [row for row in rows if row.threat_mode == mode])
                    if strongest is not None:
                        found += convergence_checks(
                            *(attacked, scored, x, y, strongest[1], strongest[0]),
                            early_stop=target.early_stop,
                            generator=generator,
                            names=names,
                            base=_robust_in_run(samples, mode, strongest[0], keep),
                        )
        return found


def _robust_in_run(samples: list[dict[str, Any]], mode: str, attack: str, keep: Tensor) -> list[bool] | None:
    """Which of the first ``len(keep)`` samples (those ``keep`` marks) ``attack`` left robust in ``mode``, read from
    the run's per-sample results; ``None`` when the run has none for that mode."""
    for block in samples:
        if block["threat_mode"] != mode or block["task"] != "classification":
            continue
        for entry in block["attacks"]:
            if entry["attack"] == attack and "adv_pred" in entry:
                pairs = zip(entry["adv_pred"], block["label"], keep.tolist(), strict=False)
                return [prediction == label for prediction, label, kept in pairs if kept]
    return None


def _first_batch(dataset: ImageDataset, indices: Tensor, config: EvalConfig, size: int = 128) -> tuple[Tensor, Tensor]:
    """The first ``size`` evaluated samples, on the run's device."""
    _, x, y = next(iter(iterate_batches(dataset, indices[:size], size)))
    device = torch.device(config.device)
    return x.to(device), y.to(device)


def _load_victim(spec: ModelSpec, config: EvalConfig, *, progress: bool) -> nn.Module:
    """The model a task evaluates: a classifier, an encoder (``downstream``) or a captioner (``captioning``)."""
    task = config.task
    if task == "downstream":
        return load_encoder(spec.name, weights=spec.weights, num_classes=spec.num_classes, progress=progress)
    if task == "captioning":
        from robustlab.captioning import load_captioner

        return load_captioner(spec.name, weights=spec.weights or "synth", progress=progress)
    return load_classifier(spec, config.data, progress=progress)


def _clean_unit(task: Task, scored: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
    """The clean results of a batch under ``task``, with the labels (what a resumed run reads back)."""
    return {**task.clean(scored, x, y), "label": y}


def _cell_key(key: str, cell: Cell, batch: int | None) -> str:
    """A cell's unit key for ``batch``; without one, the cell's own key."""
    return f"{key}/{cell.mode}/a{cell.index}" + (f"/b{batch}" if batch is not None else "")


def _clean_keys(key: str, tasks: dict[str, Task], b: int) -> dict[str, str]:
    """The store keys of batch ``b``'s clean units, per task."""
    return {name: f"{key}/clean/{name}/b{b}" for name in tasks}


def _cell_keys(key: str, batched: list[Cell], b: int) -> list[str]:
    """The store keys of batch ``b``'s units, per batched cell."""
    return [_cell_key(key, cell, b) for cell in batched]


def _sample_seeds(seed: int, key: str, indices: Tensor) -> Tensor:
    """Each sample's own random stream for one attack, keyed by its dataset index: the same in any batch or shard."""
    return torch.tensor([stream_seed(seed, f"{key}/s{int(i)}") for i in indices], dtype=torch.long)


def _with_target(spec: str, attribute: str) -> str:
    """``synth[:opts]`` labelled by ``attribute`` (``synth:target=color``); other datasets as they are."""
    if spec.split(":", 1)[0] != "synth":
        return spec
    return f"{spec},target={attribute}" if ":" in spec else f"synth:target={attribute}"


def _concat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Per-sample tensors of consecutive batches joined on the CPU (per-unit scalars like ``seconds`` summed)."""
    if not parts:
        return {}
    out = {}
    for name in parts[0]:
        values = [part[name].cpu() for part in parts]
        out[name] = torch.stack([v.sum() for v in values]) if name in ("seconds", "halvings") else torch.cat(values)
    return out


def _fidelity(
    defense: PreprocessingDefense,
    dataset: ImageDataset,
    indices: Tensor,
    config: EvalConfig,
    *,
    names: tuple[str, str],
    limit: int = 256,
) -> Fidelity:
    """PSNR of the defense's output against the clean input, on the first ``limit`` evaluated samples."""
    device = torch.device(config.device)
    values = []
    with seeded(config.seed, f"{'/'.join(names)}/fidelity"), torch.inference_mode():  # a randomized defense draws
        for _, x, _ in iterate_batches(dataset, indices[:limit], config.batch_size):
            x = x.to(device)
            values.append(psnr(defense.transform(x).float(), x.float()).cpu())
    quality = torch.cat(values)
    return Fidelity(names[0], names[1], len(quality), float(quality.mean()), float(quality.min()))


def _check_classes(model: ImageClassifier, dataset: ImageDataset, data: str) -> None:
    if model.num_classes > 0 and dataset.num_classes > model.num_classes:
        raise ConfigError(
            f"{data} has {dataset.num_classes} classes but {model.name} predicts {model.num_classes}: "
            f"pass --num-classes {dataset.num_classes} with matching weights, or other --data"
        )


class _Autocast(nn.Module):
    """Runs a model under ``torch.autocast`` and hands float32 logits back, so losses and argmax stay float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            logits: Tensor = self.model(x)
        return logits.float()


def _accelerated(module: nn.Module, config: EvalConfig) -> nn.Module:
    """The module with the fast paths asked for (channels-last, bf16 autocast, torch.compile), else itself."""
    if config.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if config.amp == "bf16":
        module = _Autocast(module, torch.bfloat16).eval()
    if config.compile:
        module = torch.compile(module)  # type: ignore[assignment]
    return module


def _fast_path_check(
    plain: nn.Module, fast: nn.Module, x: Tensor, config: EvalConfig, names: tuple[str, str]
) -> Diagnostic:
    """Compare the fast path's clean predictions with plain float32 ones on the first batch."""
    agree = (predict(plain, x) == predict(fast, x)).double().mean().item()
    paths = ", ".join(p for p, on in (("amp bf16", config.amp), ("compile", config.compile)) if on)
    code = "fast-path-check" if agree >= 0.99 else "fast-path-mismatch"
    message = f"{paths}: clean predictions agree with float32 on {agree:.1%} of {len(x)} samples"
    return Diagnostic(code, message, model=names[0], defense=names[1])


def _aggregate(
    target: Target, cells: list[Cell], cleans: dict[str, dict[str, Tensor]], indices: Tensor
) -> tuple[list[Row], list[dict[str, Any]]]:
    """Rows and per-sample blocks of one target: a row per cell, plus a worst case per threat mode and task."""
    rows: list[Row] = []
    samples: list[dict[str, Any]] = []
    for mode in dict.fromkeys(cell.mode for cell in cells):
        mode_cells = [cell for cell in cells if cell.mode == mode]
        blocks: dict[str, dict[str, Any]] = {}
        for cell in mode_cells:
            rows.append(_cell_row(target, cell, cleans))
            if cell.metrics is None:
                block = blocks.setdefault(
                    cell.task.name, _block(target, mode, cell.task, cleans[cell.task.name], indices)
                )
                block["attacks"].append(_sample_results(cell, cleans[cell.task.name]))
        for task_name, block in blocks.items():
            group = [cell for cell in mode_cells if cell.task.name == task_name and cell.metrics is None]
            if group[0].task.worst_case and len(group) > 1:
                rows.append(_worst_case_row(target, mode, group, cleans[task_name]))
            samples.append(block)
    return rows, samples


def _row_task(target: Target, task: Task) -> str:
    return f"downstream/{target.head}" if target.head and task.name == target.task else task.name


def _make_row(
    target: Target,
    mode: str,
    *,
    attack: str,
    threat: str,
    kind: str,
    task: Task,
    n: int,
    metrics: dict[str, float],
    seconds: float,
    norms: Tensor | None = None,
    attack_config: dict[str, Any] | None = None,
    artifact: str | None = None,
    success_rule: str = "",
) -> Row:
    described = {
        m.name: {
            "value": metrics[m.name],
            "higher_is_better": m.higher_is_better,
            "gated": m.gated,
            "proportion": m.proportion,
        }
        for m in task.metrics
        if m.name in metrics
    }
    return Row(
        model=target.names[0],
        defense=target.names[1],
        threat_mode=mode,
        attack=attack,
        threat=threat,
        n=n,
        clean_acc=metrics.get("clean_acc"),
        robust_acc=metrics.get("robust_acc"),
        attack_success_rate=metrics.get("attack_success_rate"),
        mean_norm=norms.mean().item() if norms is not None and len(norms) else None,
        max_norm=norms.max().item() if norms is not None and len(norms) else None,
        seconds=seconds,
        attack_config=attack_config or {},
        kind=kind,
        task=_row_task(target, task),
        metrics=described,
        artifact=artifact,
        success_rule=success_rule,
    )


def _cell_row(target: Target, cell: Cell, cleans: dict[str, dict[str, Tensor]]) -> Row:
    common = {
        "attack": cell.spec.label(),
        "threat": cell.attack.threat.describe(),
        "kind": cell.attack.kind.value,
        "task": cell.task,
        "attack_config": json_ready(cell.attack.config()),
        "artifact": cell.artifact,
    }
    if cell.metrics is not None:  # generative: scored once, no inputs
        return _make_row(target, cell.mode, n=0, metrics=cell.metrics, seconds=cell.seconds, **common)
    clean, adversarial = cleans[cell.task.name], _concat(cell.results)
    y = clean["label"]
    success = _success(cell.task, clean, adversarial)
    return _make_row(
        target,
        cell.mode,
        n=len(y),
        metrics=cell.task.aggregate(y, clean, adversarial),
        seconds=float(adversarial["seconds"].sum()),
        norms=adversarial["norm"][success],
        success_rule=target.success_rule(cell.attack),
        **common,
    )


def _success(task: Task, clean: dict[str, Tensor], adversarial: dict[str, Tensor]) -> Tensor:
    """Samples the attack broke: attacked and no longer robust (all attacked ones for tasks without a worst case)."""
    attacked = adversarial["attacked"].bool()
    if not task.worst_case:
        return attacked
    return attacked & ~task.robust(clean["label"], clean, adversarial)


def _worst_case_row(target: Target, mode: str, cells: list[Cell], clean: dict[str, Tensor]) -> Row:
    y = clean["label"]
    task = cells[0].task
    robust = torch.ones_like(y, dtype=torch.bool)
    for cell in cells:
        robust &= task.robust(y, clean, _concat(cell.results))
    threats = {cell.attack.threat.describe() for cell in cells}
    rules = {target.success_rule(cell.attack) for cell in cells}
    return _make_row(
        target,
        mode,
        attack=WORST_CASE,
        threat=threats.pop() if len(threats) == 1 else "mixed",
        kind="worst-case",
        task=task,
        n=len(y),
        metrics=task.summarize(y, clean, robust),
        seconds=sum(float(_concat(cell.results)["seconds"].sum()) for cell in cells),
        success_rule=rules.pop() if len(rules) == 1 else "mixed",
    )


def _block(target: Target, mode: str, task: Task, clean: dict[str, Tensor], indices: Tensor) -> dict[str, Any]:
    """The per-sample record of one target, threat mode and task: labels, clean results, one entry per attack."""
    return {
        "model": target.names[0],
        "defense": target.names[1],
        "threat_mode": mode,
        "task": _row_task(target, task),
        "index": indices.tolist(),
        "label": clean["label"].tolist(),
        **{f"clean_{name}": value.tolist() for name, value in clean.items() if name != "label"},
        "attacks": [],
    }


def _sample_results(cell: Cell, clean: dict[str, Tensor]) -> dict[str, Any]:
    adversarial = _concat(cell.results)
    per_sample = {
        name: value.tolist()
        for name, value in adversarial.items()
        if name not in ("norm", "attacked", "seconds", "halvings") and len(value) == len(clean["label"])
    }
    return {
        "attack": cell.spec.label(),
        "threat": cell.attack.threat.describe(),
        **per_sample,
        "success": _success(cell.task, clean, adversarial).tolist(),
        "norm": [round(v, 7) for v in adversarial["norm"].tolist()],
    }


def run_config_hash(config: EvalConfig) -> str:
    """Identity of a run for its store: every field that can change a number."""
    return config_hash(config.to_dict(), length=16)
