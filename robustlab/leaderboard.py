"""``--leaderboard``: a run's clean and AutoAttack accuracies against what RobustBench's leaderboard claims.

An entry is a RobustBench ``model_info`` JSON (``model_info/DATASET/THREAT/NAME.json`` in a clone of
its repository, or a file of the same shape): accuracies as percent strings (``"62.80"``), ``eps`` as
``"8/255"``, ``external`` (a stronger attack's number, taking precedence over ``autoattack_acc``) and
``unreliable``. The measured accuracy on the first ``n`` of the ``N`` test points is compared with
the claim through a z-score that uses the finite-population standard error
``sqrt(p (1 - p) / n * (N - n) / (N - 1))``; on the full test set there is no sampling error, so a
difference over 0.5 point is flagged instead. Clean accuracy is compared too: it is what catches a
wrongly loaded or wrongly preprocessed model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from robustlab.budgets import format_eps, parse_eps
from robustlab.data.base import DataSpec
from robustlab.errors import ConfigError, DataError
from robustlab.reports.report import Diagnostic, Report, Row

__all__ = ["TEST_POINTS", "Claim", "Comparison", "check_leaderboard", "describe_comparison", "find_entry", "read_claim"]

TEST_POINTS = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 5_000}
"""Test points RobustBench evaluates on (ImageNet: its fixed 5000-image list)."""
Z_LIMIT = 2.0
FULL_SET_LIMIT = 0.5
"""Percentage points a full-test-set measurement may differ from its claim (no sampling error left)."""
_DATA_NAMES = {"imagefolder": "imagenet"}  # an ImageNet validation folder is read as imagefolder:PATH


@dataclass(frozen=True)
class Claim:
    """What one leaderboard entry says, accuracies in percent."""

    name: str
    dataset: str
    threat: str
    eps: float | None
    clean: float | None
    robust: float | None
    robust_key: str
    unreliable: bool
    source: str


@dataclass(frozen=True)
class Comparison:
    """A claimed accuracy against the measured one (percent); ``status`` ``ok``, ``mismatch`` or ``skipped``."""

    model: str
    attack: str
    metric: str
    claimed: float | None
    measured: float | None
    delta: float | None
    z: float | None
    n: int
    status: str
    reason: str = ""

    def describe(self) -> str:
        """One line for the console and the Markdown report."""
        what = f"{self.model} {self.metric} ({self.attack})"
        if self.claimed is None or self.measured is None or self.delta is None:
            return f"{what}: skipped, {self.reason}"
        z = f", z {self.z:+.2f}" if self.z is not None else ""
        line = (
            f"{what}: claimed {self.claimed:.2f}%, measured {self.measured:.2f}% on {self.n}, Δ {self.delta:+.2f} pt{z}"
        )
        return f"{line} ({self.reason})" if self.reason else line


def describe_comparison(entry: dict[str, Any]) -> str:
    """A report's stored comparison, as one line."""
    return Comparison(**entry).describe()


def find_entry(source: Path, *, name: str, dataset: str, threat: str) -> Path:
    """``source`` itself when a file, else ``NAME.json`` in RobustBench's layout under it (or under ``model_info``)."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise DataError(f"--leaderboard {source} does not exist: pass a model_info folder or a model_info JSON")
    for root in (source, source / "model_info"):
        for candidate in (root / dataset / threat / f"{name}.json", root / f"{name}.json"):
            if candidate.is_file():
                return candidate
    raise DataError(f"--leaderboard {source} has no entry for {name}: expected {source / dataset / threat / name}.json")


def read_claim(path: Path, *, threat: str) -> Claim:
    """Parse a model_info JSON; ``threat`` is the folder's (``Linf``, ``L2``) when the file does not say."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read leaderboard entry {path}: {error}") from None
    if not isinstance(data, dict):
        raise DataError(f"leaderboard entry {path} is not a JSON object")
    external = _percent(data, "external", path)
    return Claim(
        name=str(data.get("name") or path.stem),
        dataset=str(data.get("dataset") or ""),
        threat=str(data.get("threat_model") or threat),
        eps=_eps(data.get("eps"), path),
        clean=_percent(data, "clean_acc", path),
        robust=external if external is not None else _percent(data, "autoattack_acc", path),
        robust_key="external" if external is not None else "autoattack_acc",
        unreliable=bool(data.get("unreliable", False)),
        source=str(path),
    )


def check_leaderboard(report: Report, source: Path) -> Report:
    """The report with each model's comparisons and a ``leaderboard`` diagnostic per flagged difference."""
    config = report.config
    found: list[Comparison] = []
    for model in dict.fromkeys(row.model for row in report.rows):
        dataset, threat = _scope(model, config)
        claim = read_claim(find_entry(source, name=_entry_name(model), dataset=dataset, threat=threat), threat=threat)
        rows = [row for row in report.rows if row.model == model and row.defense == "none" and row.classifies]
        found += compare(claim, rows, config)
    flagged = [c for c in found if c.status == "mismatch"]
    notes = [Diagnostic("leaderboard", c.describe(), model=c.model, defense="none") for c in flagged]
    return replace(report, diagnostics=[*report.diagnostics, *notes], leaderboard=[asdict(c) for c in found])


