"""Ray Tune glue: the LR range test as a Tune run, and the LRMAX search.

`lr_find` runs `lr_finder.range_test` inside one Tune trial and reports every step's loss to
Tune (so the curve shows in the dashboard and in Tune's results). `search` tries K LRMAX
candidates on a log grid around the range test's suggestion, each a short One Cycle run (a
TorchTrainer launched from a Tune function trainable, Ray 2.60 style) with the same peak
fraction, evaluated on a held-out slice of the training set; ASHA stops the weak ones.

Both run on any cluster as it is: a search trial holds no CPU or GPU, only a little memory
(every node has that resource), and its Train workers hold the rest; how many trials run at
once is what the cluster can place (`cluster.search_concurrency`), or `--max-concurrent`. The
data the driver loaded reaches every trial and worker through Ray's object store.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from . import runs
from .config import RaycifarError, RangeTestConfig, SearchConfig, TrainConfig
from .data import TrainingData, batches_per_epoch, load_arrays
from .engine import build_model, make_optimizer, train_batches
from .lr_finder import RangeTestError, range_test
from .runs import RunFolder
from .runtime import Runtime
from .schedule import OneCycle
from .trainer import fit

# What a search trial holds itself: its Train workers hold the CPUs and GPUs. Tune needs some
# resource per trial, and memory is one every node declares (so nothing to add to a cluster).
TRIAL_DRIVER = {"CPU": 0, "memory": 256 * 2**20}


def _fetch(data):
    """`TrainingData` from what a trial was given (an object-store reference or the thing)."""
    import ray

    return ray.get(data) if isinstance(data, ray.ObjectRef) else data


def range_test_trainable(config: dict, data=None) -> None:
    """One Tune trial: the range test on the training data; every step reported to Tune.

    It trains on the GPU that the trial reserved when `use_gpu`, else on its CPUs.
    """
    from ray import tune

    cfg = TrainConfig.from_dict(config["train"])
    settings = RangeTestConfig(**config["range_test"])
    device = torch.device("cuda" if config["use_gpu"] else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    data = _fetch(data)
    rt = Runtime.on(device, cfg.precision, cfg.channels_last)
    loader = train_batches(cfg.replace(augment="albumentations"), data, rt, drop_last=True)
    model = build_model(cfg, len(data.arrays.classes), rt)
    about = {"batch_size": cfg.batch_size, "train_images": len(data.arrays.y_train),
             "seed": cfg.seed}
    try:
        result = range_test(
            model, make_optimizer(cfg, model), loader,
            nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), rt=rt,
            on_step=lambda i, lr, loss, sm: tune.report(                    # Ray: to Tune
                {"step": i, "lr": lr, "loss": loss, "smoothed_loss": sm}),
            **settings.to_dict())
    except RangeTestError as e:
        if e.sweep is None:  # nothing was swept: a bad setting, or NaN from the first step
            raise
        e.sweep.settings.update(about)  # the sweep cost minutes: keep it to be read again
        e.sweep.save(RunFolder(cfg.run_dir))
        raise RangeTestError(f"{e} (the sweep is kept in {cfg.run_dir}/{runs.LR_FINDER_CSV}: "
                             "the same command with another --method or --lr-min-rule reads "
                             "it again without sweeping)") from None
    result.settings.update(about)
    result.save(RunFolder(cfg.run_dir))


def lr_find(cfg: TrainConfig, settings: RangeTestConfig = RangeTestConfig(),
            use_gpu: bool = False, data: Optional[TrainingData] = None) -> dict:
    """Run the range test as a Tune run; returns (and leaves in the run folder) its reading,
    lr_finder.json's contents.

    The trial holds what one training worker would (`cpus_per_worker` CPUs, a GPU when
    `use_gpu`) and gets `data` (default: loaded here) through the object store. The sweep
    always feeds albumentations: the same distribution as `--augment gpu`, in a trial that
    holds one worker's CPUs.
    """
    from ray import tune

    data = data or TrainingData.of(load_arrays(cfg))
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(range_test_trainable, data=data), resources),
        param_space={"train": cfg.to_dict(), "range_test": settings.to_dict(),
                     "use_gpu": use_gpu},
        run_config=tune.RunConfig(name=f"{cfg.name}-lr-find", storage_path=cfg.storage_path,
                                  verbose=0),
    )
    grid = _fit(tuner)
    finding = RunFolder(cfg.run_dir).read_json(runs.LR_FINDER_JSON)
    finding["tune_steps_reported"] = len(grid[0].metrics_dataframe)
    return finding


def search_trainable(config: dict, data=None) -> None:
    """One Tune trial: a short One Cycle run with this trial's LRMAX, under Ray Train; `data`
    is the object-store reference its workers read (the trial never unpacks it)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = TrainConfig.from_dict(config["train"])
    lr_max = float(config["lr_max"])
    trial = tune.get_context().get_trial_id()
    cfg = cfg.replace(lr_max=lr_max, lr_min=lr_max / config["lr_min_div"],
                      name=f"{cfg.name}-trial-{trial}")
    fit(cfg, config["use_gpu"], callbacks=[TuneReportCallback()], data=data)


