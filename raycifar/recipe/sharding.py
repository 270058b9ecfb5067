"""Global batches that do not depend on how many workers there are.

Each epoch a permutation of the training images (from the seed and the epoch) is cut into
global batches of `batch_size`; the last, partial one is dropped, as in Page's training code,
so every step of every epoch is a full batch and the steps per epoch (and so One Cycle) are the
same at any world size. Rank r of W takes a contiguous slice of each global batch, the first
`batch_size % W` ranks one image more: a run that restarts with 3 workers where it had 4 trains
on the same global batches in the same order.

DDP averages the ranks' gradients, so a rank's mean loss is weighted by its share of the global
batch times the world size (`loss_weight`): the all-reduced gradient is then the mean over the
global batch whether the split is even (every weight 1) or not. BatchNorm's statistics stay
per rank, as with any DDP run.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def rank_slice(batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of `rank`'s part of a global batch of `batch_size` images."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    base, extra = divmod(batch_size, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def loss_weight(batch_size: int, rank: int, world: int) -> float:
    """What this rank's mean loss is multiplied by so that DDP's mean of the ranks' gradients
    is the gradient of the mean loss over the global batch."""
    start, end = rank_slice(batch_size, rank, world)
    return (end - start) * world / batch_size


class GlobalBatches:
    """This rank's index lists, one per step: a DataLoader's `batch_sampler`, and the order
    `DeviceBatches` draws in. Call `set_epoch` before each epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size < world:
            raise ValueError(f"a global batch of {batch_size} cannot feed {world} workers")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.end = rank_slice(batch_size, rank, world)
        self.weight = loss_weight(batch_size, rank, world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def permutation(self) -> torch.Tensor:
        # (seed, epoch) mixed, not added: seed s+1 must not replay seed s's next epoch
        mixed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(mixed) & (2**63 - 1))
        return torch.randperm(self.n, generator=g)  # on the CPU: the same on every rank

    def rank_indices(self) -> torch.Tensor:
        """Every step's slice for this rank, as one (steps, this rank's batch) tensor."""
        steps = len(self)
        batches = self.permutation()[:steps * self.batch_size].view(steps, self.batch_size)
        return batches[:, self.start:self.end]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.rank_indices().tolist())
