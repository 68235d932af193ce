"""What each CLI command does once its options are parsed: build a config, run it, render the result.

:mod:`robustlab.cli` holds the declarative click layer (it imports nothing heavy); this module is the
second layer, one function per command, and the only place besides it that prints. The library
modules never print.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import click
import torch

from robustlab.allocator import steady_shapes
from robustlab.cache import atomic_write
from robustlab.cli.configs import EvalOptions, FoolOptions, GenerateOptions, TrainDefenseOptions, TrainOptions
from robustlab.cli.options import REPORT_FORMATS, build_specs
from robustlab.data.base import iterate_batches
from robustlab.distributed import Shard, init_from_env, parse_shard
from robustlab.errors import CacheNotWritten, ConfigError, DataError
from robustlab.evaluate import EvalConfig, Evaluator, run_config_hash
from robustlab.leaderboard import check_leaderboard, describe_comparison
from robustlab.preflight import check_eval
from robustlab.reports.exports import robustbench_entry, samples_csv, samples_jsonl
from robustlab.reports.gate import check_same_grid, check_same_scope, compare_reports, format_regressions, load_baseline
from robustlab.reports.report import Report, format_table
from robustlab.shards import check_shard_run, copy_shards, mark_finished
from robustlab.store import MemoryStore, RunStore, SqliteStore
from robustlab.victims.downstream import DEFAULT_HEADS, DownstreamOptions

__all__ = [
    "REPORT_FORMATS",
    "gate",
    "render_report",
    "resolve_device",
    "run_eval",
    "run_fool",
    "run_generate",
    "run_train",
    "run_train_defense",
    "write_output",
]


class _CheckFailed(click.ClickException):
    """A regression against a baseline: exit 1, which the README reserves for a failed check."""

    exit_code = 1


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
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name} requested but MPS (Apple GPU) is not available here; use cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name}: robustlab runs on cpu, cuda[:N] or mps, not {device.type}")
    return str(device)


_DIAGNOSTICS: dict[str, bool | str] = {"auto": True, "off": False, "full": "full"}


def build_config(options: EvalOptions) -> EvalConfig:
    """The :class:`EvalConfig` that ``robustlab eval``'s options describe."""
    from robustlab.defense import ThreatMode

    modes = ("transfer", "adaptive") if options.threat_mode == "both" else (options.threat_mode,)
    attacks, defenses = options.specs(options.attacks, options.defenses, sweep=options.eps)
    return EvalConfig(
        models=tuple(options.spec(name) for name in dict.fromkeys(options.models)),
        defenses=defenses,
        attacks=attacks,
        data=options.data,
        train_data=options.train_data,
        fit_data=options.fit_data,
        n=options.n,
        subset=options.subset,
        batch_size=options.batch_size,
        seed=options.seed,
        threat_modes=tuple(ThreatMode(mode) for mode in modes),
        eot_samples=options.eot_samples,
        draws=options.draws,
        diagnostics=_DIAGNOSTICS[options.diagnostics],
        device=resolve_device(options.device),
        amp=options.amp,
        channels_last=options.channels_last,
        compile=options.compile,
        task=options.task,
        victim_options=(DownstreamOptions(heads=options.heads or DEFAULT_HEADS, head_kind=options.head_kind),),
    )


def open_store(run_dir: Path | None, config: EvalConfig, *, resume: bool) -> RunStore:
    """A SQLite store under ``run_dir``, or an in-memory one."""
    if run_dir is None:
        if resume:
            raise ConfigError("--resume needs --run-dir: the directory of the run to continue")
        return MemoryStore()
    return SqliteStore(run_dir / "store.sqlite", config_hash=run_config_hash(config), resume=resume)


def _open_sharded_store(run_dir: Path | None, config: EvalConfig, *, resume: bool, shard: Shard) -> RunStore:
    """Under torchrun each rank keeps its own store, ``run_dir/rank-R-of-N`` (no SQLite file is shared across
    nodes) and rank 0 merges the units in memory; a rank that cannot open its store stops them all with its error."""
    if shard.world_size == 1 or shard.independent:
        return open_store(run_dir, config, resume=resume)
    import torch.distributed as dist

    own = run_dir / f"rank-{shard.rank}-of-{shard.world_size}" if run_dir is not None else None
    store: RunStore | None = None
    error: str | None = None
    try:
        store = open_store(own, config, resume=resume)
    except (ConfigError, DataError) as failure:
        error = str(failure)
    errors: list[str | None] = [None] * shard.world_size
    dist.all_gather_object(errors, error)
    failed = next((message for message in errors if message is not None), None)
    if store is None or failed is not None:
        raise ConfigError(failed or "no run store")
    return store


