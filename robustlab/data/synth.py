"""SynthShapes: a procedural world of one shape on one background, rendered offline from ``(seed, index)``.

robustlab must evaluate models on machines with no network, so this world replaces downloaded data
everywhere a test, a doctest or a first ``robustlab eval`` needs images. Each sample carries several
labels (shape, colour, background, size, position) so classifiers, encoders, scene models and
captioners can all train on it. Two knobs serve the seed experiments: ``context_p`` ties the
background to the shape class (contextual fusion) and ``label_noise`` flips train labels (NMTune).

Rendering is vectorised torch: shapes are signed-distance functions evaluated per shape type,
backgrounds are procedural textures evaluated per texture type. Per-sample parameters are drawn for
fixed blocks of 1024 global indices from a local generator seeded by ``(seed, block)`` and derived at
block size; per-pixel work uses only correctly rounded operations (no ``sin``/``atan2``). A sample is
therefore bit-identical whatever batch, order or thread count renders it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from robustlab.data.base import DATASETS, parse_kwargs
from robustlab.data.shapes import shape_sdf
from robustlab.errors import ConfigError

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLORS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "SynthConfig",
    "SynthDataset",
    "caption",
    "render_synth",
]

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "crescent", "bar")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
BACKGROUNDS = ("sky", "grass", "stripes", "checker", "bricks")
SIZES = ("small", "large")
POSITIONS = ("centre", "left", "right", "top", "bottom")
ATTRIBUTES = {"shape": SHAPES, "color": COLORS, "background": BACKGROUNDS, "size": SIZES, "position": POSITIONS}
SPLITS = {"train": (0, 50_000), "val": (50_000, 55_000), "test": (55_000, 65_000)}
_BLOCK = 1024  # global indices are drawn in blocks of this many, so a sample never depends on its batch
_WORLD_BLOCKS = 64  # blocks drawn together: the first 64 hold all of the splits' 65,000 indices

_RGB = torch.tensor(
    [[0.92, 0.12, 0.10], [1.0, 0.55, 0.05], [0.98, 0.90, 0.10], [0.15, 0.78, 0.20],
     [0.10, 0.85, 0.92], [0.15, 0.30, 0.98], [0.62, 0.20, 0.88], [0.96, 0.96, 0.96]]
)  # fmt: skip
_OFFSETS = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])  # POSITIONS, y points down
_N_DRAWS = 26


@dataclass(frozen=True)
class SynthConfig:
    """What defines one synthetic world; two equal configs render identical images.

    Args:
        image_size: side length in pixels (at least 8).
        seed: world seed; every sample is a function of ``(seed, global index, image_size)``.
        context_p: probability that the background is the one tied to the shape class
            (class ``k`` -> ``BACKGROUNDS[k % 5]``); otherwise the background is uniform.
        label_noise: fraction of ``train`` labels replaced by a different class (symmetric flip).
        backgrounds: the background textures the world draws from (names of ``BACKGROUNDS``); empty
            means all. Two worlds that differ only here share shapes, colours and layouts, so one can
            serve as a domain-shifted test set, or as an attacker's surrogate data, for the other.

    Raises:
        ConfigError: a field is out of range.
    """

    image_size: int = 32
    seed: int = 0
    context_p: float = 0.0
    label_noise: float = 0.0
    backgrounds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [name for name in self.backgrounds if name not in BACKGROUNDS]
        if unknown:
            raise ConfigError(f"synth background {unknown[0]!r} is unknown; accepted: {', '.join(BACKGROUNDS)}")
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ConfigError(f"synth image_size must be an integer >= 8, got {self.image_size!r}")
        for name in ("context_p", "label_noise"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"synth {name} must be in [0, 1], got {value!r}")


def _block_seed(seed: int, block: int) -> int:
    """Stable 63-bit seed for one block (Python's ``hash`` is salted per process, so use blake2b)."""
    digest = hashlib.blake2b(f"robustlab.synth:{seed}:{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _block_params(seed: int, block: int) -> dict[str, Tensor]:
    """Draw and derive every per-sample parameter of one block, always at full block size.

    Deriving at a fixed size (rather than on whatever subset a caller asks for) keeps the results of
    ``cos``/``sin`` independent of vector-versus-scalar kernel paths.
    """
    generator = torch.Generator().manual_seed(_block_seed(seed, block))
    u = torch.rand(_BLOCK, _N_DRAWS, generator=generator)
    shape = (u[:, 0] * len(SHAPES)).long()
    size = (u[:, 4] * len(SIZES)).long()
    position = (u[:, 5] * len(POSITIONS)).long()
    # Small objects span ~36-44% of the width, large ones ~60-72%; the offset keeps the object in frame.
    radius = torch.where(size == 0, 0.36 + 0.08 * u[:, 6], 0.60 + 0.12 * u[:, 6])
    centre = _OFFSETS[position] * (0.8 * (0.96 - radius)).unsqueeze(1) + 0.12 * (u[:, 7:9] - 0.5)
    angle = 2 * math.pi * u[:, 9]
    color = (u[:, 1] * len(COLORS)).long()
    fill = (_RGB[color] * (0.85 + 0.2 * u[:, 10:11]) + 0.14 * (u[:, 11:14] - 0.5)).clamp(0, 1)
    texture_angle = math.pi * u[:, 14:15] + torch.tensor([0.0, math.pi / 3, 2 * math.pi / 3])
    return {
        "shape": shape,
        "color": color,
        "background": (u[:, 2] * len(BACKGROUNDS)).long(),
        "background_u": u[:, 2],
        "size": size,
        "position": position,
        "context_u": u[:, 3],
        "noise_u": u[:, 15],
        "noise_offset_u": u[:, 16],
        "centre": centre,
        "radius": radius,
        "rotation": torch.stack([angle.cos(), angle.sin()], dim=1),
        "fill": fill,
        "texture_dirs": torch.stack([texture_angle.cos(), texture_angle.sin()], dim=2),
        "texture_u": u[:, 17:20],
        "palette": u[:, 20:26],
    }


def _draw(global_index: Tensor, seed: int) -> dict[str, Tensor]:
    """Gather the block parameters of ``global_index`` (any order, duplicates allowed), on CPU."""
    size = _WORLD_BLOCKS * _BLOCK
    worlds = torch.div(global_index, size, rounding_mode="floor")
    template = _world_params(seed, 0)
    out = {key: value.new_empty((len(global_index), *value.shape[1:])) for key, value in template.items()}
    for world in worlds.unique().tolist():
        where = (worlds == world).nonzero().squeeze(1)
        rows = global_index[where] - world * size
        for key, value in _world_params(seed, world).items():
            out[key][where] = value[rows]
    return out


@lru_cache(maxsize=2)
def _world_params(seed: int, world: int) -> dict[str, Tensor]:
    """The parameters of the ``world``-th run of 64 blocks, end to end (10 MB, 25 ms to draw): a batch's
    samples, spread over some 50 blocks of the splits, are one gather away. Callers must not modify them."""
    params = [_block_params(seed, block) for block in range(world * _WORLD_BLOCKS, (world + 1) * _WORLD_BLOCKS)]
    return {key: torch.cat([p[key] for p in params]) for key in params[0]}


def _wave(t: Tensor) -> Tensor:
    """Smooth periodic wave in [0, 1] with period 1: a cosine look-alike built without ``sin``."""
    tri = (2 * (t - t.floor()) - 1).abs()
    return tri * tri * (3 - 2 * tri)


def _background(kind: int, x: Tensor, y: Tensor, p: dict[str, Tensor], pixel: float) -> Tensor:
    """Texture ``BACKGROUNDS[kind]`` on grids ``x``, ``y`` of shape ``(1, 1, S, S)``: ``(n, 3, S, S)``."""
    n = len(p["palette"])
    tex = [t.view(n, 1, 1, 1) for t in p["texture_u"].unbind(1)]
    dirs = [(d[:, 0].view(n, 1, 1, 1), d[:, 1].view(n, 1, 1, 1)) for d in p["texture_dirs"].unbind(1)]
    a, b = p["palette"][:, :3].view(n, 3, 1, 1), p["palette"][:, 3:].view(n, 3, 1, 1)
    along, across = dirs[0][0] * x + dirs[0][1] * y, dirs[0][0] * y - dirs[0][1] * x
    period = 0.3 + 0.35 * tex[0]
    name = BACKGROUNDS[kind]
    if name == "sky":
        top, bottom = 0.15 * a + torch.tensor([0.1, 0.35, 0.75]).view(3, 1, 1), 0.1 * b + 0.8
        return top + (bottom - top) * (0.5 + 0.45 * (y + 0.3 * (tex[0] - 0.5) * x)).clamp(0, 1)
    if name == "grass":
        mottle = sum(_wave((cos * x + sin * y) / (0.25 + 0.2 * t)) for (cos, sin), t in zip(dirs, tex, strict=True))
        base = torch.tensor([0.2, 0.5, 0.15]).view(3, 1, 1) + 0.12 * (a - 0.5)
        return base * (0.7 + 0.2 * mottle)
    dark, light = 0.15 + 0.35 * a, 0.5 + 0.35 * b
    if name == "stripes":
        t = along / period + tex[1]
        tri = (2 * (t - t.floor()) - 1).abs()  # triangle wave in [0, 1]; edges anti-aliased over one pixel
        return dark + (light - dark) * (0.5 + (tri - 0.5) * period / (2 * pixel)).clamp(0, 1)
    if name == "checker":
        cells = (along / period + tex[1]).floor() + (across / period + tex[2]).floor()
        return dark + (light - dark) * (cells * 0.5 - (cells * 0.5).floor()) * 2
    height = 0.18 + 0.12 * tex[0]  # bricks
    row_f = y / height + tex[1]
    row = row_f.floor()
    col_f = x / (2 * height) + tex[2] + 0.5 * row
    shade = 0.85 + 0.3 * (_wave(row * 0.618 + col_f.floor() * 0.382) - 0.5)
    brick = (torch.tensor([0.62, 0.28, 0.18]).view(3, 1, 1) + 0.12 * (a - 0.5)) * shade
    mortar = (row_f - row < pixel / height) | (col_f - col_f.floor() < pixel / (2 * height))
    return torch.where(mortar, 0.75 + 0.1 * b, brick)


def _attributes(p: dict[str, Tensor], context_p: float, backgrounds: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Public attributes from drawn parameters; ``context_p`` decides which samples get the class's background.

    With ``backgrounds`` the free background is drawn uniformly from that subset (same uniform draw).
    """
    related = torch.remainder(p["shape"], len(BACKGROUNDS))
    free = p["background"]
    if backgrounds:
        subset = torch.tensor([BACKGROUNDS.index(name) for name in backgrounds])
        free = subset[(p["background_u"] * len(subset)).long().clamp(max=len(subset) - 1)]
    background = torch.where(p["context_u"] < context_p, related, free)
    return {key: p[key] for key in ("shape", "color", "size", "position")} | {"background": background}


def _render(p: dict[str, Tensor], background: Tensor, size: int) -> Tensor:
    """Render one chunk of samples: textures per background type, then the outlined shape per shape type."""
    pixel = 2.0 / size
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) * pixel - 1.0
    gx, gy = grid.view(1, 1, size), grid.view(1, size, 1)
    x = torch.empty(len(background), 3, size, size)
    for kind in range(len(BACKGROUNDS)):
        rows = (background == kind).nonzero().squeeze(1)
        x[rows] = _background(kind, gx[None], gy[None], {k: v[rows] for k, v in p.items()}, pixel).clamp(0, 1)
    # Object frame: translate, rotate, and scale so that the shape's extent is about the unit disc.
    dx, dy = gx - p["centre"][:, 0, None, None], gy - p["centre"][:, 1, None, None]
    cos, sin, radius = p["rotation"][:, 0, None, None], p["rotation"][:, 1, None, None], p["radius"][:, None, None]
    qx, qy = (cos * dx + sin * dy) / radius, (cos * dy - sin * dx) / radius
    dist = torch.empty_like(qx)
    for kind in range(len(SHAPES)):
        rows = (p["shape"] == kind).nonzero().squeeze(1)
        dist[rows] = shape_sdf(SHAPES[kind], qx[rows], qy[rows])
    # Anti-aliasing over one pixel, and a dark outline (outside the fill) that shows on any background.
    dist_px = (dist * radius / pixel).unsqueeze(1)
    inside = (0.5 - dist_px).clamp(0, 1)
    cover = (0.5 + max(1.0, size / 32) - dist_px).clamp(0, 1)
    fill = p["fill"][:, :, None, None]
    return x + (0.12 * fill + 0.88 * fill * inside - x) * cover


def render_synth(indices: Tensor, config: SynthConfig = SynthConfig()) -> tuple[Tensor, dict[str, Tensor]]:
    """Render the samples at global ``indices`` of the world ``config``.

    A sample depends only on ``(config.seed, index, config.image_size)``: never on the other indices
    in the batch, their order, the thread count, or the global RNG (which is not touched).

    Args:
        indices: 1-D integer tensor of non-negative global indices (see :data:`SPLITS`).
        config: the world.

    Returns:
        ``x`` float32 :math:`(B, 3, S, S)` in [0, 1] on ``indices.device``, and a dict of int64
        :math:`(B,)` attributes ``shape``, ``color``, ``background``, ``size``, ``position``
        (indices into :data:`SHAPES`, :data:`COLORS`...); these are the true labels, without label noise.

    Raises:
        ConfigError: ``indices`` is not a 1-D integer tensor or has a negative entry.

    Example:
        >>> x, attrs = render_synth(torch.arange(4), SynthConfig(image_size=16))
        >>> x.shape, attrs["shape"].dtype
        (torch.Size([4, 3, 16, 16]), torch.int64)
    """
    if indices.dim() != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ConfigError(f"synth indices must be a 1-D integer tensor, got {indices.dtype} {tuple(indices.shape)}")
    if len(indices) and int(indices.min()) < 0:
        raise ConfigError("synth indices must be non-negative")
    p = _draw(indices.detach().cpu().long(), config.seed)
    attrs = _attributes(p, config.context_p, config.backgrounds)
    # Chunks of ~1M pixels keep temporaries cache-sized; large batches would otherwise be several times slower.
    chunk = max(1, 2**20 // config.image_size**2)
    parts = [
        _render({k: v[s : s + chunk] for k, v in p.items()}, attrs["background"][s : s + chunk], config.image_size)
        for s in range(0, len(indices), chunk)
    ]
    x = torch.cat(parts) if parts else torch.empty(0, 3, config.image_size, config.image_size)
    return x.to(indices.device), {key: value.to(indices.device) for key, value in attrs.items()}


def caption(attrs: dict[str, Tensor], i: int) -> str:
    """Describe sample ``i`` of ``attrs`` as "a {size} {color} {shape} on {background}".

    The vocabulary is the attribute names only (position is left out), so a captioner has a small,
    closed target set. Example: "a large red star on stripes".
    """
    words = {key: ATTRIBUTES[key][int(attrs[key][i])] for key in ("size", "color", "shape", "background")}
    return "a {size} {color} {shape} on {background}".format(**words)


class SynthDataset(Dataset[tuple[Tensor, int]]):
    """One split of a synthetic world as an indexable dataset, with vectorised batch access.

    Index ``i`` maps to global index ``SPLITS[split][0] + i``. Label noise (``config.label_noise``)
    applies to the ``train`` split only, and only to the returned labels: images and
    :meth:`attributes` always show the truth.

    Args:
        split: ``train``, ``val`` or ``test``.
        config: the world.
        target: attribute used as the label (``shape``, ``color``, ``background``, ``size``, ``position``).
        n: keep only the first ``n`` samples of the split.

    Raises:
        ConfigError: unknown split or target, or ``n`` outside ``[1, split length]``.

    Example:
        >>> data = SynthDataset("test", target="color", n=10)
        >>> x, y = data.get_batch(torch.arange(3))
        >>> x.shape, len(data), data.num_classes
        (torch.Size([3, 3, 32, 32]), 10, 8)
    """

    def __init__(
        self, split: str = "test", *, config: SynthConfig = SynthConfig(), target: str = "shape", n: int | None = None
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"synth split {split!r} is unknown; accepted: {', '.join(SPLITS)}")
        if target not in ATTRIBUTES:
            raise ConfigError(f"synth target {target!r} is unknown; accepted: {', '.join(ATTRIBUTES)}")
        start, stop = SPLITS[split]
        if n is not None and not 1 <= n <= stop - start:
            raise ConfigError(f"synth n must be in [1, {stop - start}] for split {split!r}, got {n}")
        self.split, self.config, self.target = split, config, target
        self.start, self.length = start, stop - start if n is None else n
        self.classes: tuple[str, ...] = ATTRIBUTES[target]
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x, y = self.get_batch(torch.tensor([index]))
        return x[0], int(y[0])

    def _global(self, indices: Tensor) -> Tensor:
        indices = torch.as_tensor(indices, dtype=torch.long)
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= self.length):
            raise IndexError(f"synth {self.split} index out of range [0, {self.length})")
        return indices + self.start

    def attributes(self, indices: Tensor) -> dict[str, Tensor]:
        """True attributes of split-local ``indices``, without rendering images (int64, ``(B,)``)."""
        global_index = self._global(indices)
        attrs = _attributes(_draw(global_index.cpu(), self.config.seed), self.config.context_p, self.config.backgrounds)
        return {key: value.to(global_index.device) for key, value in attrs.items()}

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Images :math:`(B, 3, S, S)` in [0, 1] and int64 labels :math:`(B,)` for split-local ``indices``."""
        global_index = self._global(indices)
        x, attrs = render_synth(global_index, self.config)
        return x, self._noisy(global_index, attrs[self.target])

    def _noisy(self, global_index: Tensor, y: Tensor) -> Tensor:
        """Apply symmetric label noise to train labels from the samples' own block draws."""
        if self.split != "train" or self.config.label_noise == 0.0:
            return y
        p = _draw(global_index.cpu(), self.config.seed)
        flip = p["noise_u"] < self.config.label_noise
        offset = 1 + (p["noise_offset_u"] * (self.num_classes - 1)).long()  # never 0: the new class differs
        return torch.where(flip.to(y.device), torch.remainder(y + offset.to(y.device), self.num_classes), y)

    def captions(self, indices: Tensor) -> list[str]:
        """Captions (see :func:`caption`) of split-local ``indices``."""
        attrs = self.attributes(indices)
        return [caption(attrs, i) for i in range(len(attrs["shape"]))]


_OPTIONS = ("size", "seed", "context_p", "label_noise", "backgrounds", "target", "split")
_T = TypeVar("_T")


def _option(options: dict[str, str], key: str, cast: Callable[[str], _T], default: _T) -> _T:
    """Parse one ``k=v`` option, raising a one-line :class:`ConfigError` that names the key."""
    if key not in options:
        return default
    try:
        return cast(options[key])
    except ValueError:
        raise ConfigError(f"synth option {key}={options[key]!r} is not a valid {cast.__name__}") from None


@DATASETS.register("synth", summary="Procedural shapes on textured backgrounds, rendered offline from (seed, index).")
def _load_synth(arg: str | None, *, split: str, image_size: int | None) -> SynthDataset:
    """Build a :class:`SynthDataset` from ``k=v,...`` options; ``size`` defaults to the model's ``image_size``."""
    options = parse_kwargs(arg)
    for key in options:
        if key not in _OPTIONS:
            raise ConfigError(f"unknown synth option {key!r}; accepted: {', '.join(_OPTIONS)}")
    config = SynthConfig(
        image_size=_option(options, "size", int, image_size or 32),
        seed=_option(options, "seed", int, 0),
        context_p=_option(options, "context_p", float, 0.0),
        label_noise=_option(options, "label_noise", float, 0.0),
        backgrounds=tuple(name for name in options.get("backgrounds", "").split("+") if name),
    )
    split = _option(options, "split", str, split)
    return SynthDataset(split, config=config, target=_option(options, "target", str, "shape"))
