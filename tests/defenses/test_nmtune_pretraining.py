"""Noisy pre-training for NMTune: the ``synth-noiseR`` weights tag and ``TrainConfig.label_noise``."""

from __future__ import annotations

import pytest
import torch

from robustlab.cache import cache_dir
from robustlab.errors import ConfigError
from robustlab.models.loading import load_model
from robustlab.train import TrainConfig, _cache_key, trained_classifier


def test_clean_configs_keep_their_cache_key() -> None:
    # The hash of the default smallcnn recipe in float32 before label_noise and bf16 existed: cached clean
    # weights stay valid. (A RECIPE bump changes it on purpose; update this value then.)
    assert _cache_key(TrainConfig(arch="smallcnn", bf16=False).resolved()) == "590cbb300ef8"
    assert _cache_key(TrainConfig(arch="smallcnn", bf16=False, label_noise=0.3).resolved()) != "590cbb300ef8"
    assert _cache_key(TrainConfig(arch="smallcnn", bf16=True).resolved()) != "590cbb300ef8"


def test_noisy_pretraining_trains_on_flipped_labels_and_caches_apart() -> None:
    tiny = TrainConfig(arch="smallcnn", steps=3, batch_size=8)
    clean = trained_classifier(tiny, progress=False)
    noisy = trained_classifier(TrainConfig(**{**tiny.__dict__, "label_noise": 0.5}), progress=False)
    assert not torch.equal(clean.net.classifier.weight, noisy.net.classifier.weight)  # same seed, other labels
    assert [p.name for p in cache_dir("models").glob("smallcnn-synth-noise0.5-*.safetensors")]
    again = trained_classifier(TrainConfig(**{**tiny.__dict__, "label_noise": 0.5}), progress=False)
    assert torch.equal(again.net.classifier.weight, noisy.net.classifier.weight)


@pytest.mark.parametrize("tag", ["synth-noise", "synth-noise1.5", "synth-noisex"])
def test_bad_noise_tag_is_one_clear_error(tag: str) -> None:
    with pytest.raises(ConfigError, match="synth-noiseR"):
        load_model("smallcnn", weights=tag, progress=False)
