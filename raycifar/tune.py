"""Ray Tune glue: the LR range test as a Tune run, and the LRMAX search.

    python -m raycifar.tune lr-find --data-dir D --name N     # writes N/lr_finder.{csv,json}
    python -m raycifar.tune search  --data-dir D --name N     # writes N/lr_search.csv, best.json

`lr-find` runs `lr_finder.range_test` inside one Tune trial and reports every step's loss to
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

from .config import RaycifarError, TrainConfig
from .connect import init_ray, resolve_use_gpu
from .data import ArrayDataset, TrainingData, batches_per_epoch, load_arrays
from .engine import resolve_precision
from .lr_finder import (DEFAULT_LR_MIN_RULE, DEFAULT_METHOD, LRMAX_METHODS, LRMIN_RULES,
                        RangeTestError, range_test, reread)
from .model import CustomResNet
from .runs import RunFolder, RunFolderError
from .schedule import OneCycle
from .train import make_optimizer
from .transforms import train_transform

RANGE_TEST_DEFAULTS = {"start_lr": 1e-4, "end_lr": 10.0, "num_steps": 100, "mode": "exp",
                       "method": DEFAULT_METHOD, "lr_min_rule": DEFAULT_LR_MIN_RULE,
                       "lr_min_div": 10.0}
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
    settings = {**RANGE_TEST_DEFAULTS, **config.get("range_test", {})}
    device = torch.device("cuda" if config.get("use_gpu") else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    data = _fetch(data)
    arrays = data.arrays
    loader = torch.utils.data.DataLoader(
        ArrayDataset(arrays.x_train, arrays.y_train, train_transform(data.mean, data.std)),
        batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.loader_workers)
    model = CustomResNet(len(arrays.classes), cfg.logit_scale).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    about = {"batch_size": cfg.batch_size, "train_images": len(arrays.y_train), "seed": cfg.seed}
    try:
        result = range_test(
            model, make_optimizer(cfg, model), loader,
            nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), device=device,
            precision=resolve_precision(cfg.precision, device), channels_last=cfg.channels_last,
            on_step=lambda i, lr, loss, sm: tune.report(                    # Ray: to Tune
                {"step": i, "lr": lr, "loss": loss, "smoothed_loss": sm}),
            **settings)
    except RangeTestError as e:
        if e.sweep is None:  # nothing was swept: a bad setting, or NaN from the first step
            raise
        e.sweep.settings.update(about)  # the sweep cost minutes: keep it to be read again
        e.sweep.save(RunFolder(cfg.run_dir))
        raise RangeTestError(f"{e} (the sweep is kept in {cfg.run_dir}/lr_finder.csv: the same "
                             "command with another --method or --lr-min-rule reads it again "
                             "without sweeping)") from None
    result.settings.update(about)
    result.save(RunFolder(cfg.run_dir))


def lr_find(cfg: TrainConfig, settings: Optional[dict] = None, use_gpu: bool = False,
            data: Optional[TrainingData] = None) -> dict:
    """Run the range test as a Tune run; returns (and leaves in the run folder) its finding.

    The trial holds what one training worker would (`cpus_per_worker` CPUs, a GPU when
    `use_gpu`) and gets `data` (default: loaded here) through the object store.
    """
    from ray import tune

    data = data or TrainingData.of(load_arrays(cfg))
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(range_test_trainable, data=data), resources),
        param_space={"train": cfg.to_dict(), "range_test": settings or {}, "use_gpu": use_gpu},
        run_config=tune.RunConfig(name=f"{cfg.name}-lr-find", storage_path=cfg.storage_path,
                                  verbose=0),
    )
    grid = _fit(tuner)
    finding = RunFolder(cfg.run_dir).read_json("lr_finder.json")
    finding["tune_steps_reported"] = len(grid[0].metrics_dataframe)
    return finding


def search_trainable(config: dict, data=None) -> None:
    """One Tune trial: a short One Cycle run with this trial's LRMAX, under Ray Train; `data`
    is the object-store reference its workers read (the trial never unpacks it)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .train import fit

    cfg = TrainConfig.from_dict(config["train"])
    lr_max = float(config["lr_max"])
    trial = tune.get_context().get_trial_id()
    cfg = cfg.replace(lr_max=lr_max, lr_min=lr_max / config["lr_min_div"],
                      name=f"{cfg.name}-trial-{trial}")
    fit(cfg, config.get("use_gpu", False), callbacks=[TuneReportCallback()], data=data)


