"""Adversarial datasets on disk: a PNG tree, lossless uint8 safetensors shards and a manifest.

``robustlab generate`` attacks a dataset once so that others can train on, share or re-evaluate the
adversarial images without rerunning the attack. PNG holds 8 bits per channel, so the stored image is
put on the 8-bit grid *inside* the budget and every prediction and success flag is measured again on
exactly the stored pixels: what the manifest says is what is on disk.

What "source" means: the source image is the dataset image quantised to 8 bits,
``round(x * 255) / 255`` (for PNG/JPEG datasets this is the original file; for the synthetic world
it is the nearest 8-bit image). The attack runs on that source, and the stored adversarial image is
within the budget of it, so both halves of a (source, adversarial) pair exist as exact 8-bit images.

Layout of ``OUT``::

    generate.json                  config of the generation (what a resume must match)
    shards/shard-00000.safetensors image/source (uint8 N×C×H×W), label, index (int64)
    shards/shard-00000.json        per-sample records of that shard
    png/003-star/000012.png        class-per-folder tree named by source index; folders sort in label order
                                   and exist for every class, so ImageFolder(..., allow_empty=True) gives
                                   the same labels even when a small n leaves a class empty
    manifest.json                  written last: config, versions, classes, every record, summary, and
                                   the SHA-256 of each shard, checked when ``adv:OUT`` is read

Every file is written atomically (temporary file + rename), and a shard counts as done once its
safetensors file exists (written after its PNGs and records), so an interrupted run resumes at the
first missing shard and produces the same files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attack import ATTACKS, Attack, AttackKind
from robustlab.cache import atomic_write, config_hash, load_weights, save_weights
from robustlab.components import ComponentSpec, load_builtin_components
from robustlab.data import load_dataset
from robustlab.data.adv import FORMAT, FORMAT_VERSION, shard_hash
from robustlab.data.base import ImageDataset, iterate_batches
from robustlab.defense import DEFENSES, Defense, ThreatMode
from robustlab.distributed import Shard
from robustlab.errors import ConfigError, DataError
from robustlab.inputs import load_classifier
from robustlab.jsonfile import json_ready, read_json
from robustlab.models.classifier import ImageClassifier
from robustlab.models.loading import ModelSpec
from robustlab.preprocessing import preprocessing_of
from robustlab.progress import on_bar, reporting
from robustlab.randomized import attacked_by, through_eot
from robustlab.reports.report import environment
from robustlab.runners import attack_and_score
from robustlab.sampling import sample_indices
from robustlab.seeding import seeded, stream_seed
from robustlab.tasks import Classification, predict
from robustlab.threat import Norm, ThreatModel, perturbation_norm, verify
from robustlab.victims import attacked_models, frozen, prepare_defense

__all__ = ["FORMAT", "FORMAT_VERSION", "GenerateConfig", "generate", "quantize_within"]


@dataclass(frozen=True)
class GenerateConfig:
    """One adversarial dataset: model x defense x attack on ``n`` samples of ``data``.

    ``threat_mode`` only matters for defenses that change the model: ``adaptive`` attacks the whole
    defended pipeline, ``transfer`` the bare model; predictions are always those of the defended model.
    """

    model: ModelSpec
    attack: ComponentSpec
    defense: ComponentSpec = field(default_factory=lambda: ComponentSpec("none"))
    threat_mode: ThreatMode = ThreatMode.ADAPTIVE
    data: str = "synth"
    split: str = "test"
    train_data: str | None = None
    n: int | None = 1000
    shard_size: int = 256
    seed: int = 0
    eot_samples: int = 20
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.n is not None and self.n <= 0:
            raise ConfigError(f"n must be a positive number of samples, got {self.n}")
        if self.shard_size <= 0:
            raise ConfigError(f"shard size must be positive, got {self.shard_size}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form; the device is left out because it does not change the images' meaning."""
        return {k: v for k, v in json_ready(dataclasses.asdict(self)).items() if k != "device"}


