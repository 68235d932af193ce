"""Every bad input a user can hand the CLI: one ``robustlab: error:`` line, exit 2 (1: a failed gate), nothing written.

The table runs each case through the real command line in-process and checks that no file under the
test's folder was created, changed or replaced. Almost every case must fail before any model is
trained; the few that load a model use random weights, so the table costs seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from robustlab.cli import cli
from robustlab.reports.report import Report, Row
from robustlab.store import SqliteStore

Build = Callable[[Path], list[str]]
Snapshot = dict[str, tuple[str, int, str]]
"""What :func:`_snapshot` sees of a folder: each entry's kind, size and content hash."""
EVAL = ["eval", "--quiet", "-n", "4", "--attack", "fgsm"]
PATCH = pytest.MonkeyPatch()
"""Faults a case injects (a full disk...): set by its builder, undone by the ``run`` fixture."""
RANDOM = ["--weights", "random"]  # a model that needs no training, for cases that fail while reading data


# ---- helpers that make bad inputs on disk -------------------------------------------------------------


def _images(root: Path, count: int = 2) -> Path:
    for i in range(count):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 60 * (i + 1), np.uint8)).save(folder / f"{i}.png")
    return root


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels: enough for PIL's decompression-bomb guard."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _bomb(tmp: Path) -> list[str]:
    root = _images(tmp / "bomb", count=4)
    (root / "c0" / "0.png").write_bytes(_png_header_only(30000, 30000))
    return [*EVAL, *RANDOM, "--data", f"imagefolder:{root}"]


def _attack_arg(attack: str, arg: str) -> Build:
    """``eval`` of ``attack`` (beside FGSM) with one ``--attack-arg``."""
    return lambda t: [*EVAL, "--attack", attack, "--attack-arg", arg]


def _defense_arg(defense: str, arg: str) -> Build:
    """``eval`` behind ``defense`` with one ``--defense-arg``."""
    return lambda t: [*EVAL, "--defense", defense, "--defense-arg", arg]


def _toml(text: str | bytes) -> Build:
    def build(tmp: Path) -> list[str]:
        path = tmp / "exp.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["run", str(path)]

    return build


def _row(**changes: object) -> Row:
    values: dict[str, object] = {
        "model": "smallcnn",
        "defense": "none",
        "threat_mode": "-",
        "attack": "fgsm",
        "threat": "linf 8/255",
        "n": 100,
        "clean_acc": 0.9,
        "robust_acc": 0.4,
        "attack_success_rate": 0.5,
        "mean_norm": 0.03,
        "max_norm": 0.03,
        "seconds": 1.0,
    }
    return Row(**{**values, **changes})  # type: ignore[arg-type]


def _report_file(path: Path, *, data: str = "synth", n: int = 100, **row: object) -> Path:
    Report(config={"data": data, "n": n, "task": "classification"}, environment={}, rows=[_row(**row)]).to_json(path)
    return path


def _raw(path: Path, content: bytes | str | object) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _report_dict(**top: object) -> dict[str, object]:
    """A valid report document with some top-level keys replaced."""
    row = {"model": "smallcnn", "defense": "none", "threat_mode": "-", "attack": "fgsm", "threat": "linf 8/255"}
    rows = [{**row, "n": 100, "clean_acc": 0.9, "robust_acc": 0.4, "seconds": 1.0}]
    return {"schema_version": 2, "config": {"data": "synth", "n": 4}, "environment": {}, "rows": rows, **top}


def _baseline(content: bytes | str | object) -> Build:
    return lambda tmp: [*EVAL, "--baseline", str(_raw(tmp / "base.json", content))]


def _compare(new: dict[str, object], old: dict[str, object]) -> Build:
    def build(tmp: Path) -> list[str]:
        return ["compare", str(_report_file(tmp / "new.json", **new)), str(_report_file(tmp / "old.json", **old))]

    return build


def _adv(manifest: bytes | str | object | None, shard: bytes | None = None) -> Build:
    def build(tmp: Path) -> list[str]:
        root = tmp / "adv"
        (root / "shards").mkdir(parents=True)
        if manifest is not None:
            _raw(root / "manifest.json", manifest)
        if shard is not None:  # recorded in the manifest as generate would, so the damage is found on loading it
            (root / "shards" / "shard-00000.safetensors").write_bytes(shard)
            if isinstance(manifest, dict):
                hashes = {"shards/shard-00000.safetensors": "not checked: the shard cannot be read"}
                _raw(root / "manifest.json", {**manifest, "sha256": hashes})
        return [*EVAL, *RANDOM, "--data", f"adv:{root}"]

    return build


ADV_MANIFEST = {"format": "robustlab-adv", "format_version": 1, "shards": ["shards/shard-00000.safetensors"]}


