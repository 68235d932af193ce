"""Checks that run before any model is loaded, trained or attacked, so a typo costs seconds, not a run.

A wrong ``--data`` path used to surface after the default model had trained for minutes, and an
unwritable ``--out`` after the whole evaluation. Everything here is cheap: it reads folder listings,
opens (and removes) a probe file, and builds dataset objects, which do not decode images.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from robustlab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from robustlab.cli.configs import EvalOptions

__all__ = [
    "check_data",
    "check_eval",
    "check_eval_names",
    "check_hub_models",
    "check_model_names",
    "check_not_baseline",
    "check_output_file",
    "check_output_folder",
    "check_registered_models",
]


def check_eval_names(options: EvalOptions) -> None:
    """Refuse, before torch is imported, an ``--out`` that is the ``--baseline`` and hub models not in the cache.

    Whether a registered name exists is the victim kind's to say (its registry imports torch): see
    :meth:`robustlab.victims.Victim.check`.
    """
    check_not_baseline(options.out, options.baseline)
    check_hub_models(options.models, options.weights)


def check_eval(options: EvalOptions) -> list[str]:
    """Refuse what ``robustlab eval`` would only discover late: output paths, data; return notes.

    It runs after :func:`check_eval_names` and takes the command's options rather than its config so that
    it runs before the attacks are imported (torchattacks pulls in scipy): a wrong ``--data`` is reported
    in the time Python starts.
    """
    if options.out is not None:
        check_output_file(options.out, "the report")
    if options.run_dir is not None:
        check_output_folder(options.run_dir, "the run store in")
    if options.leaderboard is not None and not options.leaderboard.exists():
        raise DataError(f"--leaderboard {options.leaderboard} does not exist: pass a model_info folder or JSON")
    subset = options.subset
    if subset not in ("stratified", "first") and not subset.startswith("list:"):
        raise ConfigError(f"--subset {subset}: use stratified, first or list:FILE")
    if subset.startswith("list:") and not Path(subset.removeprefix("list:")).is_file():
        raise DataError(f"--subset {subset}: {subset.removeprefix('list:')} is not a file")
    data = [(options.data, "test"), (options.train_data, "train"), (options.fit_data, "train")]
    return check_data(data, options.n if options.n > 0 else None)


def check_output_file(path: Path, what: str) -> None:
    """``path`` can be written atomically: it is not a folder or a FIFO, and its folder exists or can be made.

    ``what`` names the output in messages (``"the report"``). A symlink is fine: the write goes to its
    target (see :func:`robustlab.cache.atomic_write`, which also creates the missing folders).
    """
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        raise ConfigError(f"cannot write {what} {path}: it is {_kind(target)}, not a regular file; name a file")
    _check_creatable_folder(target.parent, f"{what} {path}")


def check_output_folder(path: Path, what: str) -> None:
    """``path`` is a folder, or can be made one: nothing else is in the way and its nearest parent is writable."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"cannot write {what} {path}: it is {_kind(path)}, not a folder")
    _check_creatable_folder(path, f"{what} {path}")


def _check_creatable_folder(folder: Path, what: str) -> None:
    """``folder`` exists and is writable, or its nearest existing parent is a writable folder to make it in."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create {what}: {existing} is {_kind(existing)}, not a folder")
    _check_writable_folder(existing, what)


def check_not_baseline(out: Path | None, baseline: Path | None) -> None:
    """A run must not write its report over the baseline it is gated against."""
    if out is None or baseline is None:
        return
    if os.path.realpath(out) == os.path.realpath(baseline):
        raise ConfigError(
            f"--out {out} is the --baseline: a failing run would replace the accepted scores; write the report "
            f"elsewhere and copy it over the baseline once the gate passes"
        )


def check_data(specs: Sequence[tuple[str | None, str]], n: int | None) -> list[str]:
    """Build each ``(spec, split)`` dataset once; return notes for the user (``-n`` beyond the first one's size).

    Raises what :func:`robustlab.data.load_dataset` raises: an unknown name, a missing folder...
    """
    from robustlab.data import load_dataset

    notes = []
    for i, (spec, split) in enumerate(specs):
        if spec is None:
            continue
        size = len(load_dataset(spec, split=split))
        if i == 0 and n is not None and n > size:
            notes.append(f"-n {n} asks for more samples than {spec} has ({split} split): all {size} are used")
    return notes


def check_hub_models(names: Sequence[str], weights: str | None = None) -> None:
    """A ``timm:`` model's ``--weights hub`` is in the local cache; neither timm nor torch is imported (seconds)."""
    from robustlab.models.hub_cache import require_cached_timm

    for name in names:
        if name.startswith("timm:") and not name.startswith("timm:local-dir:") and weights in (None, "hub"):
            require_cached_timm(name.removeprefix("timm:"))


def check_model_names(names: Sequence[str], weights: str | None = None) -> None:
    """Each registered architecture exists and a ``timm:`` model's ``--weights hub`` is in the local cache.

    A ``module:factory`` user model is imported later, when loaded.
    """
    check_hub_models(names, weights)  # first: a timm-only run fails on an empty cache before torch is imported
    check_registered_models(names)


def check_registered_models(names: Sequence[str]) -> None:
    """Each name without a ``family:`` prefix is a registered architecture (UnknownNameError lists close matches)."""
    registered = [name for name in names if ":" not in name]
    if registered:
        from robustlab.models.loading import MODELS  # the registry imports torch

        for name in registered:
            MODELS.get(name)


def _check_writable_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        state = f"is {_kind(folder)}, not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"cannot write {what}: folder {folder} {state}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass  # the honest test: os.access says yes to root on a read-only file system
    except OSError as error:
        raise ConfigError(f"cannot write {what}: folder {folder} is not writable ({error.strerror})") from None


def _kind(path: Path) -> str:
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a file"
