"""Train classifiers on the synthetic world, deterministically, once: the weights are cached.

``--weights synth`` trains with plain cross-entropy; ``--weights synth-at`` with PGD adversarial
training (Madry et al., ICLR 2018, arXiv 1706.06083), the standard robust baseline every defense is
compared against; ``--weights synth-trades`` with TRADES (Zhang et al., ICML 2019, arXiv 1901.08573), a
second robust model trained differently; ``--weights synth-noise0.3`` with plain cross-entropy on train
labels of which 30% are flipped (the noisy pre-training that NMTune, Chen et al., ICLR 2024, starts from).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.allocator import steady_shapes
from robustlab.cache import cache_dir, config_hash, load_weights, save_weights
from robustlab.data.base import ImageDataset, iterate_batches
from robustlab.errors import ConfigError
from robustlab.models.classifier import MODELS, SYNTH_MEAN, SYNTH_STD, ImageClassifier
from robustlab.optimize import descend, one_cycle
from robustlab.seeding import global_rng_seeded

__all__ = [
    "TrainConfig",
    "pgd_examples",
    "robust_recipe",
    "trades_examples",
    "train_classifier",
    "trained_attribute_classifier",
    "trained_classifier",
]

RECIPE = 1  # bump when the training code changes what it produces, so old cached weights are not reused
_ADDED_LATER = {"label_noise": 0.0, "trades_beta": 0.0, "bf16": False}  # fields that name cached weights when set


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights; its hash names the cache file."""

    arch: str
    num_classes: int = 10
    image_size: int = 32
    seed: int = 0
    steps: int | None = None
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    adversarial: bool = False
    eps: float = 8 / 255
    attack_steps: int = 5
    recipe: int = RECIPE
    label_noise: float = 0.0
    trades_beta: float = 0.0  # with ``adversarial``: TRADES' weight of the clean-to-adversarial KL; 0 is PGD-AT
    bf16: bool | None = None
    """Mixed precision: the forward pass in bfloat16 (autocast) on channels-last images, weights and optimiser
    in float32. ``None`` is :func:`default_bf16`: where the CPU multiplies bfloat16 itself (AMX, or AVX-512's
    bfloat16 dot products) a step costs 40% of float32's (experiments/RESULTS-default-recipe.md); elsewhere
    bfloat16 would be emulated."""

    def resolved(self) -> TrainConfig:
        """Fill ``steps`` with the family default (small nets get more steps, big torchvision nets fewer) and
        ``bf16`` with :func:`default_bf16` (``ROBUSTLAB_TRAIN_PRECISION``, else what this CPU does natively)."""
        config = self if self.bf16 is not None else replace(self, bf16=default_bf16())
        if config.steps is not None:
            return config
        embedded = MODELS.get(config.arch).tags["family"] == "embedded"
        return replace(config, steps=800 if embedded else 400)


PRECISION_VARIABLE = "ROBUSTLAB_TRAIN_PRECISION"
"""``auto`` (the default), ``float32`` or ``bfloat16``: how classifiers train when their config leaves it open.

The two precisions train different weights, so a machine with native bfloat16 and one without each get their
own models; set ``float32`` on the first (or ``bfloat16`` on the second, slowly) to train the other one's."""

NATIVE_BF16 = ("amx_bf16", "avx512_bf16")
"""The CPU features (``torch.cpu.get_capabilities()``) with which oneDNN runs bfloat16 convolutions natively:
Intel's AMX tiles (Sapphire Rapids on) and AVX-512's bfloat16 dot products (Cooper Lake, AMD Zen 4 on)."""


def default_bf16() -> bool:
    """Whether a classifier whose config leaves the precision open trains in bfloat16: what
    :data:`PRECISION_VARIABLE` says, else whether this CPU has one of :data:`NATIVE_BF16`."""
    choice = os.environ.get(PRECISION_VARIABLE, "auto").strip().lower()
    if choice not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"{PRECISION_VARIABLE}={choice!r}: use auto, float32 or bfloat16")
    if choice == "auto":
        capabilities = torch.cpu.get_capabilities()
        return any(capabilities.get(feature, False) for feature in NATIVE_BF16)
    return choice == "bfloat16"


