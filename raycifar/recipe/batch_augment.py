"""Device-resident training batches with whole-batch augmentation (the "fast path").

`DeviceBatches` keeps the uint8 training images on the training device (GPU or CPU) once and
yields shuffled, augmented, normalised batches from there, so no loader processes, per-image
albumentations calls or host-to-device image copies are needed. `augment_batch` draws from the
same distribution as `raycifar.recipe.transforms.train_transform` (albumentations 2.0.x):

* reflect padding by `pad` (cv2.BORDER_REFLECT_101: the edge pixel is not repeated), then a crop
  back to the original size at offsets uniform over 0..2*pad (inclusive) on each axis;
* a horizontal flip with probability 0.5;
* with probability `cutout_p`, one `cutout` x `cutout` hole placed fully inside the image, its
  top-left corner uniform over 0..H-cutout / 0..W-cutout (inclusive; albumentations'
  `CoarseDropout.get_params_dependent_on_data` draws `integers(0, H - h + 1)`), filled with the
  uint8 dataset mean `round(mean * 255)`;
* normalisation `(x / 255 - mean) / std` as float32 NCHW.

Every step is one vectorised torch op over the batch; random numbers come from a torch.Generator
on the device, so there are no host syncs per batch and runs are reproducible.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from .sharding import GlobalBatches

FloatSeq = Union[Sequence[float], torch.Tensor]


def mean_fill(mean: Sequence[float]) -> tuple[int, ...]:
    """The uint8 cutout fill for a [0, 1]-unit mean, as `transforms.train_transform` computes it."""
    return tuple(int(round(float(m) * 255)) for m in mean)


def _channel_tensor(values: FloatSeq, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-channel values as a (1, C, 1, 1) tensor on `like`'s device."""
    t = torch.as_tensor(values, dtype=dtype, device=like.device)
    return t.reshape(1, -1, 1, 1)


def normalise(x_uint8: torch.Tensor, mean: FloatSeq, std: FloatSeq) -> torch.Tensor:
    """uint8 NCHW -> float32 `(x / 255 - mean) / std`, mean and std in [0, 1] units."""
    mean_t = _channel_tensor(mean, x_uint8, torch.float32)
    std_t = _channel_tensor(std, x_uint8, torch.float32)
    # x * (1 / (255 std)) - mean / std: one multiply-add per element.
    return torch.addcmul(-mean_t / std_t, x_uint8.to(torch.float32), 1.0 / (255.0 * std_t))


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-(size - 1), 2 * (size - 1)] into [0, size) by reflect-101."""
    i = i.abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)


def augment_batch(x_uint8_nchw: torch.Tensor, generator: torch.Generator, pad: int = 4,
                  cutout: int = 8, fill: Union[Sequence[int], torch.Tensor] = (0, 0, 0),
                  cutout_p: float = 1.0, return_params: bool = False):
    """Reflect-pad + random crop, horizontal flip and one cutout on a uint8 NCHW batch.

    Returns the augmented uint8 batch (same shape), and with `return_params` also a dict of
    per-image parameters: ``crop`` (N, 2) offsets (y, x) into the padded image, ``flip`` (N,)
    bool, ``cutout`` (N, 2) top-left hole corner (y, x) in output coordinates and
    ``cutout_applied`` (N,) bool. `generator` must live on the batch's device.
    """
    x = x_uint8_nchw
    n, c, h, w = x.shape
    dev = x.device
    if not 0 <= pad < min(h, w):
        raise ValueError(f"pad={pad} must be in [0, {min(h, w) - 1}] for reflect padding")
    if not 0 <= cutout <= min(h, w):
        raise ValueError(f"cutout={cutout} must be in [0, {min(h, w)}]")

    # Random draws, all on the device: crop offsets, flips, hole corners, whether to cut.
    crop = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=dev)
    flip = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    if cutout > 0:
        cy = torch.randint(0, h - cutout + 1, (n,), generator=generator, device=dev)
        cx = torch.randint(0, w - cutout + 1, (n,), generator=generator, device=dev)
        applied = torch.rand((n,), generator=generator, device=dev) < cutout_p
    else:
        cy = cx = torch.zeros((n,), dtype=torch.long, device=dev)
        applied = torch.zeros((n,), dtype=torch.bool, device=dev)

    # Crop + flip as one gather: output pixel (i, j) reads padded pixel
    # (oy + i, ox + j') with j' = W-1-j when flipped, i.e. source (oy+i-pad, ox+j'-pad) reflected.
    rows_out = torch.arange(h, device=dev)
    cols_out = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], w - 1 - cols_out, cols_out)                  # (N, W)
    src_r = _reflect(crop[:, :1] + rows_out[None, :] - pad, h)                      # (N, H)
    src_c = _reflect(crop[:, 1:] + cols - pad, w)                                   # (N, W)
    flat = (src_r[:, :, None] * w + src_c[:, None, :]).reshape(n, 1, h * w)
    out = x.reshape(n, c, h * w).gather(2, flat.expand(n, c, h * w)).reshape(n, c, h, w)

    # Cutout: one hole per image (where drawn), in output coordinates, set to the fill.
    if cutout > 0:
        in_r = (rows_out[None, :] >= cy[:, None]) & (rows_out[None, :] < cy[:, None] + cutout)
        in_c = (cols_out[None, :] >= cx[:, None]) & (cols_out[None, :] < cx[:, None] + cutout)
        hole = in_r[:, :, None] & in_c[:, None, :] & applied[:, None, None]          # (N, H, W)
        fill_t = _channel_tensor(fill, x, torch.uint8)
        out = torch.where(hole[:, None], fill_t, out)

    if return_params:
        return out, {"crop": crop, "flip": flip, "cutout": torch.stack([cy, cx], 1),
                     "cutout_applied": applied}
    return out


def _derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, rank), the same on every machine."""
    state = np.random.SeedSequence([p % 2**64 for p in parts]).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


