"""The rows an evaluation will produce, known from its config before any model is loaded or attacked.

The gate uses it to refuse a baseline of another grid in seconds, instead of after the whole run.
Each planned row comes with its attack's resolved hyperparameters (defaults included), which is
what makes two rows the same evaluation.
"""

from __future__ import annotations

from typing import Any

from robustlab.attack import ATTACKS
from robustlab.components import load_builtin_components
from robustlab.defense import DEFENSES
from robustlab.evaluate import EvalConfig
from robustlab.jsonfile import json_ready
from robustlab.randomized import randomized_version
from robustlab.reports.report import WORST_CASE, row_key
from robustlab.runners import RUNNERS
from robustlab.victims import NO_MODE

__all__ = ["planned_rows"]


def planned_rows(config: EvalConfig) -> dict[tuple[str, ...], dict[str, Any] | None]:
    """Row key -> resolved attack config of every row ``config`` can produce (``None``: nothing to compare).

    A row an attack may be swapped for on a randomized model (``autoattack-rand``) is planned too, and
    so is a worst-case row wherever two attacks could make one: the plan may hold more rows than the
    run, never fewer.
    """
    load_builtin_components()
    attacks = [(spec, spec.build(ATTACKS)) for spec in config.attacks]
    victims = config.victim().row_tasks(config)
    planned: dict[tuple[str, ...], dict[str, Any] | None] = {}
    for model in config.models:
        for defense_spec in config.defenses:
            defended = defense_spec.build(DEFENSES).changes_model
            modes = [mode.value for mode in config.threat_modes] if defended else [NO_MODE]
            names = (model.label(), defense_spec.label())
            for mode in modes:
                for victim in victims:
                    threats: dict[str, list[str]] = {}
                    for spec, attack in attacks:
                        task, threat = attack.task or victim, attack.threat.describe()
                        for version, built in dict.fromkeys([(spec, attack), randomized_version(spec, attack)]):
                            planned[row_key(*names, mode, version.label(), threat, task)] = json_ready(built.config())
                        if RUNNERS[attack.kind].batched:
                            threats.setdefault(task, []).append(threat)
                    for task, seen in threats.items():
                        if len(seen) > 1:
                            threat = seen[0] if len(set(seen)) == 1 else "mixed"
                            planned[row_key(*names, mode, WORST_CASE, threat, task)] = None
    return planned
