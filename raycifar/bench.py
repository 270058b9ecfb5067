"""Throughput of raycifar's Ray Train loop against a plain PyTorch loop.

Both train the same model on the same data pipeline (albumentations, same loader workers), with
the same global batch, precision and memory layout, for two epochs of `--subset` images; the
second (warm) epoch is timed. The Ray figure is the `images_per_second` the worker loop itself
records in `metrics.csv`, so it includes DDP and Ray's reporting and checkpointing between
epochs is excluded in both. Run:

    python -m raycifar.bench --data-dir /tmp/cifar10-dev --subset 3072 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from torch import nn

from .config import TrainConfig, resolve_storage_path
from .data import ArrayDataset, load_arrays
from .engine import resolve_precision
from .model import CustomResNet
from .runs import RunFolder
from .schedule import OneCycle
from .transforms import train_transform


def plain_images_per_second(cfg: TrainConfig) -> float:
    """A hand-written loop, no raycifar engine: two epochs, the second one timed."""
    torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    device = torch.device("cpu")
    precision = resolve_precision(cfg.precision, device)
    arrays = load_arrays(cfg)
    mean, std = arrays.mean_std()
    loader = torch.utils.data.DataLoader(
        ArrayDataset(arrays.x_train, arrays.y_train, train_transform(mean, std)),
        batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.loader_workers)
    model = CustomResNet(len(arrays.classes), cfg.logit_scale)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_min, momentum=0.9, nesterov=True,
                          weight_decay=cfg.weight_decay)
    sched = OneCycle(cfg.lr_min, cfg.lr_max, 2, 1, len(loader)).build(opt)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    seconds, images = 0.0, 0
    for epoch in range(2):
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss.item()  # the Ray loop reads the loss every step too
            seen += len(y)
        seconds, images = time.perf_counter() - start, seen
    return images / seconds


def ray_images_per_second(cfg: TrainConfig) -> float:
    from .train import fit, init_ray

    init_ray(None)
    with tempfile.TemporaryDirectory() as d:
        run_cfg = cfg.replace(storage_path=d, name="bench", epochs=2, peak_epoch=1)
        fit(run_cfg)
        rows = RunFolder(run_cfg.run_dir).read_csv("metrics.csv", ["images_per_second"])
    return float(rows[-1]["images_per_second"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raycifar.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--subset", type=int, default=3072, help="images per epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="auto")
    p.add_argument("--cpus-per-worker", type=int, default=2)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    cfg = TrainConfig(data_dir=args.data_dir, subset=args.subset, precision=args.precision,
                      cpus_per_worker=args.cpus_per_worker, num_workers=1,
                      storage_path=resolve_storage_path("~/raycifar_runs"))
    plain, ray_ = [], []
    for r in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        plain.append(plain_images_per_second(cfg))
        ray_.append(ray_images_per_second(cfg))
        print(f"repeat {r + 1}: plain {plain[-1]:.1f} img/s, ray {ray_[-1]:.1f} img/s", flush=True)
    out = {"plain": plain, "ray": ray_, "plain_median": statistics.median(plain),
           "ray_median": statistics.median(ray_),
           "ratio": statistics.median(ray_) / statistics.median(plain),
           "precision": resolve_precision(args.precision, torch.device("cpu")),
           "batch_size": cfg.batch_size, "subset": args.subset,
           "threads": args.cpus_per_worker, "loader_workers": cfg.loader_workers}
    print(json.dumps(out, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    from raycifar import bench as _module  # pickle the worker loop by reference

    raise SystemExit(_module.main())
