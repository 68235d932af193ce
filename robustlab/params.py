"""Component parameters as users write them (``--attack-arg pgd.steps=20``, an experiment's ``attack_args``).

A value arrives as text; it is converted to the type the factory declares for that parameter and
checked with the same rule as the command-line flag of the same name, so ``pgd.eps=2`` is refused
like ``--eps 2`` and ``pgd.random_start=no`` means false rather than the truthy string ``"no"``.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from fractions import Fraction
from typing import Any

import click

from robustlab.budgets import parse_eps
from robustlab.errors import ConfigError
from robustlab.registry import Entry

__all__ = ["convert_param"]

_NONE_WORDS = ("none", "null")
# The flags' own ranges (robustlab eval / train / fool); a parameter of the same name obeys the same rule.
_FLAG_RANGES: dict[str, click.IntRange] = {
    "steps": click.IntRange(min=1),
    "batch_size": click.IntRange(min=1),
    "eot_samples": click.IntRange(min=1),
    "generations": click.IntRange(min=1),
    "population": click.IntRange(min=2),
}
_POSITIVE_FLOATS = ("step_size", "lr")


def convert_param(kind: str, entry: Entry[Any], key: str, text: str) -> Any:
    """The value of parameter ``key`` of ``entry`` written as ``text``, converted and range-checked.

    Example:
        >>> from robustlab.registry import Registry
        >>> toys = Registry("toy")
        >>> @toys.register("t", summary="")
        ... def toy(*, steps: int = 1, fast: bool = False) -> None: ...
        >>> convert_param("toy", toys.get("t"), "fast", "no"), convert_param("toy", toys.get("t"), "steps", "3")
        (False, 3)
    """
    where = f"{kind} {entry.name}: {key}={text}"
    try:
        value = _by_annotation(_annotation(entry, key), text.strip())
        return _checked(key, value, text.strip())
    except (ValueError, click.BadParameter) as error:
        raise ConfigError(f"{where}: {_message(error)}") from None


def _message(error: Exception) -> str:
    return error.message if isinstance(error, click.BadParameter) else str(error)


def _annotation(entry: Entry[Any], key: str) -> Any:
    """The declared type of ``key`` (``Any`` when the factory declares none or it cannot be resolved)."""
    factory = entry.declared_by
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target).get(key, Any)
    except (NameError, TypeError):
        return Any


def _by_annotation(annotation: Any, text: str) -> Any:
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if type(None) in members and text.lower() in _NONE_WORDS:
        return None
    members = tuple(m for m in members if m is not type(None))
    if any(isinstance(m, type) and issubclass(m, enum.Enum) for m in members):
        members = tuple(m for m in members if m is not str)  # ``Norm | str``: the str is the enum spelled out
    errors: list[str] = []
    for member in members:
        try:
            return _as(member, text)
        except (ValueError, click.BadParameter) as error:
            errors.append(_message(error))
    raise ValueError("; ".join(errors))


def _as(member: Any, text: str) -> Any:
    if member is bool:
        return click.BOOL.convert(text, None, None)
    if member is int:
        return _int(text)
    if member is float:
        return _float(text)
    if isinstance(member, type) and issubclass(member, enum.Enum):
        choices = [str(m.value) for m in member]
        if text.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text.lower()  # the spelled-out value keeps labels and config hashes as they were
    if member is str:
        return text
    return _untyped(text)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid integer") from None


def _float(text: str) -> float:
    try:
        return float(Fraction(text))  # finite by construction: Fraction refuses nan and inf
    except (ValueError, ZeroDivisionError, OverflowError):
        raise ValueError(f"{text!r} is not a finite number or fraction such as 1/255") from None


def _untyped(text: str) -> Any:
    """A value of a parameter without a declared type: none, a boolean, a number, else the text."""
    lowered = text.lower()
    if lowered in _NONE_WORDS:
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, _float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _checked(key: str, value: Any, text: str) -> Any:
    """``value`` after the rule of the flag of the same name, if any (raises ``ValueError``/``BadParameter``)."""
    if value is None or isinstance(value, bool):
        return value
    if key == "eps" and isinstance(value, (int, float)):
        return parse_eps(text)  # as --eps: 8/255 or 0.03, in [0, 1]
    if key in _FLAG_RANGES and isinstance(value, int):
        return _FLAG_RANGES[key].convert(value, None, None)
    if key in _POSITIVE_FLOATS and isinstance(value, (int, float)) and value <= 0:
        raise ValueError("must be > 0")
    if isinstance(value, int) and (key.startswith("n_") or key.endswith(("_steps", "epochs"))) and value < 1:
        raise ValueError("must be >= 1 (it counts something)")
    return value
