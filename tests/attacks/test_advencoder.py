"""AdvEncoder: one perturbation or patch for every input, inside its budget and the box, and far above noise."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from robustlab.attacks.advencoder import AdvEncoder, high_low_energy_ratio, patch_box
from robustlab.attacks.uap import UniversalNoise
from torch import nn

from robustlab.attack import ATTACKS
from robustlab.cache import save_weights
from robustlab.data.synth import SynthConfig, SynthDataset
from robustlab.encoders import HeadConfig, train_head
from robustlab.errors import ConfigError, ThreatModelViolation
from robustlab.ssl import SSLConfig, trained_simclr

TINY = SSLConfig(width=8, steps=60, batch_size=64, n_images=512)  # the same tiny encoder as tests/test_ssl.py
FIT = {"epochs": 5, "n_fit": 256, "batch_size": 64, "noise_batch": 16, "lr": 2e-3}
SURROGATE = SynthConfig(backgrounds=("sky", "grass"))  # the attacker's data ...
DOWNSTREAM = SynthConfig(backgrounds=("stripes", "checker", "bricks"))  # ... never shows these backgrounds
TASKS = (("shape", 10), ("color", 8), ("size", 2))
EPS = 10 / 255  # the default budget


@pytest.fixture(scope="module")
def encoder() -> nn.Module:
    return trained_simclr(TINY, progress=False)


@pytest.fixture(scope="module")
def surrogate() -> SynthDataset:
    return SynthDataset("train", config=SURROGATE)


@pytest.fixture(scope="module")
def downstream(encoder: nn.Module) -> tuple[torch.Tensor, dict[str, nn.Module]]:
    """Test images on the unseen backgrounds, and a head per task trained on the first 384 of them."""
    data = SynthDataset("test", config=DOWNSTREAM)
    index = torch.arange(640)
    x, _ = data.get_batch(index)
    attrs = data.attributes(index)
    with torch.no_grad():
        features = encoder(x[:384])
    heads = {
        task: train_head(features, attrs[task][:384], HeadConfig(task=task, steps=150), classes)
        for task, classes in TASKS
    }
    return x[384:], heads


@pytest.fixture(scope="module")
def fitted(encoder: nn.Module, surrogate: SynthDataset, claim_seed: int) -> dict[str, AdvEncoder]:
    """AdvEncoder-PER (paper weights, and a 1000x high-frequency term), and AdvEncoder-PAT, fitted on the surrogate."""
    return {
        name: AdvEncoder(**FIT, **extra).fit(
            encoder, surrogate, generator=torch.Generator().manual_seed(claim_seed), progress=False
        )
        for name, extra in (("per", {}), ("per-hfc1000", {"hfc": 1000.0}), ("pat", {"mode": "pat"}))
    }


def _fooling_rate(encoder: nn.Module, head: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> float:
    """The paper's attack success rate: the share of inputs whose downstream prediction changed."""
    with torch.no_grad():
        return (head(encoder(x)).argmax(1) != head(encoder(x_adv)).argmax(1)).float().mean().item()


def test_registered_with_paper_defaults() -> None:
    attack = ATTACKS.get("advencoder").factory()
    assert attack.kind.value == "universal" and attack.threat.describe() == "linf 10/255"
    assert (attack.alpha, attack.temperature, attack.lr, attack.epochs) == (5.0, 0.1, 2e-4, 20)
    with pytest.raises(ConfigError, match="mode"):
        AdvEncoder(mode="gan_patch")


@pytest.mark.slow
def test_perturbation_is_one_delta_within_budget_and_box(
    encoder: nn.Module, fitted: dict[str, AdvEncoder], downstream: tuple[torch.Tensor, dict[str, nn.Module]]
) -> None:
    attack = fitted["per"]
    delta = attack.fitted()["delta"]
    assert delta.shape == (1, 3, 32, 32) and float(delta.abs().max()) <= 10 / 255 + 1e-7
    assert float(delta.abs().max()) > 9 / 255, "the budget is used"
    x, _ = downstream
    x_adv = attack(encoder, x, torch.zeros(len(x), dtype=torch.long))
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    inside = ((x + delta) >= 0) & ((x + delta) <= 1)  # where the box does not clip, every input got delta exactly
    assert torch.equal((x_adv - x)[inside], (x + delta).sub(x)[inside])


