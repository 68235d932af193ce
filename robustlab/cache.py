"""Where robustlab keeps what it trains itself, keyed by a hash of the config that made it.

Weights are safetensors (no pickle), written atomically: a crash mid-write leaves no file that a
later run could mistake for a finished one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["atomic_write", "cache_dir", "config_hash", "load_weights", "save_weights"]


def cache_dir(*parts: str) -> Path:
    """``$ROBUSTLAB_HOME`` (default ``~/.cache/robustlab``) joined with ``parts``, created if missing."""
    root = Path(
        os.environ.get("ROBUSTLAB_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robustlab"
    )
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, _umask_mode())
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors atomically (tensors made contiguous, moved to CPU)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(path: Path) -> dict[str, Tensor]:
    """Load a safetensors state dict onto the CPU."""
    return load_file(str(path), device="cpu")
