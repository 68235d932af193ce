"""The RAW/ISP defense's two networks: F (RGB -> RAW) and G, a PyNET-style learned ISP (RAW -> RGB)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from robustlab.defenses.camera import linear_to_srgb
from torch import Tensor, nn

__all__ = ["MiniPyNet", "RgbToRawNet"]


class RgbToRawNet(nn.Sequential):
    """F, the paper's RGB -> RAW network ("Trans"): five 3x3 convolutions with ReLU, the last one too.

    The final ReLU (as in the official code) keeps the simulated RAW non-negative, like a sensor's.

    Args:
        width: channels of the hidden layers (the paper uses 64).

    Shape:
        - x: :math:`(B, 3, H, W)` sRGB in ``[0, 1]``
        - output: :math:`(B, 4, H, W)` packed RAW ``(R, G1, G2, B)``, see :mod:`robustlab.defenses.camera`
    """

    def __init__(self, *, width: int = 16) -> None:
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(width, 4, 3, padding=1), nn.ReLU()]
        super().__init__(*layers)


def _conv(in_channels: int, out_channels: int, kernel: int, *, norm: bool) -> nn.Sequential:
    """PyNET's ConvLayer: reflection padding, convolution, optional affine instance norm, LeakyReLU(0.2)."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(in_channels, out_channels, kernel)]
    if norm:
        layers.append(nn.InstanceNorm2d(out_channels, affine=True))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class _MultiConv(nn.Module):
    """PyNET's ConvMultiBlock: two conv layers per kernel size, the branches concatenated."""

    def __init__(self, in_channels: int, out_channels: int, kernels: tuple[int, ...], *, norm: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                _conv(in_channels, out_channels, k, norm=norm), _conv(out_channels, out_channels, k, norm=norm)
            )
            for k in kernels
        )
        self.out_channels = out_channels * len(kernels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class MiniPyNet(nn.Module):
    """G, a small PyNET (Ignatov et al., CVPR-W 2020): a learned ISP from packed RAW to sRGB.

    An inverted pyramid of ``levels`` levels, level 1 at full resolution and each further level at
    half the previous one. Encoders are 3x3 blocks joined by max-pooling; decoders run from the
    coarsest level up, each a multi-kernel block (3/5/7 at level 1, fewer kernels lower down, as in
    PyNET) on the level's encoder features concatenated with the bilinearly upsampled features of the
    level below. Instance norm is used at levels >= 2 only, LeakyReLU(0.2) everywhere, and every level
    has its own linear 3-channel output: the coarse ones serve coarse-to-fine training, level 1 is
    the ISP's output. Inputs whose sides are not multiples of ``2 ** (levels - 1)`` are
    edge-padded and the outputs cropped back.

    Two departures from PyNET make it trainable on a CPU in minutes. The network reads its RAW
    input through the fixed sRGB transfer curve: in linear RAW the dark tones are crowded into the
    bottom hundredths of the range, where the output's gamma is steepest. And every level's output
    adds a shared linear 1x1 colour map of that (area-downsampled) encoded input, in the spirit of
    the official code's optional input injection (``residual=True``): a per-pixel linear map alone
    reconstructs synthetic images at about 29 dB, so the convolutional pyramid only learns what a
    colour matrix cannot (white-balance estimation, local corrections). ``skip=False`` removes that map:
    the ablation of a near-identity path from input to output, which could carry a perturbation through.

    Args:
        levels: pyramid depth (the paper's PyNET has 5).
        width: channels at level 1, doubled at each level below.
        skip: add the linear 1x1 colour map of the input to every level's output.

    Shape:
        - raw: :math:`(B, 4, H, W)` packed RAW
        - output: :math:`(B, 3, H, W)` sRGB, not clipped
    """

    def __init__(self, *, levels: int = 3, width: int = 8, skip: bool = True) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(levels)]
        self.levels = levels
        self.encoders = nn.ModuleList(
            _MultiConv(widths[i - 1] if i else 4, widths[i], (3,), norm=i > 0) for i in range(levels)
        )
        decoders = [
            _MultiConv(widths[i] * (2 if i < levels - 1 else 1), widths[i], _kernels(i, levels), norm=i > 0)
            for i in range(levels)
        ]
        self.decoders = nn.ModuleList(decoders)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(decoder.out_channels, 3, 3)) for decoder in decoders
        )
        self.skip = nn.Conv2d(4, 3, 1) if skip else None
        self.ups = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
                _conv(decoders[i].out_channels, widths[i - 1], 3, norm=i > 1),
            )
            for i in range(1, levels)
        )

    def forward(self, raw: Tensor) -> Tensor:
        return self.pyramid(raw)[-1]

    def pyramid(self, raw: Tensor, *, finest: int = 1) -> list[Tensor]:
        """Outputs of levels ``levels`` (coarsest) down to ``finest``, level ``l`` at ``1 / 2**(l-1)`` scale.

        Levels finer than ``finest`` are not computed, which keeps coarse training stages cheap.
        """
        height, width = raw.shape[-2:]
        multiple = 2 ** (self.levels - 1)
        encoded = F.pad(linear_to_srgb(raw), (0, -width % multiple, 0, -height % multiple), mode="replicate")
        feats, x = [], encoded
        for i, encoder in enumerate(self.encoders):
            x = encoder(F.max_pool2d(x, 2) if i else x)
            feats.append(x)
        outputs, up = [], None
        for i in reversed(range(finest - 1, self.levels)):
            decoded = self.decoders[i](feats[i] if up is None else torch.cat([feats[i], up], dim=1))
            scale = 2**i
            output = self.heads[i](decoded)
            if self.skip is not None:
                output = output + self.skip(F.avg_pool2d(encoded, scale) if i else encoded)
            outputs.append(output[..., : math.ceil(height / scale), : math.ceil(width / scale)])
            if i > finest - 1:
                up = self.ups[i - 1](decoded)
        return outputs


def _kernels(index: int, levels: int) -> tuple[int, ...]:
    """Kernel sizes at pyramid index ``index`` (level ``index + 1``): 3/5/7 at the top, 3 at the bottom."""
    return (3, 5, 7)[: min(3, levels - index)]
