"""A run killed with SIGKILL mid-way resumes from its store and ends with the uninterrupted report."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# Small batches and more steps than the default, so the run is still going when the store holds some units.
ARGS = ["eval", "-n", "192", "--batch-size", "16", "--steps", "40", "--device", "cpu", "--quiet"]


def _robustlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustlab", *ARGS, *args]


def _units(store: Path) -> dict[str, tuple[int, bytes]]:
    """Key -> (rowid, payload); ``INSERT OR REPLACE`` of a recomputed unit would change both."""
    if not store.is_file():
        return {}
    with contextlib.closing(sqlite3.connect(store)) as db:
        try:
            rows = db.execute("SELECT rowid, key, payload FROM units").fetchall()
        except sqlite3.OperationalError:  # the table does not exist yet, or the writer holds the lock
            return {}
    return {key: (rowid, payload) for rowid, key, payload in rows}


def _without_timings(path: Path) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    report = json.loads(path.read_text())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in report["rows"]], report["samples"]


def test_sigkill_then_resume_equals_uninterrupted_run(
    tmp_path: Path, trained_model: torch.nn.Module, child_env: dict[str, str]
) -> None:
    env = child_env
    run_dir, store = tmp_path / "run", tmp_path / "run" / "store.sqlite"
    victim = subprocess.Popen(_robustlab("--run-dir", str(run_dir)), env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_units(store)) < 4 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    before = _units(store)
    total = 2 * 192 // 16  # one clean and one attack unit per batch
    if not 0 < len(before) < total:
        pytest.fail(f"kill landed outside the run: {len(before)} of {total} units stored")

    resumed = subprocess.run(
        _robustlab("--run-dir", str(run_dir), "--resume", "--out", str(tmp_path / "resumed.json")),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    after = _units(store)
    assert len(after) == total
    assert {key: after[key] for key in before} == before, "a unit stored before the kill was computed again"

    fresh = subprocess.run(
        _robustlab("--out", str(tmp_path / "fresh.json")), env=env, capture_output=True, text=True, check=False
    )
    assert fresh.returncode == 0, fresh.stderr
    assert _without_timings(tmp_path / "resumed.json") == _without_timings(tmp_path / "fresh.json")
