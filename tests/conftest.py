"""Shared fixtures: generated CIFAR-like data on disk and one local Ray cluster per session."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

# Set before Ray starts anywhere in the session: no token auth on the throwaway cluster, a fast
# controller poll (fits end ~5 s sooner), quiet logs.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

CLASSES = ["cat", "dog", "frog"]


def class_images(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Learnable images: each class is a noisy version of its own colour."""
    base = np.zeros((32, 32, 3), np.float32)
    base[..., label % 3] = 200
    noise = rng.normal(0, 30, (n, 32, 32, 3))
    return np.clip(base + noise + 20, 0, 255).astype(np.uint8)


def write_folder(root: Path, n_train: int = 24, n_test: int = 8, classes=CLASSES,
                 suffix: str = ".png", seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(class_images(label, n, rng)):
                Image.fromarray(img).save(d / f"{i:04d}{suffix}")
    return root


def write_batches(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """A fake cifar-10-batches-py folder in CIFAR's own pickle layout."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        labels = [(i + b) % 10 for i in range(per_batch)]
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return d


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray with 2 CPUs for every test that needs a real cluster."""
    import ray

    # the dashboard stays on: its state API is what frees the placement groups of trials that
    # Tune stops early; tune_driver slots let Tune trials run without holding a CPU
    ray.init(num_cpus=2, include_dashboard=True, resources={"tune_driver": 4})
    yield ray
    ray.shutdown()
