"""Evaluator semantics: worst case, bookkeeping, determinism, resume."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack, CallContext
from robustlab.components import ComponentSpec
from robustlab.defense import ThreatMode
from robustlab.errors import ConfigError
from robustlab.evaluate import EvalConfig, Evaluator, run_config_hash
from robustlab.reports.report import WORST_CASE, Report
from robustlab.store import SqliteStore
from robustlab.threat import Norm, ThreatModel

BASE = EvalConfig(  # 4/255: at 2/255 three PGD steps fool none of 200 samples of the model torch 2.14 trains
    attacks=(ComponentSpec("fgsm", (("eps", 4 / 255),)), ComponentSpec("pgd", (("eps", 4 / 255), ("steps", 3)))),
    n=200,
    batch_size=64,
)


@dataclass(kw_only=True, eq=False)
class Spy(Attack):
    """Records every sample it is asked to attack and breaks every third one by flipping to noise."""

    calls: ClassVar[list[Tensor]] = []  # class-level log shared with the test
    fail_after: ClassVar[int | None] = None
    eps: float = 0.5

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.LINF, self.eps)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        if Spy.fail_after is not None and len(Spy.calls) >= Spy.fail_after:
            raise KeyboardInterrupt("simulated kill")
        Spy.calls.append(y.clone())
        x_adv = x.clone()
        x_adv[::3] = (x[::3] + self.eps * torch.randn(x[::3].shape, generator=context.generator).sign()).clamp(0, 1)
        return x_adv


@pytest.fixture
def spy(register) -> type[Spy]:  # type: ignore[no-untyped-def]
    Spy.calls = []
    Spy.fail_after = None
    register(ATTACKS, "spy", Spy)
    return Spy


def test_worst_case_never_above_any_attack(trained_model: nn.Module) -> None:
    rows = Evaluator(progress=False).run(BASE).rows
    attacks = [row for row in rows if row.attack != WORST_CASE]
    worst = next(row for row in rows if row.attack == WORST_CASE)
    assert len(attacks) == 2
    assert worst.robust_acc <= min(row.robust_acc for row in attacks)
    assert all(row.robust_acc < row.clean_acc for row in attacks)


def test_per_sample_results_add_up(trained_model: nn.Module) -> None:
    report = Evaluator(progress=False).run(BASE)
    block = report.samples[0]
    label, clean_pred = torch.tensor(block["label"]), torch.tensor(block["clean_pred"])
    correct = clean_pred == label
    for row, result in zip([r for r in report.rows if r.attack != WORST_CASE], block["attacks"], strict=True):
        success = torch.tensor(result["success"])
        assert not (success & ~correct).any(), "a misclassified sample cannot be an attack success"
        assert row.clean_acc == correct.double().mean().item()
        assert row.robust_acc == (correct & ~success).double().mean().item()
        assert row.attack_success_rate == success.sum().item() / correct.sum().item()
        assert (torch.tensor(result["adv_pred"])[success] != label[success]).all()


def test_only_correct_samples_are_attacked(spy: type[Spy], trained_model: nn.Module) -> None:
    config = replace(BASE, attacks=(ComponentSpec("spy"),))
    report = Evaluator(progress=False).run(config)
    attacked = sum(len(c) for c in spy.calls)
    assert attacked == round(report.rows[0].clean_acc * report.rows[0].n)
    assert report.rows[0].robust_acc < report.rows[0].clean_acc


class Recorder(Attack):
    """Returns its input and records the first draw of its generator and of the global RNG."""

    draws: list[tuple[float, float]] = []  # noqa: RUF012

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.LINF, 0.0)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        Recorder.draws.append((torch.rand(1, generator=context.generator).item(), torch.rand(1).item()))
        return x.clone()


def test_same_seed_same_numbers_other_seed_other_numbers(register, trained_model: nn.Module) -> None:  # type: ignore[no-untyped-def]
    register(ATTACKS, "recorder", Recorder)
    config = replace(BASE, attacks=(ComponentSpec("pgd", (("eps", 1 / 255), ("steps", 2))), ComponentSpec("recorder")))
    runs = []
    for seed in (0, 0, 1):
        Recorder.draws = []
        runs.append((Evaluator(progress=False).run(replace(config, seed=seed)), Recorder.draws))
    (first, first_draws), (second, second_draws), (_, other_draws) = runs
    assert first.samples == second.samples
    assert first_draws == second_draws
    assert len(set(first_draws)) == len(first_draws), "every batch gets its own stream"
    assert not set(first_draws) & set(other_draws), "another seed gives other streams, global RNG included"


def test_resume_after_kill_loses_nothing(spy: type[Spy], tmp_path: Path, trained_model: nn.Module) -> None:
    config = replace(BASE, attacks=(ComponentSpec("spy"),), n=256, batch_size=64)
    expected = Evaluator(progress=False).run(config)
    spy.calls, spy.fail_after = [], 2
    store_path = tmp_path / "store.sqlite"
    store = SqliteStore(store_path, config_hash=run_config_hash(config), resume=False)
    with pytest.raises(KeyboardInterrupt):
        Evaluator(store, progress=False).run(config)
    store.close()
    spy.fail_after = None
    done_before = len(spy.calls)
    resumed = Evaluator(SqliteStore(store_path, config_hash=run_config_hash(config), resume=True), progress=False)
    report = resumed.run(config)
    assert done_before == 2 and len(spy.calls) == 4, "the two finished batches must not be attacked again"
    assert report.samples == expected.samples
    assert [r.robust_acc for r in report.rows] == [r.robust_acc for r in expected.rows]


def test_store_refuses_other_config(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "s.sqlite", config_hash="a", resume=False).close()
    with pytest.raises(ConfigError, match="different configuration"):
        SqliteStore(tmp_path / "s.sqlite", config_hash="b", resume=True)
    with pytest.raises(ConfigError, match="--resume"):
        SqliteStore(tmp_path / "s.sqlite", config_hash="a", resume=False)


def test_report_round_trip(tmp_path: Path, trained_model: nn.Module) -> None:
    report = Evaluator(progress=False).run(replace(BASE, n=64))
    report.to_json(tmp_path / "r.json")
    again = Report.from_json(tmp_path / "r.json")
    assert again.rows == report.rows
    assert again.samples == report.samples


def test_rejects_bad_grid() -> None:
    with pytest.raises(ConfigError, match="positive"):
        EvalConfig(n=0)


def test_fidelity_of_preprocessing_defenses(tmp_path: Path, trained_model: nn.Module) -> None:
    from robustlab.data.synth import SynthDataset
    from robustlab.metrics import psnr

    config = replace(
        BASE,
        defenses=(ComponentSpec("none"), ComponentSpec("quantize", (("levels", 4),))),
        attacks=(ComponentSpec("none"),),
        n=40,
        batch_size=16,
        threat_modes=(ThreatMode.TRANSFER,),
        diagnostics=False,
    )
    report = Evaluator(progress=False).run(config)
    (fidelity,) = report.fidelity  # none changes no pixel: no entry for it
    report.to_json(tmp_path / "r.json")
    assert Report.from_json(tmp_path / "r.json").fidelity == report.fidelity
    x, _ = SynthDataset("test").get_batch(torch.arange(40))
    expected = psnr((x * 3).round() / 3, x)
    assert (fidelity.defense, fidelity.n) == ("quantize(levels=4)", 40)
    assert fidelity.mean_psnr_db == pytest.approx(float(expected.mean()), rel=1e-5)
    assert fidelity.worst_psnr_db == pytest.approx(float(expected.min()), rel=1e-5)
    assert fidelity.worst_psnr_db < 25  # 4 levels visibly damage the image
