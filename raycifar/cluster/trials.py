"""Ray Tune glue: the LR range test as a Tune run, the LRMAX search, and seeds.

`lr_find` runs `lr_finder.range_test` inside one Tune trial and reports every step's loss to
Tune (so the curve shows in the dashboard and in Tune's results). `search` tries K LRMAX
candidates on a log grid around the range test's suggestion, each a short One Cycle run (a
TorchTrainer launched from a Tune function trainable, Ray 2.60 style) with the same peak
fraction, evaluated on a held-out slice of the training set; ASHA stops the weak ones.
`seeds` runs N full trainings that differ only in `--seed` as parallel trials.

Both run on any cluster as it is: a search trial holds no CPU or GPU, only a little memory
(every node has that resource), and its Train workers hold the rest; how many trials run at
once is what the cluster can place (`cluster.trial_concurrency`), or `--max-concurrent`. The
data the driver loaded reaches every trial and worker through Ray's object store.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..recipe import timeline
from ..recipe.config import RangeTestConfig, RaycifarError, SearchConfig, TrainConfig
from ..recipe.data import TrainingData, load_arrays
from ..recipe.engine import Learner, build_model, one_cycle, train_batches
from ..recipe.logs import log
from ..recipe.lr_finder import RangeTestError, range_test
from ..recipe.runtime import Runtime
from ..store import runs
from ..store.range_test import save_range_test
from ..store.runs import RunFolder
from ..store.seeds import seed_run_name, write_table
from ..store.trackers import TrackedRun
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

    entered = time.time()
    cfg = TrainConfig.from_dict(config["train"])
    settings = RangeTestConfig(**config["range_test"])
    device = torch.device("cuda" if config["use_gpu"] else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    data = _fetch(data)
    rt = Runtime.on(device, cfg.precision, cfg.channels_last)
    # fed as the training will be: with --augment gpu from the images held on the trial's
    # device (a loader on the trial's CPUs would set a GPU's pace), else albumentations
    loader = train_batches(cfg, data, rt)
    # the training's own learner (optimizer, loss scaler, loss, step); the sweep's LRs take
    # its One Cycle's place
    learner = Learner.build(cfg, build_model(cfg, len(data.arrays.classes), rt), len(loader), rt)
    about = {"batch_size": cfg.batch_size, "train_images": len(data.arrays.y_train),
             "seed": cfg.seed}
    swept = time.time()
    try:
        result = range_test(
            learner, loader, settings,
            on_step=lambda i, lr, loss, sm: tune.report(                    # Ray: to Tune
                {"step": i, "lr": lr, "loss": loss, "smoothed_loss": sm}))
    except RangeTestError as e:
        if e.sweep is None:  # nothing was swept: a bad setting, or NaN from the first step
            raise
        e.sweep.settings.update(about)  # the sweep cost minutes: keep it to be read again
        save_range_test(RunFolder(cfg.run_dir), e.sweep)
        raise RangeTestError(f"{e} (the sweep is kept in {cfg.run_dir}/{runs.LR_FINDER_CSV}: "
                             "the same command with another --method or --lr-min-rule reads "
                             "it again without sweeping)") from None
    # when the trial's function started, its sweep started and ended (timeline's moments)
    about.update(device=str(rt.device),
                 moments={"trial": entered, "sweep": swept, "sweep_end": time.time()})
    result.settings.update(about)
    save_range_test(RunFolder(cfg.run_dir), result)


def lr_find(cfg: TrainConfig, settings: RangeTestConfig = RangeTestConfig(),
            use_gpu: bool = False, data: Optional[TrainingData] = None) -> dict:
    """Run the range test as a Tune run; returns (and leaves in the run folder) its reading,
    lr_finder.json's contents.

    The trial holds what one training worker would (`cpus_per_worker` CPUs, `gpus_per_worker`
    when `use_gpu`) and gets `data` (default: loaded here) through the object store. The
    sweep's batches come as the training's will (`--augment`: albumentations or the device).
    """
    from ray import tune

    data = data or TrainingData.of(load_arrays(cfg))
    resources = cfg.worker_resources(use_gpu)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(range_test_trainable, data=data), resources),
        param_space={"train": cfg.to_dict(), "range_test": settings.to_dict(),
                     "use_gpu": use_gpu},
        run_config=tune.RunConfig(name=f"{cfg.name}-lr-find", storage_path=cfg.storage_path,
                                  verbose=0),
    )
    grid = _fit(tuner)
    finding = RunFolder(cfg.run_dir).read_json(runs.LR_FINDER_JSON)
    for name, at in finding["settings"]["moments"].items():
        timeline.note(name, at)
    timeline.note("range_test_done")
    finding["tune_steps_reported"] = len(grid[0].metrics_dataframe)
    return finding


def search_trainable(config: dict, data=None) -> None:
    """One Tune trial: a One Cycle run with this trial's LRMAX and LRMIN, under Ray Train;
    `data` is the object-store reference its workers read (the trial never unpacks it)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    lr_max, lr_min = config["candidate"]
    trial = tune.get_context().get_trial_id()
    cfg = TrainConfig.from_dict(config["train"]).replace(
        lr_max=lr_max, lr_min=lr_min, name=f"{config['train']['name']}-trial-{trial}")
    fit(cfg, config["use_gpu"], config["meta"], callbacks=[TuneReportCallback()], data=data)


