r"""Camera simulation: unprocess sRGB into simulated Bayer RAW and back (Brooks et al., CVPR 2019).

The RAW/ISP defense needs (RGB, RAW) training pairs but robustlab trains offline on synthetic RGB
images, so the RAW side is simulated by inverting a simple camera pipeline, as in "Unprocessing
Images for Learned Raw Denoising":

    sRGB -> linear (inverse sRGB curve) -> rgb_to_cam (inverse colour correction)
         -> divide by white-balance gains -> RGGB mosaic -> packed 4 x H x W -> shot/read noise

:func:`isp` is the matching forward pipeline S (demosaic, white balance, colour correction, sRGB
curve), so ``isp(unprocess(x, params), params) ~= x`` without noise.

Packing. Each image pixel is one 2x2 RGGB cell of a sensor with twice the image's resolution, and
the packed RAW is ``(B, 4, H, W)`` with channels ``(R, G1, G2, B)`` of that cell (pixel-unshuffle of
the mosaic). This mirrors the paper's data, where a 448x448 Zurich RAW mosaic is packed to
4x224x224 and paired with a 224x224 RGB image. The sensor sees the pixel's colour on all four sites
(the scene is taken as constant within a pixel), so the image is exactly the 2x2 binning of the
sensor and binning ("superpixel" demosaicing) is the exact demosaic of the simulation: the round trip
is lossless up to float rounding. A one-hot placement of a same-resolution mosaic was rejected: it
makes every output depend on the pixel's parity, which a small 'same'-padded CNN such as the
defense's F cannot see away from the borders; bilinear sub-pixel sampling was rejected because the
round trip then blurs (about 13 dB on white noise). The consequence to keep in mind when judging the
defense: the simulated RAW loses no spatial information, and what separates it from the image is
the colour pipeline (curve, colour matrix, white balance) and the sensor noise, not mosaicking.

kornia naming: ``kornia.color.CFA`` uses OpenCV's names, which read the pattern from pixel (1, 1),
so an RGGB sensor (red at the top-left pixel) is ``CFA.BG``.

All randomness comes from an explicit :class:`torch.Generator`: parameters are sampled once into a
:class:`CameraParams` and then applied, so a draw can be replayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from kornia.color import CFA, raw_to_rgb_2x2_downscaled, rgb_to_raw
from torch import Tensor, nn

__all__ = [
    "BAYER_CFA",
    "CameraParams",
    "Isp",
    "RawPair",
    "Unprocess",
    "add_sensor_noise",
    "apply_ccm",
    "apply_white_balance",
    "demosaic",
    "isp",
    "linear_to_srgb",
    "make_raw_pair",
    "mosaic",
    "sample_camera_params",
    "srgb_to_linear",
    "unprocess",
]

BAYER_CFA = CFA.BG
"""RGGB: kornia (OpenCV naming) calls the pattern with red at pixel (0, 0) ``BG``."""

# Illustrative sensor responses, not measured from real cameras: each camera channel picks up 5-25%
# of its neighbours (spectral overlap of the colour filters), and every row sums to one so that grey
# stays grey before white balance. All entries are non-negative, so a linear image in [0, 1] stays
# in [0, 1] in camera space and the simulated RAW needs no clipping.
_RGB_TO_CAM_BANK = (
    ((0.80, 0.15, 0.05), (0.10, 0.80, 0.10), (0.05, 0.20, 0.75)),
    ((0.75, 0.20, 0.05), (0.08, 0.84, 0.08), (0.03, 0.17, 0.80)),
    ((0.85, 0.10, 0.05), (0.12, 0.78, 0.10), (0.06, 0.24, 0.70)),
    ((0.78, 0.17, 0.05), (0.10, 0.82, 0.08), (0.04, 0.21, 0.75)),
)

# Brooks et al. 2019 (google-research/unprocessing, unprocess.py): white-balance gain ranges, and
# shot noise log-uniform in [1e-4, 1.2e-2] with log(read) = 2.18 log(shot) + 1.20 + N(0, 0.26^2).
_RED_GAIN = (1.9, 2.4)
_BLUE_GAIN = (1.5, 1.9)
_SHOT_NOISE = (1e-4, 1.2e-2)
_READ_NOISE_SLOPE, _READ_NOISE_INTERCEPT, _READ_NOISE_STD = 2.18, 1.20, 0.26


@dataclass(frozen=True, eq=False)
class CameraParams:
    """One draw of the simulated camera, per sample; pass it to both directions to replay it.

    Attributes:
        rgb_to_cam: ``(B, 3, 3)`` linear sRGB -> camera RGB (the inverse colour-correction matrix).
        red_gain: ``(B,)`` white-balance gain of the red channel (RAW red is divided by it).
        blue_gain: ``(B,)`` white-balance gain of the blue channel.
        shot_noise: ``(B,)`` signal-dependent noise variance per unit of signal.
        read_noise: ``(B,)`` signal-independent noise variance.
    """

    rgb_to_cam: Tensor
    red_gain: Tensor
    blue_gain: Tensor
    shot_noise: Tensor
    read_noise: Tensor

    def to(self, reference: Tensor) -> CameraParams:
        """Return the parameters on ``reference``'s device and dtype."""
        return CameraParams(*(t.to(reference) for t in vars(self).values()))


