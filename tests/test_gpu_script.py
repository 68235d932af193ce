"""experiments/gpu_resnet50.py cannot run here (no GPU): its CPU path, tiny, keeps it from rotting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.slow  # five attacks on a small random ResNet-18, the reference's 100 iterations among them
def test_gpu_script_writes_its_table_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS-gpu.md"
    tiny = ["--device", "cpu", "--precision", "fp32", "--model", "resnet18", "--n", "2", "--image-size", "32"]
    subprocess.run(
        [sys.executable, "gpu_resnet50.py", *tiny, "--out", str(out)],
        cwd=EXPERIMENTS,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
        capture_output=True,
    )
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| plain PGD-10 loop",
        "| robustlab pgd (10 steps)",
        "| pyautoattack standard",
        "| robustlab autoattack",
        "| robustlab autoattack-fast",
    ]
    for row in rows[1:]:  # a random net on its own predictions: every path breaks both samples
        assert row.split(" | ")[3] == "0.000"


@pytest.mark.slow  # a Python start that imports torch, robustlab and the reference: seconds
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_script_without_cuda_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "gpu_resnet50.py", "--n", "1"], cwd=EXPERIMENTS, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1 and done.stderr.strip().endswith(
        "no CUDA device (run with --device cpu for the small check)"
    )
