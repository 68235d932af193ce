"""Fooling images (Nguyen, Yosinski & Clune, CVPR 2015): unrecognisable images classified with near certainty."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from robustlab.attacks.fooling.cppn import CppnEncoding
from robustlab.attacks.fooling.direct import DirectEncoding
from robustlab.attacks.fooling.gradient import AscentConfig, gradient_ascent
from robustlab.attacks.fooling.map_elites import Archive, MapElites
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attack import ATTACKS, GenerativeAttack, resolved
from robustlab.cache import config_hash
from robustlab.errors import ConfigError
from robustlab.tasks import class_probabilities
from robustlab.threat import verify

__all__ = ["ENCODINGS", "Fooling", "class_probabilities", "max_softmax_auroc"]

ENCODINGS = ("cppn", "direct", "gradient")
DEFAULT_GENERATIONS = {"cppn": 400, "direct": 400, "gradient": 500}


@ATTACKS.register(
    "fooling",
    summary="Fooling images (Nguyen et al., CVPR 2015): evolved (CPPN/direct, MAP-Elites) or gradient-ascent "
    "images classified at >= 99.99%; generative, no input images.",
)
@dataclass(kw_only=True, eq=False)
class Fooling(GenerativeAttack):
    """Deep Neural Networks are Easily Fooled, https://arxiv.org/abs/1412.1897.

    Produces one image per class of the model that the model assigns to that class with the highest
    confidence found. ``cppn`` and ``direct`` evolve images with MAP-Elites (one archive cell per class),
    using only the model's softmax (score-based black box, ``population`` queries per generation);
    ``gradient`` ascends the class's softmax or logit (white box, ``generations`` iterations). Deterministic
    given the generator. Unbounded threat model: the images come from nothing, so there is no budget; what
    the attack is scored on is the confidence (:func:`fooling_metrics`), not accuracy.

    Full-scale victims (input side >= 224) are scored as the paper's ImageNet runs: genomes are rendered at
    256/224 of the input side and each image's softmax is averaged over ten crops (corners, centre, and their
    mirrors); smaller victims see the whole image once. ``ten_crop`` and ``image_size`` override that.

    Args:
        encoding: ``cppn``, ``direct`` or ``gradient``.
        generations: evolution generations, or ascent iterations (default 400 evolved, 500 ascent).
        population: children per generation (the official runs: 400 CPPN, 200 direct).
        init_size: random genomes at the start (default ``population``).
        image_size: side of the generated images (default: see above).
        ten_crop: score on ten crops of the model's input size (default: for victims of side >= 224).
        coord_mode: CPPN ``x, y`` inputs: ``unit`` coordinates in ``[-1, 1]`` (the CPPN convention the paper
            describes) or ``code_raw`` pixel indices (the official code). On the synthetic world ``unit`` fooled
            8/10 classes at >= 99% in 160 generations, ``code_raw`` in 250 (experiments/RESULTS-fooling.md).
        color: ``hls`` (official decoding) or ``rgb``.
        max_hidden: CPPN hidden-node capacity.
        halve_every: direct encoding: halve the mutation rate every this many generations (0: never).
        objective: gradient ascent target, ``softmax`` or ``logit``.
        decay, blur_radius, blur_every: gradient ascent regularisers (:class:`AscentConfig`).
        checkpoint_every: save the archive to the store every this many generations.
        batch_size: images per forward pass when scoring.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
        >>> out = Fooling(generations=2, population=4, image_size=8).generate(
        ...     net, generator=torch.Generator().manual_seed(0), progress=False)
        >>> out["images"].shape, out["target"].tolist()
        (torch.Size([3, 3, 8, 8]), [0, 1, 2])
    """

    task = "class_confidence"
    uses_gradients = False  # the default encodings query scores only; ``encoding="gradient"`` is white box

    encoding: str = "cppn"
    generations: int | None = None
    population: int = 64
    init_size: int | None = None
    image_size: int | None = None
    ten_crop: bool | None = None
    coord_mode: str = "unit"  # not the encoding's default, which is the official code's ``code_raw``
    color: str = CppnEncoding.color
    max_hidden: int = CppnEncoding.max_hidden
    halve_every: int = DirectEncoding.halve_every
    objective: str = AscentConfig.objective
    decay: float = AscentConfig.decay
    blur_radius: float = AscentConfig.blur_radius
    blur_every: int = AscentConfig.blur_every
    checkpoint_every: int = 10
    batch_size: int = 256

    def __post_init__(self) -> None:
        _check_choice("encoding", self.encoding, ENCODINGS)
        _check_choice("coord_mode", self.coord_mode, ("code_raw", "unit"))
        _check_choice("color", self.color, ("hls", "rgb"))
        _check_choice("objective", self.objective, ("softmax", "logit"))
        if self.generations is None:
            self.generations = DEFAULT_GENERATIONS[self.encoding]
        for name, value, low in (
            ("generations", self.generations, 1),
            ("population", self.population, 2),
            ("init_size", self.init_size or 1, 1),
            ("image_size", self.image_size or 1, 1),
            ("max_hidden", self.max_hidden, 1),
            ("checkpoint_every", self.checkpoint_every, 1),
            ("batch_size", self.batch_size, 1),
            ("blur_every", self.blur_every, 1),
        ):
            if value < low:
                raise ConfigError(f"fooling: {name} must be >= {low}, got {value}")
        if not 0 <= self.decay < 1 or not (self.blur_radius == 0 or self.blur_radius >= 0.3):
            raise ConfigError("fooling: decay must be in [0, 1) and blur_radius 0 or >= 0.3 (as the official code)")

    def generate(
        self, model: nn.Module, *, generator: torch.Generator, store: Any = None, progress: bool = True
    ) -> dict[str, Tensor]:
        """One image per class, with ``confidence`` ``(K,)`` and the ``generation`` ``(1,)`` reached.

        Evolved runs add ``crop`` ``(1,)``: the side of the ten crops the confidences average over (0: the
        whole image), which the ``class_confidence`` task rescores with.

        The MAP-Elites archive is saved to ``store`` (its one key is overwritten) every ``checkpoint_every``
        generations, with the generator's state, so a killed run resumes and ends bit for bit as an
        uninterrupted one. Gradient ascent is not checkpointed.
        """
        if model.training:
            raise ConfigError("the model is in training mode: attack numbers would be wrong; call model.eval()")
        victim = _Victim.of(model, default_size=self.image_size or 32)
        if victim.num_classes < 2:
            raise ConfigError(f"fooling needs a classifier with at least 2 classes, the model has {victim.num_classes}")
        if self.encoding == "gradient":
            out = self._ascend(model, victim, generator)
        else:
            out = self._evolve(model, victim, generator, store, progress)
        verify(self.threat, out["images"], out["images"])
        return out

    def write(
        self, model: nn.Module, out: Path, *, seed: int, class_names: Sequence[str], run: dict[str, Any], progress: bool
    ) -> dict[str, Any]:
        """``images/NNN-name.png`` (8-bit, lossless), ``grid.png`` and ``fooling.json`` in ``out``; the evolved
        archive is checkpointed in ``out/archive.sqlite``, so a rerun resumes (:func:`write_run`)."""
        from robustlab.attacks.fooling.outputs import write_run

        return write_run(self, model, out, seed=seed, class_names=class_names, run=run, progress=progress)

    def _ascend(self, model: nn.Module, victim: _Victim, generator: torch.Generator) -> dict[str, Tensor]:
        config = AscentConfig(
            steps=resolved(self.generations),
            objective=self.objective,
            decay=self.decay,
            blur_radius=self.blur_radius,
            blur_every=self.blur_every,
        )
        targets = torch.arange(victim.num_classes, device=victim.device)
        size = self.image_size or victim.input_size
        out = gradient_ascent(
            model, targets, shape=(victim.channels, size, size), mean=victim.mean, config=config, generator=generator
        )
        return {
            "images": out["images"],
            "target": targets,
            "confidence": out["confidence"],
            "queries": out["queries"],
            "generation": torch.tensor([self.generations]),
        }

    def _evolve(
        self, model: nn.Module, victim: _Victim, generator: torch.Generator, store: Any, progress: bool
    ) -> dict[str, Tensor]:
        ten_crop = victim.input_size >= 224 if self.ten_crop is None else self.ten_crop
        size = self.image_size or (round(victim.input_size * 256 / 224) if ten_crop else victim.input_size)
        crop = victim.input_size if ten_crop else None
        if crop is not None and crop > size:
            raise ConfigError(f"fooling: image_size {size} is smaller than the model's input {crop} for ten crops")
        encoding: CppnEncoding | DirectEncoding
        if self.encoding == "cppn":
            encoding = CppnEncoding(
                victim.channels, size, coord_mode=self.coord_mode, color=self.color, max_hidden=self.max_hidden
            )
        else:
            encoding = DirectEncoding(victim.channels, size, color=self.color, halve_every=self.halve_every)
        elites = MapElites(
            encoding,
            lambda images: class_probabilities(model, images, crop=crop, batch_size=self.batch_size),
            num_classes=victim.num_classes,
            population=self.population,
            init_size=self.init_size or self.population,
        )
        key = "fooling-archive-" + config_hash(
            {k: v for k, v in self.config().items() if k not in ("generations", "checkpoint_every", "batch_size")}
            | {"classes": victim.num_classes, "size": size, "crop": crop}
        )
        saved = store.get(key) if store is not None else None
        if saved is None:
            archive = elites.start(generator, victim.device)
            _save(store, key, archive, generator)
        else:
            archive = Archive.from_tensors(saved, victim.device)
            generator.set_state(saved["generator"])
        generations = resolved(self.generations)
        bar = tqdm(total=generations, initial=min(archive.generation, generations), disable=not progress)
        bar.set_description("evolving fooling images")
        while archive.generation < generations:
            elites.step(archive, generator)
            bar.update(1)
            bar.set_postfix(fooled=int((archive.confidence >= 0.99).sum()), refresh=False)
            if archive.generation % self.checkpoint_every == 0 or archive.generation == generations:
                _save(store, key, archive, generator)
        bar.close()
        return {
            "images": encoding.render(archive.genomes),
            "target": torch.arange(victim.num_classes, device=victim.device),
            "confidence": archive.confidence.clone(),
            "queries": torch.tensor([archive.queries]),
            "generation": torch.tensor([archive.generation]),
            "crop": torch.tensor([crop or 0]),
        }


class _Victim:
    """What the attack reads off the model: classes, input side, channels, mean image, device."""

    def __init__(self, num_classes: int, input_size: int, mean: Tensor) -> None:
        self.num_classes = num_classes
        self.input_size = input_size
        self.mean = mean
        self.channels = mean.shape[1]
        self.device = mean.device

    @classmethod
    def of(cls, model: nn.Module, *, default_size: int) -> _Victim:
        """Read ``num_classes``, ``input_size`` and ``mean`` when the model has them (robustlab classifiers do)."""
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        mean = getattr(model, "mean", None)
        mean = mean.detach() if isinstance(mean, Tensor) else torch.full((1, 3, 1, 1), 0.5, device=device)
        size = int(getattr(model, "input_size", default_size))
        classes = getattr(model, "num_classes", None)
        if not isinstance(classes, int) or classes < 0:
            with torch.no_grad():
                classes = int(model(mean.expand(1, -1, size, size)).shape[1])
        return cls(classes, size, mean)


def _save(store: Any, key: str, archive: Archive, generator: torch.Generator) -> None:
    if store is not None:
        store.put(key, archive.to_tensors() | {"generator": generator.get_state()})


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"fooling: unknown {name} {value!r}; choose one of {', '.join(choices)}")


def max_softmax_auroc(real_confidence: Tensor, fooling_confidence: Tensor) -> float:
    """AUROC of the max-softmax OOD detector (Hendrycks & Gimpel, ICLR 2017) telling real images from fooling ones.

    The detector calls an image in-distribution when its top softmax is high: the AUROC is the chance that a
    random real image scores above a random fooling image (ties count half). 0.5 is chance; below 0.5 the
    fooling images look *more* in-distribution than real ones.

    Example:
        >>> max_softmax_auroc(torch.tensor([0.9, 0.8]), torch.tensor([0.99, 0.5]))
        0.5
    """
    real = real_confidence.detach().double().view(-1, 1)
    fake = fooling_confidence.detach().double().view(1, -1)
    return float(((real > fake).double() + 0.5 * (real == fake).double()).mean())
