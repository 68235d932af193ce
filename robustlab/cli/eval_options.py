"""The ``robustlab eval`` options: the grid, the victim, the samples, the run (``merge`` takes the same list)."""

from __future__ import annotations

from pathlib import Path

import click

import robustlab.cli.options as shared

__all__ = ["eval_options"]


eval_options = shared.stacked(
    shared.attack_option(multiple=True),
    shared.defense_option(multiple=True),
    shared.eps_option(multiple=True),
    shared.steps_option(),
    shared.attack_args_option,
    shared.defense_args_option,
    shared.threat_mode_option(both=True),
    shared.data_option(),
    shared.train_data_option,
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
    shared.choice_option("--head-kind", ["mlp", "linear"], "Downstream heads: a 3-layer MLP or a linear probe."),
    shared.n_option("Number of test samples: a seeded class-stratified subset of class folders, the first n of synth."),
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
    shared.batch_size_option(256),
    shared.count_option(
        "--workers",
        0,
        "Processes that read, decode and resize the next batches while the model computes (same results).",
        minimum=0,
    ),
    shared.seed_option,
    shared.eot_samples_option,
    shared.device_option,
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
    shared.choice_option(
        "--diagnostics",
        ["auto", "full", "off"],
        "auto: the sanity gate and cheap masking probes on every model, attack probes behind defenses; "
        "full: the attack probes and the steps/restarts/loss convergence checks on every model too.",
    ),
    click.option(
        "--strict",
        is_flag=True,
        help="Exit 2 when the sanity gate flags a model (chance-level accuracy, NaN logits, outputs that ignore the "
        "input), after writing the report.",
    ),
    shared.count_option(
        "--draws",
        10,
        "Forward passes each input is scored over when the model is randomized (correct only if all are).",
    ),
    shared.out_option("Write the JSON report here (atomically).", required=False),
    click.option(
        "--run-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Keep per-batch results in DIR/store.sqlite so an interrupted run can --resume.",
    ),
    click.option("--resume", is_flag=True, help="Continue the run stored in --run-dir."),
    shared.shard_option(
        "Compute only share K of N (batch b when b % N == K) into --run-dir, for robustlab merge; no report."
    ),
    shared.quiet_option,
    shared.gate_options,
    click.option(
        "--baseline",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Fail (exit 1) when a clean or robust accuracy of this report JSON drops by more than --tolerance.",
    ),
)
"""Every ``robustlab eval`` option after the model's and the input preparation's (``merge`` takes them too)."""
