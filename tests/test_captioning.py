"""The captioner: it learns the synthetic world's captions, loads from the cache and from checkpoints, fails cleanly."""

from __future__ import annotations

import json
import math
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from robustlab.captioning import (
    END,
    PAD,
    START,
    UNK,
    Captioner,
    CaptionerConfig,
    Vocab,
    build_captioner,
    load_captioner,
    save_captioner,
    train_captioner,
)
from robustlab.data.captions import CocoCaptions, SynthCaptions, synth_caption_words
from robustlab.errors import CheckpointMismatchError, DataError, UnknownNameError, WeightsUnavailableError


@pytest.fixture(scope="session")
def captioner() -> Captioner:
    """The default embedded captioner, trained once per session (cached under the session's ROBUSTLAB_HOME)."""
    return load_captioner(progress=False)


@pytest.fixture(scope="module")
def caption_split() -> tuple[torch.Tensor, list[str]]:
    return SynthCaptions("test", n=500).images_and_captions(torch.arange(500))


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.slow
def test_captioner_writes_exact_captions(
    captioner: Captioner, caption_split: tuple[torch.Tensor, list[str]], beam: int
) -> None:
    x, references = caption_split
    captions = captioner.caption(x, beam=beam)
    exact = sum(c == r for c, r in zip(captions, references, strict=True)) / len(references)
    assert exact >= 0.90, f"exact-match {exact:.3f} on 500 test images with beam {beam}"


@pytest.mark.slow
def test_loaded_captioner_is_frozen_eval_and_in_pixel_space(captioner: Captioner) -> None:
    assert not captioner.training and not any(p.requires_grad for p in captioner.parameters())
    assert captioner.input_size == 32 and captioner.name == "captioner"
    features = captioner.encoder(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 64, 4, 4), "16 regions of 64 features feed the attention decoder"
    assert "<end>" in captioner.vocab.words and "stripes" in captioner.vocab.words


@pytest.mark.slow
def test_second_load_reuses_the_cache(captioner: Captioner) -> None:
    again = load_captioner(progress=False)
    assert all(
        torch.equal(a, b) for a, b in zip(captioner.state_dict().values(), again.state_dict().values(), strict=True)
    )


@pytest.mark.slow
def test_checkpoint_round_trip(captioner: Captioner, tmp_path: Path) -> None:
    path = tmp_path / "captioner.safetensors"
    save_captioner(captioner, path, config=CaptionerConfig())
    loaded = load_captioner(weights=str(path), progress=False)
    x = SynthCaptions("val", n=16).images_and_captions(torch.arange(16))[0]
    assert loaded.caption(x) == captioner.caption(x)


