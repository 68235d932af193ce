"""The command line as a user meets it: defaults, real-model paths, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner, Result

from robustlab.cli import cli
from robustlab.cli.configs import EvalOptions, FoolOptions, GenerateOptions, TrainDefenseOptions, TrainOptions


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached ImageNet weights
    return lambda *args: CliRunner().invoke(cli, list(args))


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("robustlab: error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_default_eval(run: Callable[..., Result], trained_model: torch.nn.Module) -> None:
    result = run("eval", "--out", "run.json")
    assert result.exit_code == 0, result.output
    report = json.loads(Path("run.json").read_text())
    (row,) = report["rows"]
    assert (row["model"], row["defense"], row["attack"], row["threat"]) == ("smallcnn", "none", "pgd", "linf 8/255")
    assert row["n"] == 1000
    assert row["clean_acc"] > 0.95
    assert row["robust_acc"] < row["clean_acc"] - 0.5
    assert report["schema_version"] == 2 and report["config"]["seed"] == 0
    assert "smallcnn" in result.stdout and "robust" in result.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("eval", EvalOptions),
        ("merge", EvalOptions),
        ("generate", GenerateOptions),
        ("train", TrainOptions),
        ("train-defense", TrainDefenseOptions),
        ("fool", FoolOptions),
    ],
)
def test_every_parameter_of_a_command_is_a_field_of_its_options(command: str, options: type) -> None:
    """A command builds its typed options from its parameters, one for one: a flag no field takes fails here."""
    params = {param.name for param in cli.commands[command].params} - {"shard_dirs"}  # merge's argument
    fields = dataclasses.fields(options)
    assert params <= {field.name for field in fields}
    required = {field.name for field in fields if field.default is dataclasses.MISSING}
    assert required - params <= ({"shard"} if command == "merge" else set())


def test_list_names_every_registry(run: Callable[..., Result]) -> None:
    result = run("list")
    assert result.exit_code == 0
    for name in ("smallcnn", "resnet50", "synth", "imagefolder", "pgd", "autoattack", "none"):
        assert name in result.stdout


def test_list_marks_only_attacks_whose_randomness_is_per_batch(
    run: Callable[..., Result], register: Callable[..., None]
) -> None:
    # Every built-in stochastic attack draws per sample now (AutoAttack's components included); a plug-in
    # that draws from the batch's generator is still marked, since its per-sample results follow the batch.
    from robustlab.attacks.fgsm import FGSM

    from robustlab.attack import ATTACKS

    register(ATTACKS, "test-per-batch", FGSM, stochastic=True)
    lines = run("list").stdout.splitlines()
    marked = [line.split()[0] for line in lines if "randomness per batch" in line]
    assert marked == ["caption_decoder_pgd", "caption_feature_pgd", "caption_noise", "test-per-batch"]
    assert {"square", "autoattack", "autoattack-rand", "autoattack-plus"} <= {line.split()[0] for line in lines if line}


def test_imagenet_weights_offline_is_one_clear_line(run: Callable[..., Result]) -> None:
    result = run("eval", "--model", "resnet50", "--attack", "pgd")
    assert_one_line_error(result, "ResNet50_Weights", "--weights")
    assert result.stdout == ""  # not even torch's "Downloading: ..." line


def _image_tree(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    from robustlab.data.synth import SynthDataset

    x, _ = SynthDataset("test").get_batch(torch.arange(classes * per_class))
    for i, image in enumerate(x):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(image, folder / f"{i}.png")
    return root


def test_plain_torchvision_state_dict_on_imagefolder(run: Callable[..., Result], tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    tree = _image_tree(tmp_path / "images")
    result = run(
        "eval",
        "--model",
        "resnet18",
        "--num-classes",
        "10",
        "--weights",
        str(tmp_path / "r18.pt"),
        "--data",
        f"imagefolder:{tree}",
        "--attack",
        "fgsm",
        "--quiet",
        "--out",
        "r.json",
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(Path("r.json").read_text())["rows"]
    assert row["n"] == 12 and row["model"] == "resnet18[r18.pt]"


def _bad_checkpoint(tmp_path: Path) -> list[str]:
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), tmp_path / "five.pt")
    return ["--model", "resnet18", "--num-classes", "10", "--weights", str(tmp_path / "five.pt")]


def _unreadable_image(tmp_path: Path) -> list[str]:
    tree = _image_tree(tmp_path / "bad")
    (tree / "class0" / "broken.png").write_bytes(b"not a png at all")
    return ["--model", "smallcnn", "--data", f"imagefolder:{tree}", "--n", "100"]


def _empty_folder(tmp_path: Path) -> list[str]:
    (tmp_path / "empty").mkdir()
    return ["--data", f"imagefolder:{tmp_path / 'empty'}"]


BAD_INPUT = {
    "unknown model": (lambda p: ["--model", "resnet5"], ["unknown model 'resnet5'", "resnet50"]),
    "unknown attack": (lambda p: ["--attack", "pgdd"], ["unknown attack 'pgdd'", "pgd"]),
    "unknown dataset": (lambda p: ["--data", "synht"], ["unknown dataset 'synht'", "synth"]),
    "unknown defense": (lambda p: ["--defense", "raw_ips"], ["unknown defense 'raw_ips'"]),
    "eps above 1": (lambda p: ["--eps", "2"], ["outside [0, 1]"]),
    "eps malformed": (lambda p: ["--eps", "8//255"], ["not a number"]),
    "n zero": (lambda p: ["--n", "0"], ["n must be a positive"]),
    "missing folder": (lambda p: ["--data", f"imagefolder:{p / 'nope'}"], ["does not exist"]),
    "empty folder": (_empty_folder, ["no images"]),
    "unreadable image": (_unreadable_image, ["broken.png"]),
    "checkpoint mismatch": (_bad_checkpoint, ["does not fit", "(5,)", "(10,)"]),
    "bad attack arg": (lambda p: ["--attack-arg", "pgd.stepz=3"], ["no parameter 'stepz'"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_writes_nothing(
    case: str, run: Callable[..., Result], tmp_path: Path, trained_model: torch.nn.Module
) -> None:
    make_args, fragments = BAD_INPUT[case]
    result = run("eval", *make_args(tmp_path), "--quiet", "--out", "out.json")
    assert_one_line_error(result, *fragments)
    assert not Path("out.json").exists()


@pytest.mark.slow  # trains a RAW/ISP defense and evaluates behind it
def test_train_defense_fills_the_cache_that_eval_reads(
    run: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robustlab.cache import cache_dir

    # A cache of its own: the file the training leaves is this test's alone, also in a kept home
    # (ROBUSTLAB_TEST_KEEP_HOME=1), where an earlier session already trained this configuration.
    monkeypatch.setenv("ROBUSTLAB_HOME", str(tmp_path / "home"))
    small = ["f_steps=20", "g_steps=20", "n_images=32", "g_width=4", "f_width=4"]
    defense_args = [arg for value in small for arg in ("--defense-arg", value)]
    folder = cache_dir("defenses", "raw_isp")
    before = set(folder.iterdir())
    trained = run("train-defense", "raw_isp", *defense_args, "--weights", "random", "--quiet")
    assert trained.exit_code == 0, trained.output
    (weights,) = set(folder.iterdir()) - before
    assert str(weights) in trained.stdout
    stamp = weights.stat().st_mtime_ns

    evaluated = run(
        "eval", "--weights", "random", "--defense", "raw_isp", *defense_args, "--attack", "none", "--n", "8", "--quiet"
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert set(folder.iterdir()) - before == {weights}, "eval trained again instead of loading the weights"
    assert weights.stat().st_mtime_ns == stamp

    assert_one_line_error(run("train-defense", "none"), "learns nothing")