def quantize_within(source: Tensor, x_adv: Tensor, threat: ThreatModel) -> Tensor:
    """Round ``x_adv`` to 8 bits and pull it back inside the budget around the 8-bit ``source``.

    Rounding alone can leave the budget (``8/255 + 0.4/255`` rounds up to ``9/255``). L∞ clamps to
    ``source ± floor(eps·255)`` levels; L2 scales the integer perturbation down and truncates toward
    zero, which can only shrink it. L0, patch and unbounded threats need nothing: a pixel the attack
    left alone rounds back to its source level.

    Args:
        source: uint8 ``(B, C, H, W)`` source image.
        x_adv: float ``(B, C, H, W)`` in ``[0, 1]``, an attack output for ``source / 255``.
        threat: the attack's threat model.

    Returns:
        uint8 ``(B, C, H, W)`` whose ``/ 255`` is within ``threat`` of ``source / 255``.

    Example:
        >>> source = torch.tensor([100, 100], dtype=torch.uint8).view(1, 2, 1, 1)
        >>> x_adv = torch.tensor([108.4, 91.6]).view(1, 2, 1, 1) / 255
        >>> quantize_within(source, x_adv, ThreatModel(Norm.LINF, 8 / 255)).flatten().tolist()
        [108, 92]
    """
    base = source.to(torch.int32)
    levels = (x_adv.double() * 255).round().to(torch.int32)
    eps = threat.eps
    if eps is not None and threat.norm is Norm.LINF:
        k = math.floor(eps * 255 + 1e-6)
        levels = torch.minimum(torch.maximum(levels, base - k), base + k)
    elif eps is not None and threat.norm is Norm.L2:
        delta = (levels - base).double()
        size = delta.flatten(1).norm(dim=1) / 255
        scale = torch.where(size > eps, eps / size.clamp_min(1e-12), torch.ones_like(size)).view(-1, 1, 1, 1)
        levels = base + torch.trunc(delta * scale).to(torch.int32)
    return levels.clamp(0, 255).to(torch.uint8)


def generate(config: GenerateConfig, out: Path, *, progress: bool = True, shard: Shard | None = None) -> dict[str, Any]:
    """Write the adversarial dataset of ``config`` under ``out`` (resuming a previous run) and return its manifest.

    With an independent ``shard`` (one job of a Slurm array) only the shard files ``s % N == K`` are written and
    the manifest is not: the returned dict summarises that share. The same generate without a shard, once every
    job is done, finds all shards written and writes the manifest.

    Raises:
        ConfigError: ``out`` holds another generation or other files; the attack is not per-input.
        DataError: a file cannot be written (full disk, read-only folder): nothing half-written is left.
    """
    load_builtin_components()
    attack = config.attack.build(ATTACKS)
    if attack.kind is not AttackKind.PERTURBATION:
        raise ConfigError(f"{config.attack.name} is a {attack.kind} attack; generate needs a per-input attack")
    defense: Defense = config.defense.build(DEFENSES)
    model, dataset = _model_and_data(config, progress=progress)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict()}
    try:
        _claim(out, header, concurrent=shard is not None)
        for label, name in enumerate(dataset.classes):  # every class, even an empty one: ImageFolder labels by rank
            (out / _class_folder(label, name)).mkdir(parents=True, exist_ok=True)
        prepare_defense(defense, model, config.train_data or config.data, seed=config.seed, progress=progress)
        scored, attacked = _models(model, defense, config)
        run = _Generation(out, config, dataset, attack, scored, attacked)
        chosen, _ = sample_indices(dataset, config.n, seed=config.seed)  # class-stratified, as eval's -n
        starts = range(0, len(chosen), config.shard_size)
        records: list[dict[str, Any]] = []
        bar = tqdm(starts, desc="generate", disable=not progress, leave=False)
        for s, start in enumerate(bar):
            if shard is not None and not shard.owns(s):
                continue
            indices = chosen[start : start + config.shard_size]
            with reporting(on_bar(bar, config.attack.label()) if progress else None):
                records += _shard(run, s, indices)
        if shard is not None:
            return {
                **header,
                "shard": f"{shard.rank}/{shard.world_size}",
                "summary": _summary(records) if records else {"n": 0},
            }
        manifest = _manifest(out, header, config, attack, dataset.classes, records, shards=len(starts))
        atomic_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    except OSError as error:
        raise DataError(
            f"cannot write {error.filename or out}: {error.strerror or error}; free space or make {out} writable, "
            f"then run the same generate again: it resumes at the first missing shard"
        ) from None
    return manifest


