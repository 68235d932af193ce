"""What ``compare``, ``report``, ``generate`` and ``run`` do once their options are parsed.

Kept apart from :mod:`robustlab.cli` (declarative click definitions) and from the library modules
(which never print), like :mod:`robustlab.commands` is for ``eval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robustlab.cache import atomic_write
from robustlab.errors import ConfigError, DataError
from robustlab.gate import compare_reports, format_regressions
from robustlab.report import Report

__all__ = ["REPORT_FORMATS", "gate", "render_report", "run_generate", "write_output"]

REPORT_FORMATS = ("html", "md", "csv", "png")


def gate(report: Report, baseline: Report, *, tolerance: float, margin_sigmas: float) -> None:
    """Print the gate's verdict; exit 1 when any row regressed (the documented "a check failed" code).

    Under ``torchrun`` only rank 0 judges: the other ranks return a report without rows, which would
    otherwise read as "another grid".
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    regressions = compare_reports(report, baseline, tolerance=tolerance, margin_sigmas=margin_sigmas)
    for line in format_regressions(regressions, baseline.rows, tolerance):
        click.echo(line)
    if regressions:
        click.get_current_context().exit(1)


def render_report(source: Path, *, out: Path | None, fmt: str | None, examples: int) -> None:
    """Render a report JSON as HTML (default), Markdown, CSV or a PNG of the robustness curves.

    The format comes from ``fmt``, else from ``out``'s suffix, else HTML. Markdown and CSV go to
    stdout when ``out`` is not given; HTML and PNG need a file.
    """
    fmt = fmt or (out.suffix.lstrip(".").lower() if out is not None else "") or "html"
    fmt = {"htm": "html", "markdown": "md"}.get(fmt, fmt)
    if fmt not in REPORT_FORMATS:
        raise ConfigError(f"cannot tell the format from {out}; pass --format {'|'.join(REPORT_FORMATS)}")
    if out is None and fmt in ("html", "png"):
        raise ConfigError(f"the {fmt} format needs an output file: -o report.{fmt}")
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: folder {out.parent} does not exist")
    report = Report.from_json(source)
    data = _render(report, fmt, examples)
    if out is None:
        click.echo(data.decode(), nl=False)
        return
    write_output(out, data)
    click.echo(f"{fmt} report written to {out}", err=True)


def _render(report: Report, fmt: str, examples: int) -> bytes:
    from robustlab.plots import robustness_curves_png
    from robustlab.tables import csv_table, markdown_table

    if fmt == "md":
        # What the console prints under the table belongs here too: a masking flag travels with the numbers.
        notes = [f"- **{d.code}**: {d.message}" for d in report.diagnostics]
        notes += [f"- {fidelity.describe()}" for fidelity in report.fidelity]
        return "\n\n".join([markdown_table(report.rows), *(["\n".join(notes)] if notes else [])]).encode() + b"\n"
    if fmt == "csv":
        return csv_table(report.rows).encode()
    curves = robustness_curves_png(report.rows)
    if fmt == "png":
        return curves
    from robustlab.examples import regenerate_examples
    from robustlab.html import render_html
    from robustlab.plots import image_grid_png

    note, shown = regenerate_examples(report, examples) if examples else ("examples not drawn (--examples 0)", [])
    grid = image_grid_png(shown) if shown else None
    return render_html(report, curves_png=curves, grid_png=grid, grid_note=note).encode()


def write_output(path: Path, data: bytes) -> None:
    """Write a file atomically; a full disk or a read-only folder is one line and leaves nothing behind."""
    try:
        atomic_write(path, data)
    except OSError as error:
        raise DataError(f"cannot write {path}: {error.strerror or error}") from None


def run_generate(**options: Any) -> None:
    """Build the generation config from ``robustlab generate``'s options, write the dataset, print its summary."""
    import robustlab.attacks
    import robustlab.defenses
    from robustlab.cli_options import build_specs
    from robustlab.commands import resolve_device
    from robustlab.defense import ThreatMode
    from robustlab.export import GenerateConfig, generate
    from robustlab.models import ModelSpec

    (attack,) = build_specs(
        robustlab.attacks.ATTACKS,
        [options["attack"]],
        options["attack_args"],
        shared={"steps": options["steps"]},
        sweep=[options["eps"]] if options["eps"] is not None else [],
    )
    (defense,) = build_specs(robustlab.defenses.DEFENSES, [options["defense"]], options["defense_args"])
    config = GenerateConfig(
        model=ModelSpec(options["model"], options["weights"], options["num_classes"]),
        attack=attack,
        defense=defense,
        threat_mode=ThreatMode(options["threat_mode"]),
        data=options["data"],
        split=options["split"],
        train_data=options["train_data"],
        n=options["n"],
        shard_size=options["shard_size"],
        seed=options["seed"],
        eot_samples=options["eot_samples"],
        device=resolve_device(options["device"]),
    )
    out: Path = options["out"]
    summary = generate(config, out, progress=not options["quiet"])["summary"]
    click.echo(
        f"{summary['n']} adversarial images in {out} ({attack.label()}, stored on the 8-bit grid): "
        f"clean {summary['clean_acc']:.2%}, robust {summary['robust_acc']:.2%}, "
        f"attack success {summary['success_rate']:.2%}"
    )
    click.echo(f"evaluate them with: robustlab eval --data adv:{out}", err=True)