def _user_model(source: str) -> Build:
    """A ``module:make`` user model whose module body is ``source`` (a fresh module name per case)."""

    def build(tmp: Path) -> list[str]:
        name = "user_" + hashlib.sha256(source.encode()).hexdigest()[:10]
        (tmp / "mods").mkdir(exist_ok=True)
        (tmp / "mods" / f"{name}.py").write_text("import torch\nfrom torch import nn\n\n" + source)
        sys.path.insert(0, str(tmp / "mods"))
        return ["eval", "--quiet", "-n", "4", "--attack", "fgsm", "--model", f"{name}:make"]

    return build


def _linear_model(forward: str) -> str:
    """Source of a ``make()`` returning a linear model on 32x32 RGB whose ``forward`` body is ``forward``."""
    return (
        "class Linear(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(3 * 32 * 32, 10)\n\n"
        f"    def forward(self, x):\n        {forward}\n\n\n"
        "def make():\n    return Linear()\n"
    )


_ONLY_PAIRS = "if len(x) > 2:\n            raise ValueError('only pairs')\n        return self.fc(x.flatten(1))"


def _strict(build: Build) -> Build:
    """The same command under ``--strict``: a flagged model fails the run."""
    return lambda tmp: [*build(tmp), "--strict"]


def _checkpoint(content: bytes, suffix: str) -> Build:
    def build(tmp: Path) -> list[str]:
        path = tmp / f"weights{suffix}"
        path.write_bytes(content)
        return [*EVAL, "--weights", str(path)]

    return build


def _truncated_safetensors(tmp: Path) -> list[str]:
    from robustlab.cache import save_weights

    path = tmp / "cut.safetensors"
    save_weights(path, {"w": torch.ones(64, 64)})
    path.write_bytes(path.read_bytes()[:200])
    return [*EVAL, "--weights", str(path)]


def _corrupt_cached_weights(tmp: Path) -> list[str]:
    from robustlab.cache import numerics
    from robustlab.train import TrainConfig, _cache_key

    config = TrainConfig(arch="smallcnn", num_classes=10, image_size=32).resolved()
    models = tmp / "home" / numerics() / "models"
    models.mkdir(parents=True)
    (models / f"smallcnn-synth-{_cache_key(config)}.safetensors").write_bytes(b"\0" * 100)
    os.environ["ROBUSTLAB_HOME"] = str(tmp / "home")  # restored by the fixture
    return [*EVAL, "--weights", "synth"]


def _home_is_a_file(tmp: Path) -> list[str]:
    (tmp / "home").write_text("not a folder")
    os.environ["ROBUSTLAB_HOME"] = str(tmp / "home")
    return [*EVAL, "--weights", "synth"]


def _fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "pipe")
    return [*EVAL, "--out", str(tmp / "pipe")]


def _store(tmp: Path, config_hash: str = "another") -> Path:
    SqliteStore(tmp / "run" / "store.sqlite", config_hash=config_hash, resume=False).close()
    return tmp / "run"


def _corrupt_store(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "store.sqlite").write_bytes(b"this is not a database" * 100)
    return [*EVAL, "--run-dir", str(tmp / "run"), "--resume"]


def _generate_marker(tmp: Path) -> list[str]:
    (tmp / "gen").mkdir()
    (tmp / "gen" / "generate.json").write_bytes(b'{"format": "robustlab-adv", trunc')
    return ["generate", *RANDOM, "--n", "4", "--quiet", "--out", str(tmp / "gen")]


def _nan_report(**row: object) -> dict[str, object]:
    """A report document with some row values replaced (json.dumps writes NaN as the bare word NaN)."""
    rows = _report_dict()["rows"]
    return _report_dict(config={"data": "synth", "n": 100, "task": "classification"}, rows=[{**rows[0], **row}])  # type: ignore[index]


def _compare_raw(new: dict[str, object], *, baseline: bool = False) -> Build:
    """``compare`` with one side a raw document: the new report, or the baseline."""

    def build(tmp: Path) -> list[str]:
        raw, good = str(_raw(tmp / "raw.json", new)), str(_report_file(tmp / "good.json"))
        return ["compare", good, raw] if baseline else ["compare", raw, good]

    return build