def sample_camera_params(batch_size: int, *, generator: torch.Generator) -> CameraParams:
    """Draw ``batch_size`` random cameras (CCM from the bank, white balance, noise levels).

    The colour-correction matrix is a random convex combination of the bank, as Brooks et al. mix
    their cameras' matrices. Sampling happens on the generator's device, in float32.

    Args:
        batch_size: number of cameras, one per image.
        generator: the only source of randomness.

    Returns:
        The parameters; move them with :meth:`CameraParams.to`.
    """
    device = generator.device
    bank = torch.tensor(_RGB_TO_CAM_BANK, device=device)
    weights = torch.rand(batch_size, len(_RGB_TO_CAM_BANK), generator=generator, device=device) + 1e-8
    weights = weights / weights.sum(dim=1, keepdim=True)
    rgb_to_cam = torch.einsum("bk,kij->bij", weights, bank)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(batch_size, generator=generator, device=device)

    red_gain = uniform(*_RED_GAIN)
    blue_gain = uniform(*_BLUE_GAIN)
    log_shot = uniform(math.log(_SHOT_NOISE[0]), math.log(_SHOT_NOISE[1]))
    jitter = _READ_NOISE_STD * torch.randn(batch_size, generator=generator, device=device)
    log_read = _READ_NOISE_SLOPE * log_shot + _READ_NOISE_INTERCEPT + jitter
    return CameraParams(rgb_to_cam, red_gain, blue_gain, log_shot.exp(), log_read.exp())


def srgb_to_linear(x: Tensor) -> Tensor:
    """Invert the sRGB transfer curve (IEC 61966-2-1), elementwise.

    Args:
        x: sRGB values, assumed in ``[0, 1]``; any shape.

    Returns:
        Linear-light values of the same shape, in ``[0, 1]``.
    """
    # Clamp inside the power branch only: torch.where evaluates both branches, and a negative base
    # would put NaN into the gradient of the branch that is not selected.
    curve = ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(x <= 0.04045, x / 12.92, curve)


def linear_to_srgb(x: Tensor) -> Tensor:
    """Apply the sRGB transfer curve (IEC 61966-2-1), elementwise; the inverse of :func:`srgb_to_linear`.

    Values below zero stay on the linear segment, so the result is finite (and differentiable) for
    any input; values above one are not clipped.

    Args:
        x: linear-light values; any shape.

    Returns:
        sRGB values of the same shape.
    """
    curve = 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055
    return torch.where(x <= 0.0031308, 12.92 * x, curve)


def apply_ccm(x: Tensor, ccm: Tensor) -> Tensor:
    """Multiply every pixel's colour by a per-image 3x3 matrix.

    Args:
        x: images ``(B, 3, H, W)``.
        ccm: matrices ``(B, 3, 3)``; output colour = ``ccm @ input colour``.

    Returns:
        ``(B, 3, H, W)``.
    """
    return torch.einsum("bij,bjhw->bihw", ccm, x)