def run_eval(options: EvalOptions) -> Report:
    """Run ``robustlab eval``: print the table, write the report if asked, gate it against ``--baseline``.

    The baseline is read first and must cover the same scope and grid: that is checked from the options
    and the config, before any model is loaded or attacked.
    """
    baseline = load_baseline(options.baseline) if options.baseline is not None else None
    if baseline is not None:
        check_same_scope({"data": options.data, "n": options.n, "task": options.task}, baseline.config)
    report = _run_eval(options, baseline)
    if baseline is not None:
        gate(report, baseline, tolerance=options.tolerance, margin_sigmas=options.margin_sigmas)
    return report


def _run_eval(options: EvalOptions, baseline: Report | None) -> Report:
    """The run itself: check, build the config, evaluate (a shard or the whole), print and write the report."""
    notes = check_eval(options)
    config = build_config(options)
    if baseline is not None:
        from robustlab.grid import planned_rows

        check_same_grid(planned_rows(config), baseline)
    out = options.out
    if options.shard:
        check_shard_run(options.run_dir, out, gated=baseline is not None)
        shard = parse_shard(options.shard)
    else:
        shard = init_from_env(config.device)
    store = _open_sharded_store(options.run_dir, config, resume=options.resume, shard=shard)
    if options.merge:
        copy_shards(options.merge, run_config_hash(config), store)
    artifacts = out.with_suffix("") if out is not None else None  # run.json -> run.<attack>.safetensors
    progress = not options.quiet and (shard.is_main or shard.independent)
    evaluator = Evaluator(store, progress=progress, shard=shard, artifacts=artifacts, workers=options.workers)
    report = evaluator.run(config)
    if shard.independent and options.run_dir is not None:  # check_shard_run refused a shard without one
        mark_finished(options.run_dir, shard, run_config_hash(config))
        click.echo(
            f"shard {shard.rank}/{shard.world_size} stored in {options.run_dir}: robustlab merge reports", err=True
        )
    if not shard.is_main:
        return report
    if options.leaderboard is not None:
        report = check_leaderboard(report, options.leaderboard)
    click.echo(format_table(report.rows))
    for line in report.inputs:
        click.echo(f"= {line}")
    for fidelity in report.fidelity:
        click.echo(f"= {fidelity.describe()}")
    for comparison in report.leaderboard:
        click.echo(f"= leaderboard {describe_comparison(comparison)}")
    for diagnostic in report.diagnostics:
        click.echo(f"! {diagnostic.code}: {diagnostic.message}")
    for note in notes:
        click.echo(f"robustlab: note: {note}", err=True)
    if out is not None:
        report.to_json(out)
        click.echo(f"report written to {out}", err=True)
    flagged = sorted({f"{d.model} ({d.code})" for d in report.diagnostics if d.code.startswith("sanity.")})
    if options.strict and flagged:
        raise ConfigError(f"--strict: the sanity gate flagged {', '.join(flagged)} (see the lines under the table)")
    return report


def run_train(options: TrainOptions) -> float:
    """Run ``robustlab train``: train a registered model on a dataset, write safetensors, return clean accuracy.

    The model is built as ``load_model(name, weights="random")`` builds it, so the file loads back with
    ``--weights PATH`` under the same normalization.
    """
    from robustlab.cache import save_weights
    from robustlab.data import load_dataset
    from robustlab.models.loading import MODELS, load_model
    from robustlab.preflight import check_output_file
    from robustlab.train import TrainConfig, train_classifier

    out = options.out
    check_output_file(out, "the weights")
    device = torch.device(resolve_device(options.device))
    size = options.image_size or (32 if MODELS.get(options.model).tags["family"] == "embedded" else 224)
    train = load_dataset(options.data, split="train", image_size=size)
    classes = options.num_classes or train.num_classes
    model = load_model(options.model, weights="random", num_classes=classes, image_size=size, progress=False)
    config = TrainConfig(
        arch=options.model,
        num_classes=classes,
        image_size=model.input_size,
        seed=options.seed,
        steps=options.steps,
        batch_size=options.batch_size,
        lr=options.lr,
        adversarial=options.adversarial != "none",
        trades_beta=6.0 if options.adversarial == "trades" else 0.0,
        eps=options.eps,
        attack_steps=options.attack_steps,
    )
    train_classifier(model.to(device), config, data=train, progress=not options.quiet)
    save_weights(out, model.net.state_dict(), metadata={"config": json.dumps(dataclasses.asdict(config.resolved()))})
    test = load_dataset(options.data, split="test", image_size=model.input_size)
    correct = 0
    indices = torch.arange(min(len(test), options.eval_n))
    for _, x, y in iterate_batches(test, indices, options.batch_size):
        with torch.inference_mode():
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    accuracy = correct / max(len(indices), 1)
    click.echo(f"clean accuracy {accuracy:.2%} on {len(indices)} test samples of {options.data}")
    click.echo(f"weights written to {out}", err=True)
    return accuracy