def _generated(tmp: Path) -> Path:
    """A real adversarial dataset of two shards (random weights: seconds)."""
    out = tmp / "adv"
    args = ["generate", *RANDOM, "-n", "4", "--shard-size", "2", "--attack", "fgsm", "--quiet", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out


def _adv_edited(edit: Callable[[Path], object]) -> Build:
    def build(tmp: Path) -> list[str]:
        root = _generated(tmp)
        edit(root)
        return [*EVAL, *RANDOM, "--data", f"adv:{root}"]

    return build


def _flip_a_pixel(root: Path) -> None:
    shard = root / "shards" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor
    shard.write_bytes(bytes(data))


def _drop_a_shard(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]
    (root / "manifest.json").write_text(json.dumps(manifest))


# ---- faults found after a file was opened: a full disk, damaged pages, edited files -------------------


def _full_disk(after: int = 0) -> None:
    """Every safetensors write after the first ``after`` fails as on a full disk, with safetensors' own error."""
    from safetensors import SafetensorError

    import robustlab.cache

    real, calls = robustlab.cache.save_file, [0]

    def save_file(*args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] > after:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real(*args, **kwargs)  # type: ignore[arg-type]

    PATCH.setattr(robustlab.cache, "save_file", save_file)


def _stored_run(tmp: Path) -> Path:
    """A finished run's store (random weights: seconds), to be damaged by the case."""
    result = CliRunner().invoke(cli, [*EVAL, *RANDOM, "--run-dir", str(tmp / "run")])
    assert result.exit_code == 0, result.output
    return tmp / "run" / "store.sqlite"


def _store_pages_damaged(tmp: Path) -> list[str]:
    store = _stored_run(tmp)
    data = bytearray(store.read_bytes())
    data[8192:] = b"Z" * (len(data) - 8192)  # every page after the first two: the units' b-tree
    store.write_bytes(bytes(data))
    return [*EVAL, *RANDOM, "--run-dir", str(tmp / "run"), "--resume"]


def _store_result_damaged(tmp: Path) -> list[str]:
    store = sqlite3.connect(_stored_run(tmp))
    with store:
        store.execute("UPDATE units SET payload = ?", (b"\x08" * 16,))
    store.close()
    return [*EVAL, *RANDOM, "--run-dir", str(tmp / "run"), "--resume"]


def _store_disk_full(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "store.sqlite.lock").touch()
    real = sqlite3.connect

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        db = real(*args, **kwargs)  # type: ignore[arg-type]
        db.execute("PRAGMA max_page_count = 1")  # SQLite's own "database or disk is full" at the first table
        return db

    PATCH.setattr(sqlite3, "connect", connect)
    return [*EVAL, *RANDOM, "--run-dir", str(tmp / "run")]


def _generate_disk_full(tmp: Path) -> list[str]:
    _full_disk(after=1)  # the first shard is written, the second finds the disk full
    return ["generate", *RANDOM, "-n", "4", "--shard-size", "2", "--attack", "fgsm", "--quiet", "--out", str(tmp / "g")]


def _train_disk_full(tmp: Path) -> list[str]:
    _full_disk()
    return ["train", "--steps", "1", "--eval-n", "4", "--quiet", "--out", str(tmp / "w.safetensors")]


# ---- faults: name -> (build the arguments, fragments of the error line, exit code); files from before stay ----

FAULTS: dict[str, tuple[Build, tuple[str, ...], int]] = {
    "store pages damaged": (_store_pages_damaged, ("store.sqlite", "malformed", "delete it"), 2),
    "store result damaged": (_store_result_damaged, ("store.sqlite", "unreadable", "delete it"), 2),
    "store creation disk full": (_store_disk_full, ("cannot write run store", "full", "free space"), 2),
    "generate shard disk full": (_generate_disk_full, ("shard-00001", "No space left", "free space"), 2),
    "train out disk full": (_train_disk_full, ("w.safetensors", "No space left", "free space"), 2),
}


# ---- the table: name -> (build the arguments, fragments of the error line, exit code) ----------------

CASES: dict[str, tuple[Build, tuple[str, ...], int]] = {
    # 1. component parameters are converted and checked like the flags of the same name
    "attack-arg eps above 1": (lambda t: [*EVAL, "--attack-arg", "fgsm.eps=2"], ("fgsm", "outside [0, 1]"), 2),
    "attack-arg eps nan": (lambda t: [*EVAL, "--attack-arg", "eps=nan"], ("eps=nan", "not a finite"), 2),
    "attack-arg bool word": (_attack_arg("pgd", "pgd.random_start=maybe"), ("random_start", "not a valid boolean"), 2),
    "attack-arg steps text": (_attack_arg("pgd", "pgd.steps=abc"), ("steps=abc", "integer"), 2),
    "attack-arg steps fraction": (_attack_arg("pgd", "steps=2.5"), ("steps=2.5", "integer"), 2),
    "attack-arg steps negative": (_attack_arg("pgd", "pgd.steps=-3"), ("steps=-3", ">=1"), 2),
    "attack-arg step_size text": (_attack_arg("pgd", "pgd.step_size=abc"), ("step_size=abc",), 2),
    "attack-arg step_size negative": (_attack_arg("pgd", "pgd.step_size=-1/255"), ("step_size", "> 0"), 2),
    "attack-arg count zero": (_attack_arg("apgd", "n_restarts=0"), ("n_restarts=0", ">= 1"), 2),
    "attack-arg unknown norm": (_attack_arg("apgd", "apgd.norm=l3"), ("norm=l3", "linf"), 2),
    "attack-arg no equals": (lambda t: [*EVAL, "--attack-arg", "steps"], ("KEY=VALUE",), 2),
    "attack-arg other attack": (lambda t: [*EVAL, "--attack-arg", "pgd.steps=3"], ("'pgd'", "not among"), 2),
    "attack-arg unknown key": (lambda t: [*EVAL, "--attack-arg", "fgsm.epz=3"], ("no parameter 'epz'",), 2),
    "defense-arg int text": (_defense_arg("quantize", "levels=many"), ("levels=many", "integer"), 2),
    "defense-arg bool word": (_defense_arg("quantize", "quantize.bpda=perhaps"), ("bpda=perhaps",), 2),
    # experiment files: values typed as on the command line
    "toml n true": (_toml("n = true\n"), ("key n", "'true' is not a valid integer"), 2),
    "toml n fraction": (_toml("n = 32.9\n"), ("key n", "32.9"), 2),
    "toml n list": (_toml("n = [32, 64]\n"), ("key n", "not a list"), 2),
    "toml date": (_toml("seed = 2024-01-01\n"), ("key seed", "not a string, number or boolean"), 2),
    "toml eps above 1": (_toml('eps = ["2"]\n'), ("key eps", "outside [0, 1]"), 2),
    "toml attack arg": (_toml('attacks = ["fgsm"]\nattack_args = ["fgsm.eps=2"]\n'), ("outside [0, 1]",), 2),
    "toml unknown key": (_toml('attack = "pgd"\n'), ("unknown key", "attack"), 2),
    "toml syntax": (_toml("n = \n"), ("not valid TOML",), 2),
    "toml not utf-8": (_toml(b"n = 8\n# caf\xe9\n"), ("not UTF-8",), 2),
    "toml missing": (lambda t: ["run", str(t / "nope.toml")], ("cannot read experiment",), 2),
    # flags
    "eps above 1": (lambda t: [*EVAL, "--eps", "2"], ("outside [0, 1]",), 2),
    "n zero": (lambda t: [*EVAL[:-4], "-n", "0"], ("n must be a positive",), 2),
    "batch size zero": (lambda t: [*EVAL, "--batch-size", "0"], ("batch size",), 2),
    "seed 30 digits": (lambda t: [*EVAL, "--seed", "1" * 30], ("--seed", "range"), 2),
    "seed negative": (lambda t: [*EVAL, "--seed", "-1"], ("--seed",), 2),
    # 2. validated before working: device, data, model
    "device mps": (lambda t: [*EVAL, "--device", "mps"], ("mps", "not available"), 2),
    "device meta": (lambda t: [*EVAL, "--device", "meta"], ("meta", "cpu, cuda"), 2),
    "device cuda 7": (lambda t: [*EVAL, "--device", "cuda:7"], ("cuda:7",), 2),
    "device unknown": (lambda t: [*EVAL, "--device", "gpu0"], ("unknown device",), 2),
    "data missing folder": (lambda t: [*EVAL, "--data", "imagefolder:/no/such"], ("/no/such", "does not exist"), 2),
    "data unknown name": (lambda t: [*EVAL, "--data", "synht"], ("unknown dataset 'synht'",), 2),
    "data no path": (lambda t: [*EVAL, "--data", "imagefolder"], ("needs a path",), 2),
    "data empty folder": (
        lambda t: (t / "e").mkdir() or [*EVAL, "--data", f"imagefolder:{t / 'e'}"],
        ("no images",),
        2,
    ),
    "train-data missing": (
        lambda t: [*EVAL, "--train-data", "imagefolder:/no/such"],
        ("/no/such", "does not exist"),
        2,
    ),
    "fit-data unknown": (lambda t: [*EVAL, "--fit-data", "cifar11"], ("unknown dataset 'cifar11'",), 2),
    "model unknown": (lambda t: [*EVAL, "--model", "resnet5"], ("unknown model 'resnet5'",), 2),
    "user model not a module": (_user_model("def make():\n    return 'a string'\n"), ("nn.Module",), 2),
    "user model needs arguments": (
        _user_model("def make(width, depth=2):\n    return nn.Conv2d(3, width, 3)\n"),
        ("needs arguments (width)", "calls it with none"),
        2,
    ),
    "num-classes other than the synth world's": (
        lambda t: [*EVAL, "--num-classes", "5"],
        ("trained on the synthetic world's 10 classes, not 5", "--weights PATH"),
        2,
    ),
    "user model wrong shape": (
        _user_model("def make():\n    return nn.Conv2d(3, 10, 32)\n"),
        ("returned shape (1, 10, 1, 1)",),
        2,
    ),
    "user model wrong input": (
        _user_model("def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))\n"),
        ("fails on images of shape (1, 3, 32, 32)",),
        2,
    ),
    # the check runs the model as the attacks will: batches of 1, 2 and --batch-size; float logits on the device
    "user model integer logits": (
        _user_model(_linear_model("return self.fc(x.flatten(1)).round().long()")),
        ("torch.int64 logits", "float scores"),
        2,
    ),
    "user model squeeze in forward": (
        _user_model(_linear_model("return self.fc(x.flatten(1)).squeeze()")),
        ("returned shape (10,) for 1 images", "no squeeze()"),
        2,
    ),
    "user model breaks on one image": (
        _user_model(_linear_model("assert len(x) > 1 or x.ndim == 0; return self.fc(x.flatten(1))")),
        ("fails on images of shape (1, 3, 32, 32)",),
        2,
    ),
    "user model breaks on the batch size": (
        lambda t: [*_user_model(_linear_model(_ONLY_PAIRS))(t), "--batch-size", "3"],
        ("fails on images of shape (3, 3, 32, 32)", "only pairs"),
        2,
    ),
    "user model logits elsewhere": (
        _user_model(_linear_model("return self.fc(x.flatten(1)).to('meta')")),
        ("logits on meta for images on cpu",),
        2,
    ),
    # 6. models that cannot be right: flagged under the table, exit 2 with --strict (the CI setting)
    "model NaN logits strict": (
        _strict(_user_model(_linear_model("return self.fc(x.flatten(1)) * float('nan')"))),
        ("--strict", "sanity.nonfinite_logits"),
        2,
    ),
    "model ignores its input strict": (
        _strict(_user_model(_linear_model("return self.fc(x.flatten(1)) * 0 + self.fc.bias"))),
        ("--strict", "sanity.constant_outputs"),
        2,
    ),
    "user model missing": (lambda t: [*EVAL, "--model", "no_such_module:make"], ("cannot load user model",), 2),
    # 3. users' files: one line naming the file
    "weights empty pt": (_checkpoint(b"", ".pt"), ("weights.pt",), 2),
    "weights garbage safetensors": (_checkpoint(b"garbage" * 20, ".safetensors"), ("weights.safetensors",), 2),
    "weights truncated safetensors": (_truncated_safetensors, ("cut.safetensors", "not a complete safetensors"), 2),
    "weights missing": (lambda t: [*EVAL, "--weights", str(t / "none.pt")], ("no checkpoint file",), 2),
    "cached weights corrupt": (_corrupt_cached_weights, ("smallcnn-synth-", "delete it"), 2),
    "ROBUSTLAB_HOME a file": (_home_is_a_file, ("ROBUSTLAB_HOME",), 2),
    "store corrupt on resume": (_corrupt_store, ("store.sqlite", "unreadable", "delete"), 2),
    "generate marker corrupt": (_generate_marker, ("generate.json", "damaged"), 2),
    "adv manifest corrupt": (_adv(b'{"format": '), ("manifest.json", "damaged"), 2),
    "adv manifest array": (_adv([1, 2]), ("manifest.json", "list"), 2),
    "adv manifest no shards": (_adv({**ADV_MANIFEST, "shards": []}), ("lists no shards",), 2),
    "adv shard garbage": (_adv({**ADV_MANIFEST, "classes": ["a"]}, b"\x08" * 64), ("shard-00000",), 2),
    "image decompression bomb": (_bomb, ("0.png", "decompression bomb"), 2),
    "baseline not utf-8": (_baseline(b"\xff\xfe{}"), ("base.json", "not a JSON report"), 2),
    "baseline not an object": (_baseline([1, 2, 3]), ("base.json", "JSON array"), 2),
    "baseline rows not a list": (_baseline(_report_dict(rows=1)), ("rows is a JSON integer",), 2),
    "baseline lacks config": (_baseline({**_report_dict(), "config": None}), ("config is a JSON null",), 2),
    "baseline row n text": (
        _baseline(_report_dict(rows=[{**_report_dict()["rows"][0], "n": "100"}])),  # type: ignore[index]
        ("rows[0].n is a JSON string",),
        2,
    ),
    "baseline of other data": (
        lambda t: [*EVAL, "--baseline", str(_report_file(t / "base.json", data="cifar10"))],
        ("data='cifar10'",),
        2,
    ),
    "report garbage": (lambda t: ["report", str(_raw(t / "r.json", "{oops")), "-o", str(t / "r.html")], ("r.json",), 2),
    # 4. outputs never destroy what they should not
    "out is baseline": (
        lambda t: [*EVAL, "--baseline", str(_report_file(t / "b.json", n=4)), "--out", str(t / "b.json")],
        ("is the --baseline",),
        2,
    ),
    "out is a folder": (lambda t: (t / "d").mkdir() or [*EVAL, "--out", str(t / "d")], ("is a directory",), 2),
    "out is a FIFO": (_fifo, ("a FIFO",), 2),
    "out is a device": (lambda t: [*EVAL, "--out", os.devnull], ("a device",), 2),
    "out under a file": (
        lambda t: [*EVAL, "--out", str(_raw(t / "f", "x") / "run.json")],
        ("is a file, not a folder",),
        2,
    ),
    "run-dir is a file": (lambda t: [*EVAL, "--run-dir", str(_raw(t / "f", "x"))], ("is a file",), 2),
    "run-dir store exists": (lambda t: [*EVAL, "--run-dir", str(_store(t))], ("already exists", "--resume"), 2),
    "run-dir other config": (
        lambda t: [*EVAL, "--run-dir", str(_store(t)), "--resume"],
        ("different configuration", "delete"),
        2,
    ),
    "resume without run-dir": (lambda t: [*EVAL, "--resume"], ("--resume needs --run-dir",), 2),
    "report -o a folder": (
        lambda t: (t / "d").mkdir() or ["report", str(_report_file(t / "r.json")), "-o", str(t / "d")],
        ("is a directory",),
        2,
    ),
    "report unknown format": (
        lambda t: ["report", str(_report_file(t / "r.json")), "-o", str(t / "r.xyz")],
        ("cannot tell the format",),
        2,
    ),
    "generate out is a file": (
        lambda t: ["generate", "--n", "4", "--out", str(_raw(t / "f", "x"))],
        ("is a file",),
        2,
    ),
    "generate missing data": (
        lambda t: ["generate", "--n", "4", "--data", "imagefolder:/no/such", "--out", str(t / "g")],
        ("does not exist",),
        2,
    ),
    # 5. data that would be silently wrong: compare over other data or n, a gate that fails
    "compare other data": (_compare({"data": "synth"}, {"data": "imagefolder:x"}), ("data=",), 2),
    "compare other n": (_compare({"n": 100}, {"n": 1000}), ("n=100", "n=1000"), 2),
    "compare other grid": (_compare({"attack": "pgd"}, {}), ("another grid",), 2),
    "compare missing file": (lambda t: ["compare", str(t / "a.json"), str(t / "b.json")], ("cannot read report",), 2),
    "compare regression": (_compare({"robust_acc": 0.1}, {}), ("gate failed",), 1),
    # reports and adversarial datasets are checked on read: the gate fails closed, an edited dataset is refused
    "compare NaN accuracy": (_compare_raw(_nan_report(robust_acc=float("nan"))), ("robust_acc is nan",), 2),
    "compare NaN baseline": (
        _compare_raw(_nan_report(clean_acc=float("nan")), baseline=True),
        ("clean_acc is nan", "not a finite"),
        2,
    ),
    "compare accuracy above 1": (_compare_raw(_nan_report(clean_acc=1.5)), ("clean_acc is 1.5", "[0, 1]"), 2),
    "compare infinite metric": (
        _compare_raw(_nan_report(metrics={"acc": {"value": float("inf"), "higher_is_better": True}})),
        ("metrics.acc.value is inf",),
        2,
    ),
    "adv shard edited": (_adv_edited(_flip_a_pixel), ("shard-00001", "SHA-256 differs", "edited or replaced"), 2),
    "adv shard dropped from manifest": (_adv_edited(_drop_a_shard), ("holds 2 images", "records 4"), 2),
    "adv shard missing": (
        _adv_edited(lambda root: (root / "shards" / "shard-00000.safetensors").unlink()),
        ("cannot read", "shard-00000"),
        2,
    ),
    "adv manifest without hashes": (
        _adv_edited(
            lambda root: _raw(
                root / "manifest.json", {**json.loads((root / "manifest.json").read_text()), "sha256": None}
            )
        ),
        ("records no content hashes",),
        2,
    ),
    # hidden folders are not classes
    "data only hidden folders": (
        lambda t: [*EVAL, *RANDOM, "--data", f"imagefolder:{_images(t / 'tree' / '.git').parent}"],
        ("no images",),
        2,
    ),
}


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Result]]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path.parent / f"{tmp_path.name}-torch"))  # outside the snapshot
    monkeypatch.setenv("ROBUSTLAB_HOME", os.environ["ROBUSTLAB_HOME"])  # cases may point it elsewhere
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield lambda *args: CliRunner().invoke(cli, list(args))
    PATCH.undo()


