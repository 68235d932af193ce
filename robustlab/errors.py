"""Typed errors: each one is a message a user can act on, printed as one line by the CLI."""

from __future__ import annotations

__all__ = [
    "CacheNotWritten",
    "CheckpointMismatchError",
    "ConfigError",
    "DataError",
    "RobustlabError",
    "ThreatModelViolation",
    "UnknownNameError",
    "WeightsUnavailableError",
]


class RobustlabError(Exception):
    """Base of every error robustlab raises on purpose; the CLI turns it into one line and exit code 2."""


class ConfigError(RobustlabError, ValueError):
    """A parameter or option has a value that cannot work (eps outside [0, 1], n <= 0, ...)."""


class UnknownNameError(RobustlabError, KeyError):
    """A registry has no entry of that name; the message lists the close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(RobustlabError):
    """A dataset is missing, empty or unreadable."""


class WeightsUnavailableError(RobustlabError):
    """Weights could not be obtained (offline download, missing file)."""


class CheckpointMismatchError(RobustlabError):
    """A checkpoint's keys or shapes do not fit the architecture."""


class ThreatModelViolation(RobustlabError, AssertionError):
    """An attack returned a point outside its threat model: a bug, never clipped silently."""


class CacheNotWritten(UserWarning):
    """Trained weights could not be cached (a full disk): the run goes on with them in memory; the CLI prints a note."""
