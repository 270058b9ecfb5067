"""Training and finding the LRs: `fit` (what `raycifar train` runs) and `find_lrs` (what
`raycifar tune lr-find` and `tune search` run).

Everything that can be checked without workers is checked before any worker starts: the data
(read here, on the driver, and only here), the cycle it allows, the storage path, the
cluster's room, the checkpoint a re-run resumes from. Training itself is `cluster.trainer.fit`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Mapping, Optional, Union

from ..cluster.connect import init_ray, join_cluster, nodes, resolve_use_gpu
from ..cluster.lrs import choose_lrs, matching_finding
from ..cluster.placement import check_placement
from ..cluster.trainer import driver_data, fit as fit_trainer
from ..cluster.trials import lr_find, search as run_search
from ..cluster.worker import Stopped
from ..recipe import config_files, timeline
from ..recipe.config import (ConfigError, Finding, LRChoice, RangeTestConfig, SearchConfig,
                             TrainConfig, resolve_storage_path)
from ..recipe.data import TrainingData, check_hold_out, load_arrays
from ..recipe.logs import log, setup as setup_logs
from ..store import runs
from ..store.resume import check_resumable, latest_checkpoint
from ..store.runs import RunFolder, check_writable
from ..store.trackers import TrackedRun
from .results import Run
from .tracking import close, tracked

GPU_FEEDING_LOADERS = 16  # ~70,000 / ~5,000 images/s on the H200 machine, rounded up

Settings = Union[TrainConfig, Mapping[str, Any], str, "os.PathLike[str]", None]


def fit(config: Settings = None, *, address: Optional[str] = None, lr: Optional[str] = None,
        lr_from: Optional[str] = None,
        range_test: Union[RangeTestConfig, Mapping[str, Any], None] = None,
        search: Union[SearchConfig, Mapping[str, Any], bool, None] = None,
        **fields: Any) -> Run:
    """Train one run, as `raycifar train` does, and return it.

    `config` is a TrainConfig, a dict of its fields, or a config file as `--config` takes
    (YAML or JSON, a run folder, a shipped preset's name); `fields` override it (every TrainConfig
    field, e.g. `subset=5000, epochs=4, num_workers=(2, 4)` for an elastic 2-4 workers). The
    LRs are found by the range test (`range_test`: a RangeTestConfig or a dict of its fields)
    and, with `search=True` (or a SearchConfig or dict), refined by the ASHA search; they are
    typed in when `lr_max`/`lr_min` are among the fields or the dict, or with `lr="manual"`
    (a TrainConfig always holds LRs: its own are used only with `lr="manual"`), or taken from
    an earlier run with `lr_from=RUN_DIR`. The same name again resumes that run from its last
    checkpoint.
    """
    if isinstance(config, (str, os.PathLike)):
        config, lr, lr_from, range_test, search = from_file(config, lr, lr_from, range_test,
                                                            search)
    cfg, typed = train_config(config, fields)
    choice = lr_choice(lr, lr_from, range_test, search, typed)
    return train(cfg, choice, address, from_process=False)


def find_lrs(config: Settings = None, *, address: Optional[str] = None,
             range_test: Union[RangeTestConfig, Mapping[str, Any], None] = None,
             search: Union[SearchConfig, Mapping[str, Any], bool, None] = None,
             **fields: Any) -> Finding:
    """The range test (kept in the run folder: read again, not swept again, when its settings
    and data match) and, with `search`, the ASHA search of LRMAX; returns the LRs and where
    they came from. `raycifar tune lr-find` and `tune search` run this."""
    if isinstance(config, (str, os.PathLike)):
        config, _, _, range_test, search = from_file(config, None, None, range_test, search)
    cfg, _ = train_config(config, fields)
    return find(cfg, as_range_test(range_test), as_search(search), address)


def from_file(name, lr, lr_from, range_test, search):
    """A config file's settings under the keywords given beside it: its TrainConfig fields
    (a dict for `train_config`), then lr, lr_from, range_test and search, each the keyword's
    where one was given (a dict's fields over the file's)."""
    found = config_files.load(os.fspath(name))
    if isinstance(range_test, Mapping) or range_test is None:
        range_test = {**found.range_test, **(range_test or {})}
    if search is None:
        search = found.search
    elif isinstance(search, Mapping) and isinstance(found.search, dict):
        search = {**found.search, **search}
    return (found.fields, lr if lr is not None else found.lr,
            lr_from if lr_from is not None else found.lr_from, range_test, search)


def train(cfg: TrainConfig, choice: LRChoice, address: Optional[str],
          from_process: bool = True) -> Run:
    """`fit` once the settings are typed; the CLI counts its time from the process's start."""
    setup_logs()
    timeline.start(from_process)
    data, total_steps = driver_data(cfg, choice.search and choice.search.holdout)
    timeline.note("data")
    with tracked(cfg) as tracker:  # opened (or refused) before Ray or any worker starts
        return _train(cfg, choice, address, data, total_steps, tracker)


