"""Independent shards of one eval (``--shard K/N``, e.g. the jobs of a Slurm array), and their merge.

Each shard computes the batches it owns (``b % N == K``, as torchrun ranks split them) into its own run
store, and marks the store finished. ``robustlab merge`` copies every finished shard's units into one store
and runs the same evaluation over it: every batch is found done, nothing is attacked again, and the report
comes from the same code as a single process's, so it equals one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from robustlab.cache import atomic_write
from robustlab.distributed import Shard
from robustlab.errors import ConfigError
from robustlab.jsonfile import read_json
from robustlab.store import RunStore, SqliteStore

__all__ = ["check_shard_run", "copy_shards", "mark_finished"]

MARKER = "shard.json"
"""Written into a shard's run directory once all its batches are stored: only finished shards merge."""


def check_shard_run(run_dir: Path | None, out: Path | None, *, gated: bool) -> None:
    """Refuse a shard that would lose its results, write or gate a partial report, or split work twice."""
    if run_dir is None:
        raise ConfigError("--shard needs --run-dir: each shard keeps its batches in its own store for robustlab merge")
    if out is not None:
        raise ConfigError(
            "--shard writes no report (one shard's share is partial): drop --out, robustlab merge writes it"
        )
    if gated:
        raise ConfigError("--shard makes no report to gate: pass --baseline to robustlab merge")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--shard and torchrun both split the batches: use one of them")


def mark_finished(run_dir: Path, shard: Shard, config_hash: str) -> None:
    """Record that ``run_dir`` holds all of ``shard``'s batches of the run ``config_hash``."""
    marker = {"shard": shard.rank, "of": shard.world_size, "config_hash": config_hash}
    atomic_write(run_dir / MARKER, json.dumps(marker).encode())


def copy_shards(run_dirs: Sequence[Path], config_hash: str, into: RunStore) -> None:
    """Put the units of the finished shards in ``run_dirs`` into ``into``, after checking they make one whole run.

    Raises:
        ConfigError: a shard of another configuration or split, the same shard twice, or a missing shard.
        DataError: a folder that holds no finished shard.
    """
    owners: dict[int, Path] = {}
    splits: set[int] = set()
    for run_dir in run_dirs:
        fix = f"run its eval --shard K/N --run-dir {run_dir} (add --resume) to the end first"
        marker = read_json(run_dir / MARKER, what="finished-shard marker", fix=fix, kind=dict)
        if marker.get("config_hash") != config_hash:
            raise ConfigError(f"shard {run_dir} was run with other eval options than this merge: pass the same options")
        rank, split = int(marker["shard"]), int(marker["of"])
        if rank in owners:
            raise ConfigError(f"shard {rank}/{split} is given twice: {owners[rank]} and {run_dir}")
        owners[rank] = run_dir
        splits.add(split)
    if len(splits) > 1:
        raise ConfigError(f"the shards split the run in different ways ({', '.join(f'N={n}' for n in sorted(splits))})")
    split = splits.pop() if splits else 0
    missing = [f"{rank}/{split}" for rank in range(split) if rank not in owners]
    if missing or not owners:
        raise ConfigError(f"missing shard(s) {', '.join(missing) or 'all'}: pass every shard's --run-dir to merge")
    for rank in sorted(owners):
        source = SqliteStore(owners[rank] / "store.sqlite", config_hash=config_hash, resume=True)
        try:
            for key, tensors in source.units():
                into.put(key, tensors)
        finally:
            source.close()
