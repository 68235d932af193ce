"""Victim kinds are plug-ins: a kind registered from the tests alone runs through ``robustlab eval --task NAME``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import Tensor, nn

from robustlab.cli import cli
from robustlab.data.base import ImageDataset
from robustlab.errors import ConfigError
from robustlab.evaluate import EvalConfig
from robustlab.inputs import load_classifier
from robustlab.models.loading import ModelSpec
from robustlab.reports.report import Report
from robustlab.victims import NO_MODE, VICTIMS, Target, TargetRequest, Victim, VictimOptions, frozen
from robustlab.victims.base import EvalSettings
from robustlab.victims.downstream import DownstreamOptions


class Halves(nn.Module):
    """Two classes from ten: is the shape among the first five or the last five (the larger logit of each half)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(x)
        return torch.stack([logits[:, :5].amax(dim=1), logits[:, 5:].amax(dim=1)], dim=1)


class HalvesData:
    """A ten-class dataset labelled by half: ``y // 5``."""

    classes = ("first five", "last five")
    num_classes = 2

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x, y = self.dataset[index]
        return x, int(y) // 5

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        x, y = self.dataset.get_batch(indices)  # type: ignore[attr-defined]
        return x, y // 5


class HalvesVictim(Victim):
    """The default classifier asked a coarser question: a kind of victim the core knows nothing of.

    Its targets are scored by the classification task (accuracy on the two halves).
    """

    name = "halves"

    def load(self, spec: ModelSpec, config: EvalSettings, *, progress: bool) -> nn.Module:
        return load_classifier(spec, config.data, progress=progress)

    def targets(self, request: TargetRequest) -> list[Target]:
        if request.defense.changes_model:
            raise ConfigError(
                f"the halves task scores the model undefended; --defense {request.names[1]} is not supported"
            )
        scored = frozen(Halves(request.model))
        return [
            Target(
                scored=scored,
                attacked={NO_MODE: scored},
                fit_on={NO_MODE: scored},
                dataset=HalvesData(request.dataset),
                names=request.names,
            )
        ]  # type: ignore[arg-type]


def test_a_victim_kind_registered_by_a_test_runs_through_eval(
    register: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_model: nn.Module
) -> None:
    register(VICTIMS, "halves", HalvesVictim)
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--task", "halves", "--attack", "pgd", "--attack", "noise", "--eps", "8/255", "-n", "64", "-q"]
    result = CliRunner().invoke(cli, [*args, "--out", "run.json"])
    assert result.exit_code == 0, result.output
    rows = {row.attack: row for row in Report.from_json(tmp_path / "run.json").rows}
    assert {row.task for row in rows.values()} == {"classification"}, "scored by the classification task"
    pgd, noise = rows["pgd"], rows["noise"]
    assert pgd.clean_acc is not None and pgd.clean_acc >= 0.95, "two classes of a 99% ten-class model"
    assert pgd.robust_acc is not None and noise.robust_acc is not None
    assert pgd.robust_acc < noise.robust_acc - 0.3, "PGD through the kind's own scored module moves it"
    assert "halves" in CliRunner().invoke(cli, ["list"]).output


def test_an_unknown_task_is_one_line() -> None:
    with pytest.raises(ConfigError, match="task 'halfs' is unknown; known: captioning, classification, downstream"):
        EvalConfig(task="halfs")
    result = CliRunner().invoke(cli, ["eval", "--task", "halfs", "-n", "4"])
    assert result.exit_code == 2 and "task 'halfs' is unknown" in result.output


@dataclass(frozen=True)
class SplitOptions(VictimOptions):
    """A plug-in kind's own option: where the halves split."""

    split: int = 5


class SplitVictim(HalvesVictim):
    """:class:`HalvesVictim` with an option of its own, which the evaluator does not know."""

    options = SplitOptions

    def check(self, config: EvalSettings) -> None:
        if not 0 < config.options_of(SplitOptions).split < 10:
            raise ConfigError(f"split {config.options_of(SplitOptions).split} leaves a half empty")


def test_a_victim_kind_brings_its_own_options(register: Any) -> None:
    register(VICTIMS, "split", SplitVictim)
    config = EvalConfig(task="split", victim_options=(SplitOptions(split=3),))
    assert config.options_of(SplitOptions).split == 3
    assert config.options_of(DownstreamOptions) == DownstreamOptions(), "another kind's options: its defaults"
    recorded = config.to_dict()
    assert recorded["split"] == 3 and recorded["heads"] == list(DownstreamOptions().heads)
    assert EvalConfig(task="split").options_of(SplitOptions).split == 5
    with pytest.raises(ConfigError, match="split 0 leaves a half empty"):
        EvalConfig(task="split", victim_options=(SplitOptions(split=0),))
    with pytest.raises(ConfigError, match="given twice"):
        EvalConfig(task="split", victim_options=(SplitOptions(), SplitOptions()))


def test_options_of_an_unregistered_kind_are_refused() -> None:
    with pytest.raises(ConfigError, match="SplitOptions: the options of no registered victim kind"):
        EvalConfig(victim_options=(SplitOptions(),))