def candidates(center: float, k: int, span: float = 4.0) -> list[float]:
    """k LRs on a log grid from center/span to center*span (center included when k is odd)."""
    if k == 1:
        return [center]
    return [float(x) for x in np.geomspace(center / span, center * span, k)]


def check_search_args(epochs: int, max_concurrent: Optional[int] = None) -> None:
    if epochs < 2:
        raise RaycifarError(f"--search-epochs {epochs}: each candidate needs >= 2 epochs, so its "
                            "LR can rise to the peak and fall after it")
    if max_concurrent is not None and max_concurrent < 1:
        raise RaycifarError(f"--max-concurrent {max_concurrent} must be >= 1 (leave it out to "
                            "run as many trials as the cluster can place)")


def search(cfg: TrainConfig, center: float, k: int = 4, epochs: int = 4, lr_min_div: float = 10,
           validation: int = 5000, use_gpu: bool = False, span: float = 4.0,
           lrs: Optional[list[float]] = None, data: Optional[TrainingData] = None,
           max_concurrent: Optional[int] = None) -> dict:
    """ASHA over K short runs; writes lr_search.csv and best.json under cfg.run_dir.

    `data` is the run's training data (default: loaded here); `validation` of its training
    images are held out to rank the candidates, and the rest reach every trial's workers
    through the object store.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .cluster import search_concurrency

    check_search_args(epochs, max_concurrent)
    peak = max(1, round(epochs * cfg.peak_epoch / cfg.epochs))
    short = cfg.replace(epochs=epochs, peak_epoch=min(peak, epochs - 1), stop_after_epoch=0,
                        validation=validation)
    data = data or TrainingData.of(load_arrays(cfg))
    held = TrainingData.of(data.arrays.hold_out(validation, cfg.seed))
    OneCycle(short.lr_min, short.lr_max, short.epochs, short.peak_epoch,  # enough data for it?
             batches_per_epoch(len(held.arrays.y_train), short.batch_size,
                               max(short.num_workers, 1)))
    grid_lrs = lrs or candidates(center, k, span)
    k = len(grid_lrs)
    slots = search_concurrency(ray.nodes(), cfg, use_gpu, k, max_concurrent)
    trainable = tune.with_parameters(search_trainable, data=ray.put(held))
    tuner = tune.Tuner(
        tune.with_resources(trainable, TRIAL_DRIVER),
        param_space={"train": short.to_dict(), "lr_max": tune.grid_search(grid_lrs),
                     "lr_min_div": lr_min_div, "use_gpu": use_gpu},
        tune_config=tune.TuneConfig(
            # ASHA ranks by held-out loss: continuous, so no ties on a small held-out set; the
            # winner is then picked by held-out accuracy among the runs that went the distance.
            metric="test_loss", mode="min", max_concurrent_trials=slots,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                    grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(name=f"{cfg.name}-lr-search", storage_path=cfg.storage_path,
                                  verbose=0),
    )
    grid = _fit(tuner)
    rows = []
    for r in grid:
        m = r.metrics or {}
        rows.append({"lr_max": r.config["lr_max"], "lr_min": r.config["lr_max"] / lr_min_div,
                     "epochs_run": m.get("training_iteration", 0),
                     "held_out_acc": m.get("test_acc", float("nan")),
                     "held_out_loss": m.get("test_loss", float("nan"))})
    rows.sort(key=lambda r: r["lr_max"])
    best = max(rows, key=lambda r: (r["epochs_run"], _finite(r["held_out_acc"]),
                                    _finite(-r["held_out_loss"])))
    run = RunFolder(cfg.run_dir)
    run.write_csv("lr_search.csv", rows, list(rows[0]))
    finding = {"lr_max": best["lr_max"], "lr_min": best["lr_min"], "method": "asha-search",
               "held_out_acc": best["held_out_acc"], "candidates": grid_lrs,
               "search_epochs": epochs, "validation_images": validation, "center": center}
    run.write_json("best.json", finding)
    return finding


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


def load_finding(run_dir: str) -> dict:
    """LRMIN/LRMAX found in an earlier run folder (the search's best.json wins)."""
    run = RunFolder(run_dir)
    for name in ("best.json", "lr_finder.json"):
        if run.exists(name):
            f = run.read_json(name)
            if f.get("lr_max") is None or f.get("lr_min") is None:
                raise RunFolderError(
                    f"{run_dir}/{name} holds no LRs: its range test could not be read "
                    f"({f.get('settings', {}).get('error', 'no reason recorded')}); run "
                    "`python -m raycifar.tune lr-find` there with another --method or "
                    "--lr-min-rule, or pass --lr-max/--lr-min")
            return {"lr_max": float(f["lr_max"]), "lr_min": float(f["lr_min"]),
                    "source": f"{run_dir}/{name}", "method": f.get("method")}
    raise RunFolderError(f"{run_dir} holds no lr_finder.json or best.json; run "
                         "`python -m raycifar.tune lr-find` there first, or pass --lr-max/--lr-min")


def add_range_test_arguments(parser) -> None:
    """The range test's flags, shared by `tune lr-find/search` and `train` (which runs the
    range test unless the LRs are typed in)."""
    d = RANGE_TEST_DEFAULTS
    parser.add_argument("--start-lr", type=float, default=d["start_lr"],
                        help="range test: first LR of the sweep")
    parser.add_argument("--end-lr", type=float, default=d["end_lr"],
                        help="range test: last LR of the sweep")
    parser.add_argument("--num-steps", type=int, default=d["num_steps"],
                        help="range test: batches in the sweep")
    parser.add_argument("--sweep", choices=["exp", "linear"], default=d["mode"],
                        help="range test: how the LR rises")
    parser.add_argument("--method", choices=LRMAX_METHODS, default=d["method"],
                        help="how LRMAX is read off the range test's curve: minimum = where "
                             "the loss stops falling (Smith's upper bound), steepest = where it "
                             "falls fastest, valley = fastai's rule")
    parser.add_argument("--lr-min-rule", choices=LRMIN_RULES, default=d["lr_min_rule"],
                        help="LRMIN = LRMAX / --lr-min-div, or where the loss starts to fall")
    parser.add_argument("--lr-min-div", type=float, default=d["lr_min_div"],
                        help="the divisor of the 'div' rule")


def range_test_settings(args) -> dict:
    return {"start_lr": args.start_lr, "end_lr": args.end_lr, "num_steps": args.num_steps,
            "mode": args.sweep, "method": args.method, "lr_min_rule": args.lr_min_rule,
            "lr_min_div": args.lr_min_div}


SWEEP_KEYS = ("start_lr", "end_lr", "num_steps", "mode")


def matching_finding(cfg: TrainConfig, settings: dict,
                     train_images: Optional[int] = None) -> Optional[dict]:
    """The range test already in `cfg.run_dir`, if it swept the same LRs on the same data.

    Only the sweep is expensive: its suggestions are read again from `lr_finder.csv` with the
    method and LRMIN rule asked for now (and `lr_finder.json` rewritten to say so).
    """
    run = RunFolder(cfg.run_dir)
    if not (run.exists("lr_finder.json") and run.exists("lr_finder.csv")):
        return None
    old = run.read_json("lr_finder.json")
    ran, want = old.get("settings", {}), {**RANGE_TEST_DEFAULTS, **settings}
    same = (all(ran.get(k) == want[k] for k in SWEEP_KEYS) and not ran.get("validation")
            and ran.get("batch_size") == cfg.batch_size and ran.get("seed", cfg.seed) == cfg.seed
            and ran.get("train_images") == (train_images if train_images is not None
                                            else len(load_arrays(cfg).y_train)))
    if not same:
        return None
    rows = run.read_csv("lr_finder.csv", required=["lr", "loss"])
    try:
        result = reread([float(r["lr"]) for r in rows], [float(r["loss"]) for r in rows],
                        method=want["method"], lr_min_rule=want["lr_min_rule"],
                        lr_min_div=want["lr_min_div"],
                        stopped_early=old.get("stopped_early", False),
                        skip_start=ran.get("skip_start"), skip_end=ran.get("skip_end"),
                        settings=ran)
    except RangeTestError as e:
        raise RangeTestError(f"{e} (read from the sweep kept in {cfg.run_dir}/lr_finder.csv; "
                             "ask for another --method or --lr-min-rule)") from None
    if old.get("lr_max") is None:
        result.settings["reread"] = ("suggestions read again from lr_finder.csv (the first "
                                     f"reading failed: {ran.get('error', 'no LRs')})")
    elif (old.get("method"), old.get("lr_min_rule"), old.get("lr_max")) != \
            (result.method, result.lr_min_rule, result.lr_max):
        result.settings["reread"] = (f"suggestions read again from lr_finder.csv (were "
                                     f"{old.get('method')}/{old.get('lr_min_rule')}: LRMAX "
                                     f"{old.get('lr_max')}, LRMIN {old.get('lr_min')})")
    result.save(run)
    return run.read_json("lr_finder.json")


def build_parser():
    import argparse

    from .cli import add_config_arguments, add_debug_flag

    parser = argparse.ArgumentParser(prog="python -m raycifar.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    find = sub.add_parser("lr-find", help="the LR range test as a Tune run", allow_abbrev=False)
    srch = sub.add_parser("search", help="range test, then the ASHA search of LRMAX",
                          allow_abbrev=False)
    for p in (find, srch):
        add_config_arguments(p)
        p.add_argument("--address", default=None,
                       help="the Ray cluster to join; default: RAY_ADDRESS, else the cluster "
                            "`ray start` runs on this node, else a new local Ray")
        add_range_test_arguments(p)
        add_debug_flag(p)
    tri = sub.add_parser("triangle", help="plot a triangular cyclic LR (torch CyclicLR)",
                         allow_abbrev=False)
    tri.add_argument("--base-lr", type=float, default=0.004)
    tri.add_argument("--max-lr", type=float, default=0.4)
    tri.add_argument("--step-size", type=int, default=176, help="iterations per half cycle")
    tri.add_argument("--cycles", type=int, default=3)
    tri.add_argument("--out", default="triangular_lr.png", help="PNG to write")
    add_debug_flag(tri)
    srch.add_argument("--candidates", type=int, default=4)
    srch.add_argument("--search-epochs", type=int, default=4)
    srch.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                      help="trials at once (default: as many as the cluster can place now; "
                           "give it on an autoscaling cluster that adds nodes on demand)")
    srch.add_argument("--holdout", type=int, default=5000,
                      help="training images held out to rank the candidates")
    return parser


def run(args) -> int:
    """`python -m raycifar.tune lr-find|search|triangle`, after parsing."""
    from .cli import config_from_args
    from .cluster import check_placement
    from .runs import check_writable

    if args.command == "triangle":
        return _triangle(args)
    cfg = config_from_args(args)
    if args.command == "search":
        check_search_args(args.search_epochs, args.max_concurrent)
    data = TrainingData.of(load_arrays(cfg))  # fail fast on bad data, before Ray starts
    check_writable(cfg.storage_path)
    settings = range_test_settings(args)
    finding = matching_finding(cfg, settings, len(data.arrays.y_train))
    if finding is not None:
        print(f"[raycifar] {cfg.run_dir}/lr_finder.csv holds a sweep with these settings on "
              "this data: read again, not swept again", flush=True)
    use_gpu = bool(cfg.use_gpu)
    if finding is None or args.command == "search":
        import ray

        joined = init_ray(args.address)
        use_gpu = resolve_use_gpu(cfg.use_gpu)
        # the range test trial is one worker's worth
        check_placement(cfg.replace(num_workers=1), ray.nodes(), use_gpu, local=not joined)
    if finding is None:
        finding = lr_find(cfg, settings, use_gpu=use_gpu, data=data)
    print(f"[raycifar] range test: LRMAX {finding['lr_max']:.4g}, LRMIN "
          f"{finding['lr_min']:.4g} ({finding['method']}); {cfg.run_dir}/lr_finder.csv")
    if args.command == "search":
        best = search(cfg, finding["lr_max"], k=args.candidates, epochs=args.search_epochs,
                      validation=args.holdout, lr_min_div=finding["lr_max"] / finding["lr_min"],
                      use_gpu=use_gpu, data=data, max_concurrent=args.max_concurrent)
        print(f"[raycifar] search: LRMAX {best['lr_max']:.4g}, LRMIN {best['lr_min']:.4g}, "
              f"held-out accuracy {best['held_out_acc']:.4f}; {cfg.run_dir}/best.json")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    from .cli import run_cli

    return run_cli(run, build_parser(), argv)


def _triangle(args) -> int:
    from pathlib import Path

    from .report import draw_triangular
    from .schedule import triangular_lrs

    try:
        lrs = triangular_lrs(args.base_lr, args.max_lr, args.step_size, args.cycles)
    except ValueError as e:
        raise RaycifarError(str(e)) from e
    out = draw_triangular(args.step_size, lrs, Path(args.out))
    print(f"[raycifar] {len(lrs)} iterations, LR {args.base_lr:g} to {args.max_lr:g}; wrote {out}")
    return 0


if __name__ == "__main__":
    from raycifar import tune as _module  # pickle trainables by reference, not from __main__

    raise SystemExit(_module.main())
