"""Model loading: normalization inside, eval mode, safe checkpoints, user factories."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision

from robustlab.errors import CheckpointMismatchError, UnknownNameError, WeightsUnavailableError
from robustlab.models.loading import ImageClassifier, load_model


def test_loaded_model_is_eval_and_frozen() -> None:
    model = load_model("resnet18", weights="random", num_classes=10)
    assert isinstance(model, ImageClassifier) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.num_classes == 10


def test_random_weights_are_the_same_on_every_call_and_leave_the_callers_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first, second = (load_model("smallcnn", weights="random").state_dict() for _ in range(2))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_normalization_lives_inside_the_wrapper() -> None:
    net = torch.nn.Flatten()
    model = ImageClassifier(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=3, name="t", input_size=1)
    x = torch.full((1, 3, 1, 1), 0.75)
    assert torch.allclose(model(x), torch.ones(1, 3))
    assert model.state_dict()["mean"].shape == (1, 3, 1, 1), "mean/std must be buffers so .to() moves them"


def test_checkpoint_envelopes_and_dataparallel_prefix(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(num_classes=4)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    model = load_model("resnet18", weights=str(tmp_path / "ckpt.pth"), num_classes=4)
    assert torch.equal(model.net.fc.weight, reference.fc.weight)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("unpickled arbitrary code",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hostile file is pickled on purpose
def test_checkpoint_never_unpickles_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"weight": _Evil()}))
    with pytest.raises(CheckpointMismatchError, match="cannot read checkpoint"):
        load_model("resnet18", weights=str(tmp_path / "evil.pt"))
    assert "unpickled" not in capsys.readouterr().out


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(
        WeightsUnavailableError, match=r"no checkpoint file.*robustlab train .*--out model\.safetensors"
    ):
        load_model("resnet18", weights=str(tmp_path / "missing.pt"))


def test_unknown_weights_tag_lists_known() -> None:
    with pytest.raises(UnknownNameError, match="IMAGENET1K_V1"):
        load_model("resnet18", weights="IMAGENET9K")


def test_user_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text(
        "import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("my_models:build")
    assert model(torch.rand(2, 3, 2, 2)).shape == (2, 5) and not model.training
    with pytest.raises(UnknownNameError, match="cannot load user model"):
        load_model("my_models:missing")
