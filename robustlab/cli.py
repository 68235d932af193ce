"""``robustlab`` command line: thin commands that parse, build a config, call the library, render."""

from __future__ import annotations

import errno
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from robustlab.allocator import fix_mmap_threshold
from robustlab.cli_options import (
    BudgetType,
    EpsType,
    attack_args_option,
    defense_args_option,
    device_option,
    eot_samples_option,
    gate_options,
    input_options,
    model_option,
    num_classes_option,
    quiet_option,
    seed_option,
    steps_option,
    train_data_option,
    weights_option,
)
from robustlab.errors import CacheNotWritten, RobustlabError

__all__ = ["cli", "main"]


class _Group(click.Group):
    """A click group whose every failure is one line on stderr and a non-zero exit, never a traceback.

    Exit codes: 0 success; 1 a check failed (a regression against a baseline); 2 bad input or a
    clear error (unknown name, missing data, unavailable weights, a file that cannot be read or
    written...); 130 interrupted (Ctrl-C or SIGTERM).
    """

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        fix_mmap_threshold()  # before the first tensor: peak memory flat in the number of batches
        kwargs["standalone_mode"] = False
        try:
            with warnings.catch_warnings(), _terminate_as_interrupt():
                warnings.showwarning = _show_note
                code = super().main(*args, **kwargs)
        except click.ClickException as error:
            _fail(error.format_message(), error.exit_code)
        except RobustlabError as error:
            _fail(str(error), 2)
        except OSError as error:  # a file robustlab reads or writes that no handler closer to it expected
            _fail(_file_error(error), 2)
        except (KeyboardInterrupt, click.exceptions.Abort):
            _fail("interrupted", 130)
        sys.exit(code if isinstance(code, int) else 0)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI cancel, ``timeout``, ``docker stop``) unwinds like Ctrl-C: stores closed, "interrupted"."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_FIXES = {
    errno.ENOSPC: "free space on its disk and run again",
    errno.EDQUOT: "free space within your quota and run again",
    errno.EACCES: "make it accessible or choose another place",
    errno.EPERM: "make it accessible or choose another place",
    errno.EROFS: "choose a writable place",
}


def _file_error(error: OSError) -> str:
    """One line for a failed read or write: the file, the reason, what to do."""
    where = f" {error.filename}" if error.filename is not None else ""
    fix = _FIXES.get(error.errno or 0, "check the file and its disk, and run again")
    return f"cannot use{where}: {error.strerror or error}; {fix}"


_show_warning = warnings.showwarning


