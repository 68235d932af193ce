"""Where the evaluator keeps per-sample results as it goes, so a killed run loses nothing.

A unit of work is one batch of one grid cell; its results are written in one SQLite transaction
once the batch is done. ``SqliteStore`` survives ``kill -9`` (SQLite's journal makes each commit
atomic) and refuses to resume a run whose configuration differs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from robustlab.errors import ConfigError

__all__ = ["MemoryStore", "RunStore", "SqliteStore"]


class RunStore(Protocol):
    """Key -> dict of tensors, written once per key."""

    def get(self, key: str) -> dict[str, Tensor] | None: ...

    def put(self, key: str, tensors: dict[str, Tensor]) -> None: ...


class MemoryStore:
    """A store that lives as long as the process (the default when no run directory is given)."""

    def __init__(self) -> None:
        self._units: dict[str, dict[str, Tensor]] = {}

    def get(self, key: str) -> dict[str, Tensor] | None:
        return self._units.get(key)

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        self._units[key] = tensors


class SqliteStore:
    """An append-only SQLite file of units, tagged with the hash of the config that produced them.

    Args:
        path: the database file (created if missing).
        config_hash: identity of the run; opening an existing store with another hash raises.
        resume: reuse an existing store's units; without it an existing store is an error, so a
            run never silently mixes old results into a new report.
    """

    def __init__(self, path: Path, *, config_hash: str, resume: bool) -> None:
        existed = path.is_file()
        if existed and not resume:
            raise ConfigError(f"run store {path} already exists: pass --resume to continue it, or remove it")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS units (key TEXT PRIMARY KEY, payload BLOB NOT NULL)")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'config_hash'").fetchone()
        if row is None:
            with self._db:
                self._db.execute("INSERT INTO meta VALUES ('config_hash', ?)", (config_hash,))
        elif row[0] != config_hash:
            raise ConfigError(f"run store {path} belongs to a different configuration; use a new run directory")

    def get(self, key: str) -> dict[str, Tensor] | None:
        row = self._db.execute("SELECT payload FROM units WHERE key = ?", (key,)).fetchone()
        return None if row is None else load_tensors(row[0])

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        payload = save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (key, payload))

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()