def test_training_is_a_function_of_the_seed_alone() -> None:
    """The decoder's dropout draws from the global RNG: what ran before training must not change the weights."""
    config = CaptionerConfig(steps=3, batch_size=4)
    vocab = Vocab((PAD, START, END, UNK, *synth_caption_words()))
    data = SynthCaptions("train", n=16)
    trained = []
    for earlier_draws in (0, 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(earlier_draws)  # stands for whatever the process drew before
            captioner = build_captioner(config, vocab, progress=False)
            train_captioner(captioner, config, data, progress=False)
        trained.append(captioner.state_dict())
    assert all(torch.equal(trained[0][name], trained[1][name]) for name in trained[0])


def test_bad_names_and_checkpoints_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="known: captioner"):
        load_captioner("captionr")
    with pytest.raises(WeightsUnavailableError, match="no captioner checkpoint"):
        load_captioner(weights=str(tmp_path / "missing.safetensors"))
    (tmp_path / "old.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="safetensors"):
        load_captioner(weights=str(tmp_path / "old.pt"))


def test_resnet_captioner_offline_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(WeightsUnavailableError, match="cannot download"):
        load_captioner("sat_resnet18", progress=False)


def test_coco_style_captions(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (30, 40), (200, 200, 200)).save(tmp_path / "one.png")
    document = {
        "images": [{"id": 7, "file_name": "one.png"}, {"id": 8, "file_name": "uncaptioned.png"}],
        "annotations": [{"image_id": 7, "caption": "A grey wall."}, {"image_id": 7, "caption": "second"}],
    }
    (tmp_path / "captions.json").write_text(json.dumps(document))
    data = CocoCaptions(tmp_path / "captions.json", tmp_path, image_size=16)
    x, captions = data.images_and_captions(torch.tensor([0]))
    assert len(data) == 1 and captions == ["A grey wall."]
    assert x.shape == (1, 3, 16, 16) and torch.allclose(x, torch.full_like(x, 200 / 255), atol=1e-3)
    with pytest.raises(DataError, match="no caption annotation file"):
        CocoCaptions(tmp_path / "missing.json", tmp_path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="not a COCO-style"):
        CocoCaptions(tmp_path / "bad.json", tmp_path)


def test_bleu_matches_a_hand_computed_case() -> None:
    from robustlab.caption_metrics import bleu, caption_metrics

    # Hypothesis "a large red star on grass" vs reference "a large red star on stripes": n-gram precisions
    # 5/6, 4/5, 3/4, 2/3, equal lengths so no brevity penalty; BLEU-n is their geometric mean up to n.
    hypothesis, reference = ["a large red star on grass"], ["A large red star on stripes."]
    assert bleu(hypothesis, reference, n=1) == pytest.approx(5 / 6, abs=1e-6)
    assert bleu(hypothesis, reference, n=2) == pytest.approx((5 / 6 * 4 / 5) ** (1 / 2), abs=1e-6)
    assert bleu(hypothesis, reference, n=4) == pytest.approx((5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** (1 / 4), abs=1e-6)
    # "a red star" (3 words) against 6: precision 1, brevity penalty exp(1 - 6/3) = 1/e.
    assert bleu(["a red star"], reference, n=1) == pytest.approx(math.exp(-1), abs=1e-6)
    metrics = caption_metrics(
        ["a small red star on sky", "a large blue ring on grass"],
        ["a small red star on sky", "a small blue star on sky"],
        ["a small red star on sky", "a large blue ring on grass"],
        target="a small blue star on sky",
        keyword="blue star",
    )
    assert metrics["target_success"] == 0.5 and metrics["keyword_success"] == 0.5 and metrics["keyword_clean"] == 0.0
    assert metrics["clean_exact"] == 1.0 and metrics["adv_exact"] == 0.5 and metrics["changed"] == 0.5


def test_eval_scores_only_inputs_whose_clean_caption_misses_the_goal() -> None:
    from types import SimpleNamespace

    from robustlab.captioning import Vocab
    from robustlab.intervals import wilson_interval
    from robustlab.tasks import TASKS

    goal = "a small blue star on sky"
    vocab = Vocab.from_captions([goal, "a large red ring on grass"])
    captioner = SimpleNamespace(vocab=vocab)
    task = TASKS.get("captioning").factory().bind(SimpleNamespace(target=goal), captioner)  # type: ignore[arg-type]
    clean = [goal, "a large red ring on grass", "a small red star on sky", goal]
    adversarial = [goal, goal, "a small red ring on sky", goal]
    tokens = {k: torch.tensor([vocab.encode(c, length=8) for c in v]) for k, v in (("c", clean), ("a", adversarial))}
    y = torch.zeros(4, dtype=torch.long)
    assert task.attackable({"caption": tokens["c"]}, y).tolist() == [False, True, True, False]
    metrics = task.aggregate(y, {"caption": tokens["c"]}, {"adv_caption": tokens["a"]})
    # Two inputs were the goal already: they count neither as sources nor as successes (1 of 2, not 3 of 4).
    assert metrics["sources"] == 2 and metrics["target_success"] == 0.5 and metrics["target_clean"] == 0.5
    assert (metrics["target_success_low"], metrics["target_success_high"]) == pytest.approx(wilson_interval(0.5, 2))
    assert metrics["changed"] == 1.0
    nothing = task.aggregate(y[:1], {"caption": tokens["c"][:1]}, {"adv_caption": tokens["a"][:1]})
    assert nothing == {"sources": 0.0, "target_clean": 1.0}


def test_a_key_given_twice_makes_one_spec_per_value() -> None:
    from robustlab.attacks import ATTACKS

    from robustlab.cli.options import build_specs

    goals = ["target=a small red star on sky", "target=a large blue ring on grass"]
    specs = build_specs(ATTACKS, ["caption_gan", "caption_noise"], goals)
    found = [(spec.name, dict(spec.params)["target"]) for spec in specs]
    assert found == [(name, goal.partition("=")[2]) for name in ("caption_gan", "caption_noise") for goal in goals]
    # A scoped key still overrides the same key given to every attack: one pgd, at 20 steps.
    assert [spec.label() for spec in build_specs(ATTACKS, ["pgd"], ["steps=5", "pgd.steps=20"])] == ["pgd(steps=20)"]