def run_train_defense(options: TrainDefenseOptions) -> None:
    """Run ``robustlab train-defense``: train a learned defense into the cache that ``eval`` and ``generate`` read."""
    import robustlab.defenses
    from robustlab.defense import Defense
    from robustlab.inputs import load_classifier
    from robustlab.victims import prepare_defense

    name = options.defense
    (spec,) = build_specs(robustlab.defenses.DEFENSES, [name], options.defense_args)
    defense = spec.build(robustlab.defenses.DEFENSES)
    if type(defense).fit is Defense.fit:
        raise ConfigError(f"defense {name} learns nothing, so there is nothing to train")
    progress = not options.quiet
    model = load_classifier(options.spec(options.model), options.data, progress=progress)
    model = model.to(resolve_device(options.device))
    try:
        with warnings.catch_warnings():  # this command exists to fill the cache: a write it cannot do fails it
            warnings.simplefilter("error", CacheNotWritten)
            prepare_defense(defense, model, options.data, seed=options.seed, progress=progress)
    except CacheNotWritten as error:
        raise DataError(str(error).replace("is kept in memory for this run only", "is lost")) from None
    where = getattr(defense, "weights_path", None)
    click.echo(f"{spec.label()} trained on the train split of {options.data}" + (f": {where}" if where else ""))
    click.echo(
        f"eval and generate reuse it with --defense {name} (and the same --defense-arg), --model {options.model}, "
        f"--train-data {options.data} and --seed {options.seed}",
        err=True,
    )