def _train(cfg: TrainConfig, choice: LRChoice, address: Optional[str], data: TrainingData,
           total_steps: int, tracker: Optional[TrackedRun]) -> Run:
    num_classes = len(data.arrays.classes)
    use_gpu = join_cluster(cfg, address) if cfg.num_workers > 0 else bool(cfg.use_gpu)
    timeline.note("ray")
    run = RunFolder(cfg.run_dir)
    run.delete_folder(runs.DIVERGED)  # a new command may try again (a changed LR fails below)
    cfg, found = choose_lrs(cfg, choice, use_gpu, latest_checkpoint(run) is not None, data,
                            address, nest=tracker)
    timeline.note("lrs")
    after = check_resumable(cfg, num_classes, total_steps)
    if after is None and tracker is not None and tracker.state.get("epochs"):
        tracker.start_over()  # a new attempt from epoch 1: not into the last one's figures
    if after is not None:
        log.info(f"{cfg.run_dir} has a checkpoint: resuming after epoch {after} of "
                 f"{cfg.epochs} (use another --name to start fresh)")
    elif run.exists(runs.METRICS):
        log.info(f"{cfg.run_dir} has no checkpoint to resume from: starting at epoch 1")
    log.info(f"LRMAX {cfg.lr_max:.4g}, LRMIN {cfg.lr_min:.4g} from {found.describe()}")
    hint = loader_hint(cfg, use_gpu)
    if hint:
        log.info(f"note: {hint}")
    summary = fit_or_keep(cfg, use_gpu, runs.run_meta(found), data, num_classes)
    if isinstance(summary, Stopped):
        log.info(f"stopped after epoch {summary.after_epoch}; run the same command "
                 f"without --stop-after-epoch to continue {cfg.run_dir}")
        close(tracker, "stopped")
        return Run(cfg.run_dir, None, stopped_after_epoch=summary.after_epoch)
    log.info(f"done in {time.time() - timeline.noted()['process']:.0f}s: final test accuracy "
             f"{summary['final_test_acc']:.4f} (best {summary['best_test_acc']:.4f} at epoch "
             f"{summary['best_epoch']}), {summary['images_per_second']:.0f} train images/s; "
             f"run folder {cfg.run_dir}")
    close(tracker, "finished", report=True)
    return Run(cfg.run_dir, summary)


def find(cfg: TrainConfig, settings: RangeTestConfig, searching: Optional[SearchConfig],
         address: Optional[str]) -> Finding:
    """The range test, then the search when asked; what `find_lrs` and `raycifar tune` run."""
    setup_logs()
    data = TrainingData.of(load_arrays(cfg))  # fail fast on bad data, before Ray starts
    if searching:
        check_hold_out(searching.holdout, len(data.arrays.y_train))
    check_writable(cfg.storage_path)
    with tracked(cfg, "find", f"{cfg.name}-lrs") as tracker:
        found = _find(cfg, settings, searching, address, data, tracker)
        close(tracker, "finished", report=True)
        return found


