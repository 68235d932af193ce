"""Small embedded architectures for the synthetic world's resolution (32x32 by default).

They are what the default commands and the tests use: fast enough to train on two CPU cores in a
minute or two, accurate enough (>95% on the synthetic test split) that attack effects are not noise.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN", "TinyResNet"]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """Five 3x3 conv layers with BatchNorm, two poolings and global average pooling (~0.2M parameters)."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(3, w),
            _conv_bn(w, w),
            nn.MaxPool2d(2),
            _conv_bn(w, 2 * w),
            _conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return (self.body(x) + self.skip(x)).relu()


class TinyResNet(nn.Module):
    """A ResNet-8: a stem and three residual stages of one basic block each (~0.08M parameters at width 16)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(3, w),
            _Block(w, w, 1),
            _Block(w, 2 * w, 2),
            _Block(2 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