def apply_white_balance(x: Tensor, red_gain: Tensor, blue_gain: Tensor) -> Tensor:
    """Scale the red and blue channels by per-image gains (green is the reference, gain 1).

    Pass reciprocal gains to undo white balance.

    Args:
        x: images ``(B, 3, H, W)`` (RGB order).
        red_gain: ``(B,)``.
        blue_gain: ``(B,)``.

    Returns:
        ``(B, 3, H, W)``.
    """
    gains = torch.stack([red_gain, torch.ones_like(red_gain), blue_gain], dim=1)
    return x * gains[:, :, None, None]


def mosaic(x: Tensor) -> Tensor:
    """Record a camera-space image on an RGGB sensor of twice its resolution and pack it to 4 channels.

    Args:
        x: camera RGB ``(B, 3, H, W)``.

    Returns:
        Packed RAW ``(B, 4, H, W)``: channels ``(R, G1, G2, B)`` of the 2x2 Bayer cell under each pixel.
    """
    sensor = F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.pixel_unshuffle(rgb_to_raw(sensor, BAYER_CFA), 2)


def demosaic(raw: Tensor) -> Tensor:
    """Demosaic a packed RAW by binning each 2x2 Bayer cell into one pixel (the two greens averaged).

    The exact inverse of :func:`mosaic`.

    Args:
        raw: packed RAW ``(B, 4, H, W)``, channels ``(R, G1, G2, B)``.

    Returns:
        Camera RGB ``(B, 3, H, W)``.
    """
    return raw_to_rgb_2x2_downscaled(F.pixel_shuffle(raw, 2), BAYER_CFA)


def unprocess(x: Tensor, params: CameraParams) -> Tensor:
    """Turn sRGB images into the clean RAW a camera with ``params`` would have recorded.

    Args:
        x: sRGB images ``(B, 3, H, W)`` in ``[0, 1]``.
        params: one camera per image (see :func:`sample_camera_params`).

    Returns:
        Packed RAW ``(B, 4, H, W)`` in ``[0, 1]``, without noise (see :func:`add_sensor_noise`).
    """
    params = params.to(x)
    cam = apply_ccm(srgb_to_linear(x), params.rgb_to_cam)
    return mosaic(apply_white_balance(cam, 1 / params.red_gain, 1 / params.blue_gain))


def isp(raw: Tensor, params: CameraParams) -> Tensor:
    """The fixed camera pipeline S: demosaic, white balance, colour correction, sRGB curve.

    It inverts :func:`unprocess` for the same ``params``. The output is not clipped, so it is
    differentiable everywhere; clamp it to ``[0, 1]`` for display.

    Args:
        raw: packed RAW ``(B, 4, H, W)``.
        params: the cameras that recorded ``raw``.

    Returns:
        sRGB images ``(B, 3, H, W)``, approximately in ``[0, 1]``.
    """
    params = params.to(raw)
    cam = apply_white_balance(demosaic(raw), params.red_gain, params.blue_gain)
    return linear_to_srgb(apply_ccm(cam, torch.linalg.inv(params.rgb_to_cam)))


def add_sensor_noise(raw: Tensor, params: CameraParams, *, generator: torch.Generator) -> Tensor:
    """Add heteroscedastic Gaussian shot/read noise, variance ``shot * raw + read``, and clip to ``[0, 1]``.

    The clip models sensor saturation and the black level; it keeps RAW non-negative like the
    output of the defense's F (which ends in a ReLU).

    Args:
        raw: clean packed RAW ``(B, 4, H, W)`` in ``[0, 1]``.
        params: noise levels per image.
        generator: source of the noise; sampled on its device, then moved to ``raw``'s.

    Returns:
        Noisy RAW of the same shape, in ``[0, 1]``.
    """
    params = params.to(raw)
    variance = params.shot_noise[:, None, None, None] * raw + params.read_noise[:, None, None, None]
    noise = torch.randn(raw.shape, generator=generator, device=generator.device).to(raw)
    return (raw + variance.clamp(min=0).sqrt() * noise).clamp(0, 1)