def trained_classifier(config: TrainConfig, *, adversarial: bool = False, progress: bool = True) -> ImageClassifier:
    """Return the classifier for ``config``, training it on first use and loading the cache afterwards.

    ``adversarial=True`` turns a standard config into the ``synth-at`` recipe (:func:`robust_recipe`), which
    fine-tunes the standard model of the same architecture adversarially: starting from a model that already
    separates the classes costs a fraction of adversarial training from scratch on a CPU.
    """
    if adversarial and not config.adversarial:
        config = robust_recipe(config)
    config = config.resolved()
    kind = ("synth-trades" if config.trades_beta else "synth-at") if config.adversarial else "synth"
    kind += f"-noise{config.label_noise:g}" if config.label_noise else ""
    path = cache_dir("models") / f"{config.arch}-{kind}-{_cache_key(config)}.safetensors"
    model = _build(config)
    if path.is_file():
        model.net.load_state_dict(load_weights(path))
        return model.eval().requires_grad_(False)  # as train_classifier leaves a model it trained
    if config.adversarial:
        base = TrainConfig(
            arch=config.arch, num_classes=config.num_classes, image_size=config.image_size, bf16=config.bf16
        )
        standard = trained_classifier(replace(base, seed=config.seed), progress=progress)
        model.net.load_state_dict(standard.net.state_dict())
    train_classifier(model, config, progress=progress, why=f"for --weights {kind}: first use, then cached")
    save_weights(path, model.net.state_dict(), metadata={"config": json.dumps(asdict(config))})
    return model


def _cache_key(config: TrainConfig) -> str:
    """The config's hash; fields added later join it only when set, so older configs keep their cached weights."""
    key = {k: v for k, v in asdict(config).items() if _ADDED_LATER.get(k, object()) != v}
    return config_hash(key)


def trained_attribute_classifier(config: TrainConfig, target: str, *, progress: bool = True) -> ImageClassifier:
    """A classifier of another attribute of the synthetic world (``synth:target=TARGET``), trained once and cached.

    The scene (background) classifier of contextual fusion is one: the same architectures and recipe
    as :func:`trained_classifier`, on the default world's train split labelled by ``target``;
    ``config.num_classes`` is replaced by the attribute's class count.

    Raises:
        ConfigError: ``target`` is not an attribute of the synthetic world.
    """
    from robustlab.data.synth import ATTRIBUTES, SynthConfig, SynthDataset

    if target not in ATTRIBUTES:
        raise ConfigError(f"synth target {target!r} is unknown; accepted: {', '.join(ATTRIBUTES)}")
    config = replace(config, num_classes=len(ATTRIBUTES[target])).resolved()
    key = {"config": asdict(config), "target": target}
    path = cache_dir("models") / f"{config.arch}-synth-{target}-{config_hash(key)}.safetensors"
    model = _build(config)
    if path.is_file():
        model.net.load_state_dict(load_weights(path))
        return model.eval().requires_grad_(False)  # as train_classifier leaves a model it trained
    data = SynthDataset("train", config=SynthConfig(image_size=config.image_size, seed=config.seed), target=target)
    train_classifier(model, config, data=data, progress=progress)
    save_weights(path, model.net.state_dict(), metadata={"config": json.dumps(key)})
    return model


def robust_recipe(config: TrainConfig, *, trades_beta: float = 0.0) -> TrainConfig:
    """The ``synth-at`` recipe: 200 steps of PGD-2 adversarial fine-tuning (8/255, step 1.25·eps, batch 64).

    Two attack steps rather than Madry's seven keep it to a few CPU minutes; with a random start and a
    1.25·eps step this is the regime where fast adversarial training stays robust to full PGD
    (Wong et al., ICLR 2020, arXiv 2001.03994). ``trades_beta > 0`` is ``synth-trades``: the same budget
    and schedule with TRADES' objective (the paper's β = 6 for CIFAR-10) instead of PGD-AT's.
    """
    return replace(config, adversarial=True, steps=200, batch_size=64, attack_steps=2, trades_beta=trades_beta)


def _build(config: TrainConfig) -> ImageClassifier:
    # Module constructors draw from the global RNG; fork it so the init is a function of the seed alone.
    with global_rng_seeded(config.seed):
        net = MODELS.get(config.arch).factory(num_classes=config.num_classes, image_size=config.image_size)
    return ImageClassifier(
        net,
        mean=SYNTH_MEAN,
        std=SYNTH_STD,
        num_classes=config.num_classes,
        name=config.arch,
        input_size=config.image_size,
    )


