"""The SimCLR encoder: deterministic, cached, registered, useful downstream; bad checkpoints fail in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustlab import ssl
from robustlab.encoders import ENCODERS, HeadConfig, load_encoder, train_head, trained_heads
from robustlab.errors import CheckpointMismatchError, ConfigError, WeightsUnavailableError
from robustlab.ssl import COMPETENT_VICTIM, SimCLREncoder, SSLConfig, nt_xent, solo_learn_resnet18, trained_simclr

TINY = SSLConfig(width=8, steps=60, batch_size=64, n_images=512)


@pytest.fixture(scope="session")
def tiny_simclr() -> SimCLREncoder:
    """A tiny SimCLR encoder (about 30 s on 2 CPU cores), shared with the AdvEncoder tests."""
    return trained_simclr(TINY, progress=False)


@pytest.mark.slow
def test_simclr_is_cached_and_deterministic(tiny_simclr: torch.nn.Module) -> None:
    again = trained_simclr(TINY, progress=False)  # from the cache
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tiny_simclr(x), again(x))
    assert not tiny_simclr.training and not any(p.requires_grad for p in tiny_simclr.parameters())
    assert tiny_simclr(x).shape == (4, tiny_simclr.feature_dim)


@pytest.mark.slow
def test_simclr_features_carry_the_downstream_attributes(tiny_simclr: torch.nn.Module) -> None:
    """A head on frozen features beats chance by a wide margin on attributes SimCLR never saw as labels."""
    from robustlab.data.synth import SynthDataset

    data = SynthDataset("test")
    index = torch.arange(768)
    x, _ = data.get_batch(index)
    attrs = data.attributes(index)
    with torch.no_grad():
        features = tiny_simclr(x)
    for task, classes in (("color", 8), ("background", 5)):
        head = train_head(features[:512], attrs[task][:512], HeadConfig(task=task, steps=150), classes)
        with torch.no_grad():
            accuracy = (head(features[512:]).argmax(1) == attrs[task][512:]).float().mean().item()
        assert accuracy > 1 / classes + 0.3, (task, accuracy)


@pytest.mark.slow
def test_heads_are_cached_per_input_size(tiny_simclr: SimCLREncoder) -> None:
    """The same weights fed 16 px images (AdvEncoder's reference feeds 64 px) get heads of their own."""
    config = [HeadConfig(task="color", n_train=64, steps=5)]
    small = SimCLREncoder(tiny_simclr.backbone, feature_dim=tiny_simclr.feature_dim, input_size=16)
    weights = [
        torch.cat([p.flatten() for p in trained_heads(encoder, config, progress=False)["color"].head.parameters()])
        for encoder in (tiny_simclr, small, small)
    ]
    assert not torch.equal(weights[0], weights[1])  # the 16 px head was trained, not loaded from the 32 px one
    assert torch.equal(weights[1], weights[2])  # and is cached under its own key


def test_nt_xent_prefers_matching_views() -> None:
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    assert nt_xent(z, z, 0.2) < nt_xent(z, z.roll(1, 0), 0.2)


def test_registered_and_bad_configs_fail_in_one_line(tmp_path: Path) -> None:
    assert "simclr" in ENCODERS
    for steps in (3, 10):  # at 10 the one-cycle schedule's warm-up is one step and divides by zero
        with pytest.raises(ConfigError, match="steps >= 20"):
            SSLConfig(steps=steps)
    with pytest.raises(ConfigError, match="hue"):
        SSLConfig(hue=0.6)
    with pytest.raises(ConfigError, match="min_crop"):
        SSLConfig(min_crop=0.0)
    with pytest.raises(WeightsUnavailableError, match="no checkpoint file"):
        load_encoder("simclr", weights=str(tmp_path / "missing.ckpt"))
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointMismatchError, match="not a solo-learn ResNet-18"):
        solo_learn_resnet18(tmp_path / "bad.ckpt")


def test_solo_learn_checkpoint_round_trip(tmp_path: Path) -> None:
    """A Lightning-style checkpoint with the backbone under ``backbone.`` loads into a 512-d encoder."""
    import torchvision

    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    state = {f"backbone.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state["projector.0.weight"] = torch.zeros(2, 2)
    torch.save({"state_dict": state}, tmp_path / "simclr-cifar10.ckpt")
    encoder = load_encoder("simclr", weights=str(tmp_path / "simclr-cifar10.ckpt"), progress=False)
    assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_the_competent_victim_is_registered_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """``simclr-w32`` is RESULTS-advencoder's long-trained encoder (too long to train here: its config is checked)."""
    trained: list[SSLConfig] = []

    def record(config: SSLConfig, progress: bool = True) -> torch.nn.Module:
        trained.append(config)
        return torch.nn.Identity()

    monkeypatch.setattr(ssl, "trained_simclr", record)
    load_encoder("simclr-w32", progress=False)
    assert trained == [COMPETENT_VICTIM] and COMPETENT_VICTIM.width == 32 and COMPETENT_VICTIM.steps == 4800
    with pytest.raises(ConfigError, match="trained by robustlab"):
        load_encoder("simclr-w32", weights="any.ckpt")
