"""The evaluator: clean and robust accuracy for every model x defense x threat mode x attack.

Semantics follow AutoAttack's: each attack runs only on the samples the scored model classifies
correctly; a sample counts as robust against an attack when it stays correct, and as robust overall
(the worst case) only when every attack failed on it. Work is done in units of one batch of one
grid cell; each unit runs inside its own RNG fork seeded from ``(seed, unit key)``, so results do
not depend on the order units run in, on a resume, or on which process ran them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attack import ATTACKS, Attack
from robustlab.cache import config_hash
from robustlab.checks import ProbeSettings, probe_gradient_masking, threat_mode_gaps
from robustlab.data import ImageDataset, iterate_batches, load_dataset
from robustlab.defense import DEFENSES, EOT, Defense, PreprocessingDefense, ThreatMode
from robustlab.distributed import Shard, gather_units
from robustlab.errors import ConfigError, DataError
from robustlab.metrics import psnr
from robustlab.models import ImageClassifier, ModelSpec, load_model
from robustlab.registry import Registry
from robustlab.report import WORST_CASE, Diagnostic, Fidelity, Report, Row, environment
from robustlab.store import MemoryStore, RunStore
from robustlab.threat import Norm, perturbation_norm

__all__ = [
    "ComponentSpec",
    "EvalConfig",
    "Evaluator",
    "json_ready",
    "load_builtin_components",
    "prepare_defense",
    "run_config_hash",
]

NO_MODE = "-"


@dataclass(frozen=True)
class ComponentSpec:
    """A registry name plus keyword parameters, e.g. ``pgd`` with ``(("eps", 0.03), ("steps", 20))``."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def build(self, registry: Registry[Any]) -> Any:
        """Instantiate the component, rejecting parameters its factory does not take."""
        entry = registry.get(self.name)
        accepted = entry.params()
        unknown = [key for key, _ in self.params if key not in accepted]
        if unknown:
            takes = ", ".join(accepted) or "nothing"
            raise ConfigError(f"{registry.kind} {self.name} has no parameter {unknown[0]!r}; it takes: {takes}")
        try:
            return entry.factory(**dict(self.params))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{registry.kind} {self.name}: {error}") from None

    def label(self) -> str:
        """Name plus the non-budget parameters, e.g. ``pgd(steps=20)`` (the budget has its own column)."""
        shown = [f"{k}={v}" for k, v in self.params if k != "eps"]
        return f"{self.name}({', '.join(shown)})" if shown else self.name


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation grid; its hash identifies a run for resuming."""

    models: tuple[ModelSpec, ...] = (ModelSpec("smallcnn"),)
    defenses: tuple[ComponentSpec, ...] = (ComponentSpec("none"),)
    attacks: tuple[ComponentSpec, ...] = (ComponentSpec("pgd"),)
    data: str = "synth"
    train_data: str | None = None
    n: int | None = 1000
    batch_size: int = 256
    seed: int = 0
    threat_modes: tuple[ThreatMode, ...] = (ThreatMode.TRANSFER, ThreatMode.ADAPTIVE)
    eot_samples: int = 20
    device: str = "cpu"
    diagnostics: bool = True
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.n is not None and self.n <= 0:
            raise ConfigError(f"n must be a positive number of samples, got {self.n}")
        if self.batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        if not (self.models and self.defenses and self.attacks and self.threat_modes):
            raise ConfigError("the grid needs at least one model, defense, attack and threat mode")
        if self.amp not in (None, "bf16"):
            raise ConfigError(f"--amp takes bf16, got {self.amp!r}")
        if self.compile and torch.device(self.device).type != "cuda":
            raise ConfigError("--compile is for CUDA devices; on the CPU it only adds compile time, so it is refused")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, recorded in the report."""
        return json_ready(dataclasses.asdict(self))


