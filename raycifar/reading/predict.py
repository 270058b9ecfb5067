"""Classify image files with a finished run: `python -m raycifar.predict RUN IMAGE...`.

Owns reading user images and the top-k output. Any size and mode Pillow opens (the first frame
of an animation) is converted to RGB (alpha dropped, palettes expanded) and resized to 32x32
with Pillow's bilinear filter, which on shrinking averages over the area each output pixel
covers (antialiased) and on enlarging interpolates; the aspect ratio is not kept (no crop, no
padding). A 32x32 image is used as it is. Then the run's own normalisation and, as the run did,
flip TTA. A folder argument stands for the images in it (sorted, not recursive); other files
there are skipped with a warning on stderr. A file named directly that is not a readable image
is an error. Ray is never imported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..recipe.config import RaycifarError
from ..recipe.data import ArrayDataset
from ..recipe.engine import predict as predict_logits
from ..recipe.transforms import eval_transform
from .evaluate import TrainedRun

SIZE = 32


class ImageError(RaycifarError):
    """An image argument is missing or not an image Pillow can read."""


@dataclass
class Prediction:
    path: str
    size: tuple[int, int]  # width, height as read
    mode: str              # Pillow mode as read (RGB, L, RGBA, P, ...)
    top: list[tuple[str, float]]  # (class, probability), most likely first


def read_image(path: Path) -> tuple[np.ndarray, tuple[int, int], str]:
    """32x32 uint8 RGB pixels of one file, with its original size and mode."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
            rgb = im.convert("RGB")
    except Exception as e:  # Pillow raises many types for bad files
        raise ImageError(f"cannot read image {path} ({type(e).__name__}: {e}); pass image "
                         "files Pillow reads (PNG, JPEG, ...)") from e
    if rgb.size != (SIZE, SIZE):
        rgb = rgb.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), size, mode


def expand(args: list[str]) -> list[Path]:
    """The files named, with each folder replaced by its files (sorted)."""
    files: list[Path] = []
    for a in args:
        p = Path(a).expanduser()
        if p.is_dir():
            inside = sorted(f for f in p.iterdir() if not f.is_dir())
            if not inside:
                raise ImageError(f"folder {p} holds no files; pass image files or a folder "
                                 "of images")
            files.extend(inside)
        elif p.is_file():
            files.append(p)
        else:
            raise ImageError(f"{p} does not exist; pass image files or folders of images")
    return files


def load_images(args: list[str]) -> tuple[list[Path], np.ndarray, list[tuple]]:
    """Read every image: named files must be images; others in folders are skipped (stderr)."""
    named = {Path(a).expanduser() for a in args}
    paths, pixels, info = [], [], []
    for f in expand(args):
        try:
            x, size, mode = read_image(f)
        except ImageError:
            if f in named:
                raise
            print(f"warning: skipping {f}: not an image Pillow reads", file=sys.stderr)
            continue
        paths.append(f)
        pixels.append(x)
        info.append((size, mode))
    if not paths:
        raise ImageError(f"no images among {args}; pass image files or folders of images")
    return paths, np.stack(pixels), info


def classify(trained: TrainedRun, images: np.ndarray, top_k: int, tta: bool,
             batch_size: int = 512) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) of each uint8 RGB 32x32 image."""
    ds = ArrayDataset(images, np.zeros(len(images), np.int64),
                      eval_transform(trained.mean, trained.std))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0)
    _, averaged, _ = predict_logits(trained.model, loader, trained.rt, tta)
    probs = torch.softmax(averaged, 1).cpu()
    p, i = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [[(trained.classes[c], float(v)) for c, v in zip(ci.tolist(), pi.tolist())]
            for ci, pi in zip(i, p)]
