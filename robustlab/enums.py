"""String enums that print as their values (what ``enum.StrEnum`` does from Python 3.11; robustlab supports 3.10)."""

from __future__ import annotations

import enum

__all__ = ["ValueEnum"]


class ValueEnum(str, enum.Enum):
    """A ``str`` enum whose members print as the value a flag or a report field spells: ``str(Norm.LINF) == "linf"``."""

    def __str__(self) -> str:
        return str.__str__(self)