def json_ready(value: Any) -> Any:
    """Tuples to lists and enums to strings, recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value.value if hasattr(value, "value") and not isinstance(value, (int, float, str)) else value


def prepare_defense(defense: Defense, model: ImageClassifier, data: str, *, seed: int, progress: bool) -> None:
    """Put ``defense`` on the model's device and train it, if it learns, on the train split of ``data``.

    ``eval``, ``generate`` and ``train-defense`` all come through here, seeded alike, so for the same
    defense, model, data and seed they reach the same cached weights.
    """
    if isinstance(defense, nn.Module):
        defense.to(model.mean.device)
    if type(defense).fit is Defense.fit:
        return
    train = load_dataset(data, split="train", image_size=model.input_size)
    defense.fit(model, train, generator=torch.Generator().manual_seed(seed), progress=progress)


@dataclass
class _Cell:
    """Accumulated per-sample results of one (threat mode, attack) cell for one model and defense."""

    mode: str
    spec: ComponentSpec
    attack: Attack
    adv_pred: list[Tensor] = field(default_factory=list)
    norm: list[Tensor] = field(default_factory=list)
    seconds: float = 0.0
    halvings: int = 0


@dataclass
class _BatchLimit:
    """Most samples one attack call may take; ``None`` until a CUDA out-of-memory error halves it."""

    size: int | None = None


class Evaluator:
    """Runs an :class:`EvalConfig` and returns its :class:`Report`.

    Args:
        store: where per-batch results go; a :class:`robustlab.store.SqliteStore` makes runs resumable.
        progress: tqdm bars on stderr.
        shard: this process's rank under ``torchrun``: it computes the batches it owns, and rank 0 merges
            everyone's units and returns the full report (other ranks return one without rows).
    """

    def __init__(self, store: RunStore | None = None, *, progress: bool = True, shard: Shard | None = None) -> None:
        self.store: RunStore = store if store is not None else MemoryStore()
        self.progress = progress
        self.shard = shard or Shard()
        self._limit = _BatchLimit()
        self._diagnostics: list[Diagnostic] = []

    def run(self, config: EvalConfig) -> Report:
        """Evaluate the whole grid."""
        started = time.perf_counter()
        self._limit, self._diagnostics = _BatchLimit(), []
        load_builtin_components()
        attacks = [(spec, spec.build(ATTACKS)) for spec in config.attacks]
        defenses = [(spec, spec.build(DEFENSES)) for spec in config.defenses]
        device = torch.device(config.device)
        rows: list[Row] = []
        samples: list[dict[str, Any]] = []
        diagnostics: list[Diagnostic] = []
        fidelity: list[Fidelity] = []
        for mi, model_spec in enumerate(config.models):
            model = load_model(
                model_spec.name, weights=model_spec.weights, num_classes=model_spec.num_classes, progress=self.progress
            ).to(device)
            dataset = load_dataset(config.data, split="test", image_size=model.input_size)
            indices = _sample_indices(dataset, config.n)
            _check_classes(model, dataset, config.data)
            for di, (defense_spec, defense) in enumerate(defenses):
                prepare_defense(
                    defense, model, config.train_data or config.data, seed=config.seed, progress=self.progress
                )
                names = (model_spec.label(), defense_spec.label())
                block_rows, block_samples = self._evaluate_pair(
                    model, defense, dataset, indices, attacks, config, key=f"m{mi}/d{di}", names=names
                )
                rows += block_rows
                samples += block_samples
                if config.diagnostics and defense.changes_model:
                    diagnostics += self._probe(model, defense, dataset, indices, attacks, config, names=names)
                if isinstance(defense, PreprocessingDefense):
                    fidelity.append(_fidelity(defense, dataset, indices, config, names=names))
        diagnostics += threat_mode_gaps(rows)
        return Report(
            config=config.to_dict(),
            environment=environment(str(device)),
            rows=rows,
            diagnostics=[*diagnostics, *self._diagnostics],
            samples=samples,
            seconds=time.perf_counter() - started,
            fidelity=fidelity,
        )

    def _evaluate_pair(
        self,
        model: ImageClassifier,
        defense: Defense,
        dataset: ImageDataset,
        indices: Tensor,
        attacks: Sequence[tuple[ComponentSpec, Attack]],
        config: EvalConfig,
        *,
        key: str,
        names: tuple[str, str],
    ) -> tuple[list[Row], list[dict[str, Any]]]:
        device = torch.device(config.device)
        plain = _frozen(defense.wrap(model))
        scored = _accelerated(plain, config)
        attacked = {
            mode: _accelerated(module, config) for mode, module in _attacked_models(model, defense, config).items()
        }
        check_fast_path = config.amp is not None or config.compile
        # Stopping a sample at its first success is sound only when the attacked model's prediction is the
        # scored one: under transfer the bare model may be fooled while the defended one is not.
        early_stop = not defense.changes_model
        cells = [_Cell(mode, spec, attack) for mode in attacked for spec, attack in attacks]
        n_batches = -(-len(indices) // config.batch_size)
        own = [b for b in range(n_batches) if self.shard.owns(b)]
        bar = tqdm(
            total=len(own) * (1 + len(cells)),
            desc=" / ".join(names),
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        units: dict[str, dict[str, Tensor]] = {}
        for b in own:
            clean_key = f"{key}/clean/b{b}"
            cell_keys = [f"{key}/{cell.mode}/a{ci % len(attacks)}/b{b}" for ci, cell in enumerate(cells)]
            stored = {k: self.store.get(k) for k in (clean_key, *cell_keys)}
            if all(unit is not None for unit in stored.values()):
                units.update({k: unit for k, unit in stored.items() if unit is not None})
                bar.update(1 + len(cells))
                continue  # a resumed batch: not even its images are needed again
            chunk = indices[b * config.batch_size : (b + 1) * config.batch_size]
            _, x, y = next(iterate_batches(dataset, chunk, config.batch_size))
            x, y = x.to(device), y.to(device)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if check_fast_path:
                check_fast_path = False
                self._diagnostics.append(_fast_path_check(plain, scored, x, config, names))
            clean = self._unit(clean_key, config.seed, lambda g, x=x, y=y: {"pred": _predict(scored, x), "label": y})
            units[clean_key] = clean
            bar.update()
            correct = clean["pred"].to(device) == y
            for cell, cell_key in zip(cells, cell_keys, strict=True):
                units[cell_key] = self._unit(
                    cell_key,
                    config.seed,
                    lambda g, cell=cell, x=x, y=y, correct=correct, pred=clean["pred"]: _attack_batch(
                        cell.attack,
                        attacked[cell.mode],
                        scored,
                        x,
                        y,
                        correct,
                        pred.to(device),
                        g,
                        early_stop=early_stop,
                        limit=self._limit,
                    ),
                )
                bar.update()
        bar.close()
        units = gather_units(self.shard, units)
        if not self.shard.is_main:
            return [], []
        labels: list[Tensor] = []
        clean_pred: list[Tensor] = []
        for b in range(n_batches):
            clean = units[f"{key}/clean/b{b}"]
            labels.append(clean["label"].cpu())
            clean_pred.append(clean["pred"].cpu())
            for ci, cell in enumerate(cells):
                unit = units[f"{key}/{cell.mode}/a{ci % len(attacks)}/b{b}"]
                cell.adv_pred.append(unit["adv_pred"].cpu())
                cell.norm.append(unit["norm"].cpu())
                cell.seconds += float(unit["seconds"])
                cell.halvings += int(unit["halvings"].sum()) if "halvings" in unit else 0
        for cell in cells:
            if cell.halvings:
                self._diagnostics.append(
                    Diagnostic(
                        "batch-halved",
                        f"{cell.spec.label()} ran out of CUDA memory {cell.halvings} times and was retried "
                        f"with half the batch (now at most {self._limit.size} samples per attack call)",
                        model=names[0],
                        defense=names[1],
                    )
                )
        return _aggregate(names, torch.cat(labels), torch.cat(clean_pred), cells, indices)

    def _unit(self, key: str, seed: int, compute: Callable[[torch.Generator], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Return the stored result of ``key`` or compute and store it inside a seeded RNG fork."""
        stored = self.store.get(key)
        if stored is not None:
            return stored
        with seeded(seed, key) as generator:
            result = compute(generator)
        self.store.put(key, result)
        return result

    def _probe(
        self,
        model: ImageClassifier,
        defense: Defense,
        dataset: ImageDataset,
        indices: Tensor,
        attacks: Sequence[tuple[ComponentSpec, Attack]],
        config: EvalConfig,
        *,
        names: tuple[str, str],
    ) -> list[Diagnostic]:
        """Gradient-masking probes on up to 128 clean-correct samples of the defended model."""
        device = torch.device(config.device)
        _, x, y = next(iter(iterate_batches(dataset, indices[:128], 128)))
        x, y = x.to(device), y.to(device)
        scored = _frozen(defense.wrap(model))
        keep = _predict(scored, x) == y
        budgets = [a.threat.eps for _, a in attacks if a.threat.norm is Norm.LINF and a.threat.eps]
        settings = ProbeSettings(eps=budgets[0] if budgets else ProbeSettings.eps)
        attacked = _attacked_models(model, defense, replace(config, threat_modes=(ThreatMode.ADAPTIVE,)))["adaptive"]
        with seeded(config.seed, f"{'/'.join(names)}/probes") as generator:
            return probe_gradient_masking(
                attacked,
                scored,
                x[keep],
                y[keep],
                settings=settings,
                generator=generator,
                model=names[0],
                defense=names[1],
            )