def _show_note(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """robustlab's own warnings (a cache that could not be written) are a ``note:`` line, not a Python warning."""
    if issubclass(category, CacheNotWritten):
        click.echo(f"robustlab: note: {' '.join(str(message).split())}", err=True)
    else:
        _show_warning(message, category, *args, **kwargs)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"robustlab: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
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
    from robustlab.data import DATASETS, register_builtin_datasets
    from robustlab.encoders import ENCODERS
    from robustlab.models import MODELS
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
@num_classes_option
@input_options
@click.option(
    "--attack",
    "attacks",
    multiple=True,
    default=("pgd",),
    show_default=True,
    metavar="NAME",
    help="Attack to run; repeat for several (each also gets a worst-case row).",
)
@click.option(
    "--defense",
    "defenses",
    multiple=True,
    default=("none",),
    show_default=True,
    metavar="NAME",
    help="Defense to put in front of the model; repeat for a grid.",
)
@click.option(
    "--eps",
    "eps",
    multiple=True,
    type=BudgetType(),
    help="Budget per norm in [0, 1] pixel units: linf:8/255, l2:0.5; repeat for a sweep or several norms. "
    "A bare 8/255 is L∞ only: L2 attacks keep their own budget unless given l2:EPS. "
    "Default: each attack's standard budget (L∞ 8/255, L2 0.5).",
)
@steps_option
@attack_args_option
@defense_args_option
@click.option(
    "--threat-mode",
    type=click.Choice(["both", "transfer", "adaptive"]),
    default="both",
    show_default=True,
    help="For defenses: attack the bare model (transfer), the whole pipeline (adaptive), or both.",
)
@click.option(
    "--data",
    default="synth",
    show_default=True,
    metavar="SPEC",
    help="synth[:k=v,...], cifar10[:ROOT], imagefolder:PATH.",
)
@train_data_option
@click.option(
    "--fit-data",
    default=None,
    metavar="SPEC",
    help="Data that universal and task attacks are fitted on (default: the train split of --data).",
)
@click.option(
    "--task",
    default="classification",
    show_default=True,
    metavar="NAME",
    help="The kind of victim (robustlab list: victims). downstream: evaluate each model as an encoder, scored "
    "through heads trained on its frozen features; captioning: each model is a captioner (--model captioner), "
    "attacked by caption attacks.",
)
@click.option(
    "--head",
    "heads",
    multiple=True,
    metavar="ATTRIBUTE",
    help="A downstream head per synthetic-world attribute (shape, color, background, size, position); "
    "repeat. Default: shape, color, background, size.",
)
@click.option(
    "--head-kind",
    type=click.Choice(["mlp", "linear"]),
    default="mlp",
    show_default=True,
    help="Downstream heads: a 3-layer MLP or a linear probe.",
)
@click.option(
    "--n",
    "-n",
    type=int,
    default=1000,
    show_default=True,
    help="Number of test samples: a seeded class-stratified subset of class folders, the first n of synth.",
)
@click.option(
    "--subset",
    default="stratified",
    show_default=True,
    metavar="stratified|first|list:FILE",
    help="Which n samples: class-stratified (class folders, CIFAR-10), the first n (RobustBench's protocol), or the "
    "first n a list file names (indices, or paths under an image folder: RobustBench's 5000 ImageNet images).",
)
@click.option(
    "--leaderboard",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR|FILE",
    help="Compare clean and AutoAttack accuracy with RobustBench model_info entries: a clone's model_info folder "
    "or one JSON; a `! leaderboard` line flags |z| > 2 (or > 0.5 pt on the full test set).",
)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Processes that read, decode and resize the next batches while the model computes (same results).",
)
@seed_option
@eot_samples_option
@device_option
@click.option(
    "--amp",
    type=click.Choice(["bf16"]),
    default=None,
    help="Run the model under bf16 autocast (GPU speed-up; clean predictions are checked against float32).",
)
@click.option(
    "--channels-last",
    is_flag=True,
    help="NHWC memory layout for model and images (faster convolutions on GPU, often on CPU).",
)
@click.option("--compile", is_flag=True, help="torch.compile the model (CUDA only).")
@click.option(
    "--diagnostics",
    type=click.Choice(["auto", "full", "off"]),
    default="auto",
    show_default=True,
    help="auto: the sanity gate and cheap masking probes on every model, attack probes behind defenses; "
    "full: the attack probes and the steps/restarts/loss convergence checks on every model too.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 2 when the sanity gate flags a model (chance-level accuracy, NaN logits, outputs that ignore the "
    "input), after writing the report.",
)
@click.option(
    "--draws",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Forward passes each input is scored over when the model is randomized (correct only if all are).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON report here (atomically).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep per-batch results in DIR/store.sqlite so an interrupted run can --resume.",
)
@click.option("--resume", is_flag=True, help="Continue the run stored in --run-dir.")
@click.option(
    "--shard",
    metavar="K/N",
    default=None,
    help="Compute only share K of N (batch b when b % N == K) into --run-dir, for robustlab merge; no report.",
)
@quiet_option
@gate_options
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Fail (exit 1) when a clean or robust accuracy of this report JSON drops by more than --tolerance.",
)
def eval_command(baseline: Path | None, tolerance: float, margin_sigmas: float, **options: Any) -> None:
    """Clean and robust accuracy for every model x defense x attack asked for.

    \b
    Examples:
      robustlab eval
      robustlab eval --model resnet50 --weights synth --attack pgd --attack fgsm
      robustlab eval --attack pgd --eps 2/255 --eps 8/255 --defense raw_isp --out run.json
    """
    from robustlab.preflight import check_model_names, check_not_baseline

    check_not_baseline(options["out"], baseline)
    if options["task"] == "classification":  # before torch is imported: an empty hub cache fails in a second
        check_model_names(options["models"], options["weights"])

    from robustlab.commands import gate, run_eval
    from robustlab.gate import check_same_scope, load_baseline

    accepted = load_baseline(baseline) if baseline is not None else None  # refuse a bad baseline before the run
    if accepted is not None:
        check_same_scope({key: options[key] for key in ("data", "n", "task")}, accepted.config)
    report = run_eval(baseline=accepted, **options)
    if accepted is not None:
        gate(report, accepted, tolerance=tolerance, margin_sigmas=margin_sigmas)


