"""``robustlab train`` writes weights that ``--weights PATH`` loads back, adversarially trained (PGD, TRADES) too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robustlab.cli import cli
from robustlab.models.loading import load_model
from robustlab.optimize import one_cycle
from robustlab.train import (
    PRECISION_VARIABLE,
    TrainConfig,
    _build,
    _cache_key,
    default_bf16,
    pgd_examples,
    robust_recipe,
    trades_examples,
    train_classifier,
    trained_classifier,
)


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
    fp32 = TrainConfig(arch="smallcnn", bf16=False)
    assert _cache_key(robust_recipe(fp32).resolved()) == "4e1677cae1d6"  # synth-at, cached before TRADES existed
    assert _cache_key(robust_recipe(fp32, trades_beta=6.0).resolved()) != "4e1677cae1d6"


def test_a_cached_model_comes_back_as_a_freshly_trained_one_does() -> None:
    from robustlab.data.synth import SynthDataset

    tiny = TrainConfig(arch="smallcnn", steps=3, batch_size=8, seed=5)
    fresh, cached = trained_classifier(tiny, progress=False), trained_classifier(tiny, progress=False)
    for model in (fresh, cached):  # a cached model in train mode scored with batch statistics
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    x, _ = SynthDataset("test").get_batch(torch.arange(16))
    with torch.no_grad():
        assert torch.equal(fresh(x), cached(x))


def test_the_training_precision_can_be_chosen_for_a_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRECISION_VARIABLE, raising=False)  # whatever the shell running the suite chose
    auto = TrainConfig(arch="smallcnn").resolved().bf16
    native = any(torch.cpu.get_capabilities().get(feature, False) for feature in ("amx_bf16", "avx512_bf16"))
    assert auto == native, "auto: bfloat16 where the CPU multiplies it natively (AMX or AVX-512 BF16)"
    for features, expected in (({"amx_bf16": True}, True), ({"avx512_bf16": True}, True), ({"avx512_f": True}, False)):
        with monkeypatch.context() as cpu:
            cpu.setattr(torch.cpu, "get_capabilities", lambda features=features: features)
            assert default_bf16() is expected, f"a CPU with {features}"
    for choice, bf16 in (("float32", False), ("bfloat16", True), (" BFloat16 ", True), ("auto", auto)):
        monkeypatch.setenv(PRECISION_VARIABLE, choice)
        assert TrainConfig(arch="smallcnn").resolved().bf16 is bf16
        assert TrainConfig(arch="smallcnn", bf16=not bf16).resolved().bf16 is not bf16, "a config's own choice wins"
    monkeypatch.setenv(PRECISION_VARIABLE, "fp16")
    result = CliRunner().invoke(cli, ["eval", "-n", "8", "-q"])
    assert result.exit_code == 2 and "ROBUSTLAB_TRAIN_PRECISION='fp16': use auto, float32 or bfloat16" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_mixed_precision_follows_the_float32_training_and_leaves_float32_weights() -> None:
    assert TrainConfig(arch="smallcnn").resolved().bf16 == default_bf16()
    trained = {}
    for bf16 in (False, True):
        config = TrainConfig(arch="smallcnn", steps=20, batch_size=32, bf16=bf16)
        model = _build(config)
        start = _flat(model)
        train_classifier(model, config, progress=False)
        assert all(w.dtype in (torch.float32, torch.int64) and w.is_contiguous() for w in model.state_dict().values())
        trained[bf16] = _flat(model)
    # bfloat16 rounding moves the weights 0.115-0.134 of the way float32 training moved them (seeds 0-3)
    assert (trained[True] - trained[False]).norm() < 0.25 * (trained[False] - start).norm()


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _learning_rates(make_schedule, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = make_schedule(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


@pytest.mark.parametrize("steps", [3, 10, 20, 37])
def test_one_cycle_is_torchs_schedule_and_a_one_step_warm_up_does_not_divide_by_zero(steps: int) -> None:
    ours = _learning_rates(lambda opt: one_cycle(opt, max_lr=0.1, steps=steps, warmup=0.1), steps)
    if steps == 10:  # torch's OneCycleLR raises ZeroDivisionError here: the captioner's and SimCLR's 10% warm-up
        assert ours[0] < ours[1] == pytest.approx(0.1), "two steps of warm-up"
        assert ours[1:] == sorted(ours[1:], reverse=True), "then the anneal"
        return
    torch_lr = torch.optim.lr_scheduler.OneCycleLR
    assert ours == _learning_rates(lambda opt: torch_lr(opt, max_lr=0.1, total_steps=steps, pct_start=0.1), steps)
