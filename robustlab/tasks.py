"""Tasks: what a prediction is, when it counts as correct, and which metrics a row reports.

The evaluator runs one loop for every victim; a :class:`Task` is the part that changes between a
classifier (accuracy), downstream heads on an encoder (accuracy per head), a captioner (exact match,
BLEU...) and fooling images (classes fooled at a confidence). A task scores a batch into per-sample
tensors (stored in the run store, so a resumed run re-scores nothing) and turns the stored tensors of
a cell into named metrics, each with its direction, that reports render and the gate compares.

Adding a task is one module with a ``@TASKS.register(...)`` class; an attack names the task that scores
it in its ``task`` attribute.
"""

from __future__ import annotations

import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from robustlab.registry import Registry

__all__ = [
    "TASKS",
    "ClassConfidence",
    "Classification",
    "GenerativeTask",
    "InputTask",
    "Metric",
    "Task",
    "WorstCaseTask",
    "class_probabilities",
    "confidence_metrics",
    "predict",
]


@dataclass(frozen=True)
class Metric:
    """A named number of a row and its direction for the defender; ``gated`` metrics are compared by the gate.

    ``proportion`` marks a fraction of samples: the gate's statistical margin (binomial standard error)
    applies only to those.
    """

    name: str
    higher_is_better: bool
    gated: bool = True
    proportion: bool = True


class Task(ABC):
    """How a victim's outputs are scored: an :class:`InputTask` scores attacked inputs (per-input, universal and
    task attacks), a :class:`GenerativeTask` images made from nothing. The evaluator checks which one an
    attack needs before anything runs."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[Metric, ...]]
    classifies: ClassVar[bool] = False
    """Whether this task scores a classifier on the dataset's own labels, attacking the inputs it gets right (its
    rows are what the leaderboard check, the sanity gate and per-sample exports read)."""

    def bind(self, attack: Any, scored: nn.Module) -> Task:
        """This task for one cell: a task whose metrics depend on the attack's goal or the victim keeps them."""
        return self