def compare(claim: Claim, rows: list[Row], config: dict[str, Any]) -> list[Comparison]:
    """Clean accuracy once, then every AutoAttack row, against ``claim``; skipped with a reason where not comparable."""
    if not rows:
        return []
    data = DataSpec.parse(str(config.get("data", ""))).name
    population = TEST_POINTS.get(claim.dataset)
    why = _incomparable_data(claim, data, config, rows[0].n, population)
    out = [_compare(rows[0], "clean", "clean_acc", claim.clean, claim, population, why)]
    for row in rows:
        if row.attack.partition("(")[0] not in ("autoattack", "autoattack-rand", "autoattack-plus"):
            continue
        reason = why or _incomparable_attack(claim, row)
        out.append(_compare(row, row.attack, "robust_acc", claim.robust, claim, population, reason))
    return out


def _compare(
    row: Row, attack: str, metric: str, claimed: float | None, claim: Claim, population: int | None, skip: str
) -> Comparison:
    value = getattr(row, metric)
    if claimed is None or value is None or skip:
        missing = f"the entry {claim.source} gives no {metric if metric == 'clean_acc' else claim.robust_key}"
        reason = skip or (missing if claimed is None else "the run measured no value")
        return Comparison(row.model, attack, metric, claimed, None, None, None, row.n, "skipped", reason)
    measured = 100 * value
    delta = measured - claimed
    z = _z_score(measured, claimed, row.n, population)
    bad = abs(delta) > FULL_SET_LIMIT if z is None else abs(z) > Z_LIMIT
    reason = "" if metric == "clean_acc" else f"claim: {claim.robust_key}"
    if claim.unreliable and metric != "clean_acc":
        reason, bad = f"{reason}; the leaderboard marks this entry unreliable", False
    return Comparison(
        row.model, attack, metric, claimed, measured, delta, z, row.n, "mismatch" if bad else "ok", reason
    )


def _z_score(measured: float, claimed: float, n: int, population: int | None) -> float | None:
    """``None`` on the full test set (nothing left to sample) or when the claim is 0% or 100%."""
    p = claimed / 100
    if population is not None and n >= population:
        return None
    correction = (population - n) / (population - 1) if population else 1.0
    error = math.sqrt(p * (1 - p) / n * correction)
    return (measured - claimed) / 100 / error if error > 0 else None


def _incomparable_data(claim: Claim, data: str, config: dict[str, Any], n: int, population: int | None) -> str:
    if claim.dataset and _DATA_NAMES.get(data, data) != claim.dataset:
        return f"the run's data is {data}, the entry's {claim.dataset}"
    subset = str(config.get("subset", "stratified"))
    if population is not None and n < population and subset != "first" and not subset.startswith("list:"):
        return f"a {n}-sample stratified subset, the leaderboard's protocol is the first n test points: --subset first"
    return ""


def _incomparable_attack(claim: Claim, row: Row) -> str:
    name, changed, _ = row.attack.partition("(")
    version = name.removeprefix("autoattack").lstrip("-") or "standard"
    if version != "standard" or changed:
        return f"AutoAttack {row.attack}, the leaderboard ran the standard version with its own settings"
    norm, _, eps = row.threat.partition(" ")
    if norm != claim.threat.lower():
        return f"threat {norm}, the entry's {claim.threat}"
    if claim.eps is not None and abs(parse_eps(eps) - claim.eps) > 1e-9:
        return f"eps {eps}, the entry's {format_eps(claim.eps)}"
    return ""


def _scope(model: str, config: dict[str, Any]) -> tuple[str, str]:
    """(dataset, threat) that name a model's entry: a robustbench: model's own, else the run's data and Linf."""
    if model.startswith("robustbench:"):
        from robustlab.models.loading import ModelSpec
        from robustlab.models.robustbench import RobustBenchSpec

        names = {ModelSpec(**spec).label(): spec["name"] for spec in config.get("models", [])}
        parsed = RobustBenchSpec(names.get(model, model))
        return parsed.dataset, parsed.threat
    data = DataSpec.parse(str(config.get("data", ""))).name
    return _DATA_NAMES.get(data, data), "Linf"


def _entry_name(model: str) -> str:
    return model.removeprefix("robustbench:").partition(":")[0].partition("[")[0]


def _percent(data: dict[str, Any], key: str, path: Path) -> float | None:
    value = data.get(key)
    if value in (None, ""):
        return None
    try:
        number = float(str(value).strip().rstrip("%"))
    except ValueError:
        raise DataError(f'leaderboard entry {path}: {key} {value!r} is not a percentage such as "62.80"') from None
    if not 0 <= number <= 100:
        raise DataError(f"leaderboard entry {path}: {key} {value!r} is not a percentage in [0, 100]")
    return number


def _eps(value: Any, path: Path) -> float | None:
    if value in (None, ""):
        return None
    try:
        return parse_eps(str(value))
    except ConfigError as error:
        raise DataError(f"leaderboard entry {path}: {error}") from None
