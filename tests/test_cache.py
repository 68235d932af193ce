"""Where trained weights are cached: one file per config and per numerics that change the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustlab.cache import cache_dir, data_dir, numerics


def test_another_thread_count_gets_another_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTLAB_HOME", str(tmp_path))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cache_dir("models")
        torch.set_num_threads(2)
        two = cache_dir("models")
    finally:
        torch.set_num_threads(threads)
    assert one != two and one.is_dir() and two.is_dir()
    assert one == tmp_path / numerics().replace(f"threads{threads}", "threads1") / "models"
    assert torch.__version__.split("+")[0] in one.parent.name
    assert data_dir() == tmp_path / "data"  # datasets do not depend on how training runs
