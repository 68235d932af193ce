"""``--model timm:NAME``: timm's tiny test models through robustlab's own strict, offline loader."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from robustlab.cli import cli
from robustlab.data import load_dataset
from robustlab.models.loading import load_model
from robustlab.preprocessing import preprocessing_of

timm = pytest.importorskip("timm")
ARCHS = ("test_resnet", "test_vit")


def _reference(arch: str, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(arch, num_classes=classes).eval()


def _same_logits(model: torch.nn.Module, reference: torch.nn.Module, size: int) -> None:
    config = timm.data.resolve_model_data_config(reference)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        assert torch.allclose(model(x), reference((x - mean) / std), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_saved_checkpoint_gives_timms_logits_and_its_data_config(tmp_path: Path, arch: str) -> None:
    reference = _reference(arch)
    torch.save(reference.state_dict(), tmp_path / "net.pt")
    model = load_model(f"timm:{arch}", weights=str(tmp_path / "net.pt"), num_classes=10, progress=False)
    config = timm.data.resolve_model_data_config(reference)
    fed = preprocessing_of(model)
    assert fed is not None and fed.size == model.input_size == config["input_size"][1]
    assert (fed.interpolation, fed.crop_mode) == (config["interpolation"], config["crop_mode"])
    _same_logits(model, reference, model.input_size)
    # the loader's images equal timm's own eval transform (without its normalization: the model owns that)
    expected = timm.data.create_transform(**config)
    for i, (width, height) in enumerate(((300, 200), (190, 250))):
        (tmp_path / "data" / f"c{i}").mkdir(parents=True)
        Image.new("RGB", (width, height), (30 * i, 90, 200)).save(tmp_path / "data" / f"c{i}" / "a.png")
    dataset = load_dataset(f"imagefolder:{tmp_path / 'data'}", image_size=fed.size, preprocessing=fed)
    for i in range(2):
        with Image.open(tmp_path / "data" / f"c{i}" / "a.png") as image:
            normalized = expected(image.convert("RGB"))
        assert torch.allclose((dataset[i][0] - model.mean[0]) / model.std[0], normalized, atol=1e-6, rtol=0)


def test_local_dir_and_the_hub_cache_load_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _reference("test_resnet")
    timm.models.save_for_hf(reference, tmp_path / "local", safe_serialization="both")
    model = load_model(f"timm:local-dir:{tmp_path / 'local'}", progress=False)
    _same_logits(model, reference, 160)
    snapshot = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes((tmp_path / "local" / "model.safetensors").read_bytes())
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _same_logits(load_model("timm:test_resnet", weights="hub", num_classes=10, progress=False), reference, 160)


def test_a_checkpoint_with_another_class_count_is_refused(tmp_path: Path) -> None:
    torch.save(_reference("test_resnet").state_dict(), tmp_path / "ten.pt")
    args = ["eval", "-q", "-n", "2", "--attack", "fgsm", "--model", "timm:test_resnet"]
    result = CliRunner().invoke(cli, [*args, "--weights", str(tmp_path / "ten.pt")])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("robustlab: error: ") and "shape of fc.bias is (10,), expected (1000,)" in line


def test_an_empty_hub_cache_offline_fails_before_timm_is_imported(tmp_path: Path) -> None:
    probe = (
        "import sys\nfrom robustlab.cli import main\ntry:\n    main()\n"
        "finally:\n    print('timm imported' if 'timm' in sys.modules else 'timm not imported', file=sys.stderr)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", probe, "eval", "-q", "--model", "timm:test_resnet"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    seconds = time.perf_counter() - started
    error, imported = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert error.startswith("robustlab: error: ") and str(tmp_path / "empty") in error and "pretrained=True" in error
    assert imported == "timm not imported", f"{seconds:.2f} s"