# The other camera of ``raw_isp.g_target=other_camera``: a more saturated colour response (rows sum to one, so
# grey stays grey) and a contrast-raising tone curve on top of the sRGB curve.
OTHER_CAMERA_CCM = (
    (1.30, -0.20, -0.10),
    (-0.12, 1.26, -0.14),
    (-0.06, -0.22, 1.28),
)
OTHER_CAMERA_CONTRAST = 0.35


def other_camera_rendering(x: Tensor) -> Tensor:
    """The same scene as a different, fixed camera renders it: the target of ``raw_isp.g_target=other_camera``.

    The paper's G is trained from a phone's RAW to a DSLR's RGB (the Zurich RAW-to-RGB pairs), so its output
    is another camera's rendering, not the image F unprocessed. This is that gap in miniature: linear light
    through a more saturated colour matrix (:data:`OTHER_CAMERA_CCM`), the sRGB curve, then an S-shaped tone
    curve ``(1 - c) t + c (3t^2 - 2t^3)`` with ``c =`` :data:`OTHER_CAMERA_CONTRAST` (fixed points 0, 1/2, 1).

    Args:
        x: sRGB images ``(B, 3, H, W)`` in ``[0, 1]``.

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``.

    Example:
        >>> grey = torch.full((1, 3, 2, 2), 0.5)
        >>> torch.allclose(other_camera_rendering(grey), grey, atol=1e-6)
        True
    """
    ccm = torch.tensor(OTHER_CAMERA_CCM, dtype=x.dtype, device=x.device).expand(x.shape[0], 3, 3)
    tone = linear_to_srgb(apply_ccm(srgb_to_linear(x), ccm).clamp(0, 1)).clamp(0, 1)
    c = OTHER_CAMERA_CONTRAST
    return (1 - c) * tone + c * tone * tone * (3 - 2 * tone)


class RawPair(NamedTuple):
    """A training pair for the RAW/ISP defense.

    Attributes:
        rgb: the sRGB images ``(B, 3, H, W)`` (the ISP's target).
        raw: their simulated packed RAW ``(B, 4, H, W)``, noisy when asked for.
        params: the cameras that were simulated.
    """

    rgb: Tensor
    raw: Tensor
    params: CameraParams


def make_raw_pair(x: Tensor, *, generator: torch.Generator, noise: bool = True) -> RawPair:
    """Simulate one random camera per image and return ``(rgb, raw)`` with the parameters used.

    Args:
        x: sRGB images ``(B, 3, H, W)`` in ``[0, 1]``.
        generator: the only source of randomness (parameters first, then noise).
        noise: add shot/read noise to the RAW.

    Returns:
        The :class:`RawPair`; ``rgb`` is ``x`` itself.

    Example:
        >>> pair = make_raw_pair(torch.rand(2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
        >>> pair.raw.shape
        torch.Size([2, 4, 8, 8])
    """
    params = sample_camera_params(x.shape[0], generator=generator)
    raw = unprocess(x, params)
    if noise:
        raw = add_sensor_noise(raw, params, generator=generator)
    return RawPair(x, raw, params)


class Unprocess(nn.Module):
    """Module form of :func:`unprocess` (holds no state); ``forward(x, params)``.

    Shape:
        - x: :math:`(B, 3, H, W)` sRGB in ``[0, 1]``
        - output: :math:`(B, 4, H, W)` packed RAW in ``[0, 1]``
    """

    def forward(self, x: Tensor, params: CameraParams) -> Tensor:
        return unprocess(x, params)


class Isp(nn.Module):
    """Module form of :func:`isp`, the fixed ISP S; ``forward(raw, params)``.

    Shape:
        - raw: :math:`(B, 4, H, W)` packed RAW
        - output: :math:`(B, 3, H, W)` sRGB, not clipped
    """

    def forward(self, raw: Tensor, params: CameraParams) -> Tensor:
        return isp(raw, params)
