"""Adversarial examples for a report's image grid, recomputed from the report's own config.

A report stores per-sample predictions but no images (a 1000-sample report would otherwise grow by
megabytes). The grid instead rebuilds the model, dataset and attack from ``report.config`` and
re-attacks a few samples the report says were broken. The model, data and budget are exactly those
of the run; the adversarial image itself is recomputed on its own, so for a randomized attack it may
differ from the one evaluated, and the grid shows the predictions on the recomputed image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from robustlab.attack import ATTACKS, AttackKind
from robustlab.components import ComponentSpec, load_builtin_components
from robustlab.data import load_dataset
from robustlab.data.base import iterate_batches
from robustlab.inputs import load_classifier
from robustlab.models.loading import ModelSpec
from robustlab.preprocessing import preprocessing_of
from robustlab.reports.plots import Example
from robustlab.reports.report import Report
from robustlab.runners import attack_and_score
from robustlab.tasks import Classification

__all__ = ["regenerate_examples"]


def regenerate_examples(report: Report, count: int = 4) -> tuple[str, list[Example]]:
    """Return a title and up to ``count`` examples, broken samples first, or an explanation and ``[]``.

    Only undefended blocks are used: a learned defense would have to be trained again just to draw
    pictures. The attack shown is the one that broke the most samples.

    Raises:
        RobustlabError: the model or data of the report cannot be loaded here (weights unavailable...).
    """
    config = report.config
    block = _undefended_block(report)
    if block is None or count <= 0:
        return "no undefended results in this report: no examples", []
    models = {ModelSpec(**spec).label(): ModelSpec(**spec) for spec in config["models"]}
    spec = models[block["model"]]
    position = max(range(len(block["attacks"])), key=lambda j: sum(block["attacks"][j]["success"]))
    shown: dict[str, Any] = block["attacks"][position]
    specs = [ComponentSpec(spec["name"], tuple(tuple(p) for p in spec["params"])) for spec in config["attacks"]]
    attack_spec = next(spec for spec in specs if spec.label() == shown["attack"])
    load_builtin_components()
    attack = attack_spec.build(ATTACKS)
    if attack.kind is not AttackKind.PERTURBATION:
        return f"{attack_spec.name} is a {attack.kind} attack: no per-input examples", []
    order = sorted(range(len(block["index"])), key=lambda i: not shown["success"][i])[:count]
    model = load_classifier(spec, config["data"], progress=False)
    dataset = load_dataset(
        config["data"], split="test", image_size=model.input_size, preprocessing=preprocessing_of(model)
    )
    indices = [block["index"][i] for i in order]
    (_, x, y), *_ = iterate_batches(dataset, indices, len(indices))
    task = Classification()
    clean = task.clean(model, x, y)
    everything = torch.ones_like(y, dtype=torch.bool)  # show each pair, even a sample the model got wrong
    result = attack_and_score(
        attack,
        model,
        model,
        task,
        x,
        y,
        clean,
        everything,
        torch.Generator().manual_seed(config["seed"]),
        keep_images=True,
    )
    examples = _pairs(indices, x, y, result["x_adv"], clean["pred"], result["adv_pred"], list(dataset.classes))
    title = f"{block['model']} / none / {shown['attack']} {shown['threat']} (recomputed from the report's config)"
    return title, examples


def _undefended_block(report: Report) -> dict[str, Any] | None:
    """The report's first per-sample block of an undefended classifier with attacks, if any."""
    return next(
        (b for b in report.samples if b["defense"] == "none" and b["classifies"] and b["attacks"]),
        None,
    )


def _pairs(
    indices: list[int], x: Tensor, y: Tensor, x_adv: Tensor, clean_pred: Tensor, adv_pred: Tensor, names: list[str]
) -> list[Example]:
    """One example per sample: its clean and adversarial images, with the label and predictions by class name."""

    def name(k: int) -> str:  # a model may predict more classes than the dataset names
        return names[k] if k < len(names) else str(k)

    return [
        Example(
            index=int(indices[i]),
            label=name(int(y[i])),
            clean=x[i],
            adversarial=x_adv[i],
            clean_pred=name(int(clean_pred[i])),
            adv_pred=name(int(adv_pred[i])),
        )
        for i in range(len(indices))
    ]
