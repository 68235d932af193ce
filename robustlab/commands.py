"""What the CLI commands do once their options are parsed: build a config, run it, render the result.

Kept apart from :mod:`robustlab.cli` so the click definitions stay declarative and the work stays testable.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
import torch

from robustlab.cli_options import build_specs
from robustlab.data import iterate_batches
from robustlab.distributed import Shard, init_from_env
from robustlab.errors import ConfigError
from robustlab.evaluate import EvalConfig, Evaluator, run_config_hash
from robustlab.models import ModelSpec
from robustlab.report import Report, format_table
from robustlab.store import MemoryStore, RunStore, SqliteStore

__all__ = ["resolve_device", "run_eval", "run_train", "run_train_defense"]


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; anything else is checked."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but CUDA is not available")
    return str(device)


def build_config(options: dict[str, Any]) -> EvalConfig:
    """The :class:`EvalConfig` that ``robustlab eval``'s options describe."""
    import robustlab.attacks
    import robustlab.defenses

    modes = ("transfer", "adaptive") if options["threat_mode"] == "both" else (options["threat_mode"],)
    attacks = build_specs(
        robustlab.attacks.ATTACKS,
        options["attacks"],
        options["attack_args"],
        shared={"steps": options["steps"]},
        sweep=options["eps"],
    )
    defenses = build_specs(robustlab.defenses.DEFENSES, options["defenses"], options["defense_args"])
    from robustlab.defense import ThreatMode

    return EvalConfig(
        models=tuple(ModelSpec(name, options["weights"], options["num_classes"]) for name in options["models"]),
        defenses=defenses,
        attacks=attacks,
        data=options["data"],
        train_data=options["train_data"],
        n=options["n"],
        batch_size=options["batch_size"],
        seed=options["seed"],
        threat_modes=tuple(ThreatMode(mode) for mode in modes),
        eot_samples=options["eot_samples"],
        device=resolve_device(options["device"]),
        amp=options["amp"],
        channels_last=options["channels_last"],
        compile=options["compile"],
    )


def open_store(run_dir: Path | None, config: EvalConfig, *, resume: bool) -> RunStore:
    """A SQLite store under ``run_dir``, or an in-memory one."""
    if run_dir is None:
        if resume:
            raise ConfigError("--resume needs --run-dir: the directory of the run to continue")
        return MemoryStore()
    return SqliteStore(run_dir / "store.sqlite", config_hash=run_config_hash(config), resume=resume)


def _open_sharded_store(run_dir: Path | None, config: EvalConfig, *, resume: bool, shard: Shard) -> RunStore:
    """Rank 0 creates (or checks) the store first; the other ranks then join the same file, or fail with it."""
    if shard.world_size == 1:
        return open_store(run_dir, config, resume=resume)
    import torch.distributed as dist

    store: RunStore | None = None
    outcome: list[str | None] = [None]
    if shard.is_main:
        try:
            store = open_store(run_dir, config, resume=resume)
        except ConfigError as error:
            outcome[0] = str(error)
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise ConfigError(outcome[0])
    return store if store is not None else open_store(run_dir, config, resume=run_dir is not None)


def run_eval(**options: Any) -> Report:
    """Run ``robustlab eval``: print the table, write the report if asked."""
    config = build_config(options)
    out: Path | None = options["out"]
    if out is not None and not out.parent.exists():
        raise ConfigError(f"cannot write the report: folder {out.parent} does not exist")
    shard = init_from_env(config.device)
    store = _open_sharded_store(options["run_dir"], config, resume=options["resume"], shard=shard)
    report = Evaluator(store, progress=not options["quiet"] and shard.is_main, shard=shard).run(config)
    if not shard.is_main:
        return report
    click.echo(format_table(report.rows))
    for fidelity in report.fidelity:
        click.echo(f"= {fidelity.describe()}")
    for diagnostic in report.diagnostics:
        click.echo(f"! {diagnostic.code}: {diagnostic.message}")
    if out is not None:
        report.to_json(out)
        click.echo(f"report written to {out}", err=True)
    return report


def run_train(**options: Any) -> float:
    """Run ``robustlab train``: train a registered model on a dataset, write safetensors, return clean accuracy.

    The model is built as ``load_model(name, weights="random")`` builds it, so the file loads back with
    ``--weights PATH`` under the same normalization.
    """
    from robustlab.cache import save_weights
    from robustlab.data import load_dataset
    from robustlab.models import MODELS, load_model
    from robustlab.train import TrainConfig, train_classifier

    out: Path = options["out"]
    if not out.parent.exists():
        raise ConfigError(f"cannot write the weights: folder {out.parent} does not exist")
    device = torch.device(resolve_device(options["device"]))
    size = options["image_size"] or (32 if MODELS.get(options["model"]).tags["family"] == "embedded" else 224)
    train = load_dataset(options["data"], split="train", image_size=size)
    classes = options["num_classes"] or train.num_classes
    model = load_model(options["model"], weights="random", num_classes=classes, image_size=size, progress=False)
    config = TrainConfig(
        arch=options["model"],
        num_classes=classes,
        image_size=model.input_size,
        seed=options["seed"],
        steps=options["steps"],
        batch_size=options["batch_size"],
        lr=options["lr"],
        adversarial=options["adversarial"] == "pgd",
        eps=options["eps"],
        attack_steps=options["attack_steps"],
    )
    train_classifier(model.to(device), config, data=train, progress=not options["quiet"])
    save_weights(out, model.net.state_dict(), metadata={"config": json.dumps(dataclasses.asdict(config.resolved()))})
    test = load_dataset(options["data"], split="test", image_size=model.input_size)
    correct = 0
    indices = torch.arange(min(len(test), options["eval_n"]))
    for _, x, y in iterate_batches(test, indices, options["batch_size"]):
        with torch.inference_mode():
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    accuracy = correct / max(len(indices), 1)
    click.echo(f"clean accuracy {accuracy:.2%} on {len(indices)} test samples of {options['data']}")
    click.echo(f"weights written to {out}", err=True)
    return accuracy


def run_train_defense(**options: Any) -> None:
    """Run ``robustlab train-defense``: train a learned defense into the cache that ``eval`` and ``generate`` read."""
    import robustlab.defenses
    from robustlab.defense import Defense
    from robustlab.evaluate import prepare_defense
    from robustlab.models import load_model

    name = options["defense"]
    (spec,) = build_specs(robustlab.defenses.DEFENSES, [name], options["defense_args"])
    defense = spec.build(robustlab.defenses.DEFENSES)
    if type(defense).fit is Defense.fit:
        raise ConfigError(f"defense {name} learns nothing, so there is nothing to train")
    quiet = options["quiet"]
    model = load_model(
        options["model"], weights=options["weights"], num_classes=options["num_classes"], progress=not quiet
    ).to(resolve_device(options["device"]))
    prepare_defense(defense, model, options["data"], seed=options["seed"], progress=not quiet)
    where = getattr(defense, "weights_path", None)
    click.echo(f"{spec.label()} trained on the train split of {options['data']}" + (f": {where}" if where else ""))
    click.echo(
        f"eval and generate reuse it with --defense {name} (and the same --defense-arg), --model {options['model']}, "
        f"--train-data {options['data']} and --seed {options['seed']}",
        err=True,
    )
