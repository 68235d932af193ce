"""SynthShapes: determinism, splits, attribute statistics, context and label-noise knobs, registry options."""

from __future__ import annotations

import itertools

import pytest
import torch

from robustlab.data.base import DATASETS
from robustlab.data.synth import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    SynthConfig,
    SynthDataset,
    caption,
    render_synth,
)
from robustlab.errors import ConfigError

N_STATS = 10_000  # the whole test split: attribute draws only, no rendering


def load_synth(arg: str | None, split: str = "test", image_size: int | None = None) -> SynthDataset:
    return DATASETS.get("synth").factory(arg, split=split, image_size=image_size)


@pytest.fixture(scope="module")
def split_attrs() -> dict[str, torch.Tensor]:
    return SynthDataset("test").attributes(torch.arange(N_STATS))


def test_public_vocabulary() -> None:
    assert len(SHAPES) == 10
    assert len(COLORS) == 8
    assert BACKGROUNDS == ("sky", "grass", "stripes", "checker", "bricks")
    assert SIZES == ("small", "large")
    assert POSITIONS == ("centre", "left", "right", "top", "bottom")
    assert set(ATTRIBUTES) == {"shape", "color", "background", "size", "position"}


def test_render_shape_dtype_and_range() -> None:
    x, attrs = render_synth(torch.arange(55_000, 55_064), SynthConfig(image_size=24))
    assert x.shape == (64, 3, 24, 24)
    assert x.dtype == torch.float32
    assert float(x.min()) >= 0.0
    assert float(x.max()) <= 1.0
    assert float(x.std(dim=(1, 2, 3)).min()) > 0.02  # every image has content, none is a flat fill
    assert set(attrs) == set(ATTRIBUTES)
    for key, values in attrs.items():
        assert values.dtype == torch.int64
        assert values.shape == (64,)
        assert 0 <= int(values.min()) <= int(values.max()) < len(ATTRIBUTES[key])


def test_render_empty_batch() -> None:
    x, attrs = render_synth(torch.arange(0), SynthConfig(image_size=16))
    assert x.shape == (0, 3, 16, 16)
    assert attrs["shape"].shape == (0,)


def test_same_indices_give_bit_identical_images() -> None:
    indices = torch.arange(1000, 1100)
    x1, a1 = render_synth(indices, SynthConfig(seed=3))
    x2, a2 = render_synth(indices, SynthConfig(seed=3))
    assert torch.equal(x1, x2)
    assert all(torch.equal(a1[key], a2[key]) for key in ATTRIBUTES)
    x3, _ = render_synth(indices, SynthConfig(seed=4))
    assert not torch.equal(x1, x3)  # the seed is a real input, not ignored


def test_sample_does_not_depend_on_its_batch() -> None:
    # Indices spread over many blocks, from every split, including an odd image size.
    config = SynthConfig(image_size=33, context_p=0.3)
    indices = torch.cat([torch.arange(0, 65_000, 1531), torch.tensor([1023, 1024, 1025])])
    x, attrs = render_synth(indices, config)
    perm = torch.randperm(len(indices), generator=torch.Generator().manual_seed(0))
    x_perm, attrs_perm = render_synth(indices[perm], config)
    assert torch.equal(x_perm, x[perm])
    assert torch.equal(attrs_perm["background"], attrs["background"][perm])
    for i in (0, 7, len(indices) - 2):
        alone, _ = render_synth(indices[i : i + 1], config)
        assert torch.equal(alone[0], x[i])


def test_render_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    render_synth(torch.arange(10), SynthConfig())
    assert torch.equal(torch.get_rng_state(), state)


def test_splits_are_disjoint_and_map_to_global_indices() -> None:
    ranges = sorted(SPLITS.values())
    assert all(start < stop for start, stop in ranges)
    assert all(prev_stop <= start for (_, prev_stop), (start, _) in itertools.pairwise(ranges))
    for split, (start, stop) in SPLITS.items():
        data = SynthDataset(split, config=SynthConfig(image_size=16))
        assert len(data) == stop - start
        x, y = data[5]
        x_global, attrs = render_synth(torch.tensor([start + 5]), SynthConfig(image_size=16))
        assert torch.equal(x, x_global[0])
        assert y == int(attrs["shape"][0])


