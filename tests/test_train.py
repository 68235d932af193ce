"""``robustlab train`` writes weights that ``--weights PATH`` loads back, adversarially trained (PGD, TRADES) too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robustlab.cli import cli
from robustlab.models.loading import load_model
from robustlab.train import TrainConfig, _cache_key, pgd_examples, robust_recipe, trades_examples


@pytest.mark.parametrize("objective", ["pgd", "trades"])
def test_train_writes_loadable_weights(tmp_path: Path, objective: str) -> None:
    out = tmp_path / "at.safetensors"
    args = ["train", "--model", "tinyresnet", "--adversarial", objective, "--steps", "3", "--batch-size", "8"]
    result = CliRunner().invoke(cli, [*args, "--eval-n=8", "--device", "cpu", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "clean accuracy" in result.stdout
    model = load_model("tinyresnet", weights=str(out))
    untrained = load_model("tinyresnet", weights="random")
    assert not model.training
    pairs = zip(model.state_dict().values(), untrained.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs), "training changed nothing"


def test_train_makes_a_missing_folder_and_refuses_one_blocked_by_a_file(tmp_path: Path) -> None:
    made = CliRunner().invoke(
        cli, ["train", "--steps", "1", "--eval-n", "8", "-q", "--out", str(tmp_path / "new" / "w.safetensors")]
    )
    assert made.exit_code == 0, made.output
    assert (tmp_path / "new" / "w.safetensors").is_file()
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(cli, ["train", "--steps", "1", "--out", str(tmp_path / "file" / "w.safetensors")])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("robustlab: error: cannot create the weights")


def test_training_examples_stay_in_budget(trained_model: torch.nn.Module) -> None:
    from robustlab.data.synth import SynthDataset

    x, y = SynthDataset("test").get_batch(torch.arange(16))
    for steps in (1, 3):
        x_adv = pgd_examples(trained_model, x, y, eps=8 / 255, steps=steps, generator=torch.Generator().manual_seed(0))
        assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            fooled = (trained_model(x_adv).argmax(1) != y).sum()
        assert fooled > (trained_model(x).argmax(1) != y).sum() + 4


def test_trades_examples_stay_in_budget_and_move_the_prediction(trained_model: torch.nn.Module) -> None:
    from robustlab.data.synth import SynthDataset

    x, y = SynthDataset("test").get_batch(torch.arange(16))
    x_adv = trades_examples(trained_model, x, eps=8 / 255, steps=2, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():  # no label is used, yet pushing away from the clean prediction breaks some of them
        fooled = (trained_model(x_adv).argmax(1) != y).sum()
    assert fooled > (trained_model(x).argmax(1) != y).sum() + 4


def test_trades_names_its_own_weights_and_leaves_synth_at_cached() -> None:
    at = robust_recipe(TrainConfig(arch="smallcnn")).resolved()
    assert _cache_key(at) == "4e1677cae1d6"  # the synth-at weights cached before TRADES existed stay valid
    assert _cache_key(robust_recipe(TrainConfig(arch="smallcnn"), trades_beta=6.0).resolved()) != "4e1677cae1d6"
