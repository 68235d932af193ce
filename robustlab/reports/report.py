"""The versioned JSON report of a run, and its console table.

One document per run: the configuration, the environment, one row per model x defense x threat
mode x attack (plus a per-sample worst case), diagnostics, and per-sample results. ``schema_version``
changes whenever a field changes meaning; readers refuse other versions rather than misread them.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from robustlab.cache import atomic_write
from robustlab.errors import ConfigError, DataError
from robustlab.intervals import PairedDifference, paired_difference, wilson_interval, with_interval
from robustlab.reports.check import check_report_document

__all__ = [
    "CLASSIFICATION",
    "SCHEMA_VERSION",
    "TABLE_COLUMNS",
    "Diagnostic",
    "Fidelity",
    "Report",
    "Row",
    "environment",
    "format_table",
    "other_metrics",
    "paired_rows",
    "robust_per_sample",
    "row_key",
    "row_value",
    "shown_columns",
]

SCHEMA_VERSION = 2
WORST_CASE = "worst-case"
CLASSIFICATION = "classification"
"""The task of a plain classifier's rows (:class:`robustlab.tasks.Classification`)."""


@dataclass(frozen=True)
class Row:
    """Aggregates of one grid cell.

    Every row carries its attack ``kind``, its ``task`` and a ``metrics`` mapping (name -> ``value``,
    ``higher_is_better``, ``gated``, ``proportion``) that the gate compares by name and direction. For
    classification tasks the accuracies also stand in their own fields: ``robust_acc`` counts a sample
    as robust when it was classified correctly and the attack failed; ``attack_success_rate`` is the
    fraction of attacked (clean-correct) samples the attack broke; the norms are over the successful
    adversarial examples (None when there are none). ``artifact`` is the file a universal attack's
    perturbation was written to, if any. ``success_rule`` names which point of each sample's attack was
    scored (:data:`robustlab.victims.SUCCESS_RULES`; empty on rows without inputs and on older reports).
    ``clean_interval`` and ``robust_interval`` are the accuracies' 95% Wilson intervals on ``n`` samples.
    ``classifies`` says whether the row scores a classifier on the dataset's own labels, as AutoAttack does (the
    scoring task's :attr:`robustlab.tasks.Task.classifies`): what the leaderboard check, the sanity gate and the
    per-sample exports read. Rows of downstream heads, captioners and generated images set it False.
    """

    model: str
    defense: str
    threat_mode: str
    attack: str
    threat: str
    n: int
    clean_acc: float | None
    robust_acc: float | None
    attack_success_rate: float | None
    mean_norm: float | None
    max_norm: float | None
    seconds: float
    attack_config: dict[str, Any] = field(default_factory=dict)
    kind: str = "perturbation"
    task: str = CLASSIFICATION
    classifies: bool = True
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifact: str | None = None
    success_rule: str = ""
    clean_interval: tuple[float, float] | None = None
    robust_interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.classifies and self.clean_acc is not None:
            # the accuracy fields are the truth of a classification row (a schema-1 report, a hand-made or
            # dataclasses.replace()d row): its metrics follow them
            object.__setattr__(self, "metrics", {**self.metrics, **_accuracy_metrics(self)})
        for name in ("clean", "robust"):  # derived from the accuracy and n, whatever a file said
            value = getattr(self, f"{name}_acc")
            interval = None if value is None or self.n <= 0 else wilson_interval(value, self.n)
            object.__setattr__(self, f"{name}_interval", interval)

    def key(self) -> tuple[str, ...]:
        """Identity of the row across runs (what a baseline comparison matches on), see :func:`row_key`."""
        return row_key(self.model, self.defense, self.threat_mode, self.attack, self.threat, self.task)

    def metric_values(self) -> dict[str, float]:
        """Metric name -> value."""
        return {name: float(m["value"]) for name, m in self.metrics.items()}


def row_key(model: str, defense: str, mode: str, attack: str, threat: str, task: str) -> tuple[str, ...]:
    """A row's identity: its labels.

    Labels name only what differs from the defaults (``smallcnn`` for ``--weights synth``, ``pgd`` for
    ``--steps 10``), so one evaluation has one key however it was asked for; the gate also compares
    the attack's resolved hyperparameters (``attack_config``) of rows with the same key.
    """
    return (model, defense, mode, attack, threat, task)