@contextmanager
def seeded(seed: int, key: str) -> Iterator[torch.Generator]:
    """A generator and a forked global RNG, both seeded from ``(seed, key)`` alone."""
    unit_seed = int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:15], 16)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(unit_seed)  # randomized defenses and third-party code draw from the global RNG
        yield torch.Generator().manual_seed(unit_seed)


def load_builtin_components() -> None:
    """Import the built-in attacks and defenses so that their registry entries exist."""
    import robustlab.attacks
    import robustlab.defenses  # noqa: F401


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


def _sample_indices(dataset: ImageDataset, n: int | None) -> Tensor:
    total = len(dataset)
    if total == 0:
        raise DataError("the dataset has no samples")
    return torch.arange(total if n is None else min(n, total))


def _check_classes(model: ImageClassifier, dataset: ImageDataset, data: str) -> None:
    if model.num_classes > 0 and dataset.num_classes > model.num_classes:
        raise ConfigError(
            f"{data} has {dataset.num_classes} classes but {model.name} predicts {model.num_classes}: "
            f"pass --num-classes {dataset.num_classes} with matching weights, or other --data"
        )


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def _attacked_models(model: nn.Module, defense: Defense, config: EvalConfig) -> dict[str, nn.Module]:
    """The model the attacker differentiates, per threat mode."""
    if not defense.changes_model:
        return {NO_MODE: model}
    adaptive: nn.Module = _frozen(defense.wrap(model, adaptive=True))
    if defense.randomized:
        adaptive = EOT(adaptive, config.eot_samples).eval()
    choice = {ThreatMode.TRANSFER: model, ThreatMode.ADAPTIVE: adaptive}
    return {mode.value: choice[mode] for mode in config.threat_modes}


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.inference_mode():
        return model(x).argmax(dim=1)