@cli.command("merge", params=[param for param in eval_command.params if param.name != "shard"])
@click.argument("shard_dirs", metavar="SHARD_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
def merge_command(shard_dirs: tuple[Path, ...], **options: Any) -> None:
    """Report over the finished `eval --shard K/N` runs in SHARD_DIRs, as one process would have.

    Pass the options every shard was run with (a shard of other options is refused); no attack runs again.
    --run-dir, if given, keeps the merged store.

    \b
    Example:
      robustlab eval --attack pgd --n 1000 --shard 0/2 --run-dir s0
      robustlab eval --attack pgd --n 1000 --shard 1/2 --run-dir s1
      robustlab merge s0 s1 --attack pgd --n 1000 --out run.json
    """
    click.get_current_context().invoke(eval_command, **options, shard=None, merge=shard_dirs)


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
    from robustlab.commands import gate
    from robustlab.gate import load_baseline
    from robustlab.report import Report

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
    options = experiment_options(experiment, eval_command, ctx)
    if options["out"] is None:
        options["out"] = Path(f"{experiment.stem}.json")
    ctx.invoke(eval_command, **options)


@cli.command("report")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Output file (atomic)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md", "csv", "png", "robustbench", "jsonl", "samples-csv"]),
    default=None,
    help="html (self-contained page), md, csv (one line per row), png (robustness curves), robustbench (a "
    "model_info entry that --leaderboard reads), jsonl or samples-csv (one record per sample). Default: from "
    "-o's suffix, else html.",
)
@click.option(
    "--examples",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Adversarial examples in the HTML image grid, recomputed from the report's config (0: none).",
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
    from robustlab.commands import render_report

    render_report(source, out=out, fmt=fmt, examples=0 if no_examples else examples)


@cli.command("generate")
@model_option()
@weights_option
@num_classes_option
@input_options
@click.option("--attack", default="pgd", show_default=True, metavar="NAME", help="A per-input attack.")
@click.option(
    "--eps", type=BudgetType(), default=None, help="Budget, linf:8/255 or l2:0.5 (bare: L∞; default: the attack's)."
)
@steps_option
@attack_args_option
@click.option("--defense", default="none", show_default=True, metavar="NAME", help="Defense in front of the model.")
@defense_args_option
@click.option(
    "--threat-mode",
    type=click.Choice(["adaptive", "transfer"]),
    default="adaptive",
    show_default=True,
    help="For defenses: attack the whole pipeline (adaptive) or the bare model (transfer).",
)
@click.option("--data", default="synth", show_default=True, metavar="SPEC", help="Source dataset, as for eval.")
@click.option("--split", default="test", show_default=True, help="Split of the source dataset.")
@train_data_option
@click.option(
    "--n",
    "-n",
    type=int,
    default=1000,
    show_default=True,
    help="Number of source samples: class-stratified (seeded) where the data knows its labels, else the first n.",
)
@click.option("--shard-size", type=int, default=256, show_default=True, help="Samples per shard (unit of resume).")
@click.option(
    "--shard",
    metavar="K/N",
    default=None,
    help="Write only the shards s with s % N == K (one job of N, into the same --out); no manifest.",
)
@seed_option
@eot_samples_option
@device_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="New or empty folder, or an interrupted generation of the same config to resume.",
)
@quiet_option
def generate_command(**options: Any) -> None:
    """Write an adversarial dataset: PNG class folders, lossless safetensors shards and a manifest.

    Images are stored on the 8-bit grid inside the budget and predictions are measured on the stored
    pixels. Read it back with --data adv:OUT.

    \b
    Example:
      robustlab generate --attack pgd --eps 8/255 --n 1000 --out adv-pgd
      robustlab eval --data adv:adv-pgd --attack fgsm
    """
    from robustlab.commands import run_generate

    run_generate(**options)


