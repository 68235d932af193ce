"""``torchrun`` with two CPU ranks gives the report a single process gives."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import torch

ARGS = ["eval", "-n", "80", "--batch-size", "16", "--steps", "3", "--device", "cpu", "--quiet"]


def _without_timings(path: Path) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    report = json.loads(path.read_text())
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in report["rows"]]
    return rows, report["samples"]


def test_two_ranks_merge_to_the_single_process_report(
    tmp_path: Path, trained_model: torch.nn.Module, robustlab_process: Callable[..., CompletedProcess[str]]
) -> None:
    single = robustlab_process(*ARGS, "--out", str(tmp_path / "one.json"))
    assert single.returncode == 0, single.stderr
    sharded = robustlab_process(*ARGS, "--out", str(tmp_path / "two.json"), ranks=2)
    assert sharded.returncode == 0, sharded.stderr
    assert sharded.stdout.count("robust") == single.stdout.count("robust") == 1, "only rank 0 prints the table"
    assert _without_timings(tmp_path / "two.json") == _without_timings(tmp_path / "one.json")
