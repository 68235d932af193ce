"""Each model owns its preprocessing: the resize, crop and interpolation its weights were trained with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from robustlab.data import load_dataset
from robustlab.errors import ConfigError
from robustlab.inputs import input_note, load_classifier
from robustlab.models.loading import ModelSpec, load_model, torchvision_preprocessing
from robustlab.preprocessing import Preprocessing, preprocessing_of

MIXED_SIZES = ((300, 200), (250, 333), (512, 384), (231, 231))


def _mixed_folder(root: Path) -> list[Path]:
    """Two classes of noise images of different sizes and aspect ratios (none 224x224)."""
    generator = torch.Generator().manual_seed(0)
    paths = []
    for i, (width, height) in enumerate(MIXED_SIZES):
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        path = root / f"class{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.numpy()).save(path)
        paths.append(path)
    return sorted(paths, key=lambda p: (p.parent.name, p.name))


@pytest.mark.parametrize(
    ("arch", "tag", "resize", "interpolation"),
    [("resnet50", "IMAGENET1K_V2", 232, "bilinear"), ("efficientnet_b0", "IMAGENET1K_V1", 256, "bicubic")],
)
def test_torchvision_weights_resolve_to_their_own_transforms(
    tmp_path: Path, arch: str, tag: str, resize: int, interpolation: str
) -> None:
    weight = torchvision.models.get_model_weights(arch)[tag]
    preprocessing, mean, std = torchvision_preprocessing(weight)
    assert (preprocessing.size, preprocessing.resize, preprocessing.interpolation) == (224, resize, interpolation)
    paths = _mixed_folder(tmp_path)
    dataset = load_dataset(f"imagefolder:{tmp_path}", image_size=224, preprocessing=preprocessing)
    expected = weight.transforms()  # builds the transform only: nothing is downloaded
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    for index, path in enumerate(paths):
        x, _ = dataset[index]
        with Image.open(path) as image:
            reference = expected(image.convert("RGB"))
        assert torch.allclose((x - mean_t) / std_t, reference, atol=1e-6, rtol=0)


def test_loaded_torchvision_weights_carry_their_preprocessing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader keeps resize, interpolation, mean and std, not only the crop size (weights faked offline)."""
    weight = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1
    state = torchvision.models.efficientnet_b0().state_dict()
    monkeypatch.setattr(type(weight), "get_state_dict", lambda self, **_: state)
    model = load_model("efficientnet_b0", weights="IMAGENET1K_V1", progress=False)
    assert preprocessing_of(model) == Preprocessing(224, 256, "bicubic", source=f"torchvision {weight}")
    _mixed_folder(tmp_path)
    note = input_note(model, ModelSpec("efficientnet_b0", weights="IMAGENET1K_V1"), f"imagefolder:{tmp_path}")
    assert "resize 256 bicubic, crop 224 (torchvision EfficientNet_B0_Weights.IMAGENET1K_V1), mean (0.485" in note
    assert "resize" not in input_note(model, ModelSpec("efficientnet_b0", weights="IMAGENET1K_V1"), "synth")


def test_flags_override_what_the_weights_say(tmp_path: Path) -> None:
    _mixed_folder(tmp_path)
    spec = ModelSpec(
        "resnet18",
        weights="random",
        num_classes=2,
        image_size=64,
        resize=80,
        interpolation="bicubic",
        crop_mode="squash",
    )
    model = load_classifier(spec, f"imagefolder:{tmp_path}", progress=False)
    fed = preprocessing_of(model)
    assert fed is not None and (fed.size, fed.resize, fed.interpolation, fed.crop_mode) == (64, 80, "bicubic", "squash")
    x, _ = load_dataset(f"imagefolder:{tmp_path}", image_size=64, preprocessing=fed)[0]
    with Image.open(_mixed_folder(tmp_path)[0]) as image:
        squashed = image.convert("RGB").resize((80, 80), Image.Resampling.BICUBIC)
    reference = torchvision.transforms.functional.to_tensor(squashed)[:, 8:72, 8:72]
    assert torch.allclose(x, reference, atol=1e-6)
    with pytest.raises(ConfigError, match="smaller than the crop"):
        load_classifier(
            ModelSpec("resnet18", weights="random", num_classes=2, image_size=64, resize=32), "synth", progress=False
        )


def test_scaling_keeps_the_crop_fraction_and_same_size_images_are_untouched() -> None:
    tv = Preprocessing(224, 232, source="t")
    assert tv.at_size(448).resize == 464
    timm_like = Preprocessing.from_crop_fraction(160, 0.95, interpolation="bicubic", crop_mode="center", source="t")
    assert timm_like.resize == 168
    image = Image.new("RGB", (224, 224), (10, 20, 30))
    assert torch.equal(tv(image), torchvision.transforms.functional.to_tensor(image))
