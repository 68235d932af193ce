"""``--model robustbench:NAME``: a registry entry and a checkpoint in RobustBench's folder layout, read safely."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

import robustlab.models.robustbench as rb
from robustlab.cli import cli
from robustlab.models.loading import load_model
from robustlab.preprocessing import Preprocessing, preprocessing_of


class Normalized(nn.Module):
    """Like RobustBench's ImageNet wrappers: the net under ``model.``, normalization inside."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - 0.5) / 0.25)


@pytest.fixture
def tiny_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {"model": Normalized, "gdrive_id": "1tiny"}
    monkeypatch.setattr(rb, "_zoo", lambda: {"cifar10": {"Linf": {"Tiny2024": entry}}})


def _save_in_layout(root: Path) -> Normalized:
    """A checkpoint as RobustBench ships many: a ``state_dict`` envelope, ``module.`` prefix, no ``model.``."""
    torch.manual_seed(0)
    net = Normalized()
    folder = root / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    state = {f"module.{key.removeprefix('model.')}": value for key, value in net.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 99}, folder / "Tiny2024.pt")
    return net


def _eval(*args: str) -> Result:
    return CliRunner().invoke(cli, ["eval", "-q", "-n", "8", "--attack", "fgsm", "--device", "cpu", *args])


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("robustlab: error: ")
    return line


@pytest.mark.usefixtures("tiny_zoo")
def test_a_checkpoint_in_robustbenchs_layout_loads_and_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _save_in_layout(tmp_path / "models")
    model = load_model("robustbench:Tiny2024", weights=str(tmp_path / "models"), progress=False)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(x), reference(x)), "normalization stays inside the model"
    assert preprocessing_of(model) == Preprocessing(32, None, source="RobustBench: none")
    monkeypatch.chdir(tmp_path)  # the default model folder is ./models, as in RobustBench
    result = _eval("--model", "robustbench:Tiny2024", "--out", "run.json")
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "run.json").read_text())["rows"][0]
    assert (row["model"], row["n"]) == ("robustbench:Tiny2024", 8)


@pytest.mark.usefixtures("tiny_zoo")
def test_a_missing_or_html_checkpoint_is_one_line(tmp_path: Path) -> None:
    line = _one_line_error(_eval("--model", "robustbench:Tiny2024", "--weights", str(tmp_path / "models")))
    assert "/cifar10/Linf/Tiny2024.pt (robustlab never downloads)" in line and "1tiny" in line
    html = tmp_path / "Tiny2024.pt"
    html.write_text("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>")
    assert "HTML page" in _one_line_error(_eval("--model", "robustbench:Tiny2024", "--weights", str(html)))
    assert "did you mean Tiny2024" in _one_line_error(_eval("--model", "robustbench:Tiny2023"))
    assert "DATASET/THREAT" in _one_line_error(_eval("--model", "robustbench:Tiny2024:mnist/Linf"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("robustbench") is None, reason="RobustBench is not installed")
def test_the_real_registry_imports_without_the_packages_init() -> None:
    import sys

    zoo = rb._zoo()
    assert "Standard" in zoo["cifar10"]["Linf"] and "pkg_resources" not in sys.modules and "gdown" not in sys.modules
    salman = zoo["imagenet"]["Linf"]["Salman2020Do_R18"]
    assert rb._PREPROCESSINGS[salman["preprocessing"]] == Preprocessing(224, 256, source="RobustBench Res256Crop224")
