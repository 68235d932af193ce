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
from pathlib import Path
from typing import Any

from robustlab.cache import atomic_write
from robustlab.errors import ConfigError, DataError

__all__ = [
    "SCHEMA_VERSION",
    "TABLE_COLUMNS",
    "Diagnostic",
    "Fidelity",
    "Report",
    "Row",
    "environment",
    "format_table",
]

SCHEMA_VERSION = 1
WORST_CASE = "worst-case"


@dataclass(frozen=True)
class Row:
    """Aggregates of one grid cell.

    ``robust_acc`` counts a sample as robust when it was classified correctly and the attack failed;
    ``attack_success_rate`` is the fraction of attacked (clean-correct) samples the attack broke;
    the norms are over the successful adversarial examples (None when there are none).
    """

    model: str
    defense: str
    threat_mode: str
    attack: str
    threat: str
    n: int
    clean_acc: float
    robust_acc: float
    attack_success_rate: float
    mean_norm: float | None
    max_norm: float | None
    seconds: float
    attack_config: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple[str, str, str, str, str]:
        """Identity of the row across runs (what a baseline comparison matches on)."""
        return (self.model, self.defense, self.threat_mode, self.attack, self.threat)


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
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"cannot read report {path}: {error}") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise ConfigError(f"report {path} has schema version {version}, this robustlab reads {SCHEMA_VERSION}")
        row_fields = {f.name for f in fields(Row)}
        return cls(
            config=data["config"],
            environment=data["environment"],
            rows=[Row(**{k: v for k, v in row.items() if k in row_fields}) for row in data["rows"]],
            diagnostics=[Diagnostic(**d) for d in data.get("diagnostics", [])],
            samples=data.get("samples", []),
            seconds=data.get("seconds", 0.0),
            fidelity=[Fidelity(**f) for f in data.get("fidelity", [])],
        )


def _jsonable(value: Any) -> Any:
    if hasattr(value, "value"):  # enums
        return value.value
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware that produced a report."""
    import torch
    import torchattacks

    import robustlab

    info: dict[str, Any] = {
        "robustlab": robustlab.__version__,
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
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
    ("attack", "attack", "{}"),
    ("threat", "threat", "{}"),
    ("n", "n", "{}"),
    ("clean", "clean_acc", "{:.2%}"),
    ("robust", "robust_acc", "{:.2%}"),
    ("ASR", "attack_success_rate", "{:.2%}"),
    ("mean norm", "mean_norm", "{:.4f}"),
    ("max norm", "max_norm", "{:.4f}"),
    ("sec", "seconds", "{:.1f}"),
)


def format_table(rows: list[Row]) -> str:
    """Render rows as an aligned plain-text table."""
    header = [title for title, _, _ in TABLE_COLUMNS]
    body = [[_cell(getattr(row, name), fmt) for _, name, fmt in TABLE_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in [header, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)
