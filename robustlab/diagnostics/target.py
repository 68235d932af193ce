"""The diagnostics pass over a target once its rows are in: the sanity gate, the masking probes, the check that
a stronger attack would not move the run's strongest gradient attack, and a preprocessing defense's fidelity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.allocator import steady_shapes
from robustlab.attack import Attack
from robustlab.components import ComponentSpec
from robustlab.data.adv import AdversarialDataset
from robustlab.data.base import ImageDataset, iterate_batches
from robustlab.defense import Defense, PreprocessingDefense, ThreatMode
from robustlab.diagnostics.convergence import convergence_checks, strongest_gradient_attack
from robustlab.diagnostics.masking import Probe, ProbeSettings, cheap_probes, expensive_probes
from robustlab.diagnostics.sanity import adversarial_data, chance_level, output_checks
from robustlab.eval_config import EvalConfig
from robustlab.inputs import input_note
from robustlab.metrics import psnr
from robustlab.models.loading import ImageClassifier, ModelSpec
from robustlab.progress import on_bar, reporting
from robustlab.reports.report import Diagnostic, Fidelity, Row
from robustlab.seeding import seeded
from robustlab.tasks import predict
from robustlab.threat import Norm
from robustlab.victims import NO_MODE, Target, attacked_models

__all__ = ["EvaluatedTarget", "classifier_diagnostics", "defense_fidelity", "first_batch", "probe"]


@dataclass(frozen=True)
class EvaluatedTarget:
    """One target as the evaluator ran it, which its diagnostics read: the model and defense it was built from,
    the samples (``indices``) and attacks it ran with ``config``, and its rows and per-sample blocks."""

    model: nn.Module
    defense: Defense
    target: Target
    indices: Tensor
    attacks: Sequence[tuple[ComponentSpec, Attack]]
    config: EvalConfig
    rows: list[Row]
    samples: list[dict[str, Any]]


def classifier_diagnostics(run: EvaluatedTarget, spec: ModelSpec, *, progress: bool) -> list[Diagnostic]:
    """A classifier target's sanity gate (chance level, or for ``adv:`` data the accuracy ``generate`` recorded),
    then :func:`probe`."""
    target = run.target
    dataset = target.dataset
    if isinstance(dataset, AdversarialDataset):
        found = adversarial_data(run.rows, dataset, run.indices, names=target.names, exact=target.draws == 1)
    else:
        labels = torch.tensor(run.samples[0]["label"]) if run.samples else torch.empty(0)
        fed = input_note(cast(ImageClassifier, run.model), spec, run.config.data)
        found = chance_level(run.rows, labels, names=target.names, fed=fed)
    return found + probe(run, progress=progress)


def probe(run: EvaluatedTarget, *, progress: bool) -> list[Diagnostic]:
    """The sanity gate and the masking probes on up to 128 samples (the probes on the clean-correct ones).

    The cheap probes run on every model; the attack-based ones, and the check that a stronger attack would
    not move the run's strongest gradient attack (:mod:`robustlab.diagnostics.convergence`), behind a defense or with
    full diagnostics.
    """
    target, config = run.target, run.config
    names = target.names
    x, y = first_batch(target.dataset, run.indices, config)
    scored = target.scored
    found = output_checks(scored, x, names=names)
    if found:
        return found  # NaN or constant outputs: the probes would only repeat it
    keep = predict(scored, x) == y
    x, y = x[keep], y[keep]
    adaptive = ThreatMode.ADAPTIVE.value  # the pipeline a white-box attacker differentiates, built if not run
    attacked = target.attacked.get(NO_MODE, target.attacked.get(adaptive))
    if attacked is None:
        built = attacked_models(run.model, run.defense, (ThreatMode.ADAPTIVE,), eot_samples=config.eot_samples)
        attacked = built[adaptive]
    budgets = [a.threat.eps for _, a in run.attacks if a.threat.norm is Norm.LINF and a.threat.eps]
    settings = ProbeSettings(eps=budgets[0] if budgets else ProbeSettings.eps)
    with seeded(config.seed, f"{'/'.join(names)}/probes") as generator, steady_shapes():  # n-independent work
        probes = Probe(attacked, scored, x, y, settings, generator, *names)
        said = target.draws > 1  # the ``randomized`` line already says so
        found += [d for d in cheap_probes(probes) if not (said and d.code == "masking.randomized_outputs")]
        if run.defense.changes_model or config.diagnostics == "full":
            bar = tqdm(total=0, desc=f"{' / '.join(names)}: masking probes", disable=not progress, leave=False)
            with bar, reporting(on_bar(bar, "probe") if progress else None):
                found += expensive_probes(probes, deterministic=target.draws == 1)
                found += _convergence(run, probes, keep)
    return found


def _convergence(run: EvaluatedTarget, probes: Probe, keep: Tensor) -> list[Diagnostic]:
    """The convergence check of the run's strongest gradient attack, in the mode the probes attack (``keep``: which
    of the probe batch's samples ``probes`` holds)."""
    target = run.target
    labelled = [(spec.label(), attack) for spec, attack in run.attacks]
    mode = NO_MODE if NO_MODE in target.attacked else ThreatMode.ADAPTIVE.value
    strongest = strongest_gradient_attack(labelled, [row for row in run.rows if row.threat_mode == mode])
    if strongest is None:
        return []
    return convergence_checks(
        *(probes.attacked, target.scored, probes.x, probes.y, strongest[1], strongest[0]),
        early_stop=target.early_stop,
        generator=probes.generator,
        names=target.names,
        base=_robust_in_run(run.samples, mode, strongest[0], keep),
    )


def _robust_in_run(samples: list[dict[str, Any]], mode: str, attack: str, keep: Tensor) -> list[bool] | None:
    """Which of the first ``len(keep)`` samples (those ``keep`` marks) ``attack`` left robust in ``mode``, read from
    the run's per-sample results; ``None`` when the run has none for that mode."""
    for block in samples:
        if block["threat_mode"] != mode or not block["classifies"]:
            continue
        for entry in block["attacks"]:
            if entry["attack"] == attack and "adv_pred" in entry:
                pairs = zip(entry["adv_pred"], block["label"], keep.tolist(), strict=False)
                return [prediction == label for prediction, label, kept in pairs if kept]
    return None


def first_batch(dataset: ImageDataset, indices: Tensor, config: EvalConfig, size: int = 128) -> tuple[Tensor, Tensor]:
    """The first ``size`` evaluated samples, on the run's device."""
    _, x, y = next(iter(iterate_batches(dataset, indices[:size], size)))
    device = torch.device(config.device)
    return x.to(device), y.to(device)


def defense_fidelity(
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