def _model_and_data(config: GenerateConfig, *, progress: bool) -> tuple[ImageClassifier, ImageDataset]:
    """The model on its device and the dataset rendered for it, which must not have more classes than it predicts."""
    model = load_classifier(config.model, config.data, progress=progress).to(torch.device(config.device))
    dataset = load_dataset(
        config.data, split=config.split, image_size=model.input_size, preprocessing=preprocessing_of(model)
    )
    if 0 < model.num_classes < dataset.num_classes:
        raise ConfigError(
            f"{config.data} has {dataset.num_classes} classes but {model.name} predicts {model.num_classes}: "
            f"pass --num-classes {dataset.num_classes} with matching weights, or other --data"
        )
    return model, dataset


def _manifest(
    out: Path,
    header: dict[str, Any],
    config: GenerateConfig,
    attack: Attack,
    classes: Sequence[str],
    records: list[dict[str, Any]],
    *,
    shards: int,
) -> dict[str, Any]:
    """The manifest of a finished dataset: its config, versions, classes, every record, summary and the hash of each
    of its ``shards`` files (read back from ``out``)."""
    files = [f"shards/shard-{s:05d}.safetensors" for s in range(shards)]
    return {
        **header,
        "source": {"data": config.data, "split": config.split, "quantization": "round(x * 255) / 255"},
        "attack": {"name": config.attack.name, "config": json_ready(attack.config())},
        "threat": {"norm": str(attack.threat.norm), "eps": attack.threat.eps, "describe": attack.threat.describe()},
        "seed": config.seed,
        "versions": environment(str(torch.device(config.device))),
        "classes": list(classes),
        "shards": files,
        "sha256": {name: shard_hash(load_weights(out / name)) for name in files},
        "summary": _summary(records),
        "samples": records,
    }


