"""The loop every Ray Train worker runs, written as its outline (`train_loop_per_worker`): set
up, restore, for each epoch train / evaluate / record, finish.

Every Ray call is marked `# Ray:`; the rest is plain PyTorch from `recipe/engine.py`. Run folder
(`<storage_path>/<name>/`, schema in store/runs.py), written by rank 0: config.json,
metrics.csv, lr_steps.csv, tensorboard/, predictions.npz, model.pt, summary.json. Ray's own
`checkpoint_*` folders sit beside them; a re-run with the same name resumes.
"""

from __future__ import annotations

import io
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from ..recipe import timeline
from ..recipe.config import TrainConfig
from ..recipe.data import TrainingData
from ..recipe.engine import (DivergenceError, EpochResult, Learner, build_model, evaluate,
                             seed_everything, set_epoch, test_batches, train_batches,
                             train_epoch)
from ..recipe.faults import Fault, from_spec as fault_from_spec
from ..recipe.logs import log, setup as setup_logging
from ..recipe.runtime import Runtime, describe_precision
from ..recipe.state import CHECKPOINT_FILE, RunClock, TrainState
from ..store import runs
from ..store.resume import latest_checkpoint, mark_done
from ..store.runs import RunFolder
from ..store.tracking import log_epoch


@dataclass(frozen=True)
class LoopConfig:
    """What fit() hands every worker, inside Ray's `train_loop_config` (one key, "loop")."""

    train: dict                           # TrainConfig.to_dict(): the run's settings
    data: Any                             # TrainingData, or its object-store reference
    meta: dict = field(default_factory=dict)  # runs.run_meta() and the driver's moments
    fault: Optional[str] = None           # faults.ENV's spec, read on the driver
    progress_seconds: Optional[float] = None  # progress.interval_seconds(), read on the driver


@dataclass
class Worker:
    """One worker's view of the run: who and where it is, what it trains on, how."""

    cfg: TrainConfig
    rank: int
    world: int
    rt: Runtime
    data: TrainingData
    loop: LoopConfig                      # what fit() passed
    run: Optional[RunFolder]              # rank 0 writes the run folder; the others do not
    placement: list[dict] = field(default_factory=list)
    clock: RunClock = field(default_factory=RunClock)
    moments: dict = field(default_factory=dict)  # rank 0's part of timeline's moments

    @property
    def faults(self) -> tuple[Fault, ...]:
        return fault_from_spec(self.loop.fault)


