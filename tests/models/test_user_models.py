"""robustlab on the models users bring: a checkpoint trained elsewhere, and models with masking built in.

The resnet18 scenario is the one a user met: a torchvision ``resnet18(num_classes=10)`` trained on
32x32 images with ImageNet mean/std outside the net, saved as a state dict and evaluated on its own
PNGs. It is trained here by a plain PyTorch loop (not robustlab's training path), and robustlab's clean
accuracy must equal the loop's on the same files.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustlab.cli import cli

PER_CLASS = 8


@pytest.fixture(scope="session")
def png_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``PER_CLASS`` 32x32 test PNGs per shape class, in class folders (sorted names = label order)."""
    from torchvision.transforms.functional import to_pil_image

    from robustlab.data.synth import SynthDataset

    root = tmp_path_factory.mktemp("pngs")
    test = SynthDataset("test")
    x, y = test.get_batch(torch.arange(400))
    counts = dict.fromkeys(range(10), 0)
    for image, label in zip(x, y.tolist(), strict=True):
        if counts[label] < PER_CLASS:
            folder = root / f"{label:02d}-{test.classes[label]}"
            folder.mkdir(exist_ok=True)
            to_pil_image(image).save(folder / f"{counts[label]:03d}.png")
            counts[label] += 1
    assert min(counts.values()) == PER_CLASS
    return root