def _attack_batch(
    attack: Attack,
    attacked: nn.Module,
    scored: nn.Module,
    x: Tensor,
    y: Tensor,
    correct: Tensor,
    clean_pred: Tensor,
    generator: torch.Generator,
    *,
    early_stop: bool,
    limit: _BatchLimit,
) -> dict[str, Tensor]:
    """Attack the still-correct samples of a batch; others keep their clean prediction and a zero norm.

    On a CUDA out-of-memory error the attack is retried on halves, and ``limit`` remembers the size that
    fits for the batches that follow; the number of halvings is stored with the unit and reported.
    """
    started = time.perf_counter()
    index = correct.nonzero().flatten()
    adv_pred = clean_pred.clone()
    norm = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    halvings = 0
    start = 0
    while start < len(index):
        part = index[start : start + (limit.size or len(index))]
        try:
            x_adv = attack(attacked, x[part], y[part], generator=generator, early_stop=early_stop)
        except torch.cuda.OutOfMemoryError:
            if len(part) == 1:
                raise
            limit.size, halvings = len(part) // 2, halvings + 1
            torch.cuda.empty_cache()
            continue
        adv_pred[part] = _predict(scored, x_adv)
        norm[part] = perturbation_norm(x[part], x_adv, attack.threat.norm)
        start += len(part)
    return {
        "adv_pred": adv_pred,
        "norm": norm,
        "seconds": torch.tensor([time.perf_counter() - started]),
        "halvings": torch.tensor([halvings]),
    }


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
        module = torch.compile(module)
    return module


