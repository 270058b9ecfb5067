"""CIFAR-10 sources -> uint8 arrays -> datasets.

Three sources sit behind one option (`TrainConfig.data_format`):

* ``download``: torchvision's CIFAR-10 download into ``cache_dir`` (under a file lock, so the
  workers of one node do not race each other);
* ``batches``: an existing ``cifar-10-batches-py`` folder (the pickled batches);
* ``folder``: an image tree ``train/<class>/*.jpg|png`` and ``test/<class>/*``.

``auto`` picks one from what ``data_dir`` holds. Class names always come from the data.
Decoding an image tree is cached as a ``.npz`` in ``cache_dir`` (keyed by every file's path,
size and time), so the next command on it (a re-run, `evaluate`, the bench) loads it
in a fraction of a second. Training reads the data on the driver only: Ray workers get the
arrays from the object store (`TrainingData`), not from disk.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from filelock import FileLock

from .config import RaycifarError, TrainConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
BATCHES_DIR = "cifar-10-batches-py"


class DataError(RaycifarError):
    """The data is missing or unreadable."""


@dataclass
class CifarArrays:
    """Images as uint8 (N, 32, 32, 3) RGB and integer labels, plus the class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images, in [0, 1] units.

        From a histogram of each channel's 256 values: exact, and without the float copy of
        the whole training set (1.2 GB for CIFAR-10) that a direct mean/std would make.
        """
        pixels = self.x_train.reshape(-1, 3)
        counts = np.zeros((3, 256))
        offsets = np.array([0, 256, 512], dtype=np.int32)  # one bincount for the 3 channels
        for i in range(0, len(pixels), 1 << 20):  # 12 MB of int32 at a time
            chunk = pixels[i:i + (1 << 20)].astype(np.int32) + offsets
            counts += np.bincount(chunk.ravel(), minlength=768).reshape(3, 256)
        levels = np.arange(256, dtype=np.float64) / 255.0
        mean, std = [], []
        for c in range(3):
            p = counts[c] / counts[c].sum()
            m = float(p @ levels)
            mean.append(m)
            std.append(float(np.sqrt(p @ (levels - m) ** 2)))
        return tuple(mean), tuple(std)

    def subset(self, n_train: int, seed: int) -> "CifarArrays":
        """A seeded random `n_train` training images and `n_train // 5` test images."""
        rng = np.random.default_rng(seed)
        tr = rng.permutation(len(self.y_train))[:n_train]
        te = rng.permutation(len(self.y_test))[: max(1, n_train // 5)]
        return CifarArrays(self.x_train[tr], self.y_train[tr], self.x_test[te], self.y_test[te],
                           self.classes)

    def hold_out(self, n: int, seed: int) -> "CifarArrays":
        """Split `n` seeded-random training images off as the evaluation set."""
        check_hold_out(n, len(self.y_train))
        order = np.random.default_rng(seed + 1).permutation(len(self.y_train))
        val, train = order[:n], order[n:]
        return CifarArrays(self.x_train[train], self.y_train[train], self.x_train[val],
                           self.y_train[val], self.classes)


@dataclass(frozen=True)
class TrainingData:
    """What every worker of a run trains and tests on: the arrays after `subset` and the
    hold-out, and the training set's mean/std. Prepared once by the driver and handed to the
    workers through Ray's object store, so only the driver reads `--data-dir`."""

    arrays: CifarArrays
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, arrays: CifarArrays) -> "TrainingData":
        return cls(arrays, *arrays.mean_std())


