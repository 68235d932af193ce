"""Where robustlab keeps what it trains itself, keyed by a hash of the config that made it.

Weights are safetensors (no pickle), written atomically: a crash mid-write leaves no file that a
later run could mistake for a finished one.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from robustlab.errors import CacheNotWritten, ConfigError, DataError

__all__ = ["atomic_write", "cache_dir", "config_hash", "data_dir", "load_weights", "numerics", "save_weights"]


def cache_dir(*parts: str) -> Path:
    """The folder for what robustlab trains, created if missing: ``$ROBUSTLAB_HOME/NUMERICS/PARTS``.

    ``$ROBUSTLAB_HOME`` defaults to ``~/.cache/robustlab``. ``NUMERICS`` (:func:`numerics`) names what
    changes trained weights beyond their config: the same config trained with 1 and 2 threads differs by
    up to 0.65 in a parameter after 800 steps, so each gets its own file and a cached model is the one
    this process would have trained.
    """
    return _created(_cache_root() / numerics(), *parts)


def data_dir() -> Path:
    """``$ROBUSTLAB_HOME/data``, created if missing: downloaded datasets, the same for every numerics."""
    return _created(_cache_root(), "data")


def numerics() -> str:
    """``torch2.14.1-avx2-threads2``: the torch version, CPU kernel family and thread count that training runs with.

    Reductions split over threads and vectorised kernels round differently, and training amplifies it.
    """
    import torch

    version = torch.__version__.split("+")[0]
    return f"torch{version}-{torch.backends.cpu.get_cpu_capability().lower()}-threads{torch.get_num_threads()}"


def _created(root: Path, *parts: str) -> Path:
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # ROBUSTLAB_HOME names a file, a read-only place...
        raise ConfigError(
            f"cannot use the cache folder {path} ({error.strerror or error}): set ROBUSTLAB_HOME to a writable folder"
        ) from None
    return path


def _cache_root() -> Path:
    home = os.environ.get("ROBUSTLAB_HOME")
    return Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robustlab"


def config_hash(config: Any, length: int = 12) -> str:
    """Stable short hash of a dataclass or JSON-able value (sorted keys), used in cache file names."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _umask_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (mkstemp makes files private to the owner)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it when the block succeeds and is removed when it fails.

    A symlink is written through (its target is replaced, the link stays); a FIFO, device or folder is
    refused with an ``OSError`` rather than replaced by a regular file. The temporary name carries the
    writer's process id, so that a writer killed mid-write leaves a file the next write can remove.
    """
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        raise OSError(errno.EINVAL, "not a regular file (a folder, FIFO or device); refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode())  # mkstemp's owner-only mode would hide shared datasets and caches from teammates
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_orphans(target: Path) -> None:
    """Delete temporary files of ``target`` left by writers that no longer run (killed mid-write)."""
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        pid = tmp.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with _replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def save_weights(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors atomically (tensors made contiguous, moved to CPU).

    A file that cannot be written raises an ``OSError`` naming ``path`` (safetensors' own error type is
    converted), except in robustlab's cache: what was just trained there stays usable in memory for this
    run, and a :class:`~robustlab.errors.CacheNotWritten` warning says so instead of losing it.
    """
    try:
        with _replacing(path) as tmp:
            try:
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
            except SafetensorError as error:
                raise _os_error(error, path) from None
    except OSError as error:
        if not _in_cache(path):
            raise
        warnings.warn(
            f"cannot write the cache file {path} ({error.strerror or error}): what was trained is kept in memory "
            f"for this run only; free space or set ROBUSTLAB_HOME to a writable folder to keep it",
            CacheNotWritten,
            stacklevel=2,
        )


def _os_error(error: SafetensorError, path: Path) -> OSError:
    """The ``OSError`` a safetensors write failure stands for (its message carries the ``os error N``)."""
    found = re.search(r"os error (\d+)", str(error))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def _in_cache(path: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(_cache_root()))


def load_weights(path: Path) -> dict[str, Tensor]:
    """Load a safetensors state dict onto the CPU; an unreadable file is a :class:`DataError` naming it."""
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own SafetensorError, OSError, ValueError...
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        hint = "delete it and robustlab trains it again" if _in_cache(path) else "write or download it again"
        raise DataError(f"cannot read {path} ({reason}): not a complete safetensors file; {hint}") from None