@dataclass
class Progress:
    """The run so far: metrics.csv's and lr_steps.csv's rows (rank 0 keeps them), and where
    the time went: training steps, evaluation, writing files and checkpoints."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    record_seconds: float = 0.0

    def seconds(self) -> dict:
        return {"train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                "record_seconds": self.record_seconds}


def train_loop_per_worker(config: dict) -> "dict | Stopped":
    """The loop every Ray worker runs; returns the run summary, or `Stopped` (Ray keeps rank
    0's)."""
    import ray.train.torch

    w = start_worker(config)
    batches = train_batches(w.cfg, w.data, w.rt, w.rank, w.world)
    batches = (batches if w.cfg.augment == "gpu" else                   # Ray: to the device
               ray.train.torch.prepare_data_loader(batches, add_dist_sampler=False))
    model = ray.train.torch.prepare_model(                              # Ray: device + DDP
        build_model(w.cfg, len(w.data.arrays.classes), w.rt))
    if w.cfg.compile:  # compiles on the first batch; DDP's buckets become graph breaks
        model = torch.compile(model, mode=w.cfg.compile_mode)
    learner = Learner.build(w.cfg, model, len(batches), w.rt)
    tests, test_idx = test_batches(w.data, w.rank, w.world,
                                   w.rt if w.cfg.augment == "gpu" else None)
    done = restore(w, learner)
    w.moments["first_step"] = time.time()
    ev = None  # the last epoch's evaluation, reused for the final predictions
    for epoch in range(done.epoch + 1, w.cfg.epochs + 1):
        result = train_one_epoch(w, learner, batches, epoch)
        ev = timed(evaluate, model, tests, w.rt, w.cfg.tta, learner.graphs)
        done = record(w, learner, done, epoch, result, ev)
        if epoch == w.cfg.stop_after_epoch and epoch < w.cfg.epochs:  # every rank stops
            return stopped(w, epoch)
    ev = ev or evaluate(model, tests, w.rt, w.cfg.tta, learner.graphs)  # resumed at the end
    return finish(w, learner, ev, test_idx, done)


def timed(fn, *args):
    """fn(*args), with the seconds it took in the result's "seconds" entry."""
    start = time.perf_counter()
    out = fn(*args)
    out["seconds"] = time.perf_counter() - start
    return out


@dataclass(frozen=True)
class Stopped:
    """What the workers (and so fit()'s `return_value`) give back for a run that
    --stop-after-epoch stopped early: a finished run gives its summary.json instead."""
    after_epoch: int


def stopped(w: Worker, epoch: int) -> Stopped:
    if w.rank == 0:
        log.info(f"stopping after epoch {epoch} as asked; run the same --name again to continue")
    return Stopped(epoch)


def start_worker(config: dict) -> Worker:
    """Who am I, where, on what data: seeds, threads, precision; rank 0 says so."""
    import ray
    import ray.train
    import ray.train.torch

    entered = time.time()
    setup_logging()
    loop: LoopConfig = config["loop"]
    cfg = TrainConfig.from_dict(loop.train)
    ctx = ray.train.get_context()                                       # Ray: who am I
    device = ray.train.torch.get_device()                               # Ray: my device
    if device.type == "cpu":
        torch.set_num_threads(cfg.cpus_per_worker)
    seed_everything(cfg.seed)
    data = loop.data
    if isinstance(data, ray.ObjectRef):  # the driver's arrays, never --data-dir itself
        data = ray.get(data)                                            # Ray: object store
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    w = Worker(cfg, rank, world, Runtime.on(device, cfg.precision, cfg.channels_last), data,
               loop, RunFolder(cfg.run_dir) if rank == 0 else None,
               placement=placement(rank, world, device))
    w.moments.update(worker=entered, worker_data=time.time())
    if rank == 0:
        log.info(describe_precision(cfg.precision, device))
    return w


def placement(rank: int, world: int, device: torch.device) -> list[dict]:
    """Where every rank runs (node id and IP, device), gathered on every rank; rank 0 logs
    it, config.json keeps it."""
    import ray

    # num_workers=0 (Ray Train's local mode) runs without Ray: asking for the runtime context
    # there would start a whole local Ray just to name this node
    on_ray = ray.is_initialized()
    mine = {"rank": rank,
            "node_id": ray.get_runtime_context().get_node_id() if on_ray else "local",  # Ray
            "node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
            "device": str(device)}
    everyone = [mine]
    if world > 1 and dist.is_available() and dist.is_initialized():
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
    if rank == 0:
        log.info("workers: " + ", ".join(f"rank {p['rank']} on node {p['node_id'][:8]} "
                                         f"({p['node_ip']}, {p['device']})" for p in everyone))
    return everyone


def restore(w: Worker, learner: Learner) -> Progress:
    """Go on from the last checkpoint (a re-run, or a restart after a failure): Ray's, or a
    later one complete on storage that Ray had not registered when its node died
    (`resume.latest_checkpoint`); a fresh run writes config.json instead."""
    import ray.train

    shared = RunFolder(w.cfg.run_dir)
    diverged = runs.first_divergence(shared)  # any rank may have marked one
    if diverged is not None:  # Ray restarted us after one: do not train into it again
        raise DivergenceError(diverged["message"], diverged["step"])
    checkpoint = ray.train.get_checkpoint()                             # Ray: resume?
    registered = os.path.basename(checkpoint.path.rstrip("/")) if checkpoint else None
    name = latest_checkpoint(shared, registered) if w.rank == 0 else None
    if w.world > 1 and dist.is_available() and dist.is_initialized():
        chosen = [name]  # rank 0's pick for all: an upload finishing meanwhile changes nothing
        dist.broadcast_object_list(chosen, src=0)
        name = chosen[0]
    if name is None:
        if w.run is not None:
            w.run.write_json(runs.CONFIG, config_record(w, learner))
        return Progress()
    if name == registered:
        with checkpoint.as_directory() as d:
            state = TrainState.load(os.path.join(d, CHECKPOINT_FILE), w.rt.device)
    else:
        state = TrainState.load(io.BytesIO(shared.read_bytes(f"{name}/{CHECKPOINT_FILE}")),
                                w.rt.device)
    w.clock = state.restore(learner, w.cfg.run_dir)
    if w.rank == 0:
        unregistered = "" if name == registered else f" ({name}: whole, not registered by Ray)"
        log.info(f"resuming {w.cfg.name} after epoch {state.epoch} on {w.world} worker(s)"
                 f"{unregistered}")
    history, steps = (runs.read_history(w.run, state.epoch) if w.run is not None else ([], []))
    return Progress(state.epoch, history, steps, state.train_seconds, state.eval_seconds,
                    state.record_seconds)


def config_record(w: Worker, learner: Learner) -> dict:
    """config.json: the resolved config and everything else needed to read the run later."""
    steps = learner.scheduler.total_steps // w.cfg.epochs
    return {"config": w.cfg.to_dict(), **w.loop.meta, "steps_per_epoch": steps,
            "world_size": w.world, "device": str(w.rt.device), "precision": w.rt.precision,
            "mean": w.data.mean, "std": w.data.std, "classes": w.data.arrays.classes,
            "workers": w.placement}


def train_one_epoch(w: Worker, learner: Learner, batches, epoch: int) -> EpochResult:
    """One epoch with this epoch's augmentation seed; a divergence is flagged for restarts."""
    set_epoch(batches, epoch)                                 # this epoch's global batches
    # albumentations draws from its own generator, seeded from OS entropy unless told; a seed
    # per (epoch, rank) makes runs repeatable and a resumed epoch redo the same crops (loader
    # processes re-seed their copy from torch's per-worker seed instead).
    transform = getattr(getattr(batches, "dataset", None), "transform", None)
    if transform is not None:
        transform.set_random_seed(int(np.random.SeedSequence(
            [w.cfg.seed, epoch, w.rank]).generate_state(1)[0]))
    faults = w.faults

    def fire(step: int) -> None:
        for fault in faults:
            fault.maybe_fire(epoch, step, w.rank, learner.bare)

    try:
        return train_epoch(
            learner, batches, epoch=epoch, epochs=w.cfg.epochs,
            first_step=(epoch - 1) * len(batches), progress=w.rank == 0,
            progress_seconds=w.loop.progress_seconds,
            before_step=fire if faults else None)
    except DivergenceError as e:  # no checkpoint for this epoch: the last one stays good
        kept = (f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else
                "no epoch had finished")
        message = f"{e}; {kept}"
        runs.mark_divergence(RunFolder(w.cfg.run_dir), w.rank, message, epoch, e.step)
        raise DivergenceError(message, e.step) from e


def record(w: Worker, learner: Learner, done: Progress, epoch: int, result: EpochResult,
           ev: dict) -> Progress:
    """The epoch's row; rank 0 rewrites the per-epoch files and reports with a checkpoint,
    the others report the row alone (report is a barrier: every rank calls it)."""
    import ray.train

    start = time.perf_counter()
    row = asdict(runs.EpochRow(
        epoch=epoch, lr=result.steps[-1].lr, train_loss=result.loss, train_acc=result.accuracy,
        test_loss=ev["loss"], test_acc=ev["accuracy"], test_acc_plain=ev["accuracy_plain"],
        epoch_seconds=result.seconds,
        # every rank saw the same number of images in about the same time
        images_per_second=result.images / result.seconds, world_size=w.world))
    done = Progress(epoch, done.history + [row], done.steps + [asdict(s) for s in result.steps],
                    done.train_seconds + result.seconds, done.eval_seconds + ev["seconds"],
                    done.record_seconds)
    if w.run is None:
        ray.train.report(row)                                           # Ray: barrier
        return done
    w.run.write_csv(runs.METRICS, done.history, runs.METRIC_COLUMNS)
    w.run.write_csv(runs.STEPS, done.steps, runs.STEP_COLUMNS)
    # this epoch's file only: a resumed run never duplicates one
    log_epoch(w.run, row, [asdict(s) for s in result.steps])
    log.info(f"epoch {epoch}/{w.cfg.epochs} lr {row['lr']:.4f} train loss "
             f"{row['train_loss']:.4f} acc {row['train_acc']:.4f} | test loss "
             f"{row['test_loss']:.4f} acc {row['test_acc']:.4f} | {row['epoch_seconds']:.0f}s "
             f"{row['images_per_second']:.0f} img/s")
    # The checkpoint counts the files written so far, not its own saving (still going on).
    seconds = {**done.seconds(), "record_seconds": done.record_seconds
               + time.perf_counter() - start}
    state = TrainState.capture(epoch, learner, seconds, w.clock, w.cfg.to_dict())
    # Uploaded off the training path: Ray copies the folder to the storage path in the
    # background (and deletes it then) while the next epoch trains.
    folder = tempfile.mkdtemp(prefix="raycifar-checkpoint-")
    state.save(folder)
    mark_done(folder, epoch)
    ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(folder),  # Ray: barrier
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
    done.record_seconds += time.perf_counter() - start
    return done


def finish(w: Worker, learner: Learner, ev: dict, test_idx: np.ndarray, done: Progress) -> dict:
    """Gather test predictions from every rank; rank 0 writes predictions, the unwrapped
    network's weights and the summary, and returns the summary."""

    part = (test_idx, ev["probs"].float().cpu().numpy(), ev["labels"].cpu().numpy())
    parts = [part]
    if dist.is_available() and dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, part)
    if w.run is None:
        return {}
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    probs = np.concatenate([p[1] for p in parts])[order]
    labels = np.concatenate([p[2] for p in parts])[order].astype(np.int64)
    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != labels)
    arrays = w.data.arrays
    w.run.write_npz(runs.PREDICTIONS, labels=labels, preds=preds,
                    probs=probs.astype(np.float32), classes=np.array(arrays.classes),
                    wrong_index=wrong, wrong_images=arrays.x_test[wrong])
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in learner.bare.state_dict().items()},
               buf)
    w.run.write_bytes(runs.MODEL, buf.getvalue())
    summary = summarize(w, done, float((preds == labels).mean()), len(labels))
    w.run.write_json(runs.SUMMARY, summary)
    return summary