class ArrayDataset(torch.utils.data.Dataset):
    """Indexes uint8 images and applies an albumentations-style `transform(image=...)`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(image=self.images[i])["image"], int(self.labels[i])


def check_hold_out(n: int, train_images: int) -> None:
    """Holding out `n` of `train_images` must leave something to train on."""
    if not 0 < n < train_images:
        raise DataError(f"holding out {n} images needs between 1 and {train_images - 1} of the "
                        f"{train_images} training images (so that some are left to train on); "
                        "lower --validation (--holdout for the LR search)")


def batches_per_epoch(train_images: int, batch_size: int) -> int:
    """Optimizer steps per epoch: full global batches only, at any world size
    (`sharding.GlobalBatches`)."""
    return train_images // batch_size


def resolve_format(data_dir: Optional[str], data_format: str) -> str:
    """Pick the source `auto` means for this `data_dir`."""
    if data_format != "auto":
        return data_format
    if data_dir is None:
        return "download"
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data dir {root} does not exist; pass an existing folder to --data-dir "
                        "or leave it out to download CIFAR-10")
    if (root / "data_batch_1").exists() or (root / BATCHES_DIR).is_dir():
        return "batches"
    if (root / "train").is_dir():
        return "folder"
    raise DataError(f"data dir {root} holds neither {BATCHES_DIR}/ nor train/<class>/ folders; "
                    "point --data-dir at one of those layouts")


def load_arrays(cfg: TrainConfig) -> CifarArrays:
    """Load the configured source (applying `subset`) or raise a one-line `DataError`."""
    fmt = resolve_format(cfg.data_dir, cfg.data_format)
    cache = Path(cfg.cache_dir).expanduser()
    if fmt == "download":
        arrays = _download(cache)
    elif fmt == "batches":
        arrays = _read_batches(_need_dir(cfg.data_dir))
    else:
        arrays = _read_folder_cached(_need_dir(cfg.data_dir), cache)
    if cfg.subset:
        arrays = arrays.subset(cfg.subset, cfg.seed)
    if cfg.validation:
        arrays = arrays.hold_out(cfg.validation, cfg.seed)
    return arrays


def _need_dir(data_dir: Optional[str]) -> Path:
    if data_dir is None:
        raise DataError("this data format needs --data-dir")
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data dir {root} does not exist; pass an existing folder to --data-dir")
    return root


def _download(cache: Path) -> CifarArrays:
    import torchvision  # only this source needs it

    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / "cifar10.lock")):
        try:
            torchvision.datasets.CIFAR10(root=str(cache), train=True, download=True)
        except Exception as e:  # network errors come in many types
            raise DataError(f"could not download CIFAR-10 into {cache} ({e}); "
                            "pass --data-dir with a local copy instead") from e
    return _read_batches(cache / BATCHES_DIR)


def _read_batches(root: Path) -> CifarArrays:
    if (root / BATCHES_DIR).is_dir():
        root = root / BATCHES_DIR
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"{root} lacks {missing}; it should be an unpacked {BATCHES_DIR} folder")

    def unpickle(name: str) -> dict:
        try:
            with open(root / name, "rb") as f:
                return pickle.load(f, encoding="latin1")
        except Exception as e:
            raise DataError(f"cannot read {root / name} ({e}); re-download or unpack it again") from e

    def images(d: dict) -> np.ndarray:  # rows of 3072 = 3 planes of 32x32 -> NHWC
        return np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    train = [unpickle(f"data_batch_{i}") for i in range(1, 6)]
    test = unpickle("test_batch")
    classes = list(unpickle("batches.meta")["label_names"])
    return CifarArrays(
        np.ascontiguousarray(np.concatenate([images(d) for d in train])),
        np.concatenate([np.asarray(d["labels"], dtype=np.int64) for d in train]),
        np.ascontiguousarray(images(test)), np.asarray(test["labels"], dtype=np.int64), classes)


def _list_split(root: Path, split: str) -> dict[str, list[Path]]:
    base = root / split
    if not base.is_dir():
        raise DataError(f"{base} is missing; an image-folder data dir needs train/<class>/ and "
                        "test/<class>/ folders")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{base} has no class folders; put images in {base}/<class>/")
    files = {}
    for c in classes:
        imgs = sorted((f for f in (base / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES),
                      key=lambda f: f.name)  # one folder: the names order them, and fast
        if not imgs:
            raise DataError(f"class folder {base / c} holds no .jpg/.jpeg/.png images; "
                            "add images or remove the folder")
        files[c] = imgs
    return files


def _read_folder_cached(root: Path, cache: Path) -> CifarArrays:
    train, test = _list_split(root, "train"), _list_split(root, "test")
    if sorted(test) != sorted(train):
        raise DataError(f"train classes {sorted(train)} and test classes {sorted(test)} differ "
                        f"under {root}; both splits need the same class folders")
    # The key covers every file's path, size and mtime, so any change re-decodes.
    h = hashlib.sha1(str(root).encode())
    for split in (train, test):
        for paths in split.values():
            for f in paths:
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"folder-{h.hexdigest()[:16]}.npz"
    with FileLock(str(target) + ".lock"):
        if target.exists():
            z = np.load(target, allow_pickle=False)
            return CifarArrays(z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                               [str(c) for c in z["classes"]])
        classes = sorted(train)
        xtr, ytr = _decode(train, classes)
        xte, yte = _decode(test, classes)
        tmp = target.with_suffix(".tmp.npz")
        np.savez(tmp, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, classes=np.array(classes))
        os.replace(tmp, target)
        return CifarArrays(xtr, ytr, xte, yte, classes)


DECODE_CHUNK = 2048  # images a decoding task takes


def _decode(files: dict[str, list[Path]], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every image of `files` (class -> paths) as uint8 NHWC, with its class's index; decoded
    in forked processes where that is safe (a first run's 50,000 small JPEGs: ~5 s in one
    process here, and Python's per-image work holds the GIL, so threads do not help)."""
    paths = [f for c in classes for f in files[c]]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(files[c]) for c in classes])
    chunks = [paths[i:i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]
    n = _decode_processes(len(chunks))
    if n > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_decode_files, chunks))
    else:
        parts = [_decode_files(chunk) for chunk in chunks]
    return np.concatenate(parts), labels


def _decode_processes(chunks: int) -> int:
    """Processes for decoding: this machine's cores (at most 16), or 1 where forking is not
    safe: off Linux (macOS's system libraries can crash a forked child), where Ray runs in
    this process (its threads would be forked), or once this process has initialised CUDA (a
    forked child cannot use it, and the driver's threads do not survive the fork)."""
    import sys

    ray, torch = sys.modules.get("ray"), sys.modules.get("torch")
    if (not sys.platform.startswith("linux")
            or (ray is not None and ray.is_initialized())
            or (torch is not None and torch.cuda.is_initialized())):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 16, chunks))


def _decode_files(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    x = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)
    for i, f in enumerate(paths):
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise DataError(f"cannot read image {f} ({type(e).__name__}); "
                            "delete or replace the file") from e
        if arr.shape != (32, 32, 3):
            raise DataError(f"image {f} is {arr.shape[1]}x{arr.shape[0]}, not 32x32; "
                            "resize it or remove it")
        x[i] = arr
    return x
