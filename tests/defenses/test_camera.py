"""Camera simulation: unprocessing, the fixed ISP S, noise, and their gradients."""

from __future__ import annotations

import pytest
import torch
from robustlab.defenses.camera import (
    CameraParams,
    Isp,
    Unprocess,
    add_sensor_noise,
    apply_ccm,
    apply_white_balance,
    demosaic,
    isp,
    linear_to_srgb,
    make_raw_pair,
    mosaic,
    other_camera_rendering,
    sample_camera_params,
    srgb_to_linear,
    unprocess,
)
from torch.autograd import gradcheck


def _images(n: int, size: int = 8, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _params(n: int, *, seed: int = 0) -> CameraParams:
    return sample_camera_params(n, generator=torch.Generator().manual_seed(seed))


def test_params_in_documented_ranges() -> None:
    params = _params(512)
    assert params.red_gain.min() >= 1.9
    assert params.red_gain.max() <= 2.4
    assert params.blue_gain.min() >= 1.5
    assert params.blue_gain.max() <= 1.9
    # Rows sum to one: grey stays grey in camera space before white balance.
    torch.testing.assert_close(params.rgb_to_cam.sum(dim=2), torch.ones(512, 3))
    assert params.shot_noise.min() >= 1e-4
    assert params.shot_noise.max() <= 1.2e-2
    assert params.red_gain.std() > 0.1, "gains should vary between images"


def test_sampling_uses_only_the_generator() -> None:
    state = torch.get_rng_state()
    first, second = _params(4, seed=3), _params(4, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(vars(first).values(), vars(second).values(), strict=True))
    assert not torch.equal(first.red_gain, _params(4, seed=4).red_gain)


def test_srgb_curve_round_trip_and_anchors() -> None:
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(x)), x)
    # IEC 61966-2-1: sRGB 0.5 is 0.2140 in linear light.
    assert srgb_to_linear(torch.tensor(0.5)).item() == pytest.approx(0.21404, abs=1e-4)


def test_mosaic_layout_is_rggb() -> None:
    colours = torch.eye(3).reshape(3, 3, 1, 1).expand(3, 3, 2, 2)
    packed = mosaic(colours)[:, :, 0, 0]
    expected = torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])  # channels (R, G1, G2, B)
    torch.testing.assert_close(packed, expected)


def test_unprocess_shape_and_range() -> None:
    raw = unprocess(_images(16, 12), _params(16))
    assert raw.shape == (16, 4, 12, 12)
    assert raw.min() >= 0
    assert raw.max() <= 1
    # White balance divides red and blue by gains > 1.5, so they end up darker than green on average.
    assert raw[:, 0].mean() < raw[:, 1].mean()


@pytest.mark.parametrize("size", [2, 8, 9])
def test_isp_inverts_unprocess_without_noise(size: int) -> None:
    x = torch.cat([_images(6, size), torch.zeros(1, 3, size, size), torch.ones(1, 3, size, size)])
    params = _params(8)
    torch.testing.assert_close(isp(unprocess(x, params), params), x, atol=1e-5, rtol=0)


def test_isp_with_other_camera_is_not_identity() -> None:
    x = _images(8)
    assert (isp(unprocess(x, _params(8, seed=0)), _params(8, seed=1)) - x).abs().max() > 0.02


def test_modules_match_functions() -> None:
    x, params = _images(2), _params(2)
    raw = unprocess(x, params)
    assert torch.equal(Unprocess()(x, params), raw)
    assert torch.equal(Isp()(raw, params), isp(raw, params))


def test_noise_is_deterministic_given_the_generator() -> None:
    x = _images(4)
    first = make_raw_pair(x, generator=torch.Generator().manual_seed(7))
    second = make_raw_pair(x, generator=torch.Generator().manual_seed(7))
    other = make_raw_pair(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first.raw, second.raw)
    assert not torch.equal(first.raw, other.raw)
    assert not torch.equal(first.raw, unprocess(x, first.params)), "noise=True must add noise"
    assert first.rgb is x


def test_noise_variance_follows_shot_and_read_levels() -> None:
    params = CameraParams(
        rgb_to_cam=torch.eye(3).expand(2, 3, 3),
        red_gain=torch.ones(2),
        blue_gain=torch.ones(2),
        shot_noise=torch.tensor([1e-3, 1e-2]),
        read_noise=torch.tensor([1e-4, 1e-3]),
    )
    raw = torch.full((2, 4, 64, 64), 0.5)
    noisy = add_sensor_noise(raw, params, generator=torch.Generator().manual_seed(0))
    variance = (noisy - raw).flatten(1).var(dim=1)
    torch.testing.assert_close(variance, params.shot_noise * 0.5 + params.read_noise, rtol=0.1, atol=0)


@pytest.mark.grad
def test_gradcheck_camera_steps() -> None:
    x = _images(1, 4, dtype=torch.float64).clamp(0.05, 0.95).requires_grad_()
    ccm = (torch.eye(3, dtype=torch.float64) + 0.1).unsqueeze(0).requires_grad_()
    gains = torch.tensor([2.0], dtype=torch.float64, requires_grad=True), torch.tensor([1.7], dtype=torch.float64)
    raw = torch.rand(1, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    params = _params(1)
    assert gradcheck(srgb_to_linear, (x,), fast_mode=True)
    assert gradcheck(linear_to_srgb, (x,), fast_mode=True)
    assert gradcheck(apply_ccm, (x, ccm), fast_mode=True)
    assert gradcheck(apply_white_balance, (x, *gains), fast_mode=True)
    assert gradcheck(mosaic, (x,), fast_mode=True)
    assert gradcheck(demosaic, (raw,), fast_mode=True)
    assert gradcheck(lambda t: unprocess(t, params), (x,), fast_mode=True)
    assert gradcheck(lambda t: isp(t, params), (raw,), fast_mode=True)
    noisy = (raw.detach() * 0.4 + 0.3).requires_grad_()  # away from the [0, 1] clip
    quiet = CameraParams(
        params.rgb_to_cam, params.red_gain, params.blue_gain, torch.tensor([1e-3]), torch.tensor([1e-5])
    )
    assert gradcheck(
        lambda t: add_sensor_noise(t, quiet, generator=torch.Generator().manual_seed(0)), (noisy,), fast_mode=True
    )


def test_the_other_camera_keeps_greys_and_range_and_saturates_colours() -> None:
    x = _images(64)
    rendered = other_camera_rendering(x)
    assert rendered.shape == x.shape and rendered.min() >= 0 and rendered.max() <= 1
    greys = torch.linspace(0, 1, 11).view(1, 1, 11, 1).expand(1, 3, 11, 1)
    assert torch.allclose(other_camera_rendering(greys)[:, 0], other_camera_rendering(greys)[:, 1], atol=1e-6)
    spread = x.amax(dim=1) - x.amin(dim=1)
    assert (rendered.amax(dim=1) - rendered.amin(dim=1)).mean() > spread.mean(), "a more saturated camera"