def _files(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The folder read the plain way: PIL and to_tensor, labels by sorted folder name."""
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    images, labels = [], []
    for label, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for file in sorted(folder.glob("*.png")):
            images.append(to_tensor(Image.open(file).convert("RGB")))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def _eval(*args: str) -> Any:
    return CliRunner().invoke(cli, ["eval", "-q", "--device", "cpu", *args])


def test_resnet18_at_its_own_size_matches_plain_pytorch_and_torchattacks(
    resnet18_checkpoint: Path, plain_resnet18: nn.Module, png_folder: Path, tmp_path: Path
) -> None:
    import torchattacks

    from robustlab.reports.report import Report

    model = plain_resnet18
    x, y = _files(png_folder)
    with torch.no_grad():
        plain_clean = (model(x).argmax(1) == y).double().mean().item()
    attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)
    reference = (model(attack(x, y)).argmax(1) == y).double().mean().item()

    out = tmp_path / "r18.json"
    args = ["--model", "resnet18", "--num-classes", "10", "--weights", str(resnet18_checkpoint)]
    result = _eval(
        *args,
        *("--data", f"imagefolder:{png_folder}", "--attack", "pgd", "--attack-arg", "random_start=false"),
        *("--out", str(out)),
    )
    assert result.exit_code == 0, result.output
    row = Report.from_json(out).rows[0]
    assert plain_clean > 0.5, "the plain loop's model must be worth evaluating"
    assert row.clean_acc == pytest.approx(plain_clean, abs=1e-9)
    # Early stop keeps the first fooling iterate, so robustlab's PGD is never weaker than torchattacks'.
    assert reference - 0.05 <= row.robust_acc <= reference + 1e-9
    assert "fed 32x32 images (the data's own size" in result.output
    assert "sanity." not in result.output

    data = f"imagefolder:{png_folder}"
    wrong = _eval(*args, "--data", data, "-n", "20", "--attack", "none", "--image-size", "224", "--strict")
    assert "! sanity.chance_level" in wrong.output
    assert wrong.exit_code == 2


PLANTED = """
import torch
from torch import nn
from robustlab.models.loading import load_model


class Planted(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.net = load_model("smallcnn", weights="synth", progress=False)
        self.kind = kind

    def forward(self, x):
        if self.kind == "rounded":
            x = (x * 3).round() / 3  # 4 levels: zero gradients
        if self.kind == "noisy":
            x = x + 0.05 * torch.randn_like(x)
        if self.kind == "shattered":
            x = x + 0.001 * torch.sin(10000 * x)  # moves pixels by 0.001; its slope flips sign every 0.0003
        if self.kind == "nan":
            return self.net(x) * float("nan")
        logits = self.net(x)
        return logits * 1000 if self.kind == "scaled" else logits


def scaled(): return Planted("scaled")
def rounded(): return Planted("rounded")
def noisy(): return Planted("noisy")
def nan(): return Planted("nan")
def shattered(): return Planted("shattered")
def plain(): return Planted("plain")
"""


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_model: nn.Module) -> str:
    (tmp_path / "planted_models.py").write_text(textwrap.dedent(PLANTED))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "planted_models"


@pytest.mark.parametrize(
    ("factory", "flag"),
    [
        ("scaled", "! masking.zero_gradients"),
        ("rounded", "! masking.zero_gradients"),
        ("noisy", "! randomized"),
        ("nan", "! sanity.nonfinite_logits"),
        ("shattered", "! masking.shattered_gradients"),
        ("plain", None),
    ],
)
def test_planted_masking_is_flagged_on_user_models(planted: str, factory: str, flag: str | None) -> None:
    result = _eval("--model", f"{planted}:{factory}", "-n", "32", "--steps", "3", "--eot-samples", "2", "--draws", "2")
    assert result.exit_code == 0, result.output
    flags = [line for line in result.output.splitlines() if line.startswith("! ")]
    if flag is None:
        assert flags == []
    else:
        assert any(line.startswith(flag) for line in flags), result.output


def test_noisy_model_is_not_scored_above_pgd_without_early_stop_over_20_draws(planted: str) -> None:
    """Early stop on a random model kept iterates that fooled one draw only: an overstated robust accuracy."""
    from robustlab.attacks.pgd import PGD

    from robustlab.data.synth import SynthDataset
    from robustlab.evaluate import EvalConfig, Evaluator
    from robustlab.models.loading import ModelSpec, load_model
    from robustlab.seeding import seeded
    from robustlab.tasks import predict

    n = 64
    report = Evaluator(progress=False).run(EvalConfig(models=(ModelSpec(f"{planted}:noisy"),), n=n, eot_samples=5))
    ours = report.rows[0].robust_acc
    model = load_model(f"{planted}:noisy", progress=False)
    x, y = SynthDataset("test").get_batch(torch.arange(n))
    with seeded(1, "reference") as generator:
        correct = predict(model, x) == y
        x_adv = PGD()(model, x, y, generator=generator, early_stop=False)
        draws = torch.stack([(predict(model, x_adv) == y) & correct for _ in range(20)])
    reference = draws.double().mean().item()
    assert any(d.code == "randomized" for d in report.diagnostics)
    assert ours is not None and ours <= reference


def test_a_bare_eps_is_never_an_l2_radius() -> None:
    from robustlab.budgets import parse_budget
    from robustlab.cli.configs import ComponentOptions

    options = ComponentOptions(steps=None, attack_args=(), defense_args=())
    attacks, _ = options.specs(["pgd", "cw"], ["none"], sweep=[parse_budget("4/255")])
    params = {spec.name: dict(spec.params) for spec in attacks}
    assert params["pgd"]["eps"] == pytest.approx(4 / 255)
    assert "eps" not in params["cw"]  # cw keeps its own (unbounded) budget
    per_norm = [parse_budget("linf:4/255"), parse_budget("l2:0.5")]
    attacks, _ = options.specs(["pgd", "cw", "apgd"], ["none"], sweep=per_norm)
    found = sorted((spec.name, dict(spec.params).get("norm", ""), dict(spec.params)["eps"]) for spec in attacks)
    assert found == [("apgd", "", 4 / 255), ("apgd", "l2", 0.5), ("cw", "", 0.5), ("pgd", "", 4 / 255)]


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_per_sample_results_do_not_depend_on_the_batch_size(trained_model: nn.Module, attack: str) -> None:
    from robustlab.components import ComponentSpec
    from robustlab.evaluate import EvalConfig, Evaluator

    spec = ComponentSpec(attack, (("eps", 4 / 255), ("steps", 10)))  # a budget that leaves samples on both sides

    def per_sample(batch_size: int) -> tuple[list[int], list[int]]:
        config = EvalConfig(attacks=(spec,), n=96, batch_size=batch_size, diagnostics=False)
        report = Evaluator(progress=False).run(config)
        (block,) = report.samples
        return block["index"], block["attacks"][0]["adv_pred"]

    first = per_sample(7)
    assert all(per_sample(size) == first for size in (16, 64, 256))


def test_n_on_a_class_folder_covers_every_class(png_folder: Path) -> None:
    from robustlab.data import load_dataset
    from robustlab.sampling import sample_indices

    dataset = load_dataset(f"imagefolder:{png_folder}", image_size=32)
    indices, described = sample_indices(dataset, 20, seed=0)
    labels = [dataset.targets[i] for i in indices]  # type: ignore[attr-defined]
    assert sorted(set(labels)) == list(range(10)) and len(indices) == 20
    assert "class-stratified" in described
    assert torch.equal(indices, sample_indices(dataset, 20, seed=0)[0])


def test_cw_keeps_its_own_budget_under_a_bare_eps(trained_model: nn.Module, tmp_path: Path) -> None:
    from robustlab.reports.report import Report

    out = tmp_path / "run.json"
    args = ("-n", "8", "--attack", "pgd", "--attack", "cw", "--eps", "8/255", "--steps", "2", "--out", str(out))
    assert _eval(*args).exit_code == 0
    threats = {row.attack.split("(")[0]: row.threat for row in Report.from_json(out).rows}
    assert threats["pgd"] == "linf 8/255" and threats["cw"] == "l2 unbounded"


def test_mean_and_std_override_the_architecture_and_are_recorded(trained_model: nn.Module, tmp_path: Path) -> None:
    from robustlab.reports.report import Report

    out = tmp_path / "run.json"
    result = _eval("-n", "32", "--attack", "none", "--mean", "none", "--std", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    note = "smallcnn fed 32x32 images (the model's standard size), mean (0, 0, 0), std (1, 1, 1)"
    assert f"= {note}" in result.output and note in Report.from_json(out).inputs
    assert Report.from_json(out).rows[0].clean_acc < 0.9  # the checkpoint was trained under mean 0.5, std 0.25


def test_a_random_model_gets_the_randomized_version_of_an_attack(
    monkeypatch: pytest.MonkeyPatch, register: Any, synth_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """``autoattack`` becomes ``autoattack-rand`` when installed; an attack doing its own EOT gets the bare model."""
    from robustlab.attacks.fgsm import FGSM

    import robustlab.randomized
    from robustlab.attack import ATTACKS
    from robustlab.components import ComponentSpec
    from robustlab.defense import EOT
    from robustlab.randomized import attacked_by, for_randomized
    from robustlab.victims import Target

    class OwnEOT(FGSM):
        averages_draws = True

    register(ATTACKS, "fgsm-rand-for-test", OwnEOT)
    monkeypatch.setattr(robustlab.randomized, "RANDOMIZED_ALTERNATIVES", {"fgsm": "fgsm-rand-for-test"})
    x, _ = synth_batch
    noisy, plain = nn.Dropout(0.5).train(), nn.Identity()
    attacks = [(spec, spec.build(ATTACKS)) for spec in (ComponentSpec("fgsm"), ComponentSpec("pgd"))]
    target = Target(scored=noisy, attacked={"-": noisy}, fit_on={}, dataset=None)  # type: ignore[arg-type]
    randomized, swapped, (said,) = for_randomized(target, attacks, x[:8], eot_samples=3, draws=4)
    assert [spec.name for spec, _ in swapped] == ["fgsm-rand-for-test", "pgd"]
    assert not randomized.early_stop and randomized.draws == 4 and said.code == "randomized"
    wrapped = randomized.attacked["-"]
    assert isinstance(wrapped, EOT) and attacked_by(swapped[0][1], wrapped) is noisy
    assert attacked_by(swapped[1][1], wrapped) is wrapped
    same = Target(scored=plain, attacked={"-": plain}, fit_on={}, dataset=None)  # type: ignore[arg-type]
    assert for_randomized(same, attacks, x[:8], eot_samples=3, draws=4) == (same, attacks, [])


def test_generate_attacks_a_noisy_user_model_through_eot(planted: str, register: Any, tmp_path: Path) -> None:
    from robustlab.attacks.fgsm import FGSM

    from robustlab.attack import ATTACKS
    from robustlab.components import ComponentSpec
    from robustlab.defense import EOT
    from robustlab.export import GenerateConfig, generate
    from robustlab.models.loading import ModelSpec

    differentiated: list[nn.Module] = []

    class RecordingFGSM(FGSM):
        def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            differentiated.append(model)
            return super().__call__(model, x, y, **kwargs)

    register(ATTACKS, "test-recording-fgsm", RecordingFGSM)
    for factory in ("noisy", "plain"):
        config = GenerateConfig(
            model=ModelSpec(f"{planted}:{factory}"), attack=ComponentSpec("test-recording-fgsm"), n=8, eot_samples=3
        )
        generate(config, tmp_path / factory, progress=False)
    noisy, plain = differentiated
    assert isinstance(noisy, EOT) and noisy.n_samples == 3
    assert not isinstance(plain, EOT)
