"""robustlab's APGD loop and AutoAttack: early stopping and batching change no sample's result."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from robustlab.attacks.autoattack._apgd import APGDAttack, APGDConfig, RowLoop, apgd
from robustlab.attacks.autoattack.apgd import APGD
from robustlab.attacks.autoattack.apgdt import APGDT
from robustlab.attacks.autoattack.ensemble import FABT, AutoAttack
from robustlab.attacks.autoattack.square import Square

from robustlab.attack import ATTACKS, Attack
from robustlab.components import ComponentSpec
from robustlab.errors import ConfigError
from robustlab.evaluate import EvalConfig, Evaluator, run_config_hash
from robustlab.store import SqliteStore
from robustlab.threat import Norm

N = 32


@pytest.mark.parametrize(
    "config",
    [
        APGDConfig(Norm.LINF, 2 / 255, steps=25, loss="ce"),
        APGDConfig(Norm.L2, 0.25, steps=25, loss="dlr", n_restarts=2),
        APGDConfig(Norm.LINF, 2 / 255, steps=10, loss="dlr-targeted", n_targets=3),
        APGDConfig(Norm.LINF, 2 / 255, steps=20, loss="dlr-targeted", n_targets=3, focus=1),
    ],
    ids=["linf-ce", "l2-dlr-restarts", "linf-targeted", "linf-targeted-focus"],
)
def test_apgd_early_stop_returns_the_same_points(
    synth_batch: tuple[torch.Tensor, torch.Tensor], config: APGDConfig, same_with_early_stop: Callable[..., Any]
) -> None:
    # A sample stopped at its first fooling iterate is the one the full run reports: same points, same samples.
    x, y = synth_batch[0][:N], synth_batch[1][:N]
    same_with_early_stop(apgd, x, y, config, seed=3, max_rows=64)


def test_a_sample_does_not_depend_on_its_batch(
    trained_model: torch.nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Own random stream per sample and per-sample state: the same sample gives the same point in any batch.
    x, y = synth_batch[0][:N], synth_batch[1][:N]
    config = APGDConfig(Norm.LINF, 2 / 255, steps=10, loss="dlr-targeted", n_targets=2)
    whole, _ = apgd(trained_model, x, y, config, RowLoop(seed=5, early_stop=True, max_rows=2 * N))
    part, _ = apgd(
        trained_model, x[8:16], y[8:16], config, RowLoop(seed=5, early_stop=True, max_rows=4, index=torch.arange(8, 16))
    )
    assert torch.allclose(whole[8:16], part, atol=1e-6)


class _SmallAutoAttack(AutoAttack):
    """The standard ensemble's order and components with few iterations: the bookkeeping under test is the same."""

    def components(self) -> list[tuple[str, Attack]]:
        eps = self.eps
        return [
            ("apgd-ce", APGD(eps=eps, steps=10)),
            ("apgd-t", APGDT(eps=eps, steps=5, n_target_classes=3)),
            ("fab-t", FABT(eps=eps, norm=Norm.LINF, steps=5, n_restarts=1, n_target_classes=2)),
            ("square", Square(eps=eps, n_queries=20, rescale_schedule=False)),
        ]


def test_autoattack_early_stop_same_samples_and_breakdown(
    trained_model: torch.nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = synth_batch[0][:N], synth_batch[1][:N]
    results = []
    for early_stop in (True, False):
        attack = _SmallAutoAttack(eps=2 / 255)
        x_adv = attack(trained_model, x, y, generator=torch.Generator().manual_seed(0), early_stop=early_stop)
        with torch.no_grad():
            robust = trained_model(x_adv).argmax(1) == y
            correct = trained_model(x).argmax(1) == y
        # Every sample the model gets right and the ensemble breaks is counted once, by the component that broke it.
        assert sum(attack.broken.values()) == int(correct.sum() - robust.sum())
        results.append((x_adv, robust, attack.broken))
    assert torch.equal(results[0][0], results[1][0]), "every component returns the same point with or without stops"
    assert torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]
    assert results[0][2]["apgd-ce"] > 0 and results[0][1].any()


class _TargetedFirst(AutoAttack):
    """FAB-T and APGD-T ahead of Square, with few iterations: at 4/255 each of the two breaks samples."""

    def components(self) -> list[tuple[str, Attack]]:
        eps = self.eps
        return [
            ("fab-t", FABT(eps=eps, norm=Norm.LINF, steps=5, n_restarts=1, n_target_classes=2)),
            ("apgd-t", APGDT(eps=eps, steps=5, n_target_classes=3)),
            ("square", Square(eps=eps, n_queries=20, rescale_schedule=False)),
        ]


