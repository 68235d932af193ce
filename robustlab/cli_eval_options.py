"""The ``robustlab eval`` options: the grid, the victim, the samples, the run (``merge`` takes the same list)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from robustlab.cli_options import (
    BudgetType,
    attack_args_option,
    defense_args_option,
    device_option,
    eot_samples_option,
    gate_options,
    quiet_option,
    seed_option,
    steps_option,
    train_data_option,
)

__all__ = ["eval_options"]


def _stacked(*decorators: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Callable[..., Any]:
    """One decorator applying ``decorators`` as if written one above the other (``--help`` lists them in order)."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


eval_options = _stacked(
    click.option(
        "--attack",
        "attacks",
        multiple=True,
        default=("pgd",),
        show_default=True,
        metavar="NAME",
        help="Attack to run; repeat for several (each also gets a worst-case row).",
    ),
    click.option(
        "--defense",
        "defenses",
        multiple=True,
        default=("none",),
        show_default=True,
        metavar="NAME",
        help="Defense to put in front of the model; repeat for a grid.",
    ),
    click.option(
        "--eps",
        "eps",
        multiple=True,
        type=BudgetType(),
        help="Budget per norm in [0, 1] pixel units: linf:8/255, l2:0.5; repeat for a sweep or several norms. "
        "A bare 8/255 is L∞ only: L2 attacks keep their own budget unless given l2:EPS. "
        "Default: each attack's standard budget (L∞ 8/255, L2 0.5).",
    ),
    steps_option,
    attack_args_option,
    defense_args_option,
    click.option(
        "--threat-mode",
        type=click.Choice(["both", "transfer", "adaptive"]),
        default="both",
        show_default=True,
        help="For defenses: attack the bare model (transfer), the whole pipeline (adaptive), or both.",
    ),
    click.option(
        "--data",
        default="synth",
        show_default=True,
        metavar="SPEC",
        help="synth[:k=v,...], cifar10[:ROOT], imagefolder:PATH.",
    ),
    train_data_option,
    click.option(
        "--fit-data",
        default=None,
        metavar="SPEC",
        help="Data that universal and task attacks are fitted on (default: the train split of --data).",
    ),
    click.option(
        "--task",
        default="classification",
        show_default=True,
        metavar="NAME",
        help="The kind of victim (robustlab list: victims). downstream: evaluate each model as an encoder, scored "
        "through heads trained on its frozen features; captioning: each model is a captioner (--model captioner), "
        "attacked by caption attacks.",
    ),
    click.option(
        "--head",
        "heads",
        multiple=True,
        metavar="ATTRIBUTE",
        help="A downstream head per synthetic-world attribute (shape, color, background, size, position); "
        "repeat. Default: shape, color, background, size.",
    ),
    click.option(
        "--head-kind",
        type=click.Choice(["mlp", "linear"]),
        default="mlp",
        show_default=True,
        help="Downstream heads: a 3-layer MLP or a linear probe.",
    ),
    click.option(
        "--n",
        "-n",
        type=int,
        default=1000,
        show_default=True,
        help="Number of test samples: a seeded class-stratified subset of class folders, the first n of synth.",
    ),
    click.option(
        "--subset",
        default="stratified",
        show_default=True,
        metavar="stratified|first|list:FILE",
        help="Which n samples: class-stratified (class folders, CIFAR-10), the first n (RobustBench's protocol), or "
        "the first n a list file names (indices, or paths under an image folder: RobustBench's 5000 ImageNet images).",
    ),
    click.option(
        "--leaderboard",
        type=click.Path(path_type=Path),
        default=None,
        metavar="DIR|FILE",
        help="Compare clean and AutoAttack accuracy with RobustBench model_info entries: a clone's model_info folder "
        "or one JSON; a `! leaderboard` line flags |z| > 2 (or > 0.5 pt on the full test set).",
    ),
    click.option("--batch-size", type=int, default=256, show_default=True),
    click.option(
        "--workers",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Processes that read, decode and resize the next batches while the model computes (same results).",
    ),
    seed_option,
    eot_samples_option,
    device_option,
    click.option(
        "--amp",
        type=click.Choice(["bf16"]),
        default=None,
        help="Run the model under bf16 autocast (GPU speed-up; clean predictions are checked against float32).",
    ),
    click.option(
        "--channels-last",
        is_flag=True,
        help="NHWC memory layout for model and images (faster convolutions on GPU, often on CPU).",
    ),
    click.option("--compile", is_flag=True, help="torch.compile the model (CUDA only)."),
    click.option(
        "--diagnostics",
        type=click.Choice(["auto", "full", "off"]),
        default="auto",
        show_default=True,
        help="auto: the sanity gate and cheap masking probes on every model, attack probes behind defenses; "
        "full: the attack probes and the steps/restarts/loss convergence checks on every model too.",
    ),
    click.option(
        "--strict",
        is_flag=True,
        help="Exit 2 when the sanity gate flags a model (chance-level accuracy, NaN logits, outputs that ignore the "
        "input), after writing the report.",
    ),
    click.option(
        "--draws",
        type=click.IntRange(min=1),
        default=10,
        show_default=True,
        help="Forward passes each input is scored over when the model is randomized (correct only if all are).",
    ),
    click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write the JSON report here (atomically).",
    ),
    click.option(
        "--run-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Keep per-batch results in DIR/store.sqlite so an interrupted run can --resume.",
    ),
    click.option("--resume", is_flag=True, help="Continue the run stored in --run-dir."),
    click.option(
        "--shard",
        metavar="K/N",
        default=None,
        help="Compute only share K of N (batch b when b % N == K) into --run-dir, for robustlab merge; no report.",
    ),
    quiet_option,
    gate_options,
    click.option(
        "--baseline",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Fail (exit 1) when a clean or robust accuracy of this report JSON drops by more than --tolerance.",
    ),
)
"""Every ``robustlab eval`` option after the model's and the input preparation's (``merge`` takes them too)."""
