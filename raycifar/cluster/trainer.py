"""The driver's side of a Ray Train run: `driver_data` reads the data and checks what it can
before Ray starts; `fit` builds the TorchTrainer around `worker.train_loop_per_worker` and
turns a worker's user error back into one line.
"""

from __future__ import annotations

import os
from typing import Optional

from ..recipe.config import RaycifarError, TrainConfig
from ..recipe.data import TrainingData, check_hold_out, load_arrays
from ..recipe.engine import DivergenceError, one_cycle
from ..recipe.faults import ENV as FAULT_ENV, from_spec as faults_from_spec
from ..recipe.logs import log
from ..recipe.progress import interval_seconds
from ..store import runs
from ..store.resume import checkpoint_epoch
from ..store.runs import RunFolder, check_writable, first_divergence
from .ray_compat import lost_worker
from .worker import LoopConfig, train_loop_per_worker


def driver_data(cfg: TrainConfig, holdout: Optional[int] = None) -> tuple[TrainingData, int]:
    """The run's data, read here on the driver and only here, and what can be checked before
    Ray starts: the cycle the data allows, the search's hold-out, the storage path. Returns the
    data and the cycle's length in steps."""
    arrays = load_arrays(cfg)
    log.info(f"data: {len(arrays.y_train)} train / {len(arrays.y_test)} test images, "
             f"classes {arrays.classes}")
    steps = one_cycle(cfg, len(arrays.y_train)).total_steps
    if holdout is not None:
        check_hold_out(holdout, len(arrays.y_train))
    check_writable(cfg.storage_path)
    return TrainingData.of(arrays), steps


def checked_faults() -> Optional[str]:
    """RAYCIFAR_FAULT as the workers get it, parsed here first: a bad spec is one error on the
    driver, not a ConfigError in every worker at every restart."""
    spec = os.environ.get(FAULT_ENV)
    faults_from_spec(spec)
    return spec


def fit(cfg: TrainConfig, use_gpu: bool = False, meta: Optional[dict] = None,
        callbacks: Optional[list] = None, data=None):
    """Build the TorchTrainer for `cfg` and run it; returns Ray's Result.

    `data` is the run's `TrainingData`, or an object-store reference to it (a Tune trial
    passes the one its driver made); without it the data is loaded here, on the driver. The
    workers get it through Ray's object store: they never read --data-dir.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .placement import check_gpu_sharing, user_error

    check_gpu_sharing(cfg, use_gpu)  # the drivers check first; bench and API calls come here
    meta = meta or runs.run_meta()
    if data is None:
        data = TrainingData.of(load_arrays(cfg))
    if cfg.num_workers > 0 and not isinstance(data, ray.ObjectRef):
        data = ray.put(data)  # once per run; each node's workers read their node's copy
    resources = cfg.worker_resources(use_gpu)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": LoopConfig(
            cfg.to_dict(), data, meta, fault=checked_faults(),
            # read (and checked) here: workers on a cluster have another env
            progress_seconds=interval_seconds())},
        scaling_config=ScalingConfig(
            num_workers=(cfg.min_workers, cfg.num_workers) if cfg.elastic else cfg.num_workers,
            use_gpu=use_gpu, resources_per_worker=resources,
            elastic_resize_monitor_interval_s=cfg.resize_seconds),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.storage_path,
                             failure_config=FailureConfig(max_failures=cfg.failures_allowed),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=callbacks),
    )
    try:
        return trainer.fit()
    except Exception as e:
        user = user_error(e)
        if isinstance(user, DivergenceError):  # every rank raised one: name the first step
            first = first_divergence(RunFolder(cfg.run_dir))
            user = DivergenceError(first["message"], first["step"]) if first else user
        if user is not None:
            raise user from e
        lost = lost_worker(e)
        if lost is not None:
            raise LostWorkerError(cfg, lost) from e
        raise


class LostWorkerError(RaycifarError):
    """A worker or its node died more often than the run's restarts allow."""

    def __init__(self, cfg: TrainConfig, what: str):
        epoch = checkpoint_epoch(RunFolder(cfg.run_dir))
        where = (f"the same command resumes after epoch {epoch}" if epoch else
                 "no epoch had finished, so the same command starts afresh")
        super().__init__(
            f"a training worker was lost ({what}) and the run's {cfg.failures_allowed} "
            f"restart(s) are used up; {where} (--max-failures allows more"
            + ("" if cfg.elastic else ", --num-workers MIN-MAX goes on with the nodes left")
            + ")")
