"""What a worker trains on, without Ray: the driver's data, split and shuffled by --seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raycifar.recipe.data import CifarArrays, TrainingData, batches_per_epoch
from raycifar.recipe.engine import one_cycle as check_cycle, train_batches
from raycifar.recipe.runtime import Runtime

from conftest import tiny_train_config


def data(n: int = 40) -> TrainingData:
    x = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    return TrainingData.of(CifarArrays(x, np.arange(n) % 3, x[:4], np.arange(4) % 3,
                                       ["a", "b", "c"]))


def order(cfg, rank: int, world: int) -> list[int]:
    loader = train_batches(cfg, data(), Runtime(torch.device("cpu")), rank, world)
    loader.batch_sampler.set_epoch(1)
    return sum(loader.batch_sampler, [])


def test_the_data_order_of_a_multi_worker_run_follows_its_seed(tmp_path):
    cfg = tiny_train_config(tmp_path, num_workers=2, batch_size=8)
    seed0 = [order(cfg, r, 2) for r in (0, 1)]
    assert seed0 == [order(cfg, r, 2) for r in (0, 1)]  # repeatable
    assert sorted(seed0[0] + seed0[1]) == list(range(40))  # the ranks split the data
    seed1 = [order(cfg.replace(seed=1), r, 2) for r in (0, 1)]
    assert seed1 != seed0  # Ray's own sampler would give seed 0's order here


def test_steps_per_epoch_are_full_global_batches_at_any_worker_count(tmp_path):
    assert batches_per_epoch(45000, 512) == 87  # the last 456 images wait for the next epoch
    assert batches_per_epoch(72, 16) == 4
    cfg = tiny_train_config(tmp_path, batch_size=8)
    assert {len(train_batches(cfg, data(), Runtime(torch.device("cpu")), r, w))
            for w in (1, 2, 3, 8) for r in range(w)} == {5}


def test_too_little_data_for_the_cycle_is_found_on_the_driver(tmp_path):
    from raycifar.recipe.config import RaycifarError

    cfg = tiny_train_config(tmp_path, epochs=2, peak_epoch=1, batch_size=512)
    with pytest.raises(RaycifarError, match="One Cycle needs at least one step on each side"):
        check_cycle(cfg, 512)
    assert check_cycle(cfg, 2048).total_steps == 8


def test_mean_std_from_the_histogram_match_the_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    d = TrainingData.of(CifarArrays(x, np.zeros(50), x, np.zeros(50), ["a"]))
    flat = x.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(d.mean, flat.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.std, flat.std(0), rtol=0, atol=1e-12)
