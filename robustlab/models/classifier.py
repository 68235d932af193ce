"""Architectures by name and the wrapper that owns normalization: what a loaded classifier is.

Kept apart from :mod:`robustlab.models.loading` (which loads weights, and trains the embedded nets through
:mod:`robustlab.train`) so that training can build an architecture without importing the loader.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from robustlab.models.nets import SmallCNN, TinyResNet
from robustlab.preprocessing import Preprocessing
from robustlab.registry import Registry

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "SYNTH_MEAN", "SYNTH_STD", "ImageClassifier"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYNTH_MEAN = (0.5, 0.5, 0.5)
SYNTH_STD = (0.25, 0.25, 0.25)

MODELS: Registry[nn.Module] = Registry("model")
"""Architecture name -> ``factory(*, num_classes, image_size) -> nn.Module`` (random init)."""

MODELS.register("smallcnn", summary="Embedded 5-layer CNN for the synthetic world (default model).", family="embedded")(
    lambda *, num_classes, image_size: SmallCNN(num_classes)
)
MODELS.register("tinyresnet", summary="Embedded ResNet-8 for the synthetic world.", family="embedded")(
    lambda *, num_classes, image_size: TinyResNet(num_classes)
)

_TORCHVISION = {
    "alexnet": "AlexNet",
    "resnet18": "ResNet-18",
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
    "wide_resnet50_2": "Wide ResNet-50-2",
    "vgg16_bn": "VGG-16 with batch norm",
    "mobilenet_v3_small": "MobileNetV3-Small",
    "mobilenet_v3_large": "MobileNetV3-Large",
    "efficientnet_b0": "EfficientNet-B0",
    "convnext_tiny": "ConvNeXt-Tiny",
    "densenet121": "DenseNet-121",
    "vit_b_16": "ViT-B/16",
}


def _torchvision_factory(arch: str, *, num_classes: int, image_size: int) -> nn.Module:
    import torchvision

    extra = {"image_size": image_size} if arch.startswith("vit_") else {}
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)


for _arch, _title in _TORCHVISION.items():
    MODELS.register(
        _arch, summary=f"torchvision {_title} (ImageNet weights, a checkpoint, or synth).", family="torchvision"
    )(partial(_torchvision_factory, _arch))


class ImageClassifier(nn.Module):
    """A classifier that takes ``[0, 1]`` images and normalizes them itself.

    Shape:
        - x: :math:`(B, C, H, W)` float in ``[0, 1]``.
        - output: :math:`(B, K)` logits.

    ``preprocessing`` is how images of another size were resized and cropped when the weights were
    trained (:func:`robustlab.preprocessing.preprocessing_of` scales it to ``input_size``); ``None``:
    robustlab's standard.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        net: nn.Module,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_classes: int,
        name: str,
        input_size: int,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.num_classes = num_classes
        self.name = name
        self.input_size = input_size
        self.preprocessing = preprocessing

    def forward(self, x: Tensor) -> Tensor:
        logits = self.raw_logits(x)
        # Half-precision logits saturate the loss (a confident softmax is exactly 1 in float16, so its gradient
        # is 0 and FGSM's sign step is 0): losses and margins are computed on float32 copies.
        return logits.float() if logits.dtype in _HALF else logits

    def raw_logits(self, x: Tensor) -> Tensor:
        """What the wrapped net returns, before half precision is upcast (the model check reads its dtype)."""
        return self.net((x - self.mean) / self.std)


_HALF = (torch.float16, torch.bfloat16)