class InputTask(Task):
    """Scores inputs, clean and attacked, into per-sample results: dicts of tensors, the batch first."""

    @abstractmethod
    def clean(self, scored: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Per-sample results on the clean inputs."""

    def attackable(self, clean: dict[str, Tensor], y: Tensor) -> Tensor:
        """Boolean mask of the samples worth attacking (all by default)."""
        return torch.ones_like(y, dtype=torch.bool)

    @abstractmethod
    def score(
        self, scored: nn.Module, x_adv: Tensor, y: Tensor, clean: dict[str, Tensor], attack: Any
    ) -> dict[str, Tensor]:
        """Per-sample results on adversarial inputs of the attacked samples."""

    @abstractmethod
    def unattacked(self, clean: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        """Per-sample results of samples that were not attacked: what :meth:`score` gives for an unchanged input."""

    @abstractmethod
    def aggregate(self, y: Tensor, clean: dict[str, Tensor], adversarial: dict[str, Tensor]) -> dict[str, float]:
        """The row's metrics from the per-sample results of a whole cell."""


class WorstCaseTask(InputTask):
    """An input task whose rows of several attacks combine per sample into a worst case (an input robust to all)."""

    @abstractmethod
    def robust(self, y: Tensor, clean: dict[str, Tensor], adversarial: dict[str, Tensor]) -> Tensor:
        """Per-sample robustness: a sample counts as broken by the attack where this is false."""

    @abstractmethod
    def summarize(self, y: Tensor, clean: dict[str, Tensor], robust: Tensor) -> dict[str, float]:
        """The metrics of a per-sample robustness mask: the worst-case row over several attacks."""


class GenerativeTask(Task):
    """Scores the images a generative attack made from nothing, as a whole."""

    @abstractmethod
    def score_generated(self, scored: nn.Module, generated: dict[str, Tensor]) -> dict[str, float]:
        """The row's metrics for the generated images."""


TASKS: Registry[Task] = Registry("task")


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """Arg-max predictions without building a graph."""
    with torch.inference_mode():
        return model(x).argmax(dim=1)


@TASKS.register(
    "classification", summary="Accuracy of a classifier; an attack succeeds when a correct input is misclassified."
)
class Classification(WorstCaseTask):
    """AutoAttack's semantics: only correctly classified samples are attacked; robust means still correct.

    ``downstream`` heads on an encoder are classifiers too and are scored by this task, one row per head.
    """

    name = "classification"
    classifies = True
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("clean_acc", higher_is_better=True),
        Metric("robust_acc", higher_is_better=True),
        Metric("attack_success_rate", higher_is_better=False, gated=False),
    )

    def __init__(self, draws: int = 1) -> None:
        self.draws = draws
        """Forward passes per input on a randomized model: an input counts as correct only when all are."""

    def _predict(self, scored: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The prediction, or over several draws the first wrong one (the label when every draw is right)."""
        pred = predict(scored, x)
        for _ in range(self.draws - 1):
            pred = torch.where(pred == y, predict(scored, x), pred)
        return pred

    def clean(self, scored: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return {"pred": self._predict(scored, x, y)}

    def attackable(self, clean: dict[str, Tensor], y: Tensor) -> Tensor:
        return clean["pred"].to(y.device) == y

    def score(
        self, scored: nn.Module, x_adv: Tensor, y: Tensor, clean: dict[str, Tensor], attack: Any
    ) -> dict[str, Tensor]:
        return {"adv_pred": self._predict(scored, x_adv, y)}

    def unattacked(self, clean: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        return {"adv_pred": clean["pred"].clone()}

    def robust(self, y: Tensor, clean: dict[str, Tensor], adversarial: dict[str, Tensor]) -> Tensor:
        return (clean["pred"] == y) & (adversarial["adv_pred"] == y)

    def aggregate(self, y: Tensor, clean: dict[str, Tensor], adversarial: dict[str, Tensor]) -> dict[str, float]:
        return self.summarize(y, clean, self.robust(y, clean, adversarial))

    def summarize(self, y: Tensor, clean: dict[str, Tensor], robust: Tensor) -> dict[str, float]:
        correct = clean["pred"] == y
        attacked = int(correct.sum())
        return {
            "clean_acc": correct.double().mean().item(),
            "robust_acc": robust.double().mean().item(),
            "attack_success_rate": int((correct & ~robust).sum()) / attacked if attacked else 0.0,
        }

    def bind(self, attack: Any, scored: nn.Module) -> Task:
        names = getattr(attack, "component_names", None)  # an ensemble (AutoAttack) says which part broke what
        return EnsembleClassification(attack, names(), draws=self.draws) if names is not None else self


class EnsembleClassification(Classification):
    """Classification of an ensemble attack, with how many samples each component broke (``broken_by_NAME``).

    The attack sets ``broken_by`` after each call: per sample, the index of the component that broke it, -1
    for none. It is kept per sample with the other results, so a resumed run counts the stored batches too.
    An attack that also measures curves (the audit: ``sweep_names`` and ``sweep_broken``) gets each point's
    robust accuracy as ``robust_at_POINT``, from the per-sample ``sweep_broken`` kept the same way.
    """

    def __init__(self, attack: Any, names: list[str], *, draws: int = 1) -> None:
        super().__init__(draws)
        self._attack, self._names = attack, names
        self._points: list[str] = attack.sweep_names() if hasattr(attack, "sweep_names") else []
        # The metrics of a bound task depend on the ensemble it scores, so they are the instance's own.
        self.metrics = (  # type: ignore[misc]
            *Classification.metrics,
            *(Metric(f"broken_by_{n}", False, False, False) for n in names),
            *(Metric(f"robust_at_{point}", True, False) for point in self._points),
        )

    def score(
        self, scored: nn.Module, x_adv: Tensor, y: Tensor, clean: dict[str, Tensor], attack: Any
    ) -> dict[str, Tensor]:
        out = {**super().score(scored, x_adv, y, clean, attack), "broken_by": attack.broken_by.to(y.device)}
        if self._points:
            out["sweep_broken"] = attack.sweep_broken.to(y.device)
        return out

    def unattacked(self, clean: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        out = {**super().unattacked(clean, y), "broken_by": torch.full_like(y, -1)}
        if self._points:
            out["sweep_broken"] = torch.zeros(len(y), len(self._points), dtype=torch.bool, device=y.device)
        return out

    def aggregate(self, y: Tensor, clean: dict[str, Tensor], adversarial: dict[str, Tensor]) -> dict[str, float]:
        metrics = super().aggregate(y, clean, adversarial)
        if "broken_by" in adversarial:  # absent from units stored before the breakdown existed
            for i, name in enumerate(self._names):
                metrics[f"broken_by_{name}"] = float((adversarial["broken_by"] == i).sum())
        if "sweep_broken" in adversarial:
            correct = clean["pred"] == y
            for i, point in enumerate(self._points):
                robust = correct & ~adversarial["sweep_broken"][:, i].to(correct.device)
                metrics[f"robust_at_{point}"] = robust.double().mean().item()
        return metrics


@TASKS.register(
    "class_confidence", summary="Fooling images: classes a model labels with high confidence, and at what cost."
)
class ClassConfidence(GenerativeTask):
    """Scores images made from nothing for given target classes (Nguyen et al., CVPR 2015).

    Per class, the best confidence any image reaches for it; a class is fooled at ``c`` when that is at
    least ``c``. For the defender every metric is lower-is-better, except that ``queries`` is not gated.
    """

    name = "class_confidence"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("classes_fooled_99", higher_is_better=False, proportion=False),
        Metric("classes_fooled_9999", higher_is_better=False, proportion=False),
        Metric("median_confidence", higher_is_better=False, proportion=False),
        Metric("queries", higher_is_better=False, gated=False, proportion=False),
    )

    def score_generated(self, scored: nn.Module, generated: dict[str, Tensor]) -> dict[str, float]:
        images, target = generated["images"], generated["target"].long()
        crop = int(generated["crop"].sum()) if "crop" in generated else 0  # absent: the whole image, once
        probabilities = class_probabilities(scored, images, crop=crop or None)
        confidence = probabilities.gather(1, target.view(-1, 1).to(images.device)).flatten().cpu()
        best = torch.zeros(probabilities.shape[1], dtype=torch.float64).scatter_reduce(
            0, target.cpu(), confidence.double(), reduce="amax", include_self=True
        )
        queries = float(generated["queries"].sum()) if "queries" in generated else 0.0
        return confidence_metrics(best, queries=queries)


def class_probabilities(model: nn.Module, images: Tensor, *, crop: int | None, batch_size: int = 256) -> Tensor:
    """Softmax ``(N, K)`` of ``images`` (``[0, 1]``), averaged over ten crops of side ``crop`` when given.

    The fooling attack's fitness, and how :class:`ClassConfidence` rescores its images, so that ``eval``
    and ``robustlab fool`` report the same confidences. The ten crops are the official fitness's
    (``use_crops``, Caffe's ``oversample``): the four corners and the centre, and their horizontal mirrors.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4)).eval()
        >>> probs = class_probabilities(net, torch.rand(2, 3, 8, 8), crop=6)
        >>> probs.shape, bool(torch.allclose(probs.sum(dim=1), torch.ones(2)))
        (torch.Size([2, 4]), True)
    """
    parts = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            views = [chunk] if crop is None else _ten_crops(chunk, crop)
            parts.append(torch.stack([model(v).softmax(dim=1) for v in views]).mean(dim=0))
    return torch.cat(parts)


def _ten_crops(images: Tensor, crop: int) -> list[Tensor]:
    h, w = images.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (top, left)]
    crops = [images[..., i : i + crop, j : j + crop] for i, j in corners]
    return crops + [c.flip(-1) for c in crops]


def confidence_metrics(best: Tensor, *, queries: float) -> dict[str, float]:
    """The fooling paper's summary of per-class best confidences ``(K,)``: classes fooled at 99% and 99.99%.

    Example:
        >>> metrics = confidence_metrics(torch.tensor([1.0, 0.9921875, 0.5]), queries=10)
        >>> metrics["classes_fooled_99"], metrics["classes_fooled_9999"], metrics["median_confidence"]
        (2.0, 1.0, 0.9921875)
    """
    values = best.detach().cpu().double()
    return {
        "classes": float(len(values)),
        "classes_fooled_99": float((values >= 0.99).sum()),
        "classes_fooled_9999": float((values >= 0.9999).sum()),
        "median_confidence": statistics.median(values.tolist()) if len(values) else float("nan"),
        "queries": float(queries),
    }


@TASKS.register("captioning", summary="A captioner's captions: an attacker's target or keywords reached, BLEU to them.")
class Captioning(InputTask):
    """Scores caption attacks (Aafaq et al. 2021) with :func:`robustlab.caption_metrics.caption_metrics`.

    Captions are stored as the captioner's token ids, so a resumed run reads them back; they are compared
    with the captioner's own clean captions (BLEU to the original is BLEU to the clean caption). Inputs whose
    clean caption already reaches the goal are neither attacked nor scored: counting them would credit the
    attack with the dataset's own captions. Every metric is over the ``sources`` left (``*_clean`` says what
    fraction of all inputs was set aside), and success rates carry their 95% Wilson interval (``_low``, ``_high``).
    """

    name = "captioning"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("target_success", higher_is_better=False),
        Metric("keyword_success", higher_is_better=False),
        Metric("changed", higher_is_better=False),
        *(Metric(f"bleu{n}_target", higher_is_better=False, gated=n == 4, proportion=False) for n in (1, 2, 3, 4)),
        *(Metric(f"bleu{n}_original", higher_is_better=True, gated=n == 4, proportion=False) for n in (1, 2, 3, 4)),
        Metric("target_clean", higher_is_better=False, gated=False),
        Metric("keyword_clean", higher_is_better=False, gated=False),
        Metric("sources", higher_is_better=True, gated=False, proportion=False),
        *(
            Metric(f"{rate}_{end}", higher_is_better=False, gated=False)
            for rate in ("target_success", "keyword_success")
            for end in ("low", "high")
        ),
    )

    def __init__(self) -> None:
        self._attack: Any = None
        self._captioner: Any = None

    def bind(self, attack: Any, scored: nn.Module) -> Task:
        bound = Captioning()
        bound._attack, bound._captioner = attack, scored
        return bound

    def _tokens(self, scored: Any, x: Tensor) -> Tensor:
        return scored.encode_captions(scored.caption(x)).to(x.device)

    def _goal(self) -> dict[str, str | None]:
        return {key: getattr(self._attack, key, None) for key in ("target", "keyword")}

    def _decoded(self, tokens: Tensor) -> list[str]:
        return [self._captioner.vocab.decode(row) for row in tokens.tolist()]

    def clean(self, scored: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return {"caption": self._tokens(scored, x)}

    def attackable(self, clean: dict[str, Tensor], y: Tensor) -> Tensor:
        from robustlab.caption_metrics import goal_reached

        goal = self._goal()
        missing = [not goal_reached(c, **goal) for c in self._decoded(clean["caption"])]
        return torch.tensor(missing, dtype=torch.bool, device=y.device)

    def score(
        self, scored: nn.Module, x_adv: Tensor, y: Tensor, clean: dict[str, Tensor], attack: Any
    ) -> dict[str, Tensor]:
        return {"adv_caption": self._tokens(scored, x_adv)}

    def unattacked(self, clean: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        return {"adv_caption": clean["caption"].clone()}

    def aggregate(self, y: Tensor, clean: dict[str, Tensor], adversarial: dict[str, Tensor]) -> dict[str, float]:
        from robustlab.caption_metrics import caption_metrics
        from robustlab.intervals import wilson_interval

        clean_captions, adv_captions = self._decoded(clean["caption"]), self._decoded(adversarial["adv_caption"])
        goal = self._goal()
        source = self.attackable(clean, y).tolist()
        everything = caption_metrics(clean_captions, adv_captions, clean_captions, **goal)
        floors = {k: v for k, v in everything.items() if k in ("target_clean", "keyword_clean")}
        if not any(source):  # every input already reaches the goal: nothing to attack, nothing to credit
            return floors | {"sources": 0.0}
        kept = [[c for c, s in zip(captions, source, strict=True) if s] for captions in (clean_captions, adv_captions)]
        metrics = caption_metrics(kept[0], kept[1], kept[0], **goal) | floors | {"sources": float(sum(source))}
        for rate in ("target_success", "keyword_success"):
            if rate in metrics:
                metrics[f"{rate}_low"], metrics[f"{rate}_high"] = wilson_interval(metrics[rate], sum(source))
        return metrics
