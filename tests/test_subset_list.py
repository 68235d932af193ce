"""``--subset list:FILE``: a leaderboard's fixed subset (RobustBench's 5000 ImageNet images) named in a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from robustlab.cli import cli
from robustlab.data import load_dataset
from robustlab.errors import DataError
from robustlab.sampling import sample_indices


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three classes of four 8x8 images, the layout of ImageNet's validation tree."""
    for c in ("n01", "n02", "n03"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "val" / c / f"img_{c}_{i}.png")
    return tmp_path / "val"


def _listing(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_list_of_paths_picks_its_first_n_files_in_its_order(folder: Path, tmp_path: Path) -> None:
    dataset = load_dataset(f"imagefolder:{folder}", image_size=8)
    listing = _listing(tmp_path, "n03/img_n03_1.png", "n01/img_n01_2.png", "n02/img_n02_0.png")
    chosen, said = sample_indices(dataset, 2, seed=0, subset=f"list:{listing}")
    assert chosen.tolist() == [2, 9]  # n01's third file and n03's second, sorted
    assert said == f"2 of the 3 samples listed in {listing}"
    everything, _ = sample_indices(dataset, None, seed=0, subset=f"list:{listing}")
    assert everything.tolist() == [2, 4, 9]


def test_a_list_of_indices_works_on_any_dataset(tmp_path: Path) -> None:
    dataset = load_dataset("synth")
    chosen, _ = sample_indices(dataset, 5, seed=0, subset=f"list:{_listing(tmp_path, '7', '3', '100')}")
    assert torch.equal(chosen, torch.tensor([3, 7, 100]))


@pytest.mark.parametrize(
    ("lines", "data", "says"),
    [
        (("n01/img_n01_0.png", "n09/nowhere.png"), "folder", "names 1 files the data folder does not have, e.g. n09"),
        (("n01/img_n01_0.png",), "synth", "that needs a class-folder dataset"),
        (("99999999",), "synth", "names index 99999999"),
        ((), "synth", "names no samples"),
    ],
)
def test_a_list_that_does_not_match_the_data_is_one_clear_error(
    folder: Path, tmp_path: Path, lines: tuple[str, ...], data: str, says: str
) -> None:
    dataset = load_dataset(f"imagefolder:{folder}" if data == "folder" else "synth", image_size=8)
    with pytest.raises(DataError, match=says):
        sample_indices(dataset, 10, seed=0, subset=f"list:{_listing(tmp_path, *lines)}")


@pytest.mark.parametrize(
    ("subset", "says"),
    [("list:/nonexistent/list.txt", "/nonexistent/list.txt is not a file"), ("random", "stratified, first or list")],
)
def test_a_bad_subset_is_refused_before_anything_runs(subset: str, says: str) -> None:
    result = CliRunner().invoke(cli, ["eval", "--weights", "random", "-n", "4", "--subset", subset])
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
