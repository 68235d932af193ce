"""Budgets as users write them (``8/255``, ``0.5``), parsed without importing torch.

The CLI validates ``--eps`` while parsing options, and ``robustlab --help`` must stay fast, so this
lives apart from :mod:`robustlab.threat`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from robustlab.errors import ConfigError

__all__ = ["BUDGET_NORMS", "Budget", "format_eps", "parse_budget", "parse_eps"]

BUDGET_NORMS = ("linf", "l2", "l0", "patch")


@dataclass(frozen=True)
class Budget:
    """An ``--eps`` value and the norm it was written for (``None``: a bare number, which means L∞).

    A bare ``8/255`` never becomes an L2 radius: L2 attacks keep their own default unless the user
    writes ``l2:0.5``.
    """

    eps: float
    norm: str | None = None

    def applies_to(self, norm: str) -> bool:
        """Whether this budget is for an attack under ``norm``."""
        return (self.norm or "linf") == norm

    def __str__(self) -> str:
        return f"{self.norm}:{format_eps(self.eps)}" if self.norm else format_eps(self.eps)


def parse_budget(text: str) -> Budget:
    """Parse ``linf:8/255``, ``l2:0.5`` or a bare ``8/255`` (L∞ only).

    Example:
        >>> parse_budget("l2:0.5")
        Budget(eps=0.5, norm='l2')
        >>> parse_budget("8/255").applies_to("l2")
        False
    """
    norm, sep, value = text.strip().rpartition(":")
    if not sep:
        return Budget(parse_eps(value))
    norm = norm.strip().lower()
    if norm not in BUDGET_NORMS:
        raise ConfigError(f"eps {text!r}: the norm before ':' must be one of {', '.join(BUDGET_NORMS)}")
    if norm == "l2":  # an L2 radius may exceed 1 pixel unit: the diagonal of a 32x32 RGB image is 55
        try:
            eps = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"eps {text!r} is not a number or fraction such as l2:0.5") from None
        if eps < 0:
            raise ConfigError(f"eps {text!r} is negative")
        return Budget(eps, norm)
    return Budget(parse_eps(value), norm)


def parse_eps(text: str) -> float:
    """Parse ``8/255``, ``0.03`` or ``3e-2`` into a float budget in ``[0, 1]`` pixel units.

    Example:
        >>> parse_eps("8/255") == 8 / 255
        True
    """
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"eps {text!r} is not a number or fraction such as 8/255") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"eps {text} = {value:.4g} is outside [0, 1]: budgets are in [0, 1] pixel units")
    return value


def format_eps(eps: float) -> str:
    """Show a budget as ``k/255`` when it is one, else with 4 significant digits.

    Example:
        >>> format_eps(8 / 255), format_eps(0.5), format_eps(1e-12)
        ('8/255', '0.5', '1e-12')
    """
    k = eps * 255
    if round(k) >= 1 and abs(k - round(k)) < 1e-6:  # 1e-12 is not 0/255
        return f"{round(k)}/255"
    return f"{eps:.4g}"
