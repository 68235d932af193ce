"""Option parsing shared by the sub-commands: budgets, ``k=v`` component arguments, attack grids."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import click

from robustlab.errors import ConfigError
from robustlab.evaluate import ComponentSpec
from robustlab.registry import Registry
from robustlab.threat import parse_eps

__all__ = ["EpsType", "build_specs", "parse_value"]


class EpsType(click.ParamType):
    """A budget such as ``8/255`` or ``0.5``, in ``[0, 1]``."""

    name = "EPS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_eps(str(value))
        except ConfigError as error:
            self.fail(str(error), param, ctx)


def parse_value(text: str) -> Any:
    """Read a command-line value: ``none``, ``true``/``false``, an int, a float or fraction, else the string."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        return text


def build_specs(
    registry: Registry[Any],
    names: Sequence[str],
    args: Sequence[str],
    *,
    shared: dict[str, Any] | None = None,
    sweep: Sequence[float] = (),
) -> tuple[ComponentSpec, ...]:
    """Turn ``--attack NAME`` and ``--attack-arg [NAME.]KEY=VALUE`` options into component specs.

    ``shared`` values (``--steps``) go to every component that takes them; each ``sweep`` budget
    (``--eps``, repeatable) makes one spec per component that takes ``eps``. A scoped argument
    must name a component in ``names`` and a parameter it takes.
    """
    scoped: dict[str, dict[str, Any]] = {name: {} for name in names}
    for item in args:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{registry.kind} argument {item!r} is not of the form [NAME.]KEY=VALUE")
        target, dot, key = key.strip().rpartition(".")
        for name in [target] if dot else names:
            if name not in scoped:
                raise ConfigError(f"{registry.kind} argument {item!r} names {name!r}, which is not among {list(names)}")
            params = registry.get(name).params()
            if key in params:
                scoped[name][key] = parse_value(value)
            elif dot or len(names) == 1:
                raise ConfigError(f"{registry.kind} {name} has no parameter {key!r}; it takes: {', '.join(params)}")
    specs: list[ComponentSpec] = []
    for name in names:
        params = registry.get(name).params()
        base = {k: v for k, v in (shared or {}).items() if k in params and v is not None}
        base.update(scoped[name])
        budgets: Sequence[float | None] = sweep if sweep and "eps" in params and "eps" not in scoped[name] else [None]
        for eps in budgets:
            values = dict(base) if eps is None else {**base, "eps": eps}
            specs.append(ComponentSpec(name, tuple(values.items())))
    return tuple(specs)
