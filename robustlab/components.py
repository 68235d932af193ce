"""The components a run builds, named by specs (a registry name plus parameters), and the built-in ones.

Kept apart from :mod:`robustlab.evaluate` so that ``generate``, the report's image grid and the CLI
can build an attack without importing the evaluator; importing it does not import torch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from robustlab.errors import ConfigError
from robustlab.registry import Registry

__all__ = ["ComponentSpec", "load_builtin_components"]


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


def load_builtin_components() -> None:
    """Import the built-in attacks, defenses, encoders and tasks so that their registry entries exist."""
    import robustlab.attacks
    import robustlab.defenses
    import robustlab.ssl
    import robustlab.tasks  # noqa: F401