@pytest.mark.parametrize("key", sorted(ATTRIBUTES))
def test_every_class_present_and_balanced(split_attrs: dict[str, torch.Tensor], key: str) -> None:
    counts = torch.bincount(split_attrs[key], minlength=len(ATTRIBUTES[key]))
    expected = N_STATS / len(ATTRIBUTES[key])
    assert len(counts) == len(ATTRIBUTES[key])
    # Largest expected-count is 5,000 (size), binomial std <= 50: a 15% band is over 5 standard deviations.
    assert float((counts - expected).abs().max()) < 0.15 * expected


def test_context_p_ties_background_to_shape(split_attrs: dict[str, torch.Tensor]) -> None:
    related = split_attrs["shape"] % len(BACKGROUNDS)
    # Uniform backgrounds match by chance 1/5 of the time; std over 10,000 samples is 0.004.
    assert abs(float((split_attrs["background"] == related).float().mean()) - 0.2) < 0.02
    tied = SynthDataset("test", config=SynthConfig(context_p=1.0)).attributes(torch.arange(N_STATS))
    assert torch.equal(tied["background"], tied["shape"] % len(BACKGROUNDS))
    half = SynthDataset("test", config=SynthConfig(context_p=0.5)).attributes(torch.arange(N_STATS))
    assert abs(float((half["background"] == half["shape"] % 5).float().mean()) - 0.6) < 0.03
    _, rendered = render_synth(torch.arange(200), SynthConfig(image_size=8, context_p=1.0))
    assert torch.equal(rendered["background"], rendered["shape"] % len(BACKGROUNDS))


def test_context_p_changes_only_the_background() -> None:
    indices = torch.arange(300)
    free, a_free = render_synth(indices, SynthConfig(image_size=16))
    tied, a_tied = render_synth(indices, SynthConfig(image_size=16, context_p=1.0))
    same_scene = a_free["background"] == a_tied["background"]
    assert torch.equal(free[same_scene], tied[same_scene])
    assert not torch.equal(free[~same_scene], tied[~same_scene])
    assert torch.equal(a_free["shape"], a_tied["shape"])


@pytest.mark.parametrize("target", ["shape", "size"])
def test_label_noise_flips_train_labels_only(target: str) -> None:
    config = SynthConfig(image_size=8, label_noise=0.3)
    indices = torch.arange(5000)
    train = SynthDataset("train", config=config, target=target)
    _, y = train.get_batch(indices)
    true = train.attributes(indices)[target]
    flipped = y != true
    # A flip always picks a different class, so the changed fraction is the noise rate (std 0.0065).
    assert abs(float(flipped.float().mean()) - 0.3) < 0.03
    assert int(y.max()) < train.num_classes
    assert len(torch.unique(y[flipped])) == train.num_classes  # symmetric: flips land on every class
    _, y_again = train.get_batch(indices)
    assert torch.equal(y, y_again)
    for split in ("val", "test"):
        data = SynthDataset(split, config=config, target=target)
        _, y_eval = data.get_batch(indices)
        assert torch.equal(y_eval, data.attributes(indices)[target])


def test_no_label_noise_by_default() -> None:
    train = SynthDataset("train", config=SynthConfig(image_size=8))
    _, y = train.get_batch(torch.arange(2000))
    assert torch.equal(y, train.attributes(torch.arange(2000))["shape"])


def test_colour_attribute_is_visible(split_attrs: dict[str, torch.Tensor]) -> None:
    # A centred circle covers the image centre, so the centre pixels show its (jittered) fill colour.
    selected = (split_attrs["shape"] == SHAPES.index("circle")) & (split_attrs["position"] == 0)
    for name, channel in (("red", 0), ("green", 1), ("blue", 2)):
        indices = torch.nonzero(selected & (split_attrs["color"] == COLORS.index(name))).squeeze(1)
        assert len(indices) > 5
        x, _ = SynthDataset("test").get_batch(indices)
        centre = x[:, :, 15:17, 15:17].mean(dim=(2, 3))
        assert bool((centre.argmax(dim=1) == channel).all()), name


