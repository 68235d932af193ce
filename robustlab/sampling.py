"""Which samples of a dataset an evaluation of ``n`` samples scores.

Class-folder datasets list their files class by class, so the first 64 of a 10-class folder cover three
classes. A dataset that knows its labels (``targets``) is sampled class-stratified instead: a seeded
shuffle of each class, taken in turns, so ``n`` samples cover ``min(n, classes)`` classes as evenly as
they can. Generated datasets without ``targets`` (``synth``) are i.i.d. draws already: their first ``n``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustlab.data import ImageDataset
from robustlab.errors import DataError

__all__ = ["sample_indices"]


def sample_indices(dataset: ImageDataset, n: int | None, *, seed: int, first: bool = False) -> tuple[Tensor, str]:
    """The sorted indices to evaluate and a one-line description of how they were chosen.

    ``first``: the first ``n`` whatever the dataset (RobustBench's protocol, ``--subset first``).
    """
    total = len(dataset)
    if total == 0:
        raise DataError("the dataset has no samples")
    if n is None or n >= total:
        return torch.arange(total), f"all {total} samples"
    if first:
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
