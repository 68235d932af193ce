"""Helpers shared by every command that builds components and runs them: specs, seeding, JSON values.

Kept apart from :mod:`robustlab.evaluate` so that ``generate``, the report's image grid and the CLI
can build an attack or seed a unit without importing the evaluator; importing it does not import torch.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustlab.errors import ConfigError
from robustlab.registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = ["ComponentSpec", "json_ready", "load_builtin_components", "seeded"]


@dataclass(frozen=True)
class ComponentSpec:
    """A registry name plus keyword parameters, e.g. ``pgd`` with ``(("eps", 0.03), ("steps", 20))``."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def build(self, registry: Registry[Any]) -> Any:
        """Instantiate the component, rejecting parameters its factory does not take."""
        entry = registry.get(self.name)
        accepted = entry.params()
        unknown = [key for key, _ in self.params if key not in accepted]
        if unknown:
            takes = ", ".join(accepted) or "nothing"
            raise ConfigError(f"{registry.kind} {self.name} has no parameter {unknown[0]!r}; it takes: {takes}")
        try:
            return entry.factory(**dict(self.params))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{registry.kind} {self.name}: {error}") from None

    def without_defaults(self, registry: Registry[Any]) -> ComponentSpec:
        """The same component less the parameters given at their default: ``pgd`` for ``pgd(steps=10)``.

        Two specs that build the same component then have one label, one row key and one run hash.
        """
        accepted = registry.get(self.name).params()
        kept = tuple((k, v) for k, v in self.params if k not in accepted or not _same(v, accepted[k].default))
        return ComponentSpec(self.name, kept)

    def label(self) -> str:
        """Name plus the non-budget parameters, e.g. ``pgd(steps=20)`` (the budget has its own column)."""
        shown = [f"{k}={v}" for k, v in self.params if k != "eps"]
        return f"{self.name}({', '.join(shown)})" if shown else self.name


def _same(value: Any, default: Any) -> bool:
    """Whether a given parameter value is its factory's default (an enum default equals its value)."""
    if default is inspect.Parameter.empty:
        return False
    return bool(value == default or value == getattr(default, "value", default))


def json_ready(value: Any) -> Any:
    """Tuples to lists and enums to strings, recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value.value if hasattr(value, "value") and not isinstance(value, (int, float, str)) else value


def stream_seed(seed: int, key: str) -> int:
    """A 60-bit seed that depends on ``(seed, key)`` alone: the seed of a unit, or of one sample's stream."""
    return int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:15], 16)


@contextmanager
def seeded(seed: int, key: str) -> Iterator[torch.Generator]:
    """A generator and a forked global RNG, both seeded from ``(seed, key)`` alone."""
    import torch

    unit_seed = stream_seed(seed, key)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(unit_seed)  # randomized defenses and third-party code draw from the global RNG
        yield torch.Generator().manual_seed(unit_seed)


def load_builtin_components() -> None:
    """Import the built-in attacks, defenses, encoders and tasks so that their registry entries exist."""
    import robustlab.attacks
    import robustlab.defenses
    import robustlab.ssl
    import robustlab.tasks  # noqa: F401