def _snapshot(root: Path) -> Snapshot:
    """Every entry under ``root``: its kind, size and content hash (symlinks and special files by kind only).

    Lock files are left out: they hold nothing, and a run store removes its own when it closes.
    """
    found = {}
    for folder, subfolders, files in os.walk(root):
        for name in subfolders + files:
            path = Path(folder) / name
            if path.suffix == ".lock":
                continue
            info = path.lstat()
            if path.is_symlink() or not path.is_file():
                found[str(path)] = (oct(info.st_mode), 0, os.readlink(path) if path.is_symlink() else "")
            else:
                found[str(path)] = ("file", info.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def assert_one_error_line(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("robustlab: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_the_table_is_long_enough() -> None:
    assert len(CASES) >= 60


def _run_case(
    case: tuple[Build, tuple[str, ...], int], run: Callable[..., Result], tmp_path: Path
) -> tuple[Snapshot, Snapshot]:
    """Build a table row's arguments, run them and check its one error line; the folder before and after the run."""
    build, fragments, code = case
    args = build(tmp_path)
    before = _snapshot(tmp_path)
    result = run(*args)
    assert_one_error_line(result, code, *fragments)
    return before, _snapshot(tmp_path)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(case: str, run: Callable[..., Result], tmp_path: Path) -> None:
    before, after = _run_case(CASES[case], run, tmp_path)
    assert after == before, "a failed command must not create, change or replace a file"


@pytest.mark.parametrize("case", list(FAULTS))
def test_a_fault_is_one_line_and_keeps_what_was_there(case: str, run: Callable[..., Result], tmp_path: Path) -> None:
    before, after = _run_case(FAULTS[case], run, tmp_path)
    assert {path: after.get(path) for path in before} == before, "a fault must not change or remove a prior file"


def test_a_defense_trained_before_the_disk_filled_is_used_and_said(run: Callable[..., Result], tmp_path: Path) -> None:
    os.environ["ROBUSTLAB_HOME"] = str(tmp_path / "home")  # an empty cache: the defense trains (seconds)
    _full_disk()
    tiny = ["f_steps=2", "g_steps=2", "n_images=8", "batch_size=2"]
    defense = ["raw_isp", *(arg for value in tiny for arg in ("--defense-arg", value))]
    result = run(*EVAL, *RANDOM, "--defense", *defense, "--threat-mode", "transfer", "--out", "run.json")
    assert result.exit_code == 0, result.output
    (note,) = [line for line in result.stderr.splitlines() if line.startswith("robustlab: note:")]
    assert "cannot write the cache file" in note and "kept in memory for this run" in note, note
    assert any(row["defense"].startswith("raw_isp") for row in json.loads((tmp_path / "run.json").read_text())["rows"])
    assert not list((tmp_path / "home").rglob("*.safetensors")), "nothing half-written in the cache"
    assert_one_error_line(
        run("train-defense", *defense, *RANDOM, "--quiet"), 2, "cannot write the cache file", "is lost"
    )


def test_written_files_get_the_users_normal_permissions(tmp_path: Path) -> None:
    from robustlab.cache import atomic_write, save_weights

    old = os.umask(0o022)
    try:
        save_weights(tmp_path / "w.safetensors", {"w": torch.ones(2)})
        atomic_write(tmp_path / "r.json", b"{}")
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {oct(0o644)}, "as open() would make them"


# ---- what a table row cannot show -----------------------------------------------------------------------


def test_component_values_mean_what_they_say() -> None:
    import robustlab.attacks

    from robustlab.cli.options import build_specs

    (spec,) = build_specs(robustlab.attacks.ATTACKS, ["pgd"], ["random_start=no", "eps=4/255", "steps=7"])
    assert dict(spec.params) == {"random_start": False, "eps": 4 / 255, "steps": 7}
    (spec,) = build_specs(robustlab.attacks.ATTACKS, ["apgd"], ["norm=L2"])
    assert dict(spec.params) == {"norm": "l2"}, "an enum stays its spelled-out value: labels and hashes unchanged"


def test_a_second_process_on_a_run_dir_is_refused(run: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    lock = tmp_path / "run" / "store.sqlite.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1],'ab'); fcntl.lockf(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(120)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = _snapshot(tmp_path)
        assert_one_error_line(run(*EVAL, "--run-dir", str(tmp_path / "run")), 2, "in use by another robustlab process")
        assert _snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()


def test_missing_data_fails_before_anything_is_trained(run: Callable[..., Result], tmp_path: Path) -> None:
    home = tmp_path.parent / f"{tmp_path.name}-home"  # an empty cache: the default model would train first
    home.mkdir()
    os.environ["ROBUSTLAB_HOME"] = str(home)
    result = run("eval", "--data", "imagefolder:/no/such", "--weights", "synth")
    assert_one_error_line(result, 2, "/no/such", "does not exist")
    assert [p for p in home.rglob("*") if p.is_file()] == [], "nothing was trained or cached"


def test_image_folder_reads_each_image_once_and_16_bit_grey_as_grey(tmp_path: Path) -> None:
    from robustlab.data import load_dataset

    root = _images(tmp_path / "tree", count=2)
    (root / "c0" / "loop").symlink_to(root / "c0")  # a loop inside a class
    (root / "c1" / "up").symlink_to(root)  # and one back to the top: class c0's images must not be relabelled
    wide = np.full((32, 32), 40000, np.uint16)  # 40000 / 65535 of full scale: 156 on 8 bits
    Image.fromarray(wide).save(root / "c1" / "grey16.png")
    dataset = load_dataset(f"imagefolder:{root}", split="test", image_size=32)
    assert len(dataset) == 3
    x, label = dataset[[path for path, _ in dataset._folder.samples].index(str(root / "c1" / "grey16.png"))]
    assert label == 1
    assert torch.allclose(x, torch.full_like(x, 156 / 255), atol=1 / 255), "scaled, not clipped to white"


def test_more_samples_than_the_data_has_is_said(run: Callable[..., Result], tmp_path: Path) -> None:
    root = _images(tmp_path / "tree", count=2)
    result = run(
        "eval", "--quiet", "--weights", "random", "--attack", "fgsm", "-n", "50", "--data", f"imagefolder:{root}"
    )
    assert result.exit_code == 0, result.output
    assert "robustlab: note: -n 50 asks for more samples than" in result.stderr and "all 2 are used" in result.stderr


def test_report_through_a_symlink_updates_its_target(run: Callable[..., Result], tmp_path: Path) -> None:
    target = _raw(tmp_path / "target.md", "old\n")
    (tmp_path / "link.md").symlink_to(target)
    result = run("report", str(_report_file(tmp_path / "r.json")), "-o", str(tmp_path / "link.md"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link.md").is_symlink() and "| fgsm |" in target.read_text()


KILL_AT_REPORT_WRITE = """
import os, signal, sys
import robustlab.cache as cache
real_fsync = os.fsync
def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".run.json."):
        os.kill(os.getpid(), signal.SIGKILL)  # half the report is on disk, in its temporary file
    real_fsync(fd)
cache.os.fsync = fsync
from robustlab.cli import main
sys.argv = ["robustlab", *sys.argv[1:]]
main()
"""


def test_a_kill_during_the_report_write_leaves_the_previous_report(
    tmp_path: Path, trained_model: torch.nn.Module, child_env: dict[str, str]
) -> None:
    args = ["eval", "--quiet", "-n", "8", "--attack", "fgsm", "--out", "run.json"]
    env = child_env
    first = subprocess.run(
        [sys.executable, "-m", "robustlab", *args, "--eps", "2/255"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    previous = (tmp_path / "run.json").read_bytes()
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_REPORT_WRITE, *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "run.json").read_bytes() == previous, "the finished report is untouched"
    orphans = [p.name for p in tmp_path.glob(".run.json.*.tmp")]
    assert len(orphans) == 1, "the killed writer left its temporary file"
    again = subprocess.run(
        [sys.executable, "-m", "robustlab", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"], "the next write removed the orphan"
    assert json.loads((tmp_path / "run.json").read_text())["rows"][0]["threat"] == "linf 8/255"


def test_a_user_model_declaring_its_head_first_is_not_refused(run: Callable[..., Result], tmp_path: Path) -> None:
    source = (
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.head = nn.Linear(64, 10)\n"
        "        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3072, 64))  # the last linear layer declared\n"
        "    def forward(self, x):\n"
        "        return self.head(self.body(x))\n"
        "def make():\n"
        "    return Net()\n"
    )
    result = run(*_user_model(source)(tmp_path))
    assert result.exit_code == 0, result.output


def test_sigterm_is_an_interrupt_and_the_store_resumes(tmp_path: Path) -> None:
    args = [*EVAL[:2], "-n", "64", "--batch-size", "8", "--attack", "pgd", "--steps", "50", *RANDOM]
    args += ["--run-dir", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "robustlab", *args]
    running = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    store = tmp_path / "run" / "store.sqlite"
    try:
        while running.poll() is None and not _stored_units(store):
            time.sleep(0.2)  # a batch is stored: the run is under way
        running.send_signal(signal.SIGTERM)
        _, stderr = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines() == ["robustlab: error: interrupted"], stderr[-2000:]
    kept = _stored_units(store)
    assert kept, "the finished batches are kept"
    again = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]


def _stored_units(store: Path) -> int:
    if not store.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM units").fetchone()[0])
    except sqlite3.Error:  # the tables are not created yet
        return 0


def test_hidden_folders_are_not_classes_and_generated_trees_read_back(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    from robustlab.data import load_dataset

    root = _images(tmp_path / "tree", count=4)
    _images(root / ".ipynb_checkpoints", count=2)
    _images(root / "c0" / ".ipynb_checkpoints", count=2)  # a notebook's copies inside a class
    dataset = load_dataset(f"imagefolder:{root}", split="test", image_size=32)
    assert (dataset.classes, len(dataset)) == (["c0", "c1"], 4)
    out = _generated(tmp_path)  # 4 images: most of synth's 10 class folders are empty by design
    png = load_dataset(f"imagefolder:{out / 'png'}", split="test", image_size=32)
    assert png.num_classes == 10 and len(png) == 4
    assert sorted(png.targets) == sorted(r["label"] for r in json.loads((out / "manifest.json").read_text())["samples"])


def test_half_precision_logits_are_upcast_and_said(run: Callable[..., Result], tmp_path: Path) -> None:
    result = run(*_user_model(_linear_model("return self.fc(x.flatten(1)).half()"))(tmp_path))
    assert result.exit_code == 0, result.output
    assert "returns torch.float16 logits: upcast to float32" in result.stdout