@dataclass(frozen=True)
class Diagnostic:
    """A finding about the evaluation's validity (gradient masking, an oblivious-only result...)."""

    code: str
    message: str
    model: str = ""
    defense: str = ""


@dataclass(frozen=True)
class Fidelity:
    """What a preprocessing defense does to clean images: PSNR of ``transform(x)`` against ``x``, in dB.

    A defense that wins robustness by destroying the image shows it here (and in ``clean_acc``).
    Identical images count as 100 dB.
    """

    model: str
    defense: str
    n: int
    mean_psnr_db: float
    worst_psnr_db: float

    def describe(self) -> str:
        """One line for the console, under the table."""
        return (
            f"{self.defense} returns {self.model}'s clean inputs at {self.mean_psnr_db:.1f} dB PSNR "
            f"(worst {self.worst_psnr_db:.1f} dB, {self.n} images)"
        )


@dataclass(frozen=True)
class Report:
    """Everything a run measured; ``to_json``/``from_json`` round-trip it."""

    config: dict[str, Any]
    environment: dict[str, Any]
    rows: list[Row]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    fidelity: list[Fidelity] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    """How the data was sampled and each model fed (size, mean, std): printed under the table."""
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    """Claimed against measured accuracies (:mod:`robustlab.leaderboard`), when ``--leaderboard`` was given."""
    schema_version: int = SCHEMA_VERSION

    def to_json(self, path: Path) -> None:
        """Write the report atomically: a crash never leaves a half-written file."""
        text = json.dumps(asdict(self), indent=1, allow_nan=False, default=_jsonable)
        try:
            atomic_write(Path(path), (text + "\n").encode())
        except OSError as error:
            raise DataError(f"cannot write report {path}: {error.strerror or error}") from None

    @classmethod
    def from_json(cls, path: Path) -> Report:
        """Read a report, refusing another schema version."""
        try:
            data = json.loads(Path(path).read_bytes().decode("utf-8"))
        except OSError as error:
            raise DataError(f"cannot read report {path}: {error.strerror or error}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(
                f"report {path} is not a JSON report ({error}): pass the file robustlab eval --out wrote"
            ) from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version in (1, SCHEMA_VERSION) or not isinstance(data, dict):
            check_report_document(path, data)
        else:
            raise ConfigError(
                f"report {path} has schema version {version}, this robustlab reads 1 and {SCHEMA_VERSION}: "
                f"regenerate it with this version's robustlab eval"
            )
        row_fields = {f.name for f in fields(Row)}
        try:
            return cls(
                config=data["config"],
                environment=data["environment"],
                rows=[
                    Row(**{k: v for k, v in _saying_classifies(row).items() if k in row_fields}) for row in data["rows"]
                ],
                diagnostics=[Diagnostic(**d) for d in data.get("diagnostics", [])],
                samples=[_saying_classifies(block) for block in data.get("samples", [])],
                seconds=data.get("seconds", 0.0),
                fidelity=[Fidelity(**f) for f in data.get("fidelity", [])],
                inputs=data.get("inputs", []),
                leaderboard=data.get("leaderboard", []),
            )
        except TypeError as error:  # a diagnostic or fidelity entry with other keys
            raise DataError(
                f"report {path} is not a robustlab report: {error}; regenerate it with robustlab eval"
            ) from None


def _saying_classifies(entry: dict[str, Any]) -> dict[str, Any]:
    """A row or per-sample block with its ``classifies`` flag: reports written before entries carried it said so by
    the plain classifier's task name (and schema 1 had no task: it only evaluated classifiers)."""
    if "classifies" in entry:
        return entry
    return {**entry, "classifies": entry.get("task", CLASSIFICATION) == CLASSIFICATION}


def _accuracy_metrics(row: Row) -> dict[str, dict[str, Any]]:
    """The metrics mapping of a classification row whose accuracies are all it has."""
    metrics = {
        name: {"value": getattr(row, name), "higher_is_better": True, "gated": True, "proportion": True}
        for name in ("clean_acc", "robust_acc")
    }
    metrics["attack_success_rate"] = {
        "value": row.attack_success_rate,
        "higher_is_better": False,
        "gated": False,
        "proportion": True,
    }
    return metrics


