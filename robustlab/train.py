"""Train classifiers on the synthetic world, deterministically, once: the weights are cached.

``--weights synth`` trains with plain cross-entropy; ``--weights synth-at`` with PGD adversarial
training (Madry et al., ICLR 2018, arXiv 1706.06083), the standard robust baseline every defense is
compared against.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.cache import cache_dir, config_hash, load_weights, save_weights
from robustlab.models import MODELS, SYNTH_MEAN, SYNTH_STD, ImageClassifier

__all__ = ["TrainConfig", "pgd_examples", "train_classifier", "trained_classifier"]

RECIPE = 1  # bump when the training code changes what it produces, so old cached weights are not reused


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

    def resolved(self) -> TrainConfig:
        """Fill ``steps`` with the family default: small nets get more steps, big torchvision nets fewer."""
        if self.steps is not None:
            return self
        embedded = MODELS.get(self.arch).tags["family"] == "embedded"
        return replace(self, steps=800 if embedded else 400)


def trained_classifier(config: TrainConfig, *, adversarial: bool = False, progress: bool = True) -> ImageClassifier:
    """Return the classifier for ``config``, training it on first use and loading the cache afterwards."""
    config = replace(config, adversarial=adversarial or config.adversarial).resolved()
    kind = "synth-at" if config.adversarial else "synth"
    path = cache_dir("models") / f"{config.arch}-{kind}-{config_hash(config)}.safetensors"
    model = _build(config)
    if path.is_file():
        model.net.load_state_dict(load_weights(path))
        return model
    train_classifier(model, config, progress=progress)
    save_weights(path, model.net.state_dict(), metadata={"config": json.dumps(asdict(config))})
    return model


def _build(config: TrainConfig) -> ImageClassifier:
    # Module constructors draw from the global RNG; fork it so the init is a function of the seed alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = MODELS.get(config.arch).factory(num_classes=config.num_classes, image_size=config.image_size)
    return ImageClassifier(
        net,
        mean=SYNTH_MEAN,
        std=SYNTH_STD,
        num_classes=config.num_classes,
        name=config.arch,
        input_size=config.image_size,
    )


def train_classifier(model: ImageClassifier, config: TrainConfig, *, progress: bool = True) -> None:
    """Train ``model`` in place on fresh synthetic training samples (AdamW, one-cycle schedule)."""
    from robustlab.data.synth import SynthConfig, SynthDataset

    config = config.resolved()
    steps = int(config.steps or 0)
    data = SynthDataset("train", config=SynthConfig(image_size=config.image_size, seed=config.seed))
    generator = torch.Generator().manual_seed(config.seed)
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    label = f"training {config.arch} on synth" + (" (PGD adversarial)" if config.adversarial else "")
    bar = tqdm(range(steps), desc=label, disable=not progress, leave=False, dynamic_ncols=True)
    for _ in bar:
        x, y = data.get_batch(torch.randint(len(data), (config.batch_size,), generator=generator))
        if config.adversarial:
            model.eval()
            x = pgd_examples(model, x, y, eps=config.eps, steps=config.attack_steps, generator=generator)
        model.train()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    model.requires_grad_(False)


def pgd_examples(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int, generator: torch.Generator
) -> Tensor:
    """L∞ PGD with a random start and step 2.5·eps/steps, for adversarial training (not for evaluation)."""
    step_size = 2.5 * eps / steps
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1).mul_(eps).to(x.device)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
        delta = ((x + delta).clamp(0, 1) - x).detach().requires_grad_(True)
    return (x + delta).detach()