def gate(report: Report, baseline: Report, *, tolerance: float, margin_sigmas: float) -> None:
    """Print the gate's verdict; exit 1 when any row regressed (the documented "a check failed" code).

    The rows that regressed go to stdout, a failed verdict to stderr as the one ``robustlab: error:`` line.

    Under ``torchrun`` only rank 0 judges: the other ranks return a report without rows, which would
    otherwise read as "another grid".
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    regressions = compare_reports(report, baseline, tolerance=tolerance, margin_sigmas=margin_sigmas)
    *details, verdict = format_regressions(regressions, baseline.rows, tolerance)
    for line in details:
        click.echo(line)
    if not regressions:
        click.echo(verdict)
        return
    raise _CheckFailed(verdict)  # the verdict is the one "robustlab: error:" line, exit 1


def render_report(source: Path, *, out: Path | None, fmt: str | None, examples: int) -> None:
    """Render a report JSON as HTML (default), Markdown, CSV, a curves PNG, or an export (robustbench, jsonl...).

    The format comes from ``fmt``, else from ``out``'s suffix, else HTML. Markdown, CSV and the exports go to
    stdout when ``out`` is not given; HTML and PNG need a file.
    """
    from robustlab.preflight import check_output_file

    fmt = fmt or (out.suffix.lstrip(".").lower() if out is not None else "") or "html"
    fmt = {"htm": "html", "markdown": "md", "json": "robustbench"}.get(fmt, fmt)
    if fmt not in REPORT_FORMATS:
        raise ConfigError(f"cannot tell the format from {out}; pass --format {'|'.join(REPORT_FORMATS)}")
    if out is None and fmt in ("html", "png"):
        raise ConfigError(f"the {fmt} format needs an output file: -o report.{fmt}")
    if out is not None:
        check_output_file(out, f"the {fmt} report")
    report = Report.from_json(source)
    data = _render(report, fmt, examples)
    if out is None:
        click.echo(data.decode(), nl=False)
        return
    write_output(out, data)
    click.echo(f"{fmt} report written to {out}", err=True)


_SAMPLE_FORMATS = {"robustbench": robustbench_entry, "jsonl": samples_jsonl, "samples-csv": samples_csv}


def _render(report: Report, fmt: str, examples: int) -> bytes:
    from robustlab.reports.plots import robustness_curves_png
    from robustlab.reports.tables import csv_table, markdown_table

    if fmt == "md":
        # What the console prints under the table belongs here too: a masking flag travels with the numbers.
        notes = [f"- {line}" for line in report.inputs]
        notes += [f"- **{d.code}**: {d.message}" for d in report.diagnostics]
        notes += [f"- {fidelity.describe()}" for fidelity in report.fidelity]
        notes += [f"- leaderboard {describe_comparison(comparison)}" for comparison in report.leaderboard]
        return "\n\n".join([markdown_table(report.rows), *(["\n".join(notes)] if notes else [])]).encode() + b"\n"
    if fmt == "csv":
        return csv_table(report.rows).encode()
    if fmt in _SAMPLE_FORMATS:
        return _SAMPLE_FORMATS[fmt](report)
    curves = robustness_curves_png(report.rows)
    if fmt == "png":
        return curves
    from robustlab.examples import regenerate_examples
    from robustlab.reports.html import render_html
    from robustlab.reports.plots import image_grid_png

    note, shown = regenerate_examples(report, examples) if examples else ("examples not drawn (--examples 0)", [])
    grid = image_grid_png(shown) if shown else None
    return render_html(report, curves_png=curves, grid_png=grid, grid_note=note).encode()


def write_output(path: Path, data: bytes) -> None:
    """Write a file atomically; a full disk or a read-only folder is one line and leaves nothing behind."""
    try:
        atomic_write(path, data)
    except OSError as error:
        raise DataError(f"cannot write {path}: {error.strerror or error}") from None


def run_generate(options: GenerateOptions) -> None:
    """Build the generation config from ``robustlab generate``'s options, write the dataset, print its summary."""
    from robustlab.defense import ThreatMode
    from robustlab.export import GenerateConfig, generate
    from robustlab.preflight import check_data, check_model_names, check_output_folder

    budgets = [options.eps] if options.eps is not None else []
    (attack,), (defense,) = options.specs([options.attack], [options.defense], sweep=budgets)
    config = GenerateConfig(
        model=options.spec(options.model),
        attack=attack,
        defense=defense,
        threat_mode=ThreatMode(options.threat_mode),
        data=options.data,
        split=options.split,
        train_data=options.train_data,
        n=options.n,
        shard_size=options.shard_size,
        seed=options.seed,
        eot_samples=options.eot_samples,
        device=resolve_device(options.device),
    )
    out = options.out
    check_output_folder(out, "the adversarial dataset in")
    check_model_names([options.model], options.weights)
    notes = check_data([(config.data, config.split), (config.train_data, "train")], config.n)
    shard = parse_shard(options.shard) if options.shard else None
    summary = generate(config, out, progress=not options.quiet, shard=shard)["summary"]
    for note in notes:
        click.echo(f"robustlab: note: {note}", err=True)
    if shard is not None:
        click.echo(f"shard {shard.rank}/{shard.world_size}: {summary['n']} adversarial images written to {out}")
        click.echo("when every shard is done, the same generate without --shard writes the manifest", err=True)
        return
    click.echo(
        f"{summary['n']} adversarial images in {out} ({attack.label()}, stored on the 8-bit grid): "
        f"clean {summary['clean_acc']:.2%}, robust {summary['robust_acc']:.2%}, "
        f"attack success {summary['success_rate']:.2%}"
    )
    click.echo(f"evaluate them with: robustlab eval --data adv:{out}", err=True)


def run_fool(options: FoolOptions) -> None:
    """Run ``robustlab fool``: evolve (or ascend to) fooling images, write them, print the summary line."""
    import robustlab.attacks
    from robustlab.models.loading import class_names, load_model

    device = resolve_device(options.device)
    run = {"model": options.model, "weights": options.weights, "num_classes": options.num_classes, "device": device}
    progress = not options.quiet
    victim = load_model(options.model, weights=options.weights, num_classes=options.num_classes, progress=progress)
    fooling = robustlab.attacks.ATTACKS.get("fooling").factory(
        encoding=options.encoding, generations=options.generations, population=options.population
    )
    names = class_names(options.model, options.weights, victim.num_classes)
    with steady_shapes():  # a population evolved generation by generation: the same tensors each time
        summary = fooling.write(
            victim.to(device), options.out, seed=options.seed, class_names=names, run=run, progress=progress
        )
    metrics = summary["metrics"]
    click.echo(
        f"{int(metrics['classes_fooled_99'])}/{int(metrics['classes'])} classes fooled at >= 99% "
        f"({int(metrics['classes_fooled_9999'])} at >= 99.99%), median confidence {metrics['median_confidence']:.4f}, "
        f"{summary['queries']} queries, generation {summary['generation']}, {summary['seconds']:.1f} s "
        f"-> {options.out}"
    )