def _jsonable(value: Any) -> Any:
    if hasattr(value, "value"):  # enums
        return value.value
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware that produced a report."""
    import torch

    import robustlab

    info: dict[str, Any] = {
        "robustlab": robustlab.__version__,
        "torch": torch.__version__,
        "torchattacks": metadata.version("torchattacks"),  # importing it (scipy) took 0.5 s of every evaluation
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


TABLE_COLUMNS = (  # (title, Row field, format) of the console table
    ("model", "model", "{}"),
    ("defense", "defense", "{}"),
    ("mode", "threat_mode", "{}"),
    ("task", "task", "{}"),
    ("attack", "attack", "{}"),
    ("threat", "threat", "{}"),
    ("n", "n", "{}"),
    ("clean", "clean_acc", "{}"),
    ("robust", "robust_acc", "{}"),
    ("ASR", "attack_success_rate", "{:.2%}"),
    ("mean norm", "mean_norm", "{:.4f}"),
    ("max norm", "max_norm", "{:.4f}"),
    ("sec", "seconds", "{:.1f}"),
    ("metrics", "other_metrics", "{}"),
)


def other_metrics(row: Row) -> str | None:
    """The metrics that have no column of their own (a task's own: BLEU, classes fooled...), as ``name=value``."""
    shown = {"clean_acc", "robust_acc", "attack_success_rate"}
    parts = [f"{name}={m['value']:.4g}" for name, m in row.metrics.items() if name not in shown]
    return " ".join(parts) or None


def row_value(row: Row, name: str) -> Any:
    """The value of a table column: a :class:`Row` field, ``other_metrics``, or an accuracy with its interval."""
    if name in ("clean_acc", "robust_acc"):
        return with_interval(getattr(row, name), row.n)
    return other_metrics(row) if name == "other_metrics" else getattr(row, name)


def shown_columns(columns: tuple[tuple[str, str, str], ...], rows: list[Row]) -> tuple[tuple[str, str, str], ...]:
    """``columns`` less the metrics column when no row has other metrics, and the task column when every row is of
    one classifying task (what they would repeat)."""
    hidden = set()
    if not any(other_metrics(row) for row in rows):
        hidden.add("other_metrics")
    if all(row.classifies for row in rows) and len({row.task for row in rows}) <= 1:
        hidden.add("task")
    return tuple(column for column in columns if column[1] not in hidden)


def format_table(rows: list[Row]) -> str:
    """Render rows as an aligned plain-text table."""
    columns = shown_columns(TABLE_COLUMNS, rows)
    header = [title for title, _, _ in columns]
    body = [[_cell(row_value(row, name), fmt) for _, name, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in [header, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def robust_per_sample(report: Report, row: Row) -> tuple[list[int], list[bool]]:
    """``(dataset indices, robust)`` of a classification row of ``report`` read from its per-sample results.

    A sample is robust when its clean prediction and its prediction under the row's attack (under every
    attack of its block, for a worst-case row) are its label.
    """
    where = (row.model, row.defense, row.threat_mode, row.task)
    blocks = [b for b in report.samples if (b["model"], b["defense"], b["threat_mode"], b["task"]) == where]
    if not blocks:
        raise ValueError(f"the report has no per-sample results for {' / '.join(where)}")
    block = blocks[0]
    attacks = [
        entry
        for entry in block["attacks"]
        if row.attack == WORST_CASE or (entry["attack"], entry["threat"]) == (row.attack, row.threat)
    ]
    if not attacks or "adv_pred" not in attacks[0]:
        raise ValueError(f"the report has no per-sample predictions for {row.attack} at {row.threat}")
    labels = block["label"]
    robust = [
        clean == label and all(entry["adv_pred"][i] == label for entry in attacks)
        for i, (clean, label) in enumerate(zip(block["clean_pred"], labels, strict=True))
    ]
    return list(block["index"]), robust


def paired_rows(report: Report, first: Row, second: Row) -> PairedDifference:
    """``first - second`` robust accuracy of two rows of one report, paired sample by sample."""
    index_first, robust_first = robust_per_sample(report, first)
    index_second, robust_second = robust_per_sample(report, second)
    if index_first != index_second:
        raise ValueError("the two rows were not measured on the same samples")
    return paired_difference(robust_first, robust_second)