def _claim(out: Path, header: dict[str, Any], *, concurrent: bool) -> None:
    """Start ``out`` or check that it holds an interrupted run of the same config (never mix two datasets).

    ``concurrent`` shard jobs may find ``out`` as another job of the array is starting it: its folders, or
    the marker not yet renamed into place, are not someone else's files.
    """
    marker = out / "generate.json"
    if marker.is_file():
        fix = f"delete {out} (or choose another --out) and generate again"
        if read_json(marker, what="generation marker", fix=fix, kind=dict) != header:
            raise ConfigError(f"{out} holds an adversarial dataset of another config; choose another --out")
        return
    if out.exists() and (not out.is_dir() or any(not (concurrent and _started_here(e)) for e in out.iterdir())):
        raise ConfigError(f"{out} exists and is not an adversarial dataset folder; choose a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(marker, (json.dumps(header, indent=1) + "\n").encode())
    except OSError:  # on another node, a job starting too took our temporary file for a dead writer's
        if not (concurrent and marker.is_file()):
            raise
        _claim(out, header, concurrent=False)  # its marker is in place: the same run?


def _started_here(entry: Path) -> bool:
    """What another job of the same array writes while it starts ``out``: its folders and its unrenamed marker."""
    return entry.name in ("png", "shards") or entry.name.startswith(".generate.json.")


def _models(model: nn.Module, defense: Defense, config: GenerateConfig) -> tuple[nn.Module, nn.Module]:
    """The scored (defended) model and the one the attacker differentiates."""
    mode = config.threat_mode if defense.changes_model else None
    attacked = attacked_models(model, defense, (mode,) if mode else (), eot_samples=config.eot_samples)
    return frozen(defense.wrap(model)), next(iter(attacked.values()))


@dataclass(frozen=True)
class _Generation:
    """What every shard of one generation is attacked with and written to."""

    out: Path
    config: GenerateConfig
    dataset: ImageDataset
    attack: Attack
    scored: nn.Module
    attacked: nn.Module
    """What the attacker differentiates (before EOT)."""


def _shard(run: _Generation, s: int, indices: Tensor) -> list[dict[str, Any]]:
    """Attack one shard and write it, or read back its records when a previous run finished it."""
    shards = run.out / "shards"
    tensors, records_file = shards / f"shard-{s:05d}.safetensors", shards / f"shard-{s:05d}.json"
    if tensors.is_file() and records_file.is_file():
        fix = f"delete it and {tensors.name}, and run the same generate again to redo that shard"
        return list(read_json(records_file, what="shard records", fix=fix, kind=list))
    images = _attack_shard(run, s, indices)
    records = []
    for i, index in enumerate(indices.tolist()):
        label = int(images.y[i])
        png = f"{_class_folder(label, run.dataset.classes[label])}/{index:06d}.png"
        atomic_write(run.out / png, _png_bytes(images.stored[i]))
        correct = int(images.clean_pred[i]) == label
        records.append(
            {
                "index": index,
                "label": label,
                "clean_pred": int(images.clean_pred[i]),
                "adv_pred": int(images.adv_pred[i]),
                "success": correct and int(images.adv_pred[i]) != label,
                "norm": round(float(images.norm[i]), 7),
                "png": png,
                "shard": s,
            }
        )
    atomic_write(records_file, json.dumps(records).encode())
    save_weights(
        tensors,
        {"image": images.stored, "source": images.source, "label": images.y.cpu(), "index": indices},
        metadata={"format": FORMAT, "config_hash": config_hash(run.config.to_dict())},
    )
    return records


@dataclass(frozen=True)
class _AttackedShard:
    """One shard attacked: its 8-bit images and what the scored model says of them."""

    source: Tensor
    """uint8 ``(N, C, H, W)``: the dataset images on the 8-bit grid, which the attack ran on."""
    stored: Tensor
    """uint8 ``(N, C, H, W)``: the adversarial images on the 8-bit grid, within the budget of ``source``."""
    y: Tensor
    clean_pred: Tensor
    adv_pred: Tensor
    """The scored model's predictions on the stored pixels."""
    norm: Tensor
    """The size of each stored perturbation."""


def _attack_shard(run: _Generation, s: int, indices: Tensor) -> _AttackedShard:
    """Attack the samples ``indices`` of shard ``s`` on their 8-bit source images, and score what would be stored."""
    config, attack, scored = run.config, run.attack, run.scored
    device = next((p.device for p in scored.parameters()), torch.device(config.device))
    (_, x, y), *_ = iterate_batches(run.dataset, indices, len(indices))
    source = (x * 255).round().clamp(0, 255).to(torch.uint8)
    x_source, y = (source.float() / 255).to(device), y.to(device)
    with seeded(config.seed, f"shard{s}") as generator:
        task = Classification()
        clean = task.clean(scored, x_source, y)
        everything = torch.ones_like(y, dtype=torch.bool)  # a dataset holds every image, broken or not
        seeds = torch.tensor([stream_seed(config.seed, f"generate/s{int(i)}") for i in indices])  # any shard size
        # A model with randomness in forward (a user's, not only a registered defense) is attacked through EOT,
        # as eval does; generate never stops early, so no iterate is kept for fooling a single draw.
        attacked = attacked_by(attack, through_eot(run.attacked, x_source, config.eot_samples))
        x_adv = attack_and_score(
            attack,
            attacked,
            scored,
            task,
            x_source,
            y,
            clean,
            everything,
            generator,
            keep_images=True,
            sample_seeds=seeds,
        )["x_adv"]
        stored = quantize_within(source, x_adv.cpu(), attack.threat)
        x_stored = (stored.float() / 255).to(device)
        verify(attack.threat, x_source, x_stored)
        clean_pred, adv_pred = clean["pred"], predict(scored, x_stored)  # scored again on the stored pixels
    norm = perturbation_norm(x_source, x_stored, attack.threat.norm)
    return _AttackedShard(source, stored, y, clean_pred, adv_pred, norm)


def _class_folder(label: int, name: str) -> str:
    """``png/003-star``: the label prefix makes the alphabetical order ImageFolder uses the label order."""
    return f"png/{label:03d}-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _png_bytes(image: Tensor) -> bytes:
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracies of the stored images, with the evaluator's definitions (success over clean-correct samples)."""
    n = len(records)
    correct = [r for r in records if r["clean_pred"] == r["label"]]
    broken = [r for r in correct if r["success"]]
    return {
        "n": n,
        "clean_acc": len(correct) / n,
        "robust_acc": (len(correct) - len(broken)) / n,
        "adversarial_acc": sum(r["adv_pred"] == r["label"] for r in records) / n,
        "success_rate": len(broken) / len(correct) if correct else 0.0,
        "mean_norm": sum(r["norm"] for r in broken) / len(broken) if broken else None,
    }
