"""``eval --shard K/N`` jobs and ``robustlab merge`` give one process's report, and refuse what is not one run."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from safetensors import safe_open

from robustlab.cache import save_weights
from robustlab.cli import cli
from robustlab.models.loading import load_model

ARGS = ["--weights", "w.safetensors", "--attack", "fgsm", "--attack", "pgd", "--eps", "0.5", "--steps", "2"]
ARGS += ["-n", "24", "--batch-size", "8", "--device", "cpu", "--quiet"]  # 3 batches: shard 0 owns two of them


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.chdir(tmp_path)
    save_weights(Path("w.safetensors"), load_model("smallcnn", weights="random").net.state_dict())
    return lambda *args: CliRunner().invoke(cli, list(args))


def _without_timings(path: Path) -> tuple[list[dict[str, object]], list[dict[str, object]], list[object]]:
    report = json.loads(path.read_text())
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in report["rows"]]
    return rows, report["samples"], report["diagnostics"]


def _one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robustlab: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_two_shards_merge_to_the_single_process_report(run: Callable[..., Result]) -> None:
    single = run("eval", *ARGS, "--out", "one.json")
    assert single.exit_code == 0, single.output
    for k in (0, 1):
        shard = run("eval", *ARGS, "--shard", f"{k}/2", "--run-dir", f"s{k}")
        assert shard.exit_code == 0, shard.output
        assert (Path(f"s{k}") / "shard.json").is_file()
    merged = run("merge", "s1", "s0", *ARGS, "--out", "merged.json")
    assert merged.exit_code == 0, merged.output
    gated = run("eval", *ARGS, "--shard", "0/2", "--run-dir", "g", "--baseline", "one.json")
    _one_line_error(gated, "--baseline to robustlab merge")
    assert run("merge", "s0", "s1", *ARGS, "--baseline", "one.json").exit_code == 0
    one, two = _without_timings(Path("one.json")), _without_timings(Path("merged.json"))
    assert any(True in attack["success"] for attack in one[1][0]["attacks"])  # broken samples are compared too
    assert one == two


def test_a_merge_runs_no_attack_again(run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (0, 1):
        assert run("eval", *ARGS, "--shard", f"{k}/2", "--run-dir", f"s{k}").exit_code == 0
    import robustlab.evaluate

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("merge attacked a batch a shard had stored")

    monkeypatch.setattr(robustlab.evaluate, "attack_and_score", refuse)
    merged = run("merge", "s0", "s1", *ARGS, "--out", "merged.json")
    assert merged.exit_code == 0, merged.output


def test_shards_that_are_not_one_whole_run_are_refused(run: Callable[..., Result]) -> None:
    assert run("eval", *ARGS, "--shard", "0/2", "--run-dir", "s0").exit_code == 0
    _one_line_error(run("merge", "s0", *ARGS), "missing shard(s) 1/2")
    _one_line_error(run("merge", "s0", "s0", *ARGS), "given twice")
    _one_line_error(run("merge", "s0", *ARGS, "-n", "16"), "other eval options")
    _one_line_error(run("merge", "s0", "nowhere", *ARGS), "nowhere", "--shard K/N")
    assert run("eval", *ARGS, "--shard", "1/3", "--run-dir", "t1").exit_code == 0
    _one_line_error(run("merge", "s0", "t1", *ARGS), "split the run in different ways")


@pytest.mark.parametrize(
    ("shard", "extra", "fragment"),
    [
        ("2/2", ["--run-dir", "s"], "0..N-1"),
        ("1-2", ["--run-dir", "s"], "K/N"),
        ("0/2", [], "needs --run-dir"),
        ("0/2", ["--run-dir", "s", "--out", "r.json"], "drop --out"),
    ],
)
def test_bad_shard_options_fail_in_one_line(
    run: Callable[..., Result], shard: str, extra: list[str], fragment: str
) -> None:
    _one_line_error(run("eval", *ARGS, "--shard", shard, *extra), fragment)


@pytest.mark.slow
def test_torchrun_ranks_keep_their_own_stores(
    run: Callable[..., Result], robustlab_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    assert run("eval", *ARGS, "--out", "one.json").exit_code == 0
    ranks = robustlab_process("eval", *ARGS, "--run-dir", "run", "--out", "two.json", ranks=2)
    assert ranks.returncode == 0, ranks.stderr
    assert sorted(path.parent.name for path in Path("run").glob("*/store.sqlite")) == ["rank-0-of-2", "rank-1-of-2"]
    assert _without_timings(Path("two.json")) == _without_timings(Path("one.json"))


GENERATE = ["generate", "--weights", "w.safetensors", "--attack", "pgd", "--eps", "0.5", "--steps", "2", "-n", "12"]
GENERATE += ["--shard-size", "4", "--device", "cpu", "--quiet"]  # 3 shard files: job 0 of 2 writes two of them


def _files(folder: Path) -> dict[str, object]:
    """Every file's bytes; a safetensors file's tensors and metadata (its header's key order is not fixed)."""
    files: dict[str, object] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                tensors = {key: handle.get_tensor(key).tolist() for key in handle.keys()}  # noqa: SIM118
                files[str(path.relative_to(folder))] = (handle.metadata(), tensors)
        else:
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def test_generate_jobs_into_one_folder_make_the_single_process_dataset(run: Callable[..., Result]) -> None:
    assert run(*GENERATE, "--out", "one").exit_code == 0
    for k in (1, 0):
        job = run(*GENERATE, "--shard", f"{k}/2", "--out", "two")
        assert job.exit_code == 0, job.output
        assert not Path("two/manifest.json").exists()
    assert len(list(Path("two/shards").glob("*.safetensors"))) == 3
    _one_line_error(run(*GENERATE, "--shard", "2/2", "--out", "two"), "0..N-1")
    Path("mine").mkdir()
    (Path("mine") / "notes.txt").write_text("not an adversarial dataset")
    _one_line_error(run(*GENERATE, "--shard", "0/2", "--out", "mine"), "not an adversarial dataset folder")
    finish = run(*GENERATE, "--out", "two")
    assert finish.exit_code == 0, finish.output
    one, two = _files(Path("one")), _files(Path("two"))
    manifests = [json.loads(str(files.pop("manifest.json"), "utf-8")) for files in (one, two)]
    first, second = ({k: v for k, v in m.items() if k != "versions"} for m in manifests)
    assert first == second
    assert one == two and any(record["success"] for record in manifests[0]["samples"])


def test_a_generate_job_that_loses_the_race_for_the_marker_joins_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import robustlab.export

    header = {"format": "robustlab-adv", "config": {"n": 12}}
    written = robustlab.export.atomic_write

    def another_job_first(path: Path, data: bytes) -> None:  # it renames its marker; ours lost its temporary file
        written(path, data)
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr(robustlab.export, "atomic_write", another_job_first)
    robustlab.export._claim(tmp_path / "adv", header, concurrent=True)
    with pytest.raises(FileNotFoundError):
        robustlab.export._claim(tmp_path / "alone", header, concurrent=False)
