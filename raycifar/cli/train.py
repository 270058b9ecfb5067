"""`python -m raycifar.train`: parse, check, choose the LRs, fit, say how it went.

Everything that can be checked without workers is checked here, before any worker starts:
the data (read here, on the driver, and only here), the cycle it allows, the storage path, the
cluster's room, the checkpoint a re-run resumes from. Training itself is `cluster.trainer.fit`.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional

from ..cluster.connect import join_cluster
from ..cluster.lrs import choose_lrs
from ..cluster.trainer import driver_data, fit
from ..cluster.worker import Stopped
from ..recipe import timeline
from ..recipe.config import TrainConfig
from ..recipe.data import TrainingData
from ..recipe.logs import log
from ..store import runs
from ..store.resume import check_resumable, latest_checkpoint
from ..store.runs import RunFolder
from .args import add_config_arguments, add_debug_flag, config_from_args, run_cli
from .lr_flags import add_lr_arguments, lr_choice

GPU_FEEDING_LOADERS = 16  # ~70,000 / ~5,000 images/s on the H200 machine, rounded up


def main(args: argparse.Namespace) -> int:
    timeline.start()
    cfg = config_from_args(args)
    choice = lr_choice(args)
    data, total_steps = driver_data(cfg, choice.search and choice.search.holdout)
    timeline.note("data")
    num_classes = len(data.arrays.classes)
    use_gpu = join_cluster(cfg, args.address) if cfg.num_workers > 0 else bool(cfg.use_gpu)
    timeline.note("ray")
    run = RunFolder(cfg.run_dir)
    run.delete_folder(runs.DIVERGED)  # a new command may try again (a changed LR fails below)
    cfg, found = choose_lrs(cfg, choice, use_gpu, latest_checkpoint(run) is not None, data,
                            args.address)
    timeline.note("lrs")
    after = check_resumable(cfg, num_classes, total_steps)
    if after is not None:
        log.info(f"{cfg.run_dir} has a checkpoint: resuming after epoch {after} of "
                 f"{cfg.epochs} (use another --name to start fresh)")
    elif run.exists(runs.METRICS):
        log.info(f"{cfg.run_dir} has no checkpoint to resume from: starting at epoch 1")
    log.info(f"LRMAX {cfg.lr_max:.4g}, LRMIN {cfg.lr_min:.4g} from {found.describe()}")
    hint = loader_hint(cfg, use_gpu)
    if hint:
        log.info(f"note: {hint}")
    meta = runs.run_meta(found)
    summary = fit_or_keep(cfg, use_gpu, meta, data, num_classes)
    if isinstance(summary, Stopped):
        log.info(f"stopped after epoch {summary.after_epoch}; run the same command "
                 f"without --stop-after-epoch to continue {cfg.run_dir}")
        return 0
    log.info(f"done in {time.time() - timeline.noted()['process']:.0f}s: final test accuracy "
             f"{summary['final_test_acc']:.4f} (best {summary['best_test_acc']:.4f} at epoch "
             f"{summary['best_epoch']}), {summary['images_per_second']:.0f} train images/s; "
             f"run folder {cfg.run_dir}")
    return 0


def fit_or_keep(cfg: TrainConfig, use_gpu: bool, meta: dict, data: TrainingData,
                num_classes: int) -> "dict | Stopped":
    """fit(): the summary, or where --stop-after-epoch stopped; on Ctrl-C or SIGTERM, say
    which checkpoint the next run resumes from."""
    try:
        timeline.note("fit")
        result = fit(cfg, use_gpu, {**meta, "moments": timeline.noted()}, data=data)
        if result.return_value is None:  # Ray Train aborted the run on Ctrl-C / SIGTERM
            raise KeyboardInterrupt
        return result.return_value
    except (KeyboardInterrupt, SystemExit) as e:
        # Ray Train turns Ctrl-C (and so SIGTERM, see raycifar.cluster.connect) into an abort that
        # leaves fit() with SystemExit(1) or an empty result.
        done = check_resumable(cfg, num_classes)
        log.info(f"interrupted; {cfg.run_dir} keeps the checkpoint of epoch {done}"
                 if done else "interrupted before the first epoch ended")
        raise KeyboardInterrupt from e


def loader_hint(cfg: TrainConfig, use_gpu: bool) -> Optional[str]:
    """On a GPU the albumentations loader, not the GPU, sets the pace unless it has many
    workers (results/gpu-h200: ~5,000 images/s per worker against ~70,000 the model takes)."""
    if not use_gpu or cfg.augment != "albumentations" or cfg.loader_workers >= GPU_FEEDING_LOADERS:
        return None
    loader = (f"{cfg.loader_workers} albumentations loader worker(s) per GPU"
              if cfg.loader_workers else "albumentations in the training process")
    return (f"{loader} will hold the GPU back (on an H200: ~5,000 images/s per loader worker, "
            "against ~70,000 the model trains); --augment gpu augments on the GPU instead, or "
            "raise --loader-workers")


def build_parser(prog: str = "raycifar train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train the custom ResNet on CIFAR-10 with One Cycle under Ray Train.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_config_arguments(parser)
    parser.add_argument("--address", default=None,
                        help="the Ray cluster to join (host:port, 'auto' or ray://host:port); "
                             "default: RAY_ADDRESS (set in `ray job submit` jobs), else the "
                             "cluster `ray start` runs on this node, else a new local Ray")
    add_lr_arguments(parser)
    add_debug_flag(parser)
    return parser


def cli(argv: Optional[list[str]] = None, prog: str = "raycifar train") -> int:
    return run_cli(main, build_parser(prog), argv)