def candidates(center: float, k: int, span: float = 4.0) -> list[float]:
    """k LRs on a log grid from center/span to center*span (center included when k is odd)."""
    if k == 1:
        return [center]
    return [float(x) for x in np.geomspace(center / span, center * span, k)]


@dataclass(frozen=True)
class SearchPlan:
    """What each candidate trains: `short` (its config, before its LRs) and the (LRMAX,
    LRMIN) pairs, and when ASHA first judges (epochs)."""

    length: str
    short: TrainConfig
    pairs: list[tuple[float, float]]
    grace: int


def search_plan(cfg: TrainConfig, center: float, lr_min: float, settings: SearchConfig,
                use_gpu: bool, lrs: Optional[list[float]] = None) -> SearchPlan:
    """The candidates of a search around `center`, for `short` or `full` runs.

    short: `settings.epochs` of One Cycle with the run's peak fraction, LRMIN = LRMAX times the
    found LRMIN/LRMAX ratio, judged by ASHA after one epoch (cheap, but at the peak: it favours
    low LRMAX). full (the default on GPUs): the run's own 24-epoch cycle with the found LRMIN
    (at most LRMAX/2), judged no earlier than halfway, so a candidate is what the real run
    would be. Both rank candidates on `settings.holdout` held-out training images.
    """
    grid = lrs or candidates(center, settings.candidates, settings.span)
    length = settings.length or ("full" if use_gpu else "short")
    held = {"stop_after_epoch": 0, "validation": settings.holdout}
    if length == "full":
        return SearchPlan(length, cfg.replace(**held),
                          [(lr, min(lr_min, lr / 2)) for lr in grid],
                          max(cfg.peak_epoch + 1, cfg.epochs // 2))
    epochs = settings.epochs
    peak = min(max(1, round(epochs * cfg.peak_epoch / cfg.epochs)), epochs - 1)
    ratio = lr_min / center
    return SearchPlan(length, cfg.replace(epochs=epochs, peak_epoch=peak, **held),
                      [(lr, lr * ratio) for lr in grid], 1)


def search(cfg: TrainConfig, center: float, settings: SearchConfig = SearchConfig(),
           lr_min: Optional[float] = None, use_gpu: bool = False,
           data: Optional[TrainingData] = None, lrs: Optional[list[float]] = None,
           nest: Optional[TrackedRun] = None) -> dict:
    """ASHA over the candidates (`lrs`, default: the log grid around `center`, the range test's
    LRMAX; `lr_min` its LRMIN, default center/10); writes lr_search.csv and best.json under
    cfg.run_dir and returns best.json's contents.

    `settings.holdout` of the training images in `data` (default: loaded here) are held out
    to rank the candidates; the rest reach every trial's workers through the object store.
    Each candidate is tracked as a child of `nest` when given.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    timeline.note("search")

    from .placement import trial_concurrency
    from .tracking import track_trials

    plan = search_plan(cfg, center, lr_min or center / 10, settings, use_gpu, lrs)
    data = data or TrainingData.of(load_arrays(cfg))
    held = TrainingData.of(data.arrays.hold_out(settings.holdout, cfg.seed))
    one_cycle(plan.short, len(held.arrays.y_train))  # enough data for the cycle?
    slots = trial_concurrency(ray.nodes(), cfg, use_gpu, len(plan.pairs), settings.max_concurrent)
    trainable = tune.with_resources(
        tune.with_parameters(search_trainable, data=ray.put(held)), TRIAL_DRIVER)
    # One Tune experiment per plan: the same search run again (after Ctrl-C, a lost driver)
    # restores it, keeping finished trials and resuming unfinished ones from their own Train
    # checkpoints; other candidates or settings get a folder of their own.
    plan_id = hashlib.sha256(json.dumps(
        {"train": plan.short.replace(tracker="none").to_dict(), "pairs": plan.pairs,
         "grace": plan.grace},
        sort_keys=True).encode()).hexdigest()[:8]
    name = f"{cfg.name}-lr-search-{plan_id}"
    path = f"{cfg.storage_path.rstrip('/')}/{name}"
    # a restored Tuner keeps the callbacks it was made with: they find this command's tracker
    # run by the experiment's name
    children = track_trials(name, nest, lambda trial: f"{cfg.storage_path.rstrip('/')}/"
                            f"{cfg.name}-trial-{trial.trial_id}", with_model=False)
    if tune.Tuner.can_restore(path):
        log.info(f"resuming the LR search kept in {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True,
                                   restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"train": plan.short.to_dict(),
                         "candidate": tune.grid_search(plan.pairs), "use_gpu": use_gpu,
                         "meta": runs.run_meta()},  # the driver's command line
            tune_config=tune.TuneConfig(
                # ASHA ranks by held-out loss: continuous, so no ties on a small held-out set;
                # the winner is then picked by held-out accuracy among the runs that went the
                # distance.
                metric=runs.RANK_BY, mode="min", max_concurrent_trials=slots,
                scheduler=ASHAScheduler(time_attr="training_iteration",
                                        max_t=plan.short.epochs, grace_period=plan.grace,
                                        reduction_factor=2)),
            # A trial whose node died (its driver or its Train run) is tried again, and goes
            # on from its last checkpoint.
            run_config=tune.RunConfig(name=name, storage_path=cfg.storage_path, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=2),
                                      callbacks=children),
        )
    rows = [_search_row(r) for r in _fit(tuner)]
    rows.sort(key=lambda r: r["lr_max"])
    best = max(rows, key=lambda r: (r["epochs_run"], _finite(r["held_out_acc"]),
                                    _finite(-r["held_out_loss"])))
    run = RunFolder(cfg.run_dir)
    run.write_csv(runs.LR_SEARCH, rows, runs.LR_SEARCH_COLUMNS)
    finding = {"lr_max": best["lr_max"], "lr_min": best["lr_min"], "method": "asha-search",
               "length": plan.length, "held_out_acc": best["held_out_acc"],
               "candidates": [p[0] for p in plan.pairs], "search_epochs": plan.short.epochs,
               "validation_images": settings.holdout, "center": center}
    run.write_json(runs.BEST, finding)
    return finding


def _search_row(result) -> dict:
    m = result.metrics or {}
    lr_max, lr_min = result.config["candidate"]
    return {"lr_max": lr_max, "lr_min": lr_min,
            "epochs_run": m.get("training_iteration", 0),
            # a trial that failed before its first epoch reported nothing
            "held_out_acc": m.get(runs.TABULATE, float("nan")),
            "held_out_loss": m.get(runs.RANK_BY, float("nan"))}


def seed_trainable(config: dict, data=None) -> None:
    """One Tune trial: a full training with this trial's seed (a TorchTrainer) in its own run
    folder; re-run, it resumes from that folder's checkpoint, or, finished, does nothing."""
    from ray.tune.integration.ray_train import TuneReportCallback

    base = TrainConfig.from_dict(config["train"])
    cfg = base.replace(seed=config["seed"], name=seed_run_name(base.name, config["seed"]))
    if RunFolder(cfg.run_dir).exists(runs.SUMMARY):
        return
    fit(cfg, config["use_gpu"], config["meta"], callbacks=[TuneReportCallback()], data=data)


def seeds(cfg: TrainConfig, n: int, use_gpu: bool, data: TrainingData, meta: dict,
          max_concurrent: Optional[int] = None, nest: Optional[TrackedRun] = None) -> dict:
    """N trainings that differ only in their seed (cfg.seed, cfg.seed + 1, ...) as parallel
    Tune trials, on the same data (selected with cfg.seed) and LRs; writes seeds.csv and
    seeds.json in cfg.run_dir and returns seeds.json's contents. Each seed's run is tracked
    as a child of `nest` when given."""
    import ray
    from ray import tune

    from .placement import trial_concurrency
    from .tracking import track_trials

    values = [cfg.seed + k for k in range(n)]
    slots = trial_concurrency(ray.nodes(), cfg, use_gpu, n, max_concurrent, what="seeds run")
    trainable = tune.with_parameters(seed_trainable, data=ray.put(data))
    storage = cfg.storage_path.rstrip("/")
    children = track_trials(f"{cfg.name}-seeds", nest, lambda trial: f"{storage}/"
                            f"{seed_run_name(cfg.name, trial.config['seed'])}")
    tuner = tune.Tuner(
        tune.with_resources(trainable, TRIAL_DRIVER),
        param_space={"train": cfg.to_dict(), "seed": tune.grid_search(values),
                     "use_gpu": use_gpu, "meta": meta},
        tune_config=tune.TuneConfig(max_concurrent_trials=slots),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-seeds", storage_path=cfg.storage_path, verbose=0,
            callbacks=children),
    )
    _fit(tuner)
    return write_table(cfg.storage_path, cfg.name, values,
                       {"lr_max": cfg.lr_max, "lr_min": cfg.lr_min,
                        "lr_source": meta.get("lr_source"), "config": cfg.to_dict()})


def _finite(x: float) -> float:
    """NaN (a trial that reported nothing) ranks last."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf


def _fit(tuner):
    """Run a Tuner; a trial's user error is re-raised as it is, Ctrl-C as KeyboardInterrupt.

    Tune catches Ctrl-C itself and returns with trials unfinished: that is an interruption,
    not results to read.
    """
    from .placement import user_error

    grid = tuner.fit()
    for err in grid.errors:
        user = user_error(err)
        raise user if user else RaycifarError(f"a Tune trial failed: {err}")
    if grid.num_terminated < len(grid):
        raise KeyboardInterrupt
    return grid
