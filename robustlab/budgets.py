"""Budgets as users write them (``8/255``, ``0.5``), parsed without importing torch.

The CLI validates ``--eps`` while parsing options, and ``robustlab --help`` must stay fast, so this
lives apart from :mod:`robustlab.threat`.
"""

from __future__ import annotations

from fractions import Fraction

from robustlab.errors import ConfigError

__all__ = ["format_eps", "parse_eps"]


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
    """Show a budget as ``k/255`` when it is one, else with 4 significant digits."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.4g}"
