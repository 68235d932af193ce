"""Long attacks move the bar while they run: Square reports every query, not only the end of its batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import robustlab.evaluate
from robustlab.cli import cli
from robustlab.progress import advance, on_bar, reporting


def test_square_eval_reports_every_query_on_the_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_model: torch.nn.Module
) -> None:
    seen: list[tuple[str, str, int, int]] = []

    def counting(bar: object, prefix: str) -> object:
        show = on_bar(bar, prefix)

        def record(what: str, done: int, total: int) -> None:
            seen.append((prefix, what, done, total))
            show(what, done, total)

        return record

    monkeypatch.setattr(robustlab.evaluate, "on_bar", counting)
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--attack", "square", "--eps", "8/255", "-n", "8", "--attack-arg", "square.n_queries=300"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    label = "square(n_queries=300)"
    queries = [done for prefix, what, done, total in seen if (prefix, what, total) == (label, "square queries", 300)]
    assert len(queries) == len(seen) > 1 and queries == list(range(len(queries)))  # each query, as it is made
    assert f"{label}: square queries 0/300" in result.stderr  # drawn on the evaluator's bar


def test_nothing_is_reported_without_a_listener() -> None:
    calls: list[tuple[str, int, int]] = []
    advance("queries", 1, 2)
    with reporting(lambda what, done, total: calls.append((what, done, total))):
        advance("queries", 1, 2)
        with reporting(None):
            advance("queries", 2, 2)
    advance("queries", 2, 2)
    assert calls == [("queries", 1, 2)]