def candidates(center: float, k: int, span: float = 4.0) -> list[float]:
    """k LRs on a log grid from center/span to center*span (center included when k is odd)."""
    if k == 1:
        return [center]
    return [float(x) for x in np.geomspace(center / span, center * span, k)]


def search(cfg: TrainConfig, center: float, settings: SearchConfig = SearchConfig(),
           lr_min_div: float = 10, use_gpu: bool = False, data: Optional[TrainingData] = None,
           lrs: Optional[list[float]] = None) -> dict:
    """ASHA over the candidates (`lrs`, default: the log grid around `center`); writes
    lr_search.csv and best.json under cfg.run_dir and returns best.json's contents.

    `settings.holdout` of the training images in `data` (default: loaded here) are held out
    to rank the candidates; the rest reach every trial's workers through the object store.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .cluster import search_concurrency

    s = settings
    peak = max(1, round(s.epochs * cfg.peak_epoch / cfg.epochs))
    short = cfg.replace(epochs=s.epochs, peak_epoch=min(peak, s.epochs - 1), stop_after_epoch=0,
                        validation=s.holdout)
    data = data or TrainingData.of(load_arrays(cfg))
    held = TrainingData.of(data.arrays.hold_out(s.holdout, cfg.seed))
    OneCycle(short.lr_min, short.lr_max, short.epochs, short.peak_epoch,  # enough data for it?
             batches_per_epoch(len(held.arrays.y_train), short.batch_size,
                               max(short.num_workers, 1)))
    grid_lrs = lrs or candidates(center, s.candidates, s.span)
    slots = search_concurrency(ray.nodes(), cfg, use_gpu, len(grid_lrs), s.max_concurrent)
    trainable = tune.with_parameters(search_trainable, data=ray.put(held))
    tuner = tune.Tuner(
        tune.with_resources(trainable, TRIAL_DRIVER),
        param_space={"train": short.to_dict(), "lr_max": tune.grid_search(grid_lrs),
                     "lr_min_div": lr_min_div, "use_gpu": use_gpu},
        tune_config=tune.TuneConfig(
            # ASHA ranks by held-out loss: continuous, so no ties on a small held-out set; the
            # winner is then picked by held-out accuracy among the runs that went the distance.
            metric="test_loss", mode="min", max_concurrent_trials=slots,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=s.epochs,
                                    grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(name=f"{cfg.name}-lr-search", storage_path=cfg.storage_path,
                                  verbose=0),
    )
    rows = [_search_row(r, lr_min_div) for r in _fit(tuner)]
    rows.sort(key=lambda r: r["lr_max"])
    best = max(rows, key=lambda r: (r["epochs_run"], _finite(r["held_out_acc"]),
                                    _finite(-r["held_out_loss"])))
    run = RunFolder(cfg.run_dir)
    run.write_csv(runs.LR_SEARCH, rows, runs.LR_SEARCH_COLUMNS)
    finding = {"lr_max": best["lr_max"], "lr_min": best["lr_min"], "method": "asha-search",
               "held_out_acc": best["held_out_acc"], "candidates": grid_lrs,
               "search_epochs": s.epochs, "validation_images": s.holdout, "center": center}
    run.write_json(runs.BEST, finding)
    return finding


def _search_row(result, lr_min_div: float) -> dict:
    m = result.metrics or {}
    lr_max = result.config["lr_max"]
    return {"lr_max": lr_max, "lr_min": lr_max / lr_min_div,
            "epochs_run": m.get("training_iteration", 0),
            "held_out_acc": m.get("test_acc", float("nan")),
            "held_out_loss": m.get("test_loss", float("nan"))}


def _finite(x: float) -> float:
    """NaN (a trial that reported nothing) ranks last."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf


def _fit(tuner):
    """Run a Tuner; a trial's user error is re-raised as it is, Ctrl-C as KeyboardInterrupt.

    Tune catches Ctrl-C itself and returns with trials unfinished: that is an interruption,
    not results to read.
    """
    from .cluster import user_error

    grid = tuner.fit()
    for err in grid.errors:
        user = user_error(err)
        raise user if user else RaycifarError(f"a Tune trial failed: {err}")
    if grid.num_terminated < len(grid):
        raise KeyboardInterrupt
    return grid