def _fast_path_check(
    plain: nn.Module, fast: nn.Module, x: Tensor, config: EvalConfig, names: tuple[str, str]
) -> Diagnostic:
    """Compare the fast path's clean predictions with plain float32 ones on the first batch."""
    agree = (_predict(plain, x) == _predict(fast, x)).double().mean().item()
    paths = ", ".join(p for p, on in (("amp bf16", config.amp), ("compile", config.compile)) if on)
    code = "fast-path-check" if agree >= 0.99 else "fast-path-mismatch"
    message = f"{paths}: clean predictions agree with float32 on {agree:.1%} of {len(x)} samples"
    return Diagnostic(code, message, model=names[0], defense=names[1])


def _aggregate(
    names: tuple[str, str], y: Tensor, clean_pred: Tensor, cells: list[_Cell], indices: Tensor
) -> tuple[list[Row], list[dict[str, Any]]]:
    model_name, defense_name = names
    n = len(y)
    correct = clean_pred == y
    clean_acc = correct.double().mean().item()
    rows: list[Row] = []
    samples: list[dict[str, Any]] = []
    for mode in dict.fromkeys(cell.mode for cell in cells):
        mode_cells = [cell for cell in cells if cell.mode == mode]
        robust_all = correct.clone()
        block: dict[str, Any] = {
            "model": model_name,
            "defense": defense_name,
            "threat_mode": mode,
            "index": indices.tolist(),
            "label": y.tolist(),
            "clean_pred": clean_pred.tolist(),
            "attacks": [],
        }
        for cell in mode_cells:
            adv_pred, norm = torch.cat(cell.adv_pred), torch.cat(cell.norm)
            success = correct & (adv_pred != y)
            robust_all &= ~success
            broken = norm[success]
            rows.append(
                Row(
                    model=model_name,
                    defense=defense_name,
                    threat_mode=mode,
                    attack=cell.spec.label(),
                    threat=cell.attack.threat.describe(),
                    n=n,
                    clean_acc=clean_acc,
                    robust_acc=(correct & ~success).double().mean().item(),
                    attack_success_rate=_rate(success, correct),
                    mean_norm=broken.mean().item() if len(broken) else None,
                    max_norm=broken.max().item() if len(broken) else None,
                    seconds=cell.seconds,
                    attack_config=json_ready(cell.attack.config()),
                )
            )
            block["attacks"].append(
                {
                    "attack": cell.spec.label(),
                    "threat": cell.attack.threat.describe(),
                    "adv_pred": adv_pred.tolist(),
                    "success": success.tolist(),
                    "norm": [round(v, 7) for v in norm.tolist()],
                }
            )
        if len(mode_cells) > 1:
            threats = {cell.attack.threat.describe() for cell in mode_cells}
            rows.append(
                Row(
                    model=model_name,
                    defense=defense_name,
                    threat_mode=mode,
                    attack=WORST_CASE,
                    threat=threats.pop() if len(threats) == 1 else "mixed",
                    n=n,
                    clean_acc=clean_acc,
                    robust_acc=robust_all.double().mean().item(),
                    attack_success_rate=_rate(correct & ~robust_all, correct),
                    mean_norm=None,
                    max_norm=None,
                    seconds=sum(cell.seconds for cell in mode_cells),
                )
            )
        samples.append(block)
    return rows, samples


def _rate(hits: Tensor, of: Tensor) -> float:
    total = int(of.sum())
    return int(hits.sum()) / total if total else 0.0


def run_config_hash(config: EvalConfig) -> str:
    """Identity of a run for its store: every field that can change a number."""
    return config_hash(config.to_dict(), length=16)