def train_classifier(
    model: ImageClassifier,
    config: TrainConfig,
    *,
    data: ImageDataset | None = None,
    progress: bool = True,
    why: str = "",
) -> None:
    """Train ``model`` in place (AdamW, one-cycle schedule, mixed precision when ``config.bf16``) on the device
    its parameters are on.

    Args:
        model: the classifier to train; left in eval mode with frozen parameters.
        config: the recipe; ``adversarial`` trains on PGD examples made against the current weights.
        data: training samples; default the synthetic world's train split at ``config.image_size``, with
            ``config.label_noise`` of its labels flipped.
        progress: a tqdm bar on stderr, one tick a step.
        why: what the bar adds after the model's name (``for --weights synth: first use, then cached``).
    """
    from robustlab.data.synth import SynthConfig, SynthDataset

    config = config.resolved()
    steps = int(config.steps or 0)
    if data is None:
        world = SynthConfig(image_size=config.image_size, seed=config.seed, label_noise=config.label_noise)
        data = SynthDataset("train", config=world)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = one_cycle(optimizer, max_lr=config.lr, steps=steps, warmup=0.15)
    label = " ".join(filter(None, (f"training {config.arch}", "(PGD adversarial)" * config.adversarial, why)))
    bar = tqdm(range(steps), desc=label, disable=not progress, leave=False, dynamic_ncols=True)
    layout = torch.channels_last if config.bf16 else torch.contiguous_format
    model.to(memory_format=layout)
    with steady_shapes():
        for _ in bar:
            chunk = torch.randint(len(data), (config.batch_size,), generator=generator)
            _, x, y = next(iterate_batches(data, chunk, config.batch_size))
            x, y = x.to(device).contiguous(memory_format=layout), y.to(device)
            model.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(config.bf16)):
                loss = _loss(model, x, y, config, generator).float()
            descend(optimizer, loss, schedule)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    model.requires_grad_(False)


def _loss(model: nn.Module, x: Tensor, y: Tensor, config: TrainConfig, generator: torch.Generator) -> Tensor:
    """The training loss of one batch: cross-entropy, on PGD examples for PGD-AT, plus TRADES' KL term."""
    if not config.adversarial:
        return F.cross_entropy(model(x), y)
    model.eval()  # the examples are made against the model as it predicts, as both papers' code does
    if not config.trades_beta:
        x = pgd_examples(model, x, y, eps=config.eps, steps=config.attack_steps, generator=generator)
        model.train()
        return F.cross_entropy(model(x), y)
    x_adv = trades_examples(model, x, eps=config.eps, steps=config.attack_steps, generator=generator)
    model.train()
    logits = model(x)
    divergence = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1), reduction="batchmean")
    return F.cross_entropy(logits, y) + config.trades_beta * divergence


def trades_examples(model: nn.Module, x: Tensor, *, eps: float, steps: int, generator: torch.Generator) -> Tensor:
    """TRADES' inner maximisation: L∞ steps that push the prediction away from the clean one (no label used).

    As the authors' code: a start 0.001·N(0, 1) from ``x`` and signed steps on KL(p(x) ‖ p(x')), with the
    step of :func:`pgd_examples` (2.5·eps/steps) so that few steps still reach the budget's edge.
    """
    step_size = 2.5 * eps / max(steps, 2)
    with torch.no_grad():
        clean = F.softmax(model(x), 1)
    x_adv = x + 0.001 * torch.randn(x.shape, generator=generator).to(x.device)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        divergence = F.kl_div(F.log_softmax(model(x_adv), 1), clean, reduction="sum")
        (grad,) = torch.autograd.grad(divergence, x_adv)
        x_adv = torch.min(torch.max(x_adv + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def pgd_examples(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int, generator: torch.Generator
) -> Tensor:
    """L∞ PGD with a random start, for adversarial training (not for evaluation).

    The step is Madry et al.'s 2.5·eps/steps; a single step uses 1.25·eps, the FGSM-RS of "Fast is better
    than free" (Wong et al., ICLR 2020, arXiv 2001.03994), which stays clear of catastrophic overfitting.
    """
    step_size = 2.5 * eps / max(steps, 2)
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1).mul_(eps).to(x.device)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
        delta = ((x + delta).clamp(0, 1) - x).detach().requires_grad_(True)
    return (x + delta).detach()
