"""``robustlab`` command line, in two thin layers: the click commands here parse flags into one typed options object
each (:mod:`~robustlab.cli.configs`; shared flags are declared once in :mod:`~robustlab.cli.options` and
:mod:`~robustlab.cli.eval_options`), and :mod:`~robustlab.cli.commands` runs them against the library and renders.
:mod:`~robustlab.cli.errors` turns every robustlab error into one line and an exit code. Importing this package
does not import torch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import click

from robustlab.cli.configs import EvalOptions, FoolOptions, GenerateOptions, TrainDefenseOptions, TrainOptions
from robustlab.cli.errors import OneLineErrors
from robustlab.cli.eval_options import eval_options
from robustlab.cli.options import (
    REPORT_FORMATS,
    attack_args_option,
    attack_option,
    batch_size_option,
    choice_option,
    count_option,
    data_option,
    defense_args_option,
    defense_option,
    device_option,
    eot_samples_option,
    eps_option,
    gate_options,
    image_size_option,
    input_options,
    model_option,
    n_option,
    num_classes_option,
    out_option,
    quiet_option,
    seed_option,
    shard_option,
    steps_option,
    threat_mode_option,
    train_data_option,
    weights_option,
)

__all__ = ["cli", "main"]

_TRAIN_SPLIT = "Dataset; its train split is used."


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="robustlab")
def cli() -> None:
    """Adversarial robustness of PyTorch image models: attacks, defenses, reports.

    Every command works offline on the embedded synthetic world by default.
    """


@cli.command("list")
def list_command() -> None:
    """List every model, encoder, dataset, attack, defense, victim (--task) and task with a one-line summary."""
    import robustlab.attacks
    import robustlab.defenses
    from robustlab.data import register_builtin_datasets
    from robustlab.data.base import DATASETS
    from robustlab.encoders import ENCODERS
    from robustlab.models.loading import MODELS
    from robustlab.tasks import TASKS
    from robustlab.victims import VICTIMS

    register_builtin_datasets()
    registries = (
        MODELS, ENCODERS, DATASETS, robustlab.attacks.ATTACKS, robustlab.defenses.DEFENSES, VICTIMS, TASKS
    )  # fmt: skip
    for registry in (registry for registry in registries if registry.names()):
        click.echo(f"{registry.kind}s:")
        width = max(len(name) for name in registry.names())
        for entry in registry.entries():
            kind = getattr(entry.factory, "kind", None)
            suffix = f" [{kind}]" if kind is not None and str(kind) != "perturbation" else ""
            per_batch = entry.tags.get("stochastic") and not getattr(entry.factory, "per_sample_streams", True)
            if per_batch and str(kind) != "generative":  # the others are applied batch by batch
                suffix += " [randomness per batch: per-sample results may change with --batch-size]"
            click.echo(f"  {entry.name.ljust(width)}  {entry.summary}{suffix}")


@cli.command("eval")
@model_option(multiple=True, text="Architecture (robustlab list) or package.module:factory; repeat for a grid.")
@weights_option
@num_classes_option()
@input_options
@eval_options
def eval_command(**params: Any) -> None:
    """Clean and robust accuracy for every model x defense x attack asked for.

    \b
    Examples:
      robustlab eval
      robustlab eval --model resnet50 --weights synth --attack pgd --attack fgsm
      robustlab eval --attack pgd --eps 2/255 --eps 8/255 --defense raw_isp --out run.json
    """
    _evaluate(EvalOptions(**params))


def _evaluate(options: EvalOptions) -> None:
    """Run ``eval``, refusing first what needs no torch: an empty hub cache fails in a second."""
    from robustlab.preflight import check_eval_names

    check_eval_names(options)
    from robustlab.cli.commands import run_eval

    run_eval(options)


@cli.command("merge", params=[param for param in eval_command.params if param.name != "shard"])
@click.argument("shard_dirs", metavar="SHARD_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
def merge_command(shard_dirs: tuple[Path, ...], **params: Any) -> None:
    """Report over the finished `eval --shard K/N` runs in SHARD_DIRs, as one process would have.

    Pass the options every shard was run with (a shard of other options is refused); no attack runs again.
    --run-dir, if given, keeps the merged store.

    \b
    Example:
      robustlab eval --attack pgd --n 1000 --shard 0/2 --run-dir s0
      robustlab eval --attack pgd --n 1000 --shard 1/2 --run-dir s1
      robustlab merge s0 s1 --attack pgd --n 1000 --out run.json
    """
    _evaluate(EvalOptions(**params, shard=None, merge=shard_dirs))


@cli.command("compare")
@click.argument("new", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("baseline", type=click.Path(dir_okay=False, path_type=Path))
@gate_options
def compare_command(new: Path, baseline: Path, tolerance: float, margin_sigmas: float) -> None:
    """Gate NEW report JSON against BASELINE: exit 1 naming every row whose accuracy fell too far.

    \b
    Example (a CI step):
      robustlab compare run.json baselines/synth.json --tolerance 0.02 --margin-sigmas 2
    """
    from robustlab.cli.commands import gate
    from robustlab.reports.gate import load_baseline
    from robustlab.reports.report import Report

    accepted = load_baseline(baseline)
    gate(Report.from_json(new), accepted, tolerance=tolerance, margin_sigmas=margin_sigmas)


@cli.command("run")
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def run_command(ctx: click.Context, experiment: Path) -> None:
    """Run the grid an EXPERIMENT TOML file declares; its keys are the eval options (models, attacks, eps, out...).

    EXPERIMENT is a path, a path relative to the project, or a name in its experiments/ folder. The report
    goes to `out`, by default NAME.json in the working directory.

    \b
    Examples:
      robustlab run experiments/synth_pgd_sweep.toml
      robustlab run synth_pgd_sweep
    """
    from robustlab.experiment import experiment_options, find_experiment

    experiment = find_experiment(experiment)
    options = EvalOptions(**experiment_options(experiment, eval_command, ctx))
    _evaluate(options if options.out is not None else replace(options, out=Path(f"{experiment.stem}.json")))


@cli.command("report")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@out_option("Output file (atomic).", required=False, short=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(REPORT_FORMATS),
    default=None,
    help="html (self-contained page), md, csv (one line per row), png (robustness curves), robustbench (a "
    "model_info entry that --leaderboard reads), jsonl or samples-csv (one record per sample). Default: from "
    "-o's suffix, else html.",
)
@count_option(
    "--examples",
    4,
    "Adversarial examples in the HTML image grid, recomputed from the report's config (0: none).",
    minimum=0,
)
@click.option("--no-examples", is_flag=True, help="Same as --examples 0 (no model or data needed).")
def report_command(source: Path, out: Path | None, fmt: str | None, examples: int, no_examples: bool) -> None:
    """Render a report JSON as HTML (table, curves, examples), Markdown, CSV, a curves PNG, or export it.

    \b
    Examples:
      robustlab report run.json -o report.html
      robustlab report run.json --format md
      robustlab report run.json --format robustbench -o MyModel.json
    """
    from robustlab.cli.commands import render_report

    render_report(source, out=out, fmt=fmt, examples=0 if no_examples else examples)


@cli.command("generate")
@model_option()
@weights_option
@num_classes_option()
@input_options
@attack_option(multiple=False)
@eps_option()
@steps_option()
@attack_args_option
@defense_option(multiple=False)
@defense_args_option
@threat_mode_option(both=False)
@data_option("Source dataset, as for eval.")
@click.option("--split", default="test", show_default=True, help="Split of the source dataset.")
@train_data_option
@n_option("Number of source samples: class-stratified (seeded) where the data knows its labels, else the first n.")
@click.option("--shard-size", type=int, default=256, show_default=True, help="Samples per shard (unit of resume).")
@shard_option("Write only the shards s with s % N == K (one job of N, into the same --out); no manifest.")
@seed_option
@eot_samples_option
@device_option
@out_option("New or empty folder, or an interrupted generation of the same config to resume.", folder=True)
@quiet_option
def generate_command(**params: Any) -> None:
    """Write an adversarial dataset: PNG class folders, lossless safetensors shards and a manifest.

    Images are stored on the 8-bit grid inside the budget and predictions are measured on the stored
    pixels. Read it back with --data adv:OUT.

    \b
    Example:
      robustlab generate --attack pgd --eps 8/255 --n 1000 --out adv-pgd
      robustlab eval --data adv:adv-pgd --attack fgsm
    """
    from robustlab.cli.commands import run_generate

    run_generate(GenerateOptions(**params))


@cli.command("train")
@model_option(text="Registered architecture.")
@data_option(_TRAIN_SPLIT)
@num_classes_option("Default: the dataset's classes.")
@image_size_option("Default: 32 embedded, 224 torchvision.")
@choice_option(
    "--adversarial",
    ["none", "pgd", "trades"],
    "pgd: PGD adversarial training (Madry et al. 2018) within --eps; trades: TRADES (Zhang et al. 2019, beta 6).",
)
@eps_option(training=True)
@count_option("--attack-steps", 2, "PGD steps per training batch (1: FGSM with random start, 'fast AT').")
@steps_option("Optimizer steps (default 800 / 400).")
@batch_size_option(128, positive=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (AdamW, one cycle).")
@count_option("--eval-n", 1000, "Test samples scored.")
@seed_option
@device_option
@out_option("Safetensors file to write.")
@quiet_option
def train_command(**params: Any) -> None:
    """Train a model on a dataset, optionally adversarially; load it back with eval --weights PATH.

    \b
    Examples:
      robustlab train --model smallcnn --adversarial pgd --out smallcnn-at.safetensors
      robustlab eval --model smallcnn --weights smallcnn-at.safetensors
    """
    from robustlab.cli.commands import run_train

    run_train(TrainOptions(**params))


@cli.command("train-defense")
@click.argument("defense", metavar="NAME")
@defense_args_option
@data_option(_TRAIN_SPLIT)
@model_option(text="The classifier to defend (sets image size).")
@weights_option
@num_classes_option()
@input_options
@seed_option
@device_option
@quiet_option
def train_defense_command(**params: Any) -> None:
    """Train a learned defense such as raw_isp ahead of time, into the cache that eval and generate read.

    eval trains a defense on first use; this does it ahead of time, for instance on a large image
    folder. A later eval with the same defense arguments, model, --train-data and --seed loads it.

    \b
    Examples:
      robustlab train-defense raw_isp
      robustlab train-defense raw_isp --model resnet50 --data imagefolder:~/imagenet/train
      robustlab eval --model resnet50 --defense raw_isp --train-data imagefolder:~/imagenet/train \\
        --data imagefolder:~/imagenet/val
    """
    from robustlab.cli.commands import run_train_defense

    run_train_defense(TrainDefenseOptions(**params))


@cli.command("fool")
@model_option(text="Registered architecture.")
@weights_option
@num_classes_option()
@choice_option(
    "--encoding",
    ["cppn", "direct", "gradient"],
    "cppn / direct: evolution with MAP-Elites (scores only); gradient: gradient ascent (white box).",
)
@click.option(
    "--generations",
    type=click.IntRange(min=1),
    default=None,
    help="Generations (evolution) or iterations (gradient); default 400 / 500.",
)
@count_option("--population", 64, "Children a generation.", minimum=2)
@seed_option
@device_option
@out_option("Folder for images/, grid.png and fooling.json; a rerun into it resumes the evolution.", folder=True)
@quiet_option
def fool_command(**params: Any) -> None:
    """Make fooling images: one unrecognisable image per class, classified with near certainty.

    Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled", CVPR 2015.

    \b
    Examples:
      robustlab fool --out fooling/
      robustlab fool --encoding gradient --out fooling-gradient/
      robustlab fool --model resnet50 --encoding cppn --generations 5000 --population 400 --out fooling-r50/
    """
    from robustlab.cli.commands import run_fool

    run_fool(FoolOptions(**params))


def main() -> NoReturn:
    """Console-script entry point."""
    cli.main(prog_name="robustlab")