def _find(cfg: TrainConfig, settings: RangeTestConfig, searching: Optional[SearchConfig],
          address: Optional[str], data: TrainingData, tracker: Optional[TrackedRun]) -> Finding:
    reading = matching_finding(cfg, settings, len(data.arrays.y_train))
    if reading is not None:
        log.info(f"{cfg.run_dir}/{runs.LR_FINDER_CSV} holds a sweep with these settings on this "
                 "data: read again, not swept again")
    use_gpu = bool(cfg.use_gpu)
    if reading is None or searching:
        joined = init_ray(address)
        use_gpu = resolve_use_gpu(cfg.use_gpu)
        # the range test's trial is one worker's worth
        check_placement(cfg.replace(num_workers=1, min_workers=0), nodes(), use_gpu,
                        local=not joined)
    if reading is None:
        reading = lr_find(cfg, settings, use_gpu=use_gpu, data=data)
    log.info(f"range test: LRMAX {reading['lr_max']:.4g}, LRMIN {reading['lr_min']:.4g} "
             f"({reading['method']}); {cfg.run_dir}/{runs.LR_FINDER_CSV}")
    found = Finding(reading["lr_max"], reading["lr_min"], "range-test",
                    f"{cfg.run_dir}/{runs.LR_FINDER_JSON}", reading["method"])
    if not searching:
        return found
    best = run_search(cfg, reading["lr_max"], searching, lr_min=reading["lr_min"],
                      use_gpu=use_gpu, data=data, nest=tracker)
    log.info(f"search: LRMAX {best['lr_max']:.4g}, LRMIN {best['lr_min']:.4g}, held-out "
             f"accuracy {best['held_out_acc']:.4f}; {cfg.run_dir}/{runs.BEST}")
    return Finding(best["lr_max"], best["lr_min"], "search", f"{cfg.run_dir}/{runs.BEST}",
                   best["method"])


def fit_or_keep(cfg: TrainConfig, use_gpu: bool, meta: dict, data: TrainingData,
                num_classes: int) -> "dict | Stopped":
    """fit(): the summary, or where --stop-after-epoch stopped; on Ctrl-C or SIGTERM, say
    which checkpoint the next run resumes from."""
    try:
        timeline.note("fit")
        result = fit_trainer(cfg, use_gpu, {**meta, "moments": timeline.noted()}, data=data)
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


def train_config(config: Settings, fields: Mapping[str, Any]) -> tuple[TrainConfig, bool]:
    """The TrainConfig of `config` with `fields` over it, and whether LRs were typed in
    (`lr_max` or `lr_min` among the fields or the dict). `num_workers=(MIN, MAX)` is an
    elastic run, as `--num-workers MIN-MAX`."""
    if isinstance(config, TrainConfig):
        values, typed = config.to_dict(), False
    elif config is None or isinstance(config, Mapping):
        values = dict(config or {})
        typed = bool({"lr_max", "lr_min"} & set(values))
    else:
        raise ConfigError([f"config must be a TrainConfig or a dict of its fields, not "
                           f"{type(config).__name__}"])
    values.update(fields)
    typed = typed or bool({"lr_max", "lr_min"} & set(fields))
    workers = values.get("num_workers")
    if isinstance(workers, (tuple, list)):
        if len(workers) != 2 or "min_workers" in values:
            raise ConfigError(["num_workers=(MIN, MAX) for an elastic run, without min_workers"])
        values["min_workers"], values["num_workers"] = workers
    if "storage_path" in values:
        values["storage_path"] = resolve_storage_path(values["storage_path"])
    else:
        values["storage_path"] = resolve_storage_path(TrainConfig.storage_path)
    return TrainConfig.from_dict(values), typed


def as_range_test(value: Union[RangeTestConfig, Mapping[str, Any], None]) -> RangeTestConfig:
    if isinstance(value, RangeTestConfig):
        return value
    return _typed(RangeTestConfig, value or {}, "range_test")


def as_search(value: Union[SearchConfig, Mapping[str, Any], bool, None]
              ) -> Optional[SearchConfig]:
    if value is None or value is False:
        return None
    if value is True:
        return SearchConfig()
    if isinstance(value, SearchConfig):
        return value
    return _typed(SearchConfig, value, "search")


def _typed(cls, values: Mapping[str, Any], what: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError([f"{what}: unknown field(s) {unknown}; known: {sorted(known)}"])
    return cls(**values)


def lr_choice(lr: Optional[str], lr_from: Optional[str], range_test, search,
              typed: bool) -> LRChoice:
    """The API's LRChoice: as the CLI's, `auto` unless the LRs were typed in."""
    return LRChoice(mode=lr or ("manual" if typed else "auto"), lr_from=lr_from,
                    range_test=as_range_test(range_test), search=as_search(search))
