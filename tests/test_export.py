"""``robustlab generate`` and ``--data adv:PATH``: what is on disk is what was measured, and a run resumes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner, Result
from safetensors.torch import load_file

import robustlab.export
from robustlab.cli import cli
from robustlab.data import load_dataset
from robustlab.data.adv import AdversarialDataset
from robustlab.data.synth import SynthDataset
from robustlab.export import quantize_within
from robustlab.threat import Norm, ThreatModel, perturbation_norm

N = 24
GENERATE = ("generate", "--attack", "pgd", "--steps", "2", "--eps", "8/255", "--n", str(N), "--shard-size", "8", "-q")


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.chdir(tmp_path)
    return lambda *args: CliRunner().invoke(cli, list(args))


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _assert_one_line(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("robustlab: error: ") and all(f in line for f in fragments), line


def test_round_trip_is_within_budget_on_the_8bit_grid_and_scores_as_recorded(
    run: Callable[..., Result], trained_model: torch.nn.Module
) -> None:
    result = run(*GENERATE, "--out", "adv")
    assert result.exit_code == 0, result.output
    manifest = json.loads(Path("adv/manifest.json").read_text())
    summary = manifest["summary"]
    assert summary["n"] == N and 0.2 < summary["success_rate"] < 1.0, summary  # the attack did something

    data = load_dataset("adv:adv", image_size=32)
    assert isinstance(data, AdversarialDataset) and (len(data), data.num_classes) == (N, 10)
    everything = torch.arange(N)
    x_adv, y = data.get_batch(everything)
    source = data.sources(everything)
    original, labels = SynthDataset("test").get_batch(data.source_indices)
    assert torch.equal(y, labels) and torch.equal(source, (original * 255).round() / 255)
    for image in (x_adv, source):
        assert torch.equal(image * 255, (image * 255).round()), "not on the 8-bit grid"
    assert float(perturbation_norm(source, x_adv, Norm.LINF).max()) <= 8 / 255 + 1e-6

    with torch.inference_mode():
        prediction = trained_model(x_adv).argmax(1)
    records = manifest["samples"]
    assert prediction.tolist() == [r["adv_pred"] for r in records]
    correct = torch.tensor([r["clean_pred"] == r["label"] for r in records])
    broken = correct & (prediction != y)
    assert broken.sum().item() / correct.sum().item() == summary["success_rate"]
    assert (prediction == y).double().mean().item() == summary["adversarial_acc"]

    scored = run("eval", "--data", "adv:adv", "--attack", "fgsm", "--n", str(N), "-q", "--out", "re.json", "--strict")
    assert scored.exit_code == 0, scored.output  # its low clean accuracy is the point, not a preprocessing error
    assert json.loads(Path("re.json").read_text())["rows"][0]["clean_acc"] == summary["adversarial_acc"]
    assert "sanity" not in scored.stdout
    assert (
        "= adv:adv: adversarial images made by robustlab generate: pgd at linf 8/255 against smallcnn," in scored.stdout
    )
    misfed = run(
        "eval", "--data", "adv:adv", "--attack", "fgsm", "--n", str(N), "-q", "--mean", "none", "--std", "none"
    )
    assert misfed.exit_code == 0 and "! sanity.adversarial_mismatch: smallcnn scores" in misfed.stdout, misfed.output

    to_tensor = torchvision.transforms.ToTensor()
    folder = torchvision.datasets.ImageFolder("adv/png", transform=to_tensor, allow_empty=True)
    assert folder.classes == [f"{k:03d}-{name}" for k, name in enumerate(data.classes)]
    assert len(folder) == N
    position = {int(index): i for i, index in enumerate(data.source_indices)}
    for (path, _), (image, label) in zip(folder.samples, folder, strict=True):
        stored = position[int(Path(path).stem)]  # PNGs are named by source index
        assert label == int(y[stored]) and torch.equal(image, x_adv[stored])


def test_interrupted_run_resumes_to_the_same_files(
    run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, trained_model: torch.nn.Module
) -> None:
    assert run(*GENERATE, "--out", "whole").exit_code == 0
    written: list[Path] = []
    real_save = robustlab.export.save_weights

    def interrupt_after_two(path: Path, *args: object, **kwargs: object) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt
        real_save(path, *args, **kwargs)
        written.append(path)

    with monkeypatch.context() as patch:
        patch.setattr(robustlab.export, "save_weights", interrupt_after_two)
        assert run(*GENERATE, "--out", "part").exit_code == 130
    assert not Path("part/manifest.json").exists() and len(list(Path("part/shards").glob("*.safetensors"))) == 2

    attacked: list[int] = []
    real_shard = robustlab.export._shard
    monkeypatch.setattr(robustlab.export, "_shard", lambda out, s, *a: attacked.append(s) or real_shard(out, s, *a))
    assert run(*GENERATE, "--out", "part").exit_code == 0
    assert attacked == [0, 1, 2]  # every shard visited...
    assert _digest(Path("part")).keys() == _digest(Path("whole")).keys()
    whole, part = (json.loads(Path(d, "manifest.json").read_text()) for d in ("whole", "part"))
    assert part["samples"] == whole["samples"] and part["summary"] == whole["summary"]
    same_bytes = [k for k in _digest(Path("whole")) if not k.endswith(".safetensors")]  # PNGs, records, marker
    assert {k: _digest(Path("part"))[k] for k in same_bytes} == {k: _digest(Path("whole"))[k] for k in same_bytes}
    for shard in Path("whole/shards").glob("*.safetensors"):  # safetensors' header order is not deterministic
        whole_tensors, part_tensors = load_file(shard), load_file(Path("part/shards", shard.name))
        assert all(torch.equal(whole_tensors[k], part_tensors[k]) for k in whole_tensors)

    other = run(*GENERATE, "--seed", "1", "--out", "part")
    _assert_one_line(other, "another config")


def test_full_disk_or_unwritable_output_is_one_line_and_nothing_half_written(
    run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, trained_model: torch.nn.Module
) -> None:  # trained_model: the weights are cached before os.replace starts failing
    def full_disk(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", full_disk)
        _assert_one_line(run(*GENERATE, "--out", "adv"), "cannot write", "No space left on device")
    assert [p for p in Path("adv").rglob("*") if p.is_file()] == []
    Path("taken").mkdir()
    Path("taken/notes.txt").write_text("mine")
    _assert_one_line(run(*GENERATE, "--out", "taken"), "not an adversarial dataset folder")
    _assert_one_line(run("eval", "--data", "adv:nowhere", "--n", "8"), "nowhere", "does not exist")


def test_quantisation_stays_inside_l2_and_linf_budgets() -> None:
    generator = torch.Generator().manual_seed(0)
    source = torch.randint(0, 256, (64, 3, 8, 8), generator=generator, dtype=torch.uint8)
    x = source.float() / 255
    for threat in (ThreatModel(Norm.L2, 0.5), ThreatModel(Norm.LINF, 3 / 255)):
        delta = torch.randn(x.shape, generator=generator)
        if threat.norm is Norm.L2:
            delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.5
        else:
            delta = delta.clamp(-1, 1) * 3 / 255
        x_adv = (x + delta).clamp(0, 1)
        stored = quantize_within(source, x_adv, threat)
        size = perturbation_norm(x, stored.float() / 255, threat.norm)
        assert float(size.max()) <= threat.eps + 1e-6
        assert (stored.int() - (x_adv * 255).round().int()).abs().max() <= 1 or threat.norm is Norm.L2