@pytest.mark.slow
def test_patch_covers_its_area_at_a_fixed_place_with_values_in_the_box(
    encoder: nn.Module, fitted: dict[str, AdvEncoder], downstream: tuple[torch.Tensor, dict[str, nn.Module]]
) -> None:
    attack = fitted["pat"]
    assert attack.threat.norm.value == "patch"
    patch, mask = attack.fitted()["patch"], attack.fitted()["mask"]
    top, left, side = patch_box(32, 32, 0.03)
    assert (top, left, side) == (20, 20, 5) and float(mask.sum()) == side * side <= 0.03 * 32 * 32
    assert float(mask[..., top : top + side, left : left + side].min()) == 1
    assert float(patch.min()) >= 0 and float(patch.max()) <= 1
    x, _ = downstream
    x_adv = attack(encoder, x, torch.zeros(len(x), dtype=torch.long))
    assert torch.equal(x_adv * (1 - mask), x * (1 - mask)), "nothing outside the patch changes"
    assert torch.equal(
        x_adv[:, :, top : top + side, left : left + side],
        patch[..., top : top + side, left : left + side].expand(len(x), -1, -1, -1),
    )


def test_out_of_box_patches_and_oversized_masks_are_rejected() -> None:
    attack = AdvEncoder(mode="pat")
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :5, :5] = 1
    with pytest.raises(ThreatModelViolation, match=r"leave \[0, 1\]"):
        attack.load_fitted({"patch": torch.full((1, 3, 32, 32), 2.6) * mask, "mask": mask})  # the reference's range
    with pytest.raises(ThreatModelViolation, match="covers"):
        attack.load_fitted({"patch": torch.zeros(1, 3, 32, 32), "mask": torch.ones(1, 1, 32, 32)})


@pytest.mark.slow
def test_saved_perturbation_reloads_bit_identically(
    encoder: nn.Module,
    fitted: dict[str, AdvEncoder],
    tmp_path: Path,
    downstream: tuple[torch.Tensor, dict[str, nn.Module]],
) -> None:
    x, _ = downstream
    y = torch.zeros(len(x), dtype=torch.long)
    for mode in ("per", "pat"):
        save_weights(tmp_path / f"{mode}.safetensors", fitted[mode].fitted())
        reloaded = AdvEncoder(mode=mode, load=str(tmp_path / f"{mode}.safetensors"))
        reloaded.fit(encoder, [], generator=torch.Generator(), progress=False)
        assert torch.equal(reloaded(encoder, x, y), fitted[mode](encoder, x, y))


@pytest.mark.slow
def test_fit_is_deterministic_given_the_generator(encoder: nn.Module, surrogate: SynthDataset) -> None:
    small = {**FIT, "epochs": 1, "n_fit": 64}
    a, b = (
        AdvEncoder(**small).fit(encoder, surrogate, generator=torch.Generator().manual_seed(3), progress=False)
        for _ in range(2)
    )
    assert torch.equal(a.fitted()["delta"], b.fitted()["delta"])


