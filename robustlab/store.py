"""Where the evaluator keeps per-sample results as it goes, so a killed run loses nothing.

A unit of work is one batch of one grid cell; its results are written in one SQLite transaction
once the batch is done. ``SqliteStore`` survives ``kill -9`` (SQLite's journal makes each commit
atomic) and refuses to resume a run whose configuration differs. An attack that saves progress within
a unit (AutoAttack, after each of its attacks) writes it under the unit's key plus ``/``: that scratch
is discarded once the unit is stored.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from robustlab.errors import ConfigError, DataError

__all__ = ["KeyedStore", "MemoryStore", "RunStore", "SqliteStore"]

_WRITE_FAILURES = re.compile(r"disk is full|disk I/O error|readonly database|unable to open database", re.IGNORECASE)
"""SQLite's words for a store that could not be written, as opposed to one whose content is damaged."""


class RunStore(Protocol):
    """Key -> dict of tensors, written once per key."""

    def get(self, key: str) -> dict[str, Tensor] | None: ...

    def put(self, key: str, tensors: dict[str, Tensor]) -> None: ...

    def discard(self, prefix: str) -> None:
        """Remove every unit whose key starts with ``prefix`` (a finished unit's scratch)."""


class KeyedStore:
    """A view of a run store whose keys are prefixed, handed to attacks that keep state of their own."""

    def __init__(self, store: RunStore, prefix: str) -> None:
        self._store, self._prefix = store, prefix

    def get(self, key: str) -> dict[str, Tensor] | None:
        return self._store.get(f"{self._prefix}/{key}")

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        self._store.put(f"{self._prefix}/{key}", tensors)

    def discard(self, prefix: str) -> None:
        self._store.discard(f"{self._prefix}/{prefix}")


class MemoryStore:
    """A store that lives as long as the process (the default when no run directory is given)."""

    def __init__(self) -> None:
        self._units: dict[str, dict[str, Tensor]] = {}

    def get(self, key: str) -> dict[str, Tensor] | None:
        return self._units.get(key)

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        self._units[key] = tensors

    def discard(self, prefix: str) -> None:
        for key in [key for key in self._units if key.startswith(prefix)]:
            del self._units[key]


class SqliteStore:
    """An append-only SQLite file of units, tagged with the hash of the config that produced them.

    Args:
        path: the database file (created if missing).
        config_hash: identity of the run; opening an existing store with another hash raises.
        resume: reuse an existing store's units; without it an existing store is an error, so a
            run never silently mixes old results into a new report.

    One process at a time holds a store (a lock file beside it), so two runs never do the work twice.
    """

    def __init__(self, path: Path, *, config_hash: str, resume: bool) -> None:
        existed = path.is_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = _lock(path)
        try:
            if existed and not resume:
                raise ConfigError(f"run store {path} already exists: pass --resume to continue it, or delete it")
            self._db = sqlite3.connect(path)
            try:
                self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self._db.execute("CREATE TABLE IF NOT EXISTS units (key TEXT PRIMARY KEY, payload BLOB NOT NULL)")
                row = self._db.execute("SELECT value FROM meta WHERE key = 'config_hash'").fetchone()
                if row is None:
                    with self._db:
                        self._db.execute("INSERT INTO meta VALUES ('config_hash', ?)", (config_hash,))
            except sqlite3.DatabaseError as error:
                self._db.close()
                if not existed:  # nothing of the user's was in it: leave no store that a rerun would refuse
                    path.unlink(missing_ok=True)
                raise self._error(error, resume=False) from None
            if row is not None and row[0] != config_hash:
                self._db.close()
                raise ConfigError(
                    f"run store {path} belongs to a different configuration: use a new --run-dir, or delete the store"
                )
        except BaseException:
            self._release()
            raise

    def get(self, key: str) -> dict[str, Tensor] | None:
        try:
            row = self._db.execute("SELECT payload FROM units WHERE key = ?", (key,)).fetchone()
            return None if row is None else load_tensors(row[0])
        except (sqlite3.DatabaseError, SafetensorError) as error:
            raise self._error(error, resume=True) from None

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        payload = save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        try:
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (key, payload))
        except sqlite3.DatabaseError as error:
            raise self._error(error, resume=True) from None

    def units(self) -> Iterator[tuple[str, dict[str, Tensor]]]:
        """Every stored unit, by key (what ``robustlab merge`` copies from a shard's store)."""
        try:
            for key, payload in self._db.execute("SELECT key, payload FROM units ORDER BY key"):
                yield key, load_tensors(payload)
        except (sqlite3.DatabaseError, SafetensorError) as error:
            raise self._error(error, resume=True) from None

    def _error(self, error: Exception, *, resume: bool) -> DataError:
        """One line for a store that cannot be read or written: a full disk is not a damaged store."""
        if isinstance(error, sqlite3.OperationalError) and _WRITE_FAILURES.search(str(error)):
            again = "run again with --resume: the batches stored so far are kept" if resume else "run again"
            return DataError(
                f"cannot write run store {self._path} ({error}): free space or make its folder writable, then {again}"
            )
        return DataError(f"run store {self._path} is unreadable ({error}): delete it to start the run again")

    def discard(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("an empty prefix would discard the whole run")
        after = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the keys in [prefix, after) are those starting with it
        with self._db:
            self._db.execute("DELETE FROM units WHERE key >= ? AND key < ?", (prefix, after))

    def close(self) -> None:
        """Close the database connection and let another process use the store; the lock file goes with it."""
        self._db.close()
        self._release()

    def _release(self) -> None:
        """Remove the lock file while still holding it (so no one locks it meanwhile), then let it go."""
        Path(self._lock.name).unlink(missing_ok=True)
        self._lock.close()


def _lock(path: Path) -> IO[bytes]:
    """Hold an exclusive lock on ``path`` for this process, or refuse: two runs on one store would race.

    A POSIX record lock (``lockf``) belongs to the process, so reopening a store within one process works;
    the operating system releases it when the process ends, however it ends. A store that is closed removes
    its lock file; a lock taken on a file that was removed meanwhile (its closing owner just left) is refused.
    """
    name = path.with_name(f"{path.name}.lock")
    handle = open(name, "ab")  # noqa: SIM115 (held until close)
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(name).st_ino != os.fstat(handle.fileno()).st_ino:
            raise OSError("the lock file was replaced")
    except OSError:
        handle.close()
        raise ConfigError(
            f"run store {path} is in use by another robustlab process: wait for it to finish, or use another --run-dir"
        ) from None
    return handle
