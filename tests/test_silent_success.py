"""No silent successes: every threat mode keeps each sample's first point that fools the scored model.

A defense that changes nothing must change no number, sample for sample, whichever model the attacker
differentiates; and a sample fooled in the middle of an attack's run (its decision flips back as the
perturbation grows) counts as broken under every threat mode, not only on the bare model.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from robustlab.components import ComponentSpec
from robustlab.data.base import DATASETS
from robustlab.defense import DEFENSES, Defense
from robustlab.evaluate import EvalConfig, Evaluator
from robustlab.models.loading import ModelSpec
from robustlab.reports.report import Report


class IdentityDefense(Defense):
    """Claims to change the model (so it gets transfer and adaptive rows) and does nothing."""

    def wrap(self, model: nn.Module, *, adaptive: bool = False) -> nn.Module:
        return model


def _per_sample(report: Report) -> dict[tuple[str, str, str], dict[str, list[Any]]]:
    """(defense, threat mode, attack) -> the per-sample predictions and successes."""
    return {
        (block["defense"], block["threat_mode"], attack["attack"]): {
            "adv_pred": attack["adv_pred"],
            "success": attack["success"],
        }
        for block in report.samples
        for attack in block["attacks"]
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "attack",
    [
        ComponentSpec("pgd", (("eps", 4 / 255), ("steps", 10))),
        ComponentSpec("apgd", (("eps", 4 / 255), ("steps", 20))),
        ComponentSpec("autoattack", (("eps", 4 / 255),)),
    ],
    ids=["pgd", "apgd", "autoattack"],
)
def test_a_defense_that_changes_nothing_changes_no_sample(
    trained_model: nn.Module, register: Any, attack: ComponentSpec
) -> None:
    register(DEFENSES, "identity-for-test", IdentityDefense)
    # At 4/255 PGD-10 breaks 6 of the first 8 samples: both kinds, and few survivors for AutoAttack's Square
    # (5000 queries each). At 2/255 none of the first 8 broke, and 1 of the first 16.
    n = 8
    config = EvalConfig(
        defenses=(ComponentSpec("none"), ComponentSpec("identity-for-test")),
        attacks=(attack,),
        n=n,
        diagnostics=False,
    )
    report = Evaluator(progress=False).run(config)
    samples = _per_sample(report)
    bare = samples[("none", "-", attack.label())]
    assert 0 < sum(bare["success"]) < n, "the comparison needs broken and robust samples"
    rows = {(row.defense, row.threat_mode): row for row in report.rows}
    for mode in ("transfer", "adaptive"):
        assert samples[("identity-for-test", mode, attack.label())] == bare, mode
        assert rows[("identity-for-test", mode)].robust_acc == rows[("none", "-")].robust_acc
        assert rows[("identity-for-test", mode)].success_rule == "first-fooling"


BAND = """
import torch
from torch import nn


class Band(nn.Module):
    '''Class 0, except class 1 while the mean pixel lies in (0.5 + lo, 0.5 + hi); every gradient raises the mean.

    From a grey 0.5 image, PGD without a random start (step 2/255, eps 8/255) raises the mean by 2/255 a step:
    with the band (3/255, 5/255) the second iterate is misclassified and the third and later ones are not.
    '''

    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        s = x.mean(dim=(1, 2, 3)) - 0.5
        inside = ((s > self.lo) & (s < self.hi)).float()
        value = torch.stack([1 - 2 * inside, torch.zeros_like(s), -5 + 0 * s, -5 + 0 * s], dim=1)
        slope = torch.tensor([-1.0, 1.0, 0.0, 0.0])
        return value.detach() + 100 * (s - s.detach())[:, None] * slope


def banded():
    return Band(3 / 255, 5 / 255)


def never():
    return Band(1.0, 1.0)
"""


class PlantBand(Defense):
    """A defense whose defended model is fooled mid-trajectory, in front of any model (the bare one never is)."""

    def wrap(self, model: nn.Module, *, adaptive: bool = False) -> nn.Module:
        from band_models import banded  # type: ignore[import-not-found]

        defended: nn.Module = banded().eval()
        return defended


class Grey:
    """Eight grey 0.5 images of class 0 (of 4)."""

    num_classes = 4
    classes = ("a", "b", "c", "d")

    def __init__(self, arg: str | None = None, *, split: str = "test", image_size: int | None = None) -> None:
        self.size = image_size or 32

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return torch.full((3, self.size, self.size), 0.5), 0


@pytest.fixture
def band(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, register: Any) -> str:
    (tmp_path / "band_models.py").write_text(textwrap.dedent(BAND))
    monkeypatch.syspath_prepend(str(tmp_path))
    register(DATASETS, "grey-for-test", Grey)
    register(DEFENSES, "identity-for-test", IdentityDefense)
    register(DEFENSES, "plant-band-for-test", PlantBand)
    return "band_models"


@pytest.mark.parametrize(
    ("factory", "defense"),
    [("banded", "none"), ("banded", "identity-for-test"), ("never", "plant-band-for-test")],
)
def test_a_sample_fooled_mid_trajectory_is_broken_under_every_threat_mode(
    band: str, factory: str, defense: str
) -> None:
    pgd = ComponentSpec("pgd", (("steps", 10), ("random_start", False), ("step_size", 2 / 255)))
    config = EvalConfig(
        models=(ModelSpec(f"{band}:{factory}"),),
        defenses=(ComponentSpec(defense),),
        attacks=(pgd,),
        data="grey-for-test",
        n=8,
        diagnostics=False,
    )
    rows = Evaluator(progress=False).run(config).rows
    assert {row.threat_mode for row in rows} == ({"-"} if defense == "none" else {"transfer", "adaptive"})
    for row in rows:
        assert row.clean_acc == 1.0
        assert row.robust_acc == 0.0, row
        assert row.success_rule == "first-fooling"