@pytest.mark.slow
def test_diagnostics_give_each_terms_gradient_and_the_saturated_share_per_epoch(
    encoder: nn.Module, surrogate: SynthDataset
) -> None:
    small = {**FIT, "epochs": 3, "n_fit": 128}
    fits = {
        bound: AdvEncoder(**small, bound=bound).fit(
            encoder, surrogate, generator=torch.Generator().manual_seed(0), progress=False
        )
        for bound in ("clamp", "tanh")
    }
    for attack in fits.values():
        assert len(attack.diagnostics) == 3
        for entry in attack.diagnostics:
            assert set(entry) == {"grad_infonce", "grad_reconstruction", "grad_hfc", "saturated"}
            assert all(math.isfinite(value) for value in entry.values()) and 0 <= entry["saturated"] <= 1
        assert float(attack.fitted()["delta"].abs().max()) <= EPS + 1e-7
        # measured (seed 0): the share at the bound goes .71 -> .98 (clamp), .32 -> .93 (tanh) in three epochs and
        # the InfoNCE gradient that reaches the generator falls 8x (clamp) and 6x (tanh): it saturates either way
        first, final = attack.diagnostics[0], attack.diagnostics[-1]
        assert final["saturated"] > 0.8 and final["grad_infonce"] < first["grad_infonce"] / 3, attack.diagnostics
    off = AdvEncoder(**{**small, "epochs": 1}, hfc=0.0).fit(
        encoder, surrogate, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert off.diagnostics[0]["grad_hfc"] == 0.0 and off.diagnostics[0]["grad_infonce"] > 0
    with pytest.raises(ConfigError, match="bound"):
        AdvEncoder(bound="sigmoid")


@pytest.fixture(scope="module")
def rates(
    encoder: nn.Module,
    surrogate: SynthDataset,
    fitted: dict[str, AdvEncoder],
    downstream: tuple[torch.Tensor, dict[str, nn.Module]],
    claim_seed: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per task, the share of downstream predictions AdvEncoder-PER changes, and the share noise changes."""
    x, heads = downstream
    y = torch.zeros(len(x), dtype=torch.long)
    noise = UniversalNoise().fit(
        encoder, surrogate, generator=torch.Generator().manual_seed(claim_seed), progress=False
    )
    adv_rates = {task: _fooling_rate(encoder, head, x, fitted["per"](encoder, x, y)) for task, head in heads.items()}
    noise_rates = {task: _fooling_rate(encoder, head, x, noise(encoder, x, y)) for task, head in heads.items()}
    return adv_rates, noise_rates


@pytest.mark.claim
@pytest.mark.slow
def test_beats_noise_on_unseen_downstream_tasks(
    rates: tuple[dict[str, float], dict[str, float]], record_claim: Callable[[str, float], None]
) -> None:
    """Fitted on sky/grass images only, it changes far more downstream predictions on other backgrounds than noise.

    Measured on the tiny encoder: AdvEncoder about 0.5 / 0.3 / 0.2 (shape / colour / size), noise 0.14 / 0.11 / 0.05.
    Over fits of seeds 0-2 (and seed 0 at 2 threads) the mean gain over noise is 0.23, 0.25, 0.09, 0.25: mean
    0.21, sd 0.08, so the margin is mean - 2 sd = 0.05 (experiments/RESULTS-claims.md); a gain of 0.15 on
    every run, the first margin, does not survive seed 1. Each task's gain stays above zero in every run
    (smallest: size, 0.04).
    """
    adv_rates, noise_rates = rates
    for task in adv_rates:
        record_claim(f"advencoder.{task}_gain_over_noise", adv_rates[task] - noise_rates[task])
    record_claim("advencoder.mean_gain_over_noise", sum(adv_rates.values()) / 3 - sum(noise_rates.values()) / 3)
    assert sum(adv_rates.values()) / 3 > sum(noise_rates.values()) / 3 + 0.05, (adv_rates, noise_rates)
    assert all(adv_rates[task] > noise_rates[task] for task in adv_rates), (adv_rates, noise_rates)


@pytest.mark.claim
@pytest.mark.slow
def test_patch_changes_more_predictions_than_a_random_patch_in_its_place(
    encoder: nn.Module,
    fitted: dict[str, AdvEncoder],
    downstream: tuple[torch.Tensor, dict[str, nn.Module]],
    claim_seed: int,
    record_claim: Callable[[str, float], None],
) -> None:
    """AdvEncoder-PAT's learned patch beats the right control: uniform random pixels in the same box.

    The mean over the three heads of the share of predictions changed, learned patch minus random patch, over
    fits of seeds 0-2 at 1 thread and seed 0 at 2 threads: 0.32, 0.15, 0.28, 0.30; mean 0.27, sd 0.08, so the
    margin is mean - 2 sd = 0.1 (experiments/RESULTS-claims.md).
    """
    x, heads = downstream
    attack = fitted["pat"]
    mask = attack.fitted()["mask"]
    pixels = torch.rand(attack.fitted()["patch"].shape, generator=torch.Generator().manual_seed(claim_seed))
    x_random = x * (1 - mask) + pixels * mask
    x_pat = attack(encoder, x, torch.zeros(len(x), dtype=torch.long))
    learned = sum(_fooling_rate(encoder, head, x, x_pat) for head in heads.values()) / len(heads)
    control = sum(_fooling_rate(encoder, head, x, x_random) for head in heads.values()) / len(heads)
    record_claim("advencoder.pat_mean_gain_over_random_patch", learned - control)
    assert learned > control + 0.1, (learned, control)


@pytest.mark.xfail(
    strict=False,
    reason="the first claim (mean gain over noise > 0.15 on every fit) fails at seed 1 (0.09): runs 0.23, 0.25, "
    "0.09, 0.25 (experiments/RESULTS-claims.md)",
)
@pytest.mark.slow
def test_mean_gain_as_first_claimed(rates: tuple[dict[str, float], dict[str, float]]) -> None:
    adv_rates, noise_rates = rates
    assert sum(adv_rates.values()) / 3 > sum(noise_rates.values()) / 3 + 0.15


@pytest.mark.claim
@pytest.mark.slow
def test_high_frequency_term_raises_the_high_low_energy_ratio(
    fitted: dict[str, AdvEncoder], record_claim: Callable[[str, float], None]
) -> None:
    """The FFT high-pass term moves the perturbation's energy to high frequencies when it weighs enough.

    At the paper's weight (1, beside 5 x InfoNCE) the effect is small and not reliable: on this tiny encoder
    0.097 with it vs 0.097 without, on the default encoder 0.081 vs 0.028 (experiments/RESULTS-advencoder.md);
    at 1000 it is ~200 here. The ratio of the two over seeds 0-2 and threads: 1782, 595, 15, 1444; on a log
    scale mean - 2 sd is 4.5x, the margin (experiments/RESULTS-claims.md).
    """
    radius = 8 * 32 / 64
    paper = high_low_energy_ratio(fitted["per"].fitted()["delta"], radius)
    heavy = high_low_energy_ratio(fitted["per-hfc1000"].fitted()["delta"], radius)
    record_claim("advencoder.hfc1000_ratio_over_paper", heavy / paper)
    assert heavy > 4 * paper, (heavy, paper)
