"""``--task classification`` (a classifier behind each defense) and ``--task captioning`` (a captioner, likewise)."""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from torch import Tensor, nn

from robustlab.data.base import ImageDataset, iterate_batches
from robustlab.errors import ConfigError
from robustlab.inputs import input_note, load_classifier
from robustlab.models.loading import ImageClassifier, ModelSpec, check_logits
from robustlab.preflight import check_registered_models
from robustlab.victims.base import VICTIMS, EvalSettings, TargetRequest, Victim
from robustlab.victims.targets import Target, classifier_targets, prepare_defense

__all__ = ["Captioning", "Classification"]


@VICTIMS.register("classification", summary="A classifier behind each defense; accuracy, clean and robust.")
class Classification(Victim):
    """A classifier: one target per defense, attacked per threat mode (:func:`classifier_targets`)."""

    name = "classification"
    classifier_checks = True

    def check(self, config: EvalSettings) -> None:
        """Every registered architecture ``--model`` names exists (UnknownNameError lists the close matches)."""
        check_registered_models([spec.name for spec in config.models])

    def load(self, spec: ModelSpec, config: EvalSettings, *, progress: bool) -> nn.Module:
        return load_classifier(spec, config.data, progress=progress)

    def targets(self, request: TargetRequest) -> list[Target]:
        model, defense, config = request.model, request.defense, request.config
        prepare_defense(defense, model, config.train_data or config.data, seed=config.seed, progress=request.progress)
        targets = classifier_targets(
            model, defense, request.dataset, config.threat_modes, eot_samples=config.eot_samples, names=request.names
        )
        return [replace(target, task=self.task) for target in targets]

    def check_inputs(
        self, model: nn.Module, spec: ModelSpec, dataset: ImageDataset, indices: Tensor, config: EvalSettings
    ) -> list[str]:
        """The data's classes fit the model's; batches of 1, 2 and the batch size give float logits."""
        classifier = cast(ImageClassifier, model)
        if classifier.num_classes > 0 and dataset.num_classes > classifier.num_classes:
            raise ConfigError(
                f"{config.data} has {dataset.num_classes} classes but {classifier.name} predicts "
                f"{classifier.num_classes}: pass --num-classes {dataset.num_classes} with matching weights, "
                "or other --data"
            )
        first = indices[: config.batch_size]
        _, x, _ = next(iterate_batches(dataset, first, len(first)))
        device = next((t.device for t in [*model.parameters(), *model.buffers()]), x.device)
        half = check_logits(
            classifier, x.to(device), batch_size=config.batch_size, data_classes=dataset.num_classes, name=spec.label()
        )
        return [input_note(classifier, spec, config.data), *([half] if half else [])]


@VICTIMS.register("captioning", summary="A captioner behind each defense; exact match, BLEU and the attacks' goals.")
class Captioning(Classification):
    """A captioner (:func:`robustlab.captioning.load_captioner`), attacked like a classifier and scored by captions."""

    name = "captioning"
    task = "captioning"
    classifier_checks = False

    def check(self, config: EvalSettings) -> None:
        return None  # captioners are named by load_captioner, not the classifier registry

    def load(self, spec: ModelSpec, config: EvalSettings, *, progress: bool) -> nn.Module:
        from robustlab.captioning import load_captioner

        return load_captioner(spec.name, weights=spec.weights or "synth", progress=progress)

    def check_inputs(
        self, model: nn.Module, spec: ModelSpec, dataset: ImageDataset, indices: Tensor, config: EvalSettings
    ) -> list[str]:
        return []