def test_an_autoattack_sample_does_not_depend_on_its_batch(
    trained_model: torch.nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Every component draws from the sample's own seed: the ensemble's point for a sample is the same in any batch.
    x, y = synth_batch[0][:N], synth_batch[1][:N]
    seeds = torch.arange(100, 100 + N)
    attack = _TargetedFirst(eps=4 / 255)
    whole = attack(trained_model, x, y, early_stop=True, sample_seeds=seeds)
    whole_broken_by = attack.broken_by.clone()
    assert {-1, 0, 1} <= set(whole_broken_by.tolist()), "the budget should leave samples to each component"
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))[: N // 2]  # other batch, other positions
    part = attack(trained_model, x[order], y[order], early_stop=True, sample_seeds=seeds[order])
    assert torch.equal(attack.broken_by, whole_broken_by[order])
    assert torch.allclose(part, whole[order], atol=1e-6)


def test_versions_follow_the_reference() -> None:
    rand = ATTACKS.get("autoattack-rand").factory(eps=8 / 255)
    plus = ATTACKS.get("autoattack-plus").factory(eps=8 / 255)
    standard = ATTACKS.get("autoattack").factory(eps=8 / 255)
    assert [name for name, _ in standard.components()] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [name for name, _ in plus.components()] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    rand_parts = [attack for _, attack in rand.components()]
    assert [(a.loss, a.eot, a.n_restarts) for a in rand_parts if isinstance(a, APGD)] == [("ce", 20, 1), ("dlr", 20, 1)]
    assert rand.averages_draws and not standard.averages_draws  # rand's 20 draws are not multiplied by an EOT wrapper
    assert [a.n_restarts for _, a in plus.components() if isinstance(a, APGD)] == [5, 5]
    square = dict(standard.components())["square"]
    assert square.config()["rescale_schedule"] is False and square.config()["n_queries"] == 5000


@pytest.mark.slow  # evaluates the default model, trained in the session
def test_report_row_has_the_breakdown(register: Any) -> None:
    # Through the evaluator: the row says how many samples each component broke, and they add up.
    register(ATTACKS, "test-small-autoattack", _SmallAutoAttack, stochastic=True)
    spec = ComponentSpec("test-small-autoattack", (("eps", 2 / 255),))
    row = Evaluator(progress=False).run(EvalConfig(attacks=(spec,), n=N, batch_size=16)).rows[0]
    values = row.metric_values()
    counts = [values[f"broken_by_{name}"] for name in ("apgd-ce", "apgd-t", "fab-t", "square")]
    assert counts[0] > 0
    assert sum(counts) == round(N * (row.clean_acc - row.robust_acc))


def test_dlr_on_too_few_classes_is_a_config_error(synth_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    three = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3)).eval()
    x, y = synth_batch[0][:2], torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match="at least 4 classes"):
        APGDT(steps=2)(three, x, y)


class _Killed(Exception):
    """Stands for the kill: raised by the component the run dies in."""


@pytest.mark.slow  # evaluates the default model, trained in the session
def test_a_killed_run_resumes_mid_ensemble(register: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The run dies in Square on its first batch, after APGD-CE, APGD-T and FAB-T saved what they broke. The resumed
    # run runs none of that again, and ends with the uninterrupted run's report, sample for sample.
    register(ATTACKS, "test-small-autoattack", _SmallAutoAttack, stochastic=True)
    config = EvalConfig(attacks=(ComponentSpec("test-small-autoattack", (("eps", 2 / 255),)),), n=N, batch_size=16)
    apgd_calls = Counter[str]()
    apgd_run = APGDAttack._run

    def counted(self: APGDAttack, *args: Any, **kwargs: Any) -> torch.Tensor:
        apgd_calls[phase] += 1
        return apgd_run(self, *args, **kwargs)

    def killed(self: Square, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise _Killed

    monkeypatch.setattr(APGDAttack, "_run", counted)
    phase = "uninterrupted"
    fresh = Evaluator(progress=False).run(config)

    path = tmp_path / "store.sqlite"
    with monkeypatch.context() as dying:
        dying.setattr(Square, "_run", killed)
        phase = "killed"
        store = SqliteStore(path, config_hash=run_config_hash(config), resume=False)
        with pytest.raises(_Killed):
            Evaluator(store, progress=False).run(config)
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        saved = sorted(key.rsplit("/", 1)[1] for (key,) in db.execute("SELECT key FROM units"))
    assert saved == ["0-apgd-ce", "1-apgd-t", "2-fab-t", "b0"], "the kill should land in Square, after three saves"

    phase = "resumed"
    store = SqliteStore(path, config_hash=run_config_hash(config), resume=True)
    resumed = Evaluator(store, progress=False).run(config)
    with contextlib.closing(sqlite3.connect(path)) as db:
        keys = [key for (key,) in db.execute("SELECT key FROM units")]
    store.close()
    assert apgd_calls["killed"] > 0 and apgd_calls["resumed"] == apgd_calls["uninterrupted"] - apgd_calls["killed"]
    assert resumed.samples == fresh.samples
    assert [r.metric_values() for r in resumed.rows] == [r.metric_values() for r in fresh.rows]
    assert not [key for key in keys if "/p0+" in key], "the components' saves outlive their batch"