class DeviceBatches:
    """Shuffled, augmented, normalised training batches from images held on `device`.

    Drop-in for the training DataLoader: iterate for (x float32 NCHW, y int64) batches already on
    `device`, this rank's slice of each of the epoch's global batches (`plan`, a
    `sharding.GlobalBatches`); `len()` is the steps per epoch; call `set_epoch` before each
    epoch (also reachable as ``.sampler.set_epoch``).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, plan: GlobalBatches, mean: Sequence[float],
                 std: Sequence[float], device: torch.device, pad: int = 4, cutout: int = 8,
                 cutout_p: float = 1.0, augment: bool = True, channels_last: bool = False):
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise ValueError(f"x must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
        if len(x) != len(y) or len(x) != plan.n:
            raise ValueError(f"need as many labels as images, as the plan says: {len(x)} vs "
                             f"{len(y)} vs {plan.n}")
        self.device = torch.device(device)
        # Stored once: uint8 NCHW images (a quarter of float32's memory) and int64 labels.
        # Copied as stored (HWC), then laid out as NCHW on the device.
        # np.require copies arrays that are read-only (the object store hands out such):
        # torch.from_numpy would share them and warn.
        hwc = torch.from_numpy(np.require(x, requirements=["C", "W"])).to(self.device)
        self.images = hwc.permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(np.asarray(y).astype(np.int64)).to(self.device)
        self.plan = plan
        self.pad, self.cutout, self.cutout_p = pad, cutout, cutout_p
        self.augment, self.channels_last = augment, channels_last
        # Per-channel constants built once on the device (no host copies per batch).
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device)
        self.fill = torch.tensor(mean_fill(mean), dtype=torch.uint8, device=self.device)

    @property
    def sampler(self) -> "DeviceBatches":
        return self

    def set_epoch(self, epoch: int) -> None:
        self.plan.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.plan)

    def _generator(self) -> Optional[torch.Generator]:
        if not self.augment:
            return None
        g = torch.Generator(device=self.device)
        g.manual_seed(_derived_seed(self.plan.seed, self.plan.epoch, self.plan.start))
        return g

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = self.plan.rank_indices().to(self.device)  # one copy per epoch, not per step
        gen = self._generator()
        for b in steps:
            xb = self.images[b]
            if gen is not None:
                xb = augment_batch(xb, gen, self.pad, self.cutout, self.fill, self.cutout_p)
            xf = normalise(xb, self.mean, self.std)
            if self.channels_last:
                xf = xf.contiguous(memory_format=torch.channels_last)
            yield xf, self.labels[b]


class DeviceTestBatches:
    """The test set (this rank's slice) held on the device as uint8 and normalised there in
    large batches: evaluation without a loader, what `--augment gpu` uses. The flip of flip TTA
    happens on the device too (engine.predict)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, batch_size: int = 2048, channels_last: bool = False):
        self.device = torch.device(device)
        hwc = torch.from_numpy(np.require(x, dtype=np.uint8, requirements=["C", "W"]))
        self.images = hwc.to(self.device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(np.asarray(y).astype(np.int64)).to(self.device)
        self.mean, self.std = list(mean), list(std)
        self.batch_size, self.channels_last = batch_size, channels_last

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            xf = normalise(self.images[start:start + self.batch_size], self.mean, self.std)
            if self.channels_last:
                xf = xf.contiguous(memory_format=torch.channels_last)
            yield xf, self.labels[start:start + self.batch_size]