def summarize(w: Worker, done: Progress, final_acc: float, test_images: int) -> dict:
    accs = [h["test_acc"] for h in done.history]
    best = int(np.argmax(accs)) if accs else -1
    images = sum(h["epoch_seconds"] * h["images_per_second"] for h in done.history)
    device = w.rt.device
    return {
        "final_test_acc": final_acc, "best_test_acc": accs[best] if accs else None,
        "best_epoch": done.history[best]["epoch"] if accs else None,
        "test_images": int(test_images), "train_images": int(len(w.data.arrays.y_train)),
        "epochs": len(done.history), **w.clock.state(), **done.seconds(),
        "images_per_second": images / done.train_seconds if done.train_seconds else 0.0,
        "workers": w.world, "device": str(device),
        # an elastic run's sizes, epoch by epoch (rows of an older run have none)
        "world_sizes": [h.get("world_size") for h in done.history],
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else f"cpu x{torch.get_num_threads()} threads"),
        "precision": w.rt.precision, "tta": w.cfg.tta, "lr_min": w.cfg.lr_min,
        "lr_max": w.cfg.lr_max,
        **command_time(w),
    }


def command_time(w: Worker) -> dict:
    """From the command's start (the last command of a run done in pieces) to here, and its
    start-up phases (timeline.PHASES); the worker's phases alone when fit() was called without
    the driver's moments (a search or seeds trial)."""
    moments = {**w.loop.meta.get("moments", {}), **w.moments}
    out = {"startup": timeline.phases(moments)}
    if "process" in moments:
        out["command_seconds"] = time.time() - moments["process"]
    return out


# ----------------------------------------------------------------------------- driver side
