"""Albumentations pipelines: the spec's training augmentation and plain evaluation.

train: pad 4 (reflect) -> RandomCrop 32x32 -> horizontal flip -> one 8x8 cutout filled with the
dataset mean -> normalise -> CHW float tensor. eval: normalise -> tensor. The cutout runs on the
uint8 image before normalisation, so "filled with the mean" becomes ~0 after it.

albumentations (and OpenCV) are imported when a pipeline is built: a `--augment gpu` run's
driver, range-test trial and workers never load them (~0.4 s of each process's start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import albumentations as A

# CIFAR-10's training-set statistics (RGB, [0, 1] units); `CifarArrays.mean_std()` computes the
# same figures for whatever data is loaded, and training uses those.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def train_transform(mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                    pad: int = 4, cutout: int = 8, cutout_p: float = 1.0) -> "A.Compose":
    import albumentations as A
    import cv2
    from albumentations.pytorch import ToTensorV2

    fill = tuple(int(round(m * 255)) for m in mean)
    return A.Compose([
        A.PadIfNeeded(min_height=32 + 2 * pad, min_width=32 + 2 * pad,
                      border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(height=32, width=32),
        A.HorizontalFlip(p=0.5),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(cutout, cutout),
                        hole_width_range=(cutout, cutout), fill=fill, p=cutout_p),
        A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
        ToTensorV2(),
    ])


def eval_transform(mean: Sequence[float] = CIFAR10_MEAN,
                   std: Sequence[float] = CIFAR10_STD) -> "A.Compose":
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    return A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])
