"""The learned RAW/ISP defense: networks, gradients, training cache, reconstruction quality."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from robustlab.defenses import raw_isp
from robustlab.defenses.raw_isp import MiniPyNet, RawIsp, RgbToRawNet
from torch import Tensor, nn
from torch.autograd import gradcheck

from robustlab.data.base import TensorImages
from robustlab.defense import DEFENSES
from robustlab.errors import CheckpointMismatchError, ConfigError, WeightsUnavailableError
from robustlab.metrics import psnr

# Measured for RawIsp.tiny() on this stand-in: 25.1 dB mean on these held-out images (CPU, 2 threads);
# the threshold leaves room for platform differences in float rounding during training.
TINY_MIN_PSNR = 22.0


def _render(n: int, size: int, generator: torch.Generator) -> Tensor:
    """Smooth colour fields (low-resolution noise, upsampled) with a disc and a rectangle of flat colour."""
    coarse = torch.rand(n, 3, 4, 4, generator=generator)
    fine = torch.rand(n, 3, 8, 8, generator=generator)
    x = 0.6 * F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    x = x + 0.4 * F.interpolate(fine, size=size, mode="bilinear", align_corners=False)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    centre, radius = torch.rand(n, 2, 1, 1, generator=generator), 0.1 + 0.25 * torch.rand(n, 1, 1, generator=generator)
    disc = ((ys - centre[:, 0]) ** 2 + (xs - centre[:, 1]) ** 2).sqrt() < radius
    corner = torch.rand(n, 2, 1, 1, generator=generator)
    rect = (xs > corner[:, 0]) & (ys > corner[:, 1])
    for mask in (disc, rect):
        colour = torch.rand(n, 3, 1, 1, generator=generator)
        x = torch.where(mask[:, None], colour, x)
    return x.clamp(0, 1)


class SmoothImages(TensorImages):
    """Stand-in for ``robustlab.data.synth`` following the dataset protocol, deterministic given ``seed``."""

    def __init__(self, n: int, *, seed: int, size: int = 32) -> None:
        images = _render(n, size, torch.Generator().manual_seed(seed))
        super().__init__(images, torch.zeros(n, dtype=torch.long), classes=("image",))


def _micro(**overrides: int) -> RawIsp:
    """A defense that trains in well under a second, for cache and determinism tests."""
    config = {"f_width": 2, "g_width": 2, "f_steps": 2, "g_steps": 3, "batch_size": 4, "n_images": 8, **overrides}
    return RawIsp(**config)


@pytest.fixture(scope="session")
def robustlab_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("robustlab_home")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, robustlab_home: Path) -> None:
    monkeypatch.setenv("ROBUSTLAB_HOME", str(robustlab_home))


@pytest.fixture(scope="session")
def train_set() -> SmoothImages:
    return SmoothImages(512, seed=1)


@pytest.fixture(scope="session")
def trained(robustlab_home: Path, train_set: SmoothImages) -> RawIsp:
    # The isolated home only while fitting: a yield inside the context kept it for the rest of the session,
    # so every later test module retrained the session's models (the default classifier, the captioner...).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTLAB_HOME", str(robustlab_home))
        return RawIsp.tiny().fit(nn.Identity(), train_set, generator=torch.Generator().manual_seed(0), progress=False)


def test_registered() -> None:
    entry = DEFENSES.get("raw_isp")
    assert entry.factory is RawIsp
    assert RawIsp.differentiable
    assert not RawIsp.randomized


def test_encoder_shape_and_non_negative() -> None:
    raw = RgbToRawNet(width=4)(torch.rand(2, 3, 10, 12))
    assert raw.shape == (2, 4, 10, 12)
    assert raw.min() >= 0


@pytest.mark.parametrize(("height", "width"), [(16, 16), (10, 14)])
def test_isp_pyramid_shapes(height: int, width: int) -> None:
    outputs = MiniPyNet(levels=3, width=2).pyramid(torch.rand(1, 4, height, width))
    expected = [(-(-height // s), -(-width // s)) for s in (4, 2, 1)]
    assert [tuple(o.shape[-2:]) for o in outputs] == expected
    assert all(o.shape[1] == 3 for o in outputs)


def test_the_skip_ablation_leaves_only_the_pyramid() -> None:
    """``skip=False``: G has no linear path from its input, so a zero pyramid output is a zero image."""
    isp = MiniPyNet(levels=3, width=2, skip=False)
    assert isp.skip is None and "skip.weight" not in isp.state_dict()
    for head in isp.heads:
        torch.nn.init.zeros_(head[1].weight)
        torch.nn.init.zeros_(head[1].bias)
    assert torch.equal(isp(torch.rand(1, 4, 8, 8)), torch.zeros(1, 3, 8, 8))
    assert RawIsp(skip=False).config()["skip"] is False


@pytest.mark.parametrize("g_target", ["input", "other_camera"])
def test_g_learns_the_rendering_it_is_told(
    g_target: str, monkeypatch: pytest.MonkeyPatch, train_set: SmoothImages
) -> None:
    """Every G loss compares against the batch itself (``input``) or that batch as the other camera renders it."""
    events: list[tuple[str, Tensor]] = []
    make_raw_pair, level_loss = raw_isp.make_raw_pair, raw_isp._level_loss

    def recording_pair(x: Tensor, **kwargs: object) -> object:
        events.append(("image", x.clone()))
        return make_raw_pair(x, **kwargs)  # type: ignore[arg-type]

    def recording_loss(output: Tensor, target: Tensor, level: int, config: object) -> Tensor:
        events.append(("target", target.clone()))
        return level_loss(output, target, level, config)  # type: ignore[arg-type]

    monkeypatch.setattr(raw_isp, "make_raw_pair", recording_pair)
    monkeypatch.setattr(raw_isp, "_level_loss", recording_loss)
    _micro(g_target=g_target).fit(nn.Identity(), train_set, generator=torch.Generator().manual_seed(0), progress=False)  # type: ignore[arg-type]
    pairs = [(events[i - 1][1], t) for i, (kind, t) in enumerate(events) if kind == "target"]
    assert len(pairs) == 3, "one per G step"
    render = raw_isp.other_camera_rendering if g_target == "other_camera" else (lambda x: x)
    for image, target in pairs:
        assert torch.equal(target, F.adaptive_avg_pool2d(render(image), target.shape[-2:]))
    with pytest.raises(ConfigError, match="g_target"):
        RawIsp(g_target="dslr")


@pytest.mark.grad
def test_gradcheck_networks() -> None:
    encoder = RgbToRawNet(width=2).double()
    isp = MiniPyNet(levels=3, width=2).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    raw = torch.rand(1, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert gradcheck(encoder, (x,), fast_mode=True)
    assert gradcheck(isp, (raw,), fast_mode=True)
    assert gradcheck(lambda r: isp.pyramid(r, finest=2)[-1], (raw,), fast_mode=True)


@pytest.mark.grad
@pytest.mark.slow
def test_gradcheck_trained_transform(trained: RawIsp) -> None:
    defense = copy.deepcopy(trained).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    assert gradcheck(defense.transform, (x.requires_grad_(),), fast_mode=True)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="levels"):
        RawIsp(levels=0)
    with pytest.raises(ConfigError, match="patch_size"):
        RawIsp(levels=3, patch_size=4)


def test_transform_needs_weights() -> None:
    with pytest.raises(WeightsUnavailableError, match="fit"):
        RawIsp.tiny().transform(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (2, 3, 20, 28)])
@pytest.mark.slow
def test_transform_range_shape_and_determinism(trained: RawIsp, shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = trained.transform(x)
        again = trained.transform(x)
    assert out.shape == x.shape
    assert out.min() >= 0
    assert out.max() <= 1
    assert torch.equal(out, again)


@pytest.mark.slow
def test_tiny_reconstructs_held_out_images(trained: RawIsp) -> None:
    held_out = SmoothImages(128, seed=2).x
    with torch.no_grad():
        quality = psnr(trained.transform(held_out), held_out)
    assert quality.mean() > TINY_MIN_PSNR, f"mean PSNR {quality.mean():.2f} dB"


@pytest.mark.slow
def test_wrap_is_eval_and_passes_input_gradients(trained: RawIsp) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
    wrapped = trained.wrap(model, adaptive=True)
    assert not wrapped.training
    assert not trained.training
    assert not model.training
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4)).requires_grad_()
    wrapped(x).sum().backward()
    assert x.grad is not None
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in trained.parameters()), "the defense's weights are frozen after fit"


@pytest.mark.slow
def test_second_fit_loads_cached_weights(
    trained: RawIsp, train_set: SmoothImages, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained although the weights are cached")

    monkeypatch.setattr(raw_isp, "_train_encoder", refuse)
    monkeypatch.setattr(raw_isp, "_train_isp", refuse)
    again = RawIsp.tiny().fit(nn.Identity(), train_set, generator=torch.Generator().manual_seed(0), progress=False)
    assert again.weights_path == trained.weights_path
    for name, tensor in trained.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    with pytest.raises(AssertionError, match="retrained"):
        RawIsp.tiny().fit(nn.Identity(), train_set, generator=torch.Generator().manual_seed(1), progress=False)
    with pytest.raises(AssertionError, match="retrained"):
        RawIsp.tiny().fit(nn.Identity(), SmoothImages(512, seed=9), generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_fit_draws_the_same_from_the_generator_cached_or_not(trained: RawIsp, train_set: SmoothImages) -> None:
    generator = torch.Generator().manual_seed(0)
    RawIsp.tiny().fit(nn.Identity(), train_set, generator=generator, progress=False)
    reference = torch.Generator().manual_seed(0)
    torch.randint(2**62, (1,), generator=reference)
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=reference))


def test_training_is_deterministic_and_leaves_global_rng_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = SmoothImages(16, seed=5)
    state = torch.get_rng_state()
    weights = []
    for home in ("a", "b"):
        monkeypatch.setenv("ROBUSTLAB_HOME", str(tmp_path / home))
        defense = _micro().fit(nn.Identity(), data, generator=torch.Generator().manual_seed(0), progress=False)
        weights.append(defense.state_dict())
    assert torch.equal(torch.get_rng_state(), state)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    untrained = _micro().state_dict()
    assert any(not torch.equal(weights[0][k], untrained[k]) for k in untrained), "training changed nothing"


@pytest.mark.slow
def test_load_rejects_other_architecture(trained: RawIsp) -> None:
    assert trained.weights_path is not None
    with pytest.raises(CheckpointMismatchError, match=r"missing|resized"):
        RawIsp(f_width=5).load(trained.weights_path)
