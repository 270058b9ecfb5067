"""Choosing LRMIN and LRMAX for a run, the one place `train` and `tune seeds` use.

In order: an earlier run's finding (`--lr-from`), the LRs the run being resumed started with,
the range test (a kept sweep read again when it matches, else a new one as a Tune run, then
optionally the ASHA search), or the flags when the LRs are typed in. The choice arrives as one
`LRChoice`, built from the flags by `raycifar.cli.lr_flags`.
"""

from __future__ import annotations

from typing import Optional

from ..recipe.config import Finding, LRChoice, RangeTestConfig, TrainConfig
from ..recipe.data import TrainingData, load_arrays
from ..recipe.logs import log
from ..recipe.lr_finder import RangeTestError, reread
from ..store import runs
from ..store.range_test import save_range_test
from ..store.runs import RunFolder, RunFolderError
from ..store.trackers import TrackedRun
from . import trials
from .connect import init_ray


def choose_lrs(cfg: TrainConfig, choice: LRChoice, use_gpu: bool, resuming: bool,
               data: Optional[TrainingData] = None, address: Optional[str] = None,
               nest: Optional[TrackedRun] = None) -> tuple[TrainConfig, Finding]:
    """`cfg` with the LRs chosen, and how they were (on `data`, the driver's, when given; a
    Tune run joins the cluster at `address` as init_ray does; a search's candidates are
    tracked as children of `nest`)."""
    if choice.lr_from:
        found = load_finding(choice.lr_from)
    elif choice.mode == "auto" and resuming:  # the LRs this run started with, however found
        meta = RunFolder(cfg.run_dir).read_json(runs.CONFIG)
        before = meta.get("lr_source") or {}
        found = Finding(meta["config"]["lr_max"], meta["config"]["lr_min"], "resumed",
                        f"{cfg.run_dir}/{runs.CONFIG}",
                        found_by=before.get("source", "its flags"))
    elif choice.mode == "auto":
        found = find(cfg, choice, use_gpu, data or TrainingData.of(load_arrays(cfg)), address,
                     nest)
    else:
        found = Finding(cfg.lr_max, cfg.lr_min, "flags")
    return cfg.replace(lr_max=found.lr_max, lr_min=found.lr_min), found


def find(cfg: TrainConfig, choice: LRChoice, use_gpu: bool, data: TrainingData,
         address: Optional[str] = None, nest: Optional[TrackedRun] = None) -> Finding:
    """The range test's finding (a kept sweep read again, or a new Tune run), then the
    search's when the choice has one. The Tune runs join (or start) Ray if nothing has yet:
    an in-process training (`--num-workers 0`) still runs its range test as a Tune run."""
    reading = matching_finding(cfg, choice.range_test, len(data.arrays.y_train))
    if reading is not None:  # e.g. `tune lr-find` ran first, or training never started
        log.info(f"{cfg.run_dir}/{runs.LR_FINDER_JSON} holds a range test with these settings "
                 "on this data: using it instead of running it again")
    else:
        init_ray(address)
        reading = trials.lr_find(cfg, choice.range_test, use_gpu=use_gpu, data=data)
    found = Finding(reading["lr_max"], reading["lr_min"], "range-test",
                    f"{cfg.run_dir}/{runs.LR_FINDER_JSON}", reading["method"])
    if choice.search is None:
        return found
    init_ray(address)
    best = trials.search(cfg, found.lr_max, choice.search, lr_min=found.lr_min,
                         use_gpu=use_gpu, data=data, nest=nest)
    return Finding(best["lr_max"], best["lr_min"], "search", f"{cfg.run_dir}/{runs.BEST}",
                   best["method"])


def load_finding(run_dir: str) -> Finding:
    """LRMIN/LRMAX found in an earlier run folder (the search's best.json wins)."""
    run = RunFolder(run_dir)
    for name in (runs.BEST, runs.LR_FINDER_JSON):
        if run.exists(name):
            f = run.read_json(name)
            if f.get("lr_max") is None or f.get("lr_min") is None:
                raise RunFolderError(
                    f"{run_dir}/{name} holds no LRs: its range test could not be read "
                    f"({f.get('settings', {}).get('error', 'no reason recorded')}); run "
                    "`python -m raycifar.tune lr-find` there with another --method or "
                    "--lr-min-rule, or pass --lr-max/--lr-min")
            return Finding(float(f["lr_max"]), float(f["lr_min"]), "earlier-run",
                           f"{run_dir}/{name}", f.get("method"))
    raise RunFolderError(f"{run_dir} holds no {runs.LR_FINDER_JSON} or {runs.BEST}; run "
                         "`python -m raycifar.tune lr-find` there first, or pass --lr-max/--lr-min")


def matching_finding(cfg: TrainConfig, settings: RangeTestConfig,
                     train_images: Optional[int] = None) -> Optional[dict]:
    """The range test already in `cfg.run_dir`, if it swept the same LRs on the same data.

    Only the sweep is expensive: its suggestions are read again from `lr_finder.csv` with the
    method and LRMIN rule asked for now (and `lr_finder.json` rewritten to say so).
    """
    run = RunFolder(cfg.run_dir)
    if not (run.exists(runs.LR_FINDER_JSON) and run.exists(runs.LR_FINDER_CSV)):
        return None
    old = run.read_json(runs.LR_FINDER_JSON)
    ran, want = old.get("settings", {}), settings.to_dict()
    if train_images is None:
        train_images = len(load_arrays(cfg).y_train)
    same = (all(ran.get(k) == want[k] for k in RangeTestConfig.SWEEP)
            and ran.get("batch_size") == cfg.batch_size and ran.get("seed") == cfg.seed
            and ran.get("train_images") == train_images)
    if not same:
        return None
    rows = run.read_csv(runs.LR_FINDER_CSV, required=["lr", "loss"])
    try:
        result = reread([float(r["lr"]) for r in rows], [float(r["loss"]) for r in rows],
                        method=settings.method, lr_min_rule=settings.lr_min_rule,
                        lr_min_div=settings.lr_min_div,
                        stopped_early=old.get("stopped_early", False),
                        skip_start=ran.get("skip_start"), skip_end=ran.get("skip_end"),
                        settings=ran)
    except RangeTestError as e:
        raise RangeTestError(f"{e} (read from the sweep kept in {cfg.run_dir}/"
                             f"{runs.LR_FINDER_CSV}; ask for another --method or "
                             "--lr-min-rule)") from None
    if old.get("lr_max") is None:
        result.settings["reread"] = ("suggestions read again from lr_finder.csv (the first "
                                     f"reading failed: {ran.get('error', 'no LRs')})")
    elif (old.get("method"), old.get("lr_min_rule"), old.get("lr_max")) != \
            (result.method, result.lr_min_rule, result.lr_max):
        result.settings["reread"] = (f"suggestions read again from lr_finder.csv (were "
                                     f"{old.get('method')}/{old.get('lr_min_rule')}: LRMAX "
                                     f"{old.get('lr_max')}, LRMIN {old.get('lr_min')})")
    save_range_test(run, result)
    return run.read_json(runs.LR_FINDER_JSON)