def test_dataset_items_and_batches_agree() -> None:
    data = SynthDataset("val", config=SynthConfig(image_size=16), target="background", n=10)
    assert len(data) == 10
    assert data.num_classes == len(BACKGROUNDS)
    assert tuple(data.classes) == BACKGROUNDS
    x, y = data[3]
    assert isinstance(y, int)
    assert x.shape == (3, 16, 16)
    xb, yb = data.get_batch(torch.tensor([9, 3]))
    assert torch.equal(xb[1], x)
    assert int(yb[1]) == y
    with pytest.raises(IndexError):
        data[10]
    with pytest.raises(IndexError):
        data.get_batch(torch.tensor([-1]))


@pytest.mark.parametrize("target", sorted(ATTRIBUTES))
def test_target_sets_classes(target: str) -> None:
    data = SynthDataset("test", target=target, n=4)
    assert tuple(data.classes) == ATTRIBUTES[target]
    assert data.num_classes == len(ATTRIBUTES[target])
    assert torch.equal(data.get_batch(torch.arange(4))[1], data.attributes(torch.arange(4))[target])


def test_captions_are_built_from_attributes() -> None:
    attrs = {
        "shape": torch.tensor([SHAPES.index("star")]),
        "color": torch.tensor([COLORS.index("red")]),
        "background": torch.tensor([BACKGROUNDS.index("stripes")]),
        "size": torch.tensor([SIZES.index("large")]),
        "position": torch.tensor([0]),
    }
    assert caption(attrs, 0) == "a large red star on stripes"
    data = SynthDataset("test", n=50)
    captions = data.captions(torch.arange(50))
    truth = data.attributes(torch.arange(50))
    assert len(set(captions)) > 40
    for i, text in enumerate(captions):
        article, size, color, shape, on, background = text.split()
        assert (article, on) == ("a", "on")
        assert size == SIZES[int(truth["size"][i])]
        assert color == COLORS[int(truth["color"][i])]
        assert shape == SHAPES[int(truth["shape"][i])]
        assert background == BACKGROUNDS[int(truth["background"][i])]


def test_registry_options() -> None:
    data = load_synth("size=16,target=color,seed=2,context_p=0.5,label_noise=0.1,split=train", split="test")
    assert isinstance(data, SynthDataset)
    assert data.split == "train"
    assert data.config == SynthConfig(image_size=16, seed=2, context_p=0.5, label_noise=0.1)
    assert data.num_classes == len(COLORS)
    assert data[0][0].shape == (3, 16, 16)
    assert load_synth(None, image_size=24).config.image_size == 24
    assert load_synth("size=40", image_size=24).config.image_size == 40
    assert load_synth(None).config == SynthConfig()


def test_load_dataset_end_to_end() -> None:
    # load_dataset imports every built-in dataset module, the real-data one included.
    pytest.importorskip("robustlab.data.real", reason="robustlab.data.real is not in this tree yet")
    from robustlab.data import load_dataset

    data = load_dataset("synth:size=16,target=color")
    x, y = data[0]
    assert x.shape == (3, 16, 16)
    assert data.num_classes == len(COLORS)
    assert 0 <= y < len(COLORS)


@pytest.mark.parametrize(
    ("arg", "key"),
    [
        ("colour=red", "colour"),
        ("size=abc", "size"),
        ("size=4", "size"),
        ("seed=1.5", "seed"),
        ("context_p=2", "context_p"),
        ("context_p=high", "context_p"),
        ("label_noise=-0.1", "label_noise"),
        ("target=weight", "target"),
        ("split=holdout", "split"),
    ],
)
def test_bad_options_raise_config_error_naming_the_key(arg: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        load_synth(arg)
    assert "\n" not in str(info.value)


def test_unknown_option_lists_accepted_keys() -> None:
    with pytest.raises(ConfigError, match="accepted: size, seed, context_p, label_noise, backgrounds, target, split"):
        load_synth("size=16,colour=red")


@pytest.mark.parametrize(
    "kwargs",
    [{"image_size": 7}, {"context_p": -0.1}, {"context_p": float("nan")}, {"label_noise": 1.5}],
)
def test_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        SynthConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, 10_001])
def test_n_outside_split_raises(n: int) -> None:
    with pytest.raises(ConfigError, match="n must be"):
        SynthDataset("test", n=n)


@pytest.mark.parametrize("indices", [torch.tensor([-1]), torch.tensor([0.5]), torch.zeros(2, 2, dtype=torch.long)])
def test_render_rejects_bad_indices(indices: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="indices"):
        render_synth(indices, SynthConfig())