@cli.command("train")
@model_option(text="Registered architecture.")
@click.option("--data", default="synth", show_default=True, metavar="SPEC", help="Dataset; its train split is used.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Default: the dataset's classes.")
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Default: 32 embedded, 224 torchvision.")
@click.option(
    "--adversarial",
    type=click.Choice(["none", "pgd"]),
    default="none",
    show_default=True,
    help="pgd: PGD adversarial training (Madry et al. 2018) within --eps.",
)
@click.option("--eps", type=EpsType(), default="8/255", show_default=True, help="L∞ budget of adversarial training.")
@click.option(
    "--attack-steps",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="PGD steps per training batch (1: FGSM with random start, 'fast AT').",
)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer steps (default 800 / 400).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (AdamW, one cycle).")
@click.option("--eval-n", type=click.IntRange(min=1), default=1000, show_default=True, help="Test samples scored.")
@seed_option
@device_option
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Safetensors file to write."
)
@quiet_option
def train_command(**options: Any) -> None:
    """Train a model on a dataset, optionally adversarially; load it back with eval --weights PATH.

    \b
    Examples:
      robustlab train --model smallcnn --adversarial pgd --out smallcnn-at.safetensors
      robustlab eval --model smallcnn --weights smallcnn-at.safetensors
    """
    from robustlab.commands import run_train

    run_train(**options)


@cli.command("train-defense")
@click.argument("defense", metavar="NAME")
@defense_args_option
@click.option("--data", default="synth", show_default=True, metavar="SPEC", help="Dataset; its train split is used.")
@model_option(text="The classifier to defend (sets image size).")
@weights_option
@num_classes_option
@input_options
@seed_option
@device_option
@quiet_option
def train_defense_command(**options: Any) -> None:
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
    from robustlab.commands import run_train_defense

    run_train_defense(**options)


@cli.command("fool")
@model_option(text="Registered architecture.")
@weights_option
@num_classes_option
@click.option(
    "--encoding",
    type=click.Choice(["cppn", "direct", "gradient"]),
    default="cppn",
    show_default=True,
    help="cppn / direct: evolution with MAP-Elites (scores only); gradient: gradient ascent (white box).",
)
@click.option(
    "--generations",
    type=click.IntRange(min=1),
    default=None,
    help="Generations (evolution) or iterations (gradient); default 400 / 500.",
)
@click.option("--population", type=click.IntRange(min=2), default=64, show_default=True, help="Children a generation.")
@seed_option
@device_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for images/, grid.png and fooling.json; a rerun into it resumes the evolution.",
)
@quiet_option
def fool_command(**options: Any) -> None:
    """Make fooling images: one unrecognisable image per class, classified with near certainty.

    Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled", CVPR 2015.

    \b
    Examples:
      robustlab fool --out fooling/
      robustlab fool --encoding gradient --out fooling-gradient/
      robustlab fool --model resnet50 --encoding cppn --generations 5000 --population 400 --out fooling-r50/
    """
    from robustlab.commands import run_fool

    run_fool(**options)


def main() -> NoReturn:
    """Console-script entry point."""
    cli.main(prog_name="robustlab")
