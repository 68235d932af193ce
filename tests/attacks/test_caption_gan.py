"""caption_gan and its baselines on the trained embedded captioner: goals reached, budget kept, decoder untouched."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import robustlab.attacks
import torch
from robustlab.attacks._caption import goal_features
from torch import nn

from robustlab.attack import ATTACKS, AttackKind
from robustlab.caption_metrics import caption_metrics, fisher_p_above, goal_reached
from robustlab.captioning import Captioner, load_captioner
from robustlab.data.captions import SynthCaptions
from robustlab.errors import ConfigError
from robustlab.threat import Norm, perturbation_norm

pytestmark = pytest.mark.slow  # every test needs the captioner, trained in the session

CAPTION_ATTACKS = [e.name for e in robustlab.attacks.ATTACKS.entries() if e.name.startswith("caption_")]
CHEAP: dict[str, dict[str, Any]] = {
    "caption_gan": {"steps": 4, "scan": 256},
    "caption_feature_pgd": {"steps": 3, "scan": 256},
    "caption_decoder_pgd": {"steps": 3},
    "caption_noise": {},
}
EPS = 16 / 255


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    return load_captioner(progress=False)  # trained once per session, shared with tests/test_captioning.py


@pytest.fixture(scope="module")
def fit_data() -> SynthCaptions:
    return SynthCaptions("val", n=512)


@pytest.fixture(scope="module")
def goal(captioner: Captioner, fit_data: SynthCaptions) -> str:
    """A caption the captioner writes for a fit image: the target every test forces."""
    return captioner.caption(fit_data.images_and_captions(torch.tensor([0]))[0])[0]


@pytest.fixture(scope="module")
def sources(captioner: Captioner, goal: str) -> tuple[torch.Tensor, list[str]]:
    """64 test images whose clean captions are not already the goal, with their reference captions."""
    x, references = SynthCaptions("test", n=200).images_and_captions(torch.arange(200))
    keep = [i for i, c in enumerate(captioner.caption(x)) if c != goal][:64]
    return x[keep], [references[i] for i in keep]


def _attack(name: str, **kwargs: Any) -> Any:
    return ATTACKS.get(name).factory(**(CHEAP[name] | kwargs))


def _run(attack: Any, captioner: Captioner, fit_data: SynthCaptions, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    attack.fit(captioner, fit_data, generator=torch.Generator().manual_seed(seed), progress=False)
    generator = torch.Generator().manual_seed(seed + 1)
    return attack(captioner, x, torch.zeros(len(x), dtype=torch.long), generator=generator)


@pytest.fixture(scope="module")
def one_word_away(captioner: Captioner, goal: str) -> torch.Tensor:
    """32 test images whose clean caption differs from the goal in one slot: where the ceiling allows 16/255."""
    x = SynthCaptions("test", n=3000).images_and_captions(torch.arange(3000))[0]
    words = goal.split()
    near = [
        i
        for i, c in enumerate(captioner.caption(x))
        if sum(a != b for a, b in zip(c.split(), words, strict=False)) == 1
    ]
    return x[near[:32]]


def _success(captioner: Captioner, x_adv: torch.Tensor, **goal: str) -> tuple[int, int]:
    reached = [
        goal_reached(c, target=goal.get("target"), keyword=goal.get("keyword")) for c in captioner.caption(x_adv)
    ]
    return sum(reached), len(reached)


@pytest.mark.claim
def test_decoder_pgd_forces_the_target_where_the_ceiling_says_it_is_reachable(
    captioner: Captioner, fit_data: SynthCaptions, goal: str, sources: tuple[torch.Tensor, list[str]]
) -> None:
    # The ceiling (experiments/RESULTS-caption_gan.md): 200 steps x 5 restarts at 64/255 force this whole caption on
    # 24 of 24 sources (the other targets: 21/24, 24/24; at 16/255: 0/24); noise 0. Here 8 sources, one start.
    x = sources[0][:8]
    decoder = _attack("caption_decoder_pgd", target=goal, eps=64 / 255, steps=200)
    hits, n = _success(captioner, _run(decoder, captioner, fit_data, x), target=goal)
    noise, _ = _success(
        captioner, _run(_attack("caption_noise", target=goal, eps=64 / 255), captioner, fit_data, x), target=goal
    )
    assert hits >= 6 and noise == 0, (hits, n, noise)


@pytest.mark.claim
def test_decoder_pgd_injects_a_keyword_far_more_often_than_noise(
    captioner: Captioner, fit_data: SynthCaptions, sources: tuple[torch.Tensor, list[str]]
) -> None:
    # Measured at 16/255, n = 64, 30 steps: 28% and 25% against noise's 3% and 5% (two trained captioners);
    # 18 of 64 against 2 of 64 is Fisher p = 1e-4. Asserted: p < 0.01 at this n, on sources without the word.
    keep = [i for i, c in enumerate(captioner.caption(sources[0])) if "hexagon" not in c.split()]
    x = sources[0][keep]
    attacks = {name: _attack(name, keyword="hexagon", eps=EPS) for name in ("caption_decoder_pgd", "caption_noise")}
    attacks["caption_decoder_pgd"].steps = 30
    (hits, n), (noise, _) = (
        _success(captioner, _run(a, captioner, fit_data, x), keyword="hexagon") for a in attacks.values()
    )
    assert fisher_p_above(hits, n, noise, n) < 0.01, (hits, noise, n)


@pytest.mark.claim
@pytest.mark.xfail(
    reason="measured at 16/255, one word away from the target, n = 64: the GAN reaches 3.1% (300 steps), 4.7% "
    "(3000 steps) with the paper's objective, 0% / 0% / 3.1% with the decoder, pooled and nearest objectives "
    "(300 steps), noise 0%; feature PGD 12.5%, decoder PGD 53-59% (30 steps): the claim (>= noise + .5) fails",
    raises=AssertionError,  # a bug that raises anything else still fails
    strict=False,
)
def test_gan_forces_the_target_caption_one_word_away(
    captioner: Captioner, fit_data: SynthCaptions, goal: str, one_word_away: torch.Tensor, claim_seed: int
) -> None:
    gan = _attack("caption_gan", target=goal, eps=EPS, steps=300, objective="nearest", scan=512)
    hits, n = _success(captioner, _run(gan, captioner, fit_data, one_word_away, claim_seed), target=goal)
    noise, _ = _success(
        captioner, _run(_attack("caption_noise", target=goal, eps=EPS), captioner, fit_data, one_word_away), target=goal
    )
    assert hits / n >= noise / n + 0.5, (hits, noise, n)


def _stripes_sources(captioner: Captioner) -> torch.Tensor:
    """The first 256 of 3000 test images whose clean caption lacks 'stripes' (the experiment's source set)."""
    x = SynthCaptions("test", n=3000).images_and_captions(torch.arange(3000))[0]
    return x[[i for i, c in enumerate(captioner.caption(x)) if "stripes" not in c.split()][:256]]


@pytest.mark.claim
def test_gan_injects_a_keyword_the_ceiling_allows_at_the_issues_bar(
    captioner: Captioner, claim_seed: int, record_claim: Callable[[str, float], None]
) -> None:
    # Issue #27's bar, on the goal the ceiling allows at 16/255 ('stripes'; decoder and feature PGD: 24/24): at
    # n >= 256 the GAN reaches >= .5 and at least half of feature PGD's rate, noise <= .05, Fisher p < .01.
    # Measured with this very setting (experiments/caption_gan.py --keywords stripes --objectives pooled --n 256
    # --gan-steps 1200, the RECIPE 2 captioner; experiments/RESULTS-caption_gan.md), success - noise over seeds 0-2:
    # .598, .672, .625 at 1 thread and .664, .707, .676 at 2 threads (each captioner's own), noise 0 in every run,
    # feature PGD .965 and .973; mean .657, sd .039, mean - 2 sd = .58: the issue's .5 holds with room.
    x, fit = _stripes_sources(captioner), SynthCaptions("val", n=2000)
    gan = _attack("caption_gan", keyword="stripes", eps=EPS, steps=1200, scan=2000, objective="pooled")
    hits, n = _success(captioner, _run(gan, captioner, fit, x, claim_seed), keyword="stripes")
    feature_pgd = _attack("caption_feature_pgd", keyword="stripes", eps=EPS, steps=50, scan=2000, objective="pooled")
    ceiling, _ = _success(captioner, _run(feature_pgd, captioner, fit, x, claim_seed), keyword="stripes")
    noise_attack = _attack("caption_noise", keyword="stripes", eps=EPS)
    noise, _ = _success(captioner, _run(noise_attack, captioner, fit, x), keyword="stripes")
    record_claim("caption_gan.stripes_over_noise", (hits - noise) / n)
    record_claim("caption_gan.stripes_over_half_feature_pgd", (hits - ceiling / 2) / n)
    assert noise / n <= 0.05 and fisher_p_above(hits, n, noise, n) < 0.01, (hits, noise, n)
    assert (hits - noise) / n >= 0.5 and hits >= ceiling / 2, (hits, ceiling, noise, n)


@pytest.mark.claim
@pytest.mark.xfail(
    reason="measured at 16/255, n = 64: the GAN injects 'hexagon' into 9.4% (300 steps) and 6.2% (3000 steps) of "
    "captions against noise's 3.1% and 4.7% (one-sided Fisher p .14 and .5): not above noise at p < .01",
    raises=AssertionError,  # a bug that raises anything else still fails
    strict=False,
)
def test_gan_injects_a_keyword_more_often_than_noise(
    captioner: Captioner, fit_data: SynthCaptions, sources: tuple[torch.Tensor, list[str]], claim_seed: int
) -> None:
    keep = [i for i, c in enumerate(captioner.caption(sources[0])) if "hexagon" not in c.split()]
    x = sources[0][keep]
    gan = _attack("caption_gan", keyword="hexagon", eps=EPS, steps=300, scan=512)
    hits, n = _success(captioner, _run(gan, captioner, fit_data, x, claim_seed), keyword="hexagon")
    noise, _ = _success(
        captioner, _run(_attack("caption_noise", keyword="hexagon", eps=EPS), captioner, fit_data, x), keyword="hexagon"
    )
    assert fisher_p_above(hits, n, noise, n) < 0.01, (hits, noise, n)


@pytest.mark.claim
def test_gan_moves_features_towards_the_target_and_changes_captions(
    captioner: Captioner,
    fit_data: SynthCaptions,
    goal: str,
    sources: tuple[torch.Tensor, list[str]],
    claim_seed: int,
    record_claim: Callable[[str, float], None],
) -> None:
    x, references = sources
    clean = captioner.caption(x)
    gan = _attack("caption_gan", target=goal, eps=EPS, steps=200)
    noise = _attack("caption_noise", target=goal, eps=EPS)
    adversarial = {
        a: _run(attack, captioner, fit_data, x, claim_seed) for a, attack in (("gan", gan), ("noise", noise))
    }
    gan_metrics, noise_metrics = (
        caption_metrics(clean, captioner.caption(adversarial[a]), references, target=goal) for a in ("gan", "noise")
    )
    # What the GAN does reach (its target success is the xfail test above): the generator moves held-out images'
    # features towards the target's and rewrites far more captions than noise of the same size (first measured:
    # 36% vs 8% changed after 200 steps): an untargeted effect, named as such. Changed minus noise's changed over
    # seeds 0-2 at 1 and 2 threads on the RECIPE 2 captioners: .31, .38, .41, .42, .47, .42, mean - 2 sd = .29
    # (the margin .1 was set on RECIPE 1's spread). The feature distance and loss ratios: .80-.88 and .79-.90 on
    # the same runs, every one below the .9 claim (mean + 2 sd = .91 and .93: close to it; experiments/
    # RESULTS-claims.md). The exact target is reached in no run.
    record_claim("caption_gan.changed_over_noise", gan_metrics["changed"] - noise_metrics["changed"])
    record_claim(
        "caption_gan.target_success_over_noise", gan_metrics["target_success"] - noise_metrics["target_success"]
    )
    assert gan_metrics["changed"] >= noise_metrics["changed"] + 0.1, (gan_metrics, noise_metrics)
    target = goal_features(captioner, fit_data, target=goal, keyword=None, n_targets=1, scan=512)
    distance = {a: float((captioner.encoder(x_adv) - target).pow(2).mean()) for a, x_adv in adversarial.items()}
    record_claim("caption_gan.feature_distance_ratio", distance["gan"] / distance["noise"])
    assert distance["gan"] < 0.9 * distance["noise"], distance
    first, last = gan.feature_losses[:20], gan.feature_losses[-20:]
    record_claim("caption_gan.feature_loss_ratio", sum(last) / sum(first))
    assert sum(last) < 0.9 * sum(first), "the generator's feature-matching loss must fall while it trains"


def test_decoder_receives_no_gradient_during_the_gan_attack(
    captioner: Captioner, fit_data: SynthCaptions, goal: str, sources: tuple[torch.Tensor, list[str]]
) -> None:
    def record(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        grad_modes.append(torch.is_grad_enabled())

    def decoder_gradients(name: str) -> tuple[list[bool], bool]:
        victim = copy.deepcopy(captioner)
        victim.decoder.requires_grad_(True)  # so any gradient that reached it would be stored
        grad_modes.clear()
        handle = victim.decoder.cell.register_forward_hook(record)  # the LSTM cell runs for every word decoded
        _run(_attack(name, target=goal), victim, fit_data, sources[0][:8])
        handle.remove()
        return list(grad_modes), any(p.grad is not None for p in victim.decoder.parameters())

    grad_modes: list[bool] = []
    modes, stored = decoder_gradients("caption_gan")
    assert modes and not any(modes), "the decoder may only run without autograd (to find target images)"
    assert not stored
    # The end-to-end baseline does differentiate through the decoder, so the check above can fail.
    modes, _ = decoder_gradients("caption_decoder_pgd")
    assert any(modes)


@pytest.mark.parametrize("name", CAPTION_ATTACKS)
@pytest.mark.parametrize("mode", ["target", "keyword"])
def test_budget_box_and_determinism(
    name: str,
    mode: str,
    captioner: Captioner,
    fit_data: SynthCaptions,
    goal: str,
    sources: tuple[torch.Tensor, list[str]],
) -> None:
    x = sources[0][:6]
    attack = _attack(name, eps=8 / 255, **{mode: goal if mode == "target" else goal.split()[2]})
    assert attack.kind is AttackKind.TASK and attack.threat.norm is Norm.LINF and attack.config()["mode"]
    x_adv = _run(attack, captioner, fit_data, x)
    assert float(perturbation_norm(x, x_adv, Norm.LINF).max()) <= 8 / 255 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1 and not x_adv.requires_grad
    assert torch.equal(
        x_adv, _run(_attack(name, eps=8 / 255, **{mode: attack.target or attack.keyword}), captioner, fit_data, x)
    )


def test_goals_are_checked_in_one_line(captioner: Captioner, fit_data: SynthCaptions) -> None:
    with pytest.raises(ConfigError, match="exactly one of target"):
        _attack("caption_gan", target="a small red star on sky", keyword="red")
    with pytest.raises(ConfigError, match="exactly one of target"):
        _attack("caption_noise")
    with pytest.raises(ConfigError, match=r"'zebra'.*not in its vocabulary"):
        _attack("caption_gan", keyword="zebra").fit(captioner, fit_data, generator=torch.Generator(), progress=False)
    with pytest.raises(ConfigError, match="no image among the first 256"):
        _attack("caption_feature_pgd", target="a a a a a").fit(
            captioner, fit_data, generator=torch.Generator(), progress=False
        )
    with pytest.raises(ConfigError, match="call fit"):
        _attack("caption_gan", keyword="red")(captioner, torch.rand(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ConfigError, match="need a Captioner"):
        _run(_attack("caption_decoder_pgd", keyword="red"), nn.Identity().eval(), fit_data, torch.rand(1, 3, 32, 32))  # type: ignore[arg-type]


def test_objectives_that_impose_no_layout() -> None:
    from robustlab.attacks._caption import feature_distance

    bank = torch.zeros(2, 1, 2, 2)
    bank[0, 0, 0, 0], bank[1, 0, 1, 1] = 4.0, 4.0  # two goal images: the same object, in opposite corners
    moved = torch.zeros(1, 1, 2, 2)
    moved[0, 0, 1, 1] = 4.0  # a source with the object where the second goal image has it
    assert float(feature_distance(moved, bank, moved, "pooled")) == 0, "pooling forgets where the object is"
    assert float(feature_distance(moved, bank, moved, "nearest")) == 0, "the nearest goal image has its layout"
    assert float(feature_distance(moved, bank, moved, "features")) == pytest.approx(2.0)  # the mean map: 2 and 2
    with pytest.raises(ConfigError, match="objective must be one of features, pooled, nearest, decoder"):
        _attack("caption_gan", target="a small red star on sky", objective="pixels")


CONDITIONED = "keyword:stripes; keyword:purple"


def test_conditioned_goals_are_checked_and_recorded() -> None:
    gan = _attack("caption_gan", keyword="stripes", goals=CONDITIONED)
    assert gan.config()["goals"] == CONDITIONED and gan.goal_index == 0
    assert gan.with_goal(keyword="Purple").goal_index == 1, "goals match after tokenization"
    assert "goals" not in _attack("caption_gan", keyword="stripes").config(), "the per-goal config is unchanged"
    with pytest.raises(ConfigError, match="'keyword:hexagon' is not one of goals"):
        _attack("caption_gan", keyword="hexagon", goals=CONDITIONED)
    with pytest.raises(ConfigError, match="'target:stripes' is not one of goals"):
        gan.with_goal(target="stripes")  # the same words as a caption are another goal
    with pytest.raises(ConfigError, match="'target:CAPTION' or 'keyword:WORDS', got 'purple'"):
        _attack("caption_gan", keyword="stripes", goals="keyword:stripes; purple")
    with pytest.raises(ConfigError, match="repeats a goal"):
        _attack("caption_gan", keyword="stripes", goals="keyword:stripes; keyword: Stripes")
    with pytest.raises(ConfigError, match="with_goal needs goals"):
        _attack("caption_gan", keyword="stripes").with_goal(keyword="purple")
    # One goal image per caption only when every goal is a caption matched region by region (as per goal).
    assert _attack("caption_gan", target="a b", goals="target:a b; target:c d").n_targets == 1
    assert _attack("caption_gan", target="a b", goals="target:a b; keyword:c").n_targets == 8


def test_conditioned_generator_keeps_the_budget_and_follows_the_goal(
    captioner: Captioner, fit_data: SynthCaptions, sources: tuple[torch.Tensor, list[str]]
) -> None:
    x, eps = sources[0][:6], 8 / 255
    gan = _attack("caption_gan", keyword="stripes", goals=CONDITIONED, eps=eps)
    stripes = _run(gan, captioner, fit_data, x)
    purple = gan.with_goal(keyword="purple")(captioner, x, torch.zeros(len(x), dtype=torch.long))
    for x_adv in (stripes, purple):
        assert float(perturbation_norm(x, x_adv, Norm.LINF).max()) <= eps + 1e-6
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1 and not x_adv.requires_grad
    # One generator, two goals: the goal's code alone changes the perturbation (FiLM starts as the identity, so
    # this also checks that fit trained the conditioning).
    assert float((stripes - purple).abs().max()) > 1e-3 * eps
    again = _run(_attack("caption_gan", keyword="stripes", goals=CONDITIONED, eps=eps), captioner, fit_data, x)
    assert torch.equal(stripes, again)


@pytest.mark.claim
def test_conditioned_gan_injects_a_keyword_the_ceiling_allows_far_above_noise(
    captioner: Captioner, claim_seed: int, record_claim: Callable[[str, float], None]
) -> None:
    # One generator conditioned on two goals ('stripes', which the ceiling allows at 16/255, and 'purple', which
    # no GAN reaches), aimed at 'stripes'. Measured with this very setting (experiments/caption_gan.py --keywords
    # stripes purple --objectives pooled --only-conditioned --n 256 --gan-steps 300: 600 steps) over
    # seeds 0-2 on the RECIPE 2 captioners: .445, .406, .371 (1 thread) and .496, .512, .484 (2 threads) against
    # noise 0; mean .453, sd .055, mean - 2 sd = .34: the margin .1 (set on RECIPE 1's .387, .449, .344) holds
    # with room (experiments/RESULTS-claims.md).
    x, fit = _stripes_sources(captioner), SynthCaptions("val", n=2000)
    gan = _attack(
        "caption_gan", keyword="stripes", goals=CONDITIONED, eps=EPS, steps=600, scan=2000, objective="pooled"
    )
    hits, n = _success(captioner, _run(gan, captioner, fit, x, claim_seed), keyword="stripes")
    noise, _ = _success(
        captioner, _run(_attack("caption_noise", keyword="stripes", eps=EPS), captioner, fit, x), keyword="stripes"
    )
    record_claim("caption_gan.conditioned_stripes_over_noise", (hits - noise) / n)
    assert noise / n <= 0.05 and fisher_p_above(hits, n, noise, n) < 0.01, (hits, noise, n)
    assert (hits - noise) / n >= 0.1, (hits, noise, n)
