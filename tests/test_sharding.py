"""Global batches split across any number of workers: the same batches, the same gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raycifar.recipe.sharding import GlobalBatches, loss_weight, rank_slice


@pytest.mark.parametrize("batch, world", [(512, 1), (512, 4), (512, 3), (16, 5), (7, 7)])
def test_the_slices_tile_the_batch_and_differ_by_at_most_one(batch, world):
    slices = [rank_slice(batch, r, world) for r in range(world)]
    assert slices[0][0] == 0 and slices[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    sizes = [e - s for s, e in slices]
    assert max(sizes) - min(sizes) <= 1
    assert sum(loss_weight(batch, r, world) for r in range(world)) == pytest.approx(world)


def test_the_steps_and_the_global_batches_are_the_same_at_any_world_size():
    alone = GlobalBatches(103, 16, seed=3)
    alone.set_epoch(2)
    for world in (2, 3, 5):
        ranks = [GlobalBatches(103, 16, seed=3, rank=r, world=world) for r in range(world)]
        for g in ranks:
            g.set_epoch(2)
        assert {len(g) for g in ranks} == {len(alone)} == {6}  # 103 // 16: full batches only
        for step, whole in enumerate(alone):
            assert sum((list(g)[step] for g in ranks), []) == whole
    other = GlobalBatches(103, 16, seed=3)
    other.set_epoch(3)
    assert list(other) != list(alone)


@pytest.mark.parametrize("world", [2, 3, 5])
def test_weighted_rank_losses_average_to_the_global_batch_gradient(world):
    """What DDP computes (the mean of the ranks' gradients) on an uneven split equals the
    gradient of the mean loss over the whole batch: a network without BatchNorm, whose
    per-rank statistics would differ."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2)

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad(loss, list(net.parameters()))

    whole = grads(loss_fn(net(x), y))
    per_rank = []
    for r in range(world):
        s, e = rank_slice(16, r, world)
        per_rank.append(grads(loss_fn(net(x[s:e]), y[s:e]) * loss_weight(16, r, world)))
    ddp_mean = [sum(g) / world for g in zip(*per_rank)]
    for a, b in zip(ddp_mean, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if 16 % world == 0:
        return  # an even split: every weight is 1
    # Unweighted, the uneven split would not give the batch's gradient.
    plain = [sum(g) / world for g in zip(*(grads(loss_fn(net(x[s:e]), y[s:e]))
                                           for s, e in (rank_slice(16, r, world)
                                                        for r in range(world))))]
    assert not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(plain, whole))
