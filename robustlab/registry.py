"""One registry type for models, datasets, attacks and defenses.

A name maps to a factory plus a one-line summary; ``robustlab list`` prints them all. Registering a
name twice raises (as torchvision's ``register_model`` does), so a module imported under two names
fails loudly instead of silently replacing an entry.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from robustlab.errors import UnknownNameError

__all__ = ["Entry", "Registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered factory with what ``list`` and the CLI need to know about it."""

    name: str
    factory: Callable[..., T]
    summary: str
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def declared_by(self) -> Callable[..., Any]:
        """What declares the factory's keyword parameters: the factory, or the frozen dataclass of hyperparameters a
        class takes as ``**keywords`` and names in its ``hyperparameters`` attribute (each field written once)."""
        return getattr(self.factory, "hyperparameters", self.factory)

    def params(self) -> dict[str, inspect.Parameter]:
        """Keyword parameters the factory accepts, by name."""
        signature = inspect.signature(self.declared_by)
        return {
            name: p
            for name, p in signature.parameters.items()
            if name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }


class Registry(Generic[T]):
    """Name -> factory table for one kind of component.

    Example:
        >>> toys = Registry("toy")
        >>> @toys.register("double", summary="Doubles its input.")
        ... def double(*, x: int = 1) -> int:
        ...     return 2 * x
        >>> toys.get("double").factory(x=3)
        6
        >>> toys.names()
        ['double']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, summary: str, **tags: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorate a factory (class or function) to register it under ``name``."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, factory, summary, dict(tags))
            return factory

        return decorator

    def get(self, name: str) -> Entry[T]:
        """Return the entry for ``name``; raise :class:`UnknownNameError` naming close matches."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.names())}"
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        """All entries, sorted by name."""
        return [self._entries[name] for name in self.names()]
