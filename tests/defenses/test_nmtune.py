"""NMTune: black-box (encoder untouched), each regulariser doing what it claims, and the evaluator path."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from robustlab.defenses.nmtune import (
    NMTune,
    NMTuneConfig,
    ResidualMLP,
    _view_pairs,
    covariance_penalty,
    nmtune_loss,
    top_singular_ratio,
    train_nmtune,
    tuned_spectra,
    view_features,
)
from torch import nn

from robustlab.components import ComponentSpec
from robustlab.data.synth import SynthDataset
from robustlab.defense import ThreatMode
from robustlab.encoders import ClassifierFeatures
from robustlab.errors import ConfigError, WeightsUnavailableError
from robustlab.evaluate import EvalConfig, Evaluator
from robustlab.reports.report import WORST_CASE
from robustlab.victims.downstream import DownstreamOptions

TINY = {"epochs": 4, "n_train": 512}


@pytest.fixture(scope="module")
def fitted(trained_model: nn.Module, claim_seed: int) -> tuple[NMTune, dict[str, torch.Tensor]]:
    """NMTune fitted on the trained default model's features, and the model's state before fitting."""
    before = {k: v.clone() for k, v in trained_model.state_dict().items()}
    defense = NMTune(**TINY).fit(
        trained_model,
        SynthDataset("train", n=512),
        generator=torch.Generator().manual_seed(claim_seed),
        progress=False,
    )
    return defense, before


def test_encoder_is_byte_identical_after_tuning(
    trained_model: nn.Module, fitted: tuple[NMTune, dict[str, torch.Tensor]]
) -> None:
    _, before = fitted
    after = trained_model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert value.dtype == after[key].dtype and value.numpy().tobytes() == after[key].numpy().tobytes(), key
    assert not trained_model.training


@pytest.mark.claim
def test_tuned_model_classifies_and_a_second_fit_loads_the_cache(
    trained_model: nn.Module,
    fitted: tuple[NMTune, dict[str, torch.Tensor]],
    synth_batch: tuple[torch.Tensor, ...],
    claim_seed: int,
    record_claim: Callable[[str, float], None],
) -> None:
    defense, _ = fitted
    x, y = synth_batch
    tuned = defense.wrap(trained_model)
    with torch.inference_mode():
        logits = tuned(x)
    # 4 epochs on 512 images of a clean, well-trained encoder's features: far above chance (10%).
    accuracy = (logits.argmax(1) == y).float().mean().item()
    record_claim("nmtune.tuned_accuracy", accuracy)
    assert accuracy >= 0.8
    again = NMTune(**TINY).fit(
        trained_model,
        SynthDataset("train", n=512),
        generator=torch.Generator().manual_seed(claim_seed),
        progress=False,
    )
    with torch.inference_mode():
        assert torch.equal(again.wrap(trained_model)(x), logits)


def test_wrap_refuses_before_fit_and_on_another_model(trained_model: nn.Module) -> None:
    with pytest.raises(WeightsUnavailableError):
        NMTune().wrap(trained_model)
    with pytest.raises(ConfigError):
        NMTune(batch_size=1)


def _fixed_batch(seed: int) -> tuple[ResidualMLP, torch.Tensor]:
    """A tuner and a batch of strongly correlated features (one shared factor plus small noise)."""
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(64, 1, generator=generator)
    features = factor @ torch.randn(1, 16, generator=generator) + 0.3 * torch.randn(64, 16, generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tuner = ResidualMLP(16)
    return tuner.train(), features


def _after_steps(tuner: ResidualMLP, loss_fn: object, features: torch.Tensor, steps: int = 10) -> None:
    """``steps`` small Adam steps (lr 1e-3) on ``loss_fn`` alone, on the same batch."""
    optimizer = torch.optim.Adam(tuner.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = loss_fn(tuner(features))  # type: ignore[operator]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.claim
def test_covariance_term_lowers_off_diagonal_energy(
    claim_seed: int, record_claim: Callable[[str, float], None]
) -> None:
    tuner, features = _fixed_batch(claim_seed)
    before = float(covariance_penalty(tuner(features)).detach())
    _after_steps(tuner, covariance_penalty, features)
    after = float(covariance_penalty(tuner(features)).detach())
    record_claim("nmtune.covariance_ratio", after / before)
    assert after < 0.5 * before, (before, after)  # measured: 17.6 -> 4.9


@pytest.mark.claim
def test_svd_term_raises_the_top5_ratio(claim_seed: int, record_claim: Callable[[str, float], None]) -> None:
    tuner, features = _fixed_batch(claim_seed)
    before = float(top_singular_ratio(tuner(features), 5).detach())
    _after_steps(tuner, lambda z: -top_singular_ratio(z, 5), features)
    after = float(top_singular_ratio(tuner(features), 5).detach())
    record_claim("nmtune.top5_ratio_gain", after - before)
    assert after > before + 0.005, (before, after)  # measured: 0.137 -> 0.152


def test_loss_is_cross_entropy_plus_weighted_terms() -> None:
    tuner, features = _fixed_batch(0)
    head = nn.Linear(16, 3)
    labels = torch.arange(64) % 3
    weak, strong = features, features.flip(0)
    plain, parts = nmtune_loss(
        tuner, head, weak, strong, labels, NMTuneConfig(mse_weight=0, cov_weight=0, svd_weight=0)
    )
    assert parts.keys() == {"ce"}
    full, parts = nmtune_loss(tuner, head, weak, strong, labels, NMTuneConfig())
    expected = parts["ce"] + 1.0 * parts["mse"] + 0.04 * parts["cov"] - 0.001 * parts["svd"]
    assert float(full.detach()) == pytest.approx(expected, rel=1e-5)
    assert parts["ce"] == pytest.approx(float(plain.detach()), rel=1e-5)


def _by_hand_loss(
    tuner: ResidualMLP,
    head: nn.Linear,
    tuned_view: torch.Tensor,
    frozen_view: torch.Tensor,
    weak: torch.Tensor,
    strong: torch.Tensor,
    labels: torch.Tensor,
) -> float:
    """CE over both views plus the mean squared gap of unit vectors, written out (tuner in eval mode)."""
    with torch.no_grad():
        logits = head(tuner(torch.cat([weak, strong])))
        log_p = logits - logits.exp().sum(dim=1, keepdim=True).log()
        ce = -log_p[torch.arange(len(logits)), torch.cat([labels, labels])].mean()
        a = tuner(tuned_view)
        a = a / a.norm(dim=1, keepdim=True)
        b = frozen_view / frozen_view.norm(dim=1, keepdim=True)
        return float(ce + ((a - b) ** 2).sum() / a.numel())


def test_consistency_pairs_the_strong_views_tuned_features_with_the_weak_views_frozen_ones() -> None:
    tuner, features = _fixed_batch(0)
    tuner.eval()  # batch norm on running statistics: tuner(strong) alone equals its half of the joint batch
    head = nn.Linear(16, 3)
    labels = torch.arange(64) % 3
    generator = torch.Generator().manual_seed(1)
    weak, strong = features, features + 0.8 * torch.randn(features.shape, generator=generator)
    config = NMTuneConfig(mse_weight=1.0, cov_weight=0, svd_weight=0)
    loss = float(nmtune_loss(tuner, head, weak, strong, labels, config)[0].detach())
    expected = _by_hand_loss(tuner, head, strong, weak, weak, strong, labels)
    assert loss == pytest.approx(expected, rel=1e-5)
    for tuned_view, frozen_view in ((weak, strong), (weak, weak), (strong, strong)):  # the wrong pairings
        assert abs(loss - _by_hand_loss(tuner, head, tuned_view, frozen_view, weak, strong, labels)) > 1e-3


def test_spectra_of_the_tuned_features_equal_hand_computed_values() -> None:
    # Rows u, v, v (after L2 normalisation; each already has zero mean): singular values sqrt(2) and 1.
    features = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0], [0.0, 0.0, 3.0, -3.0]])
    project = nn.Linear(4, 4, bias=False)  # keeps the first two dimensions: rows u, 0, 0, rank one
    project.weight.data = torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    spectra = tuned_spectra(project, features)
    p = [2**0.5 / (1 + 2**0.5), 1 / (1 + 2**0.5)]
    assert spectra["sve_before"] == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-7)
    assert spectra["lsvr_before"] == pytest.approx(p[0], abs=1e-7)
    assert spectra["sve_after"] == pytest.approx(0.0, abs=1e-9)
    assert spectra["lsvr_after"] == pytest.approx(1.0, abs=1e-9)


def test_each_epoch_pairs_two_distinct_views_and_every_pair_occurs() -> None:
    weak, strong = _view_pairs(4, 4000, torch.Generator().manual_seed(0))
    assert bool((weak != strong).all())
    assert len(set(zip(weak.tolist(), strong.tolist(), strict=True))) == 4 * 3  # every ordered pair is drawn
    again = _view_pairs(4, 4000, torch.Generator().manual_seed(1))
    assert not torch.equal(weak, again[0])  # another epoch's draw pairs other views


def _clustered_views(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen features of 512 samples in 5 Gaussian clusters (32-d), 4 noisy views each, and the labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(512) % 5
    clean = 2 * torch.randn(5, 32, generator=generator)[labels] + torch.randn(512, 32, generator=generator)
    views = torch.stack([clean + 0.3 * torch.randn(512, 32, generator=generator) for _ in range(4)])
    return clean, views, labels


def test_top5_ratio_after_training_falls_with_the_papers_weights() -> None:
    # The SVD term (weight 0.001) is meant to raise the top-5 share; after training, the covariance term
    # (0.04) pulls it down instead, and without the covariance term the SVD term moves it by < 1e-3.
    clean, views, labels = _clustered_views()

    def top5_after(**weights: float) -> float:
        tuner, _ = train_nmtune(views, labels, 5, NMTuneConfig(epochs=5, **weights), seed=0)
        with torch.no_grad():
            return float(top_singular_ratio(tuner(clean), 5))

    mlp_res = top5_after(mse_weight=0, cov_weight=0, svd_weight=0)
    assert top5_after() < mlp_res - 0.005  # measured 0.0872 vs 0.0982
    assert abs(top5_after(cov_weight=0) - mlp_res) < 1e-3  # measured 0.0982 vs 0.0982


def test_views_and_spectra_of_the_tuned_features(
    trained_model: nn.Module, fitted: tuple[NMTune, dict[str, torch.Tensor]]
) -> None:
    defense, _ = fitted
    views, labels = view_features(
        ClassifierFeatures(trained_model),
        SynthDataset("test", n=128),
        128,
        views=3,
        shift=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert views.shape == (3, 128, 128) and labels.shape == (128,)
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])  # independent augmentations
    tuner = defense.wrap(trained_model).tuner
    spectra = tuned_spectra(tuner, views[0])
    assert set(spectra) == {"sve_before", "lsvr_before", "sve_after", "lsvr_after"}
    assert all(0 < value < 128 for value in spectra.values())


def test_eval_with_nmtune_defense_on_the_default_model(trained_model: nn.Module) -> None:
    config = EvalConfig(
        defenses=(ComponentSpec("nmtune", tuple(TINY.items())),),
        attacks=(ComponentSpec("pgd", (("eps", 2 / 255), ("steps", 3))),),
        n=48,
        batch_size=48,
        diagnostics=False,
    )
    rows = Evaluator(progress=False).run(config).rows
    attacked = [row for row in rows if row.attack != WORST_CASE]
    assert {row.threat_mode for row in attacked} == {ThreatMode.TRANSFER.value, ThreatMode.ADAPTIVE.value}
    assert all(row.defense == "nmtune(epochs=4, n_train=512)" for row in rows)
    assert all(row.clean_acc >= 0.8 for row in attacked)
    adaptive = next(row for row in attacked if row.threat_mode == ThreatMode.ADAPTIVE.value)
    assert adaptive.robust_acc < adaptive.clean_acc  # white-box PGD through encoder and MLP does bite


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="with OMP_NUM_THREADS=1 the tuned size head reads 0.89 [0.79, 0.95] on 64 samples, under the 1.8 x chance "
    "bound (0.9) on a two-class head; it passes with two threads (CI)",
)
def test_nmtune_replaces_each_downstream_head_under_eval(trained_model: nn.Module) -> None:
    """``--task downstream --defense nmtune``: one tuning per head, on that head's labels, scored beside the heads."""
    heads = ("shape", "size")
    config = EvalConfig(
        defenses=(ComponentSpec("none"), ComponentSpec("nmtune", tuple(TINY.items()))),
        attacks=(ComponentSpec("pgd", (("eps", 4 / 255), ("steps", 3))),),
        task="downstream",
        victim_options=(DownstreamOptions(heads),),
        n=64,
        diagnostics=False,
    )
    rows = {(row.defense, row.task): row for row in Evaluator(progress=False).run(config).rows}
    tuned = "nmtune(epochs=4, n_train=512)"
    assert set(rows) == {(defense, f"downstream/{head}") for defense in ("none", tuned) for head in heads}
    for head, chance in (("shape", 0.1), ("size", 0.5)):
        row, plain = rows[(tuned, f"downstream/{head}")], rows[("none", f"downstream/{head}")]
        assert row.clean_acc is not None and plain.clean_acc is not None
        assert row.clean_acc > 1.8 * chance and row.clean_acc >= plain.clean_acc - 0.1, (head, row, plain)
    with pytest.raises(ConfigError, match="does not tune an encoder"):
        Evaluator(progress=False).run(replace(config, defenses=(ComponentSpec("quantize"),)))
