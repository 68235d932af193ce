"""Which samples of a dataset an evaluation of ``n`` samples scores.

Class-folder datasets list their files class by class, so the first 64 of a 10-class folder cover three
classes. A dataset that knows its labels (``targets``) is sampled class-stratified instead: a seeded
shuffle of each class, taken in turns, so ``n`` samples cover ``min(n, classes)`` classes as evenly as
they can. Generated datasets without ``targets`` (``synth``) are i.i.d. draws already: their first ``n``.
A leaderboard's fixed subset (RobustBench's 5000 ImageNet validation images) is a list file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from robustlab.data.base import ImageDataset
from robustlab.errors import DataError

__all__ = ["listed_indices", "sample_indices"]


def sample_indices(
    dataset: ImageDataset, n: int | None, *, seed: int, subset: str = "stratified"
) -> tuple[Tensor, str]:
    """The sorted indices to evaluate and a one-line description of how they were chosen.

    ``subset``: ``stratified`` (see above), ``first`` (the first ``n`` whatever the dataset, RobustBench's
    protocol) or ``list:FILE`` (the first ``n`` entries of a list file, :func:`listed_indices`).
    """
    total = len(dataset)
    if total == 0:
        raise DataError("the dataset has no samples")
    if subset.startswith("list:"):
        listed = listed_indices(dataset, Path(subset.removeprefix("list:")))
        chosen = listed[:n] if n is not None else listed
        return chosen.sort().values, f"{len(chosen)} of the {len(listed)} samples listed in {subset[5:]}"
    if n is None or n >= total:
        return torch.arange(total), f"all {total} samples"
    if subset == "first":
        return torch.arange(n), f"the first {n} of {total} samples (--subset first)"
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return torch.arange(n), f"the first {n} of {total} samples (an i.i.d. draw)"
    labels = torch.as_tensor(list(targets), dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    shuffled = [(labels == c).nonzero().flatten() for c in classes[torch.randperm(len(classes), generator=generator)]]
    shuffled = [members[torch.randperm(len(members), generator=generator)] for members in shuffled]
    depth = max(len(members) for members in shuffled)
    turns = torch.full((len(shuffled), depth), -1, dtype=torch.long)
    for row, members in enumerate(shuffled):
        turns[row, : len(members)] = members
    order = turns.t().flatten()  # one sample of each class, then the next of each...
    chosen = order[order >= 0][:n].sort().values
    covered = int(labels[chosen].unique().numel())
    return chosen, f"{n} of {total} samples, class-stratified (seed {seed}): {covered} of {len(classes)} classes"


def listed_indices(dataset: ImageDataset, path: Path) -> Tensor:
    """The samples a list file names, in its order: one per line, a dataset index or a file path relative to
    a class-folder dataset's root (``n01440764/ILSVRC2012_val_00000293.JPEG``, RobustBench's ImageNet list).

    Raises:
        DataError: the file cannot be read, is empty, or names a sample the dataset does not have.
    """
    try:
        entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the subset list {path}: {getattr(error, 'strerror', None) or error}") from None
    if not entries:
        raise DataError(f"the subset list {path} names no samples")
    if all(entry.isdigit() for entry in entries):
        indices = [int(entry) for entry in entries]
        outside = [i for i in indices if i >= len(dataset)]
        if outside:
            raise DataError(f"the subset list {path} names index {outside[0]}, the dataset has {len(dataset)} samples")
        return torch.tensor(indices)
    files = getattr(dataset, "relative_files", None)
    if files is None:
        raise DataError(f"the subset list {path} names files: that needs a class-folder dataset (imagefolder:PATH)")
    position = {name: i for i, name in enumerate(files)}
    missing = [entry for entry in entries if entry not in position]
    if missing:
        raise DataError(
            f"the subset list {path} names {len(missing)} files the data folder does not have, e.g. {missing[0]}"
        )
    return torch.tensor([position[entry] for entry in entries])
