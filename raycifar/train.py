"""Ray Train glue: the per-worker loop, the TorchTrainer, and `python -m raycifar.train`.

Every Ray call in the worker is marked `# Ray:`; everything else is plain PyTorch from
`engine.py`, so the same pieces run without Ray in the LR finder and in tests.

Run folder (`<storage_path>/<name>/`), written by rank 0:
    config.json      resolved config, package version, git commit
    metrics.csv      a row per epoch
    lr_steps.csv     a row per optimizer step (step, epoch, lr, momentum)
    tensorboard/     both as TensorBoard events, a file per epoch (tracking.py)
    predictions.npz  test labels, predictions, probabilities, misclassified images
    model.pt         final weights (a plain state_dict)
    summary.json     final/best accuracy, timings, throughput, workers, device
Ray's own `checkpoint_*` folders sit beside them; a re-run with the same name resumes.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from . import __version__
from .batch_augment import DeviceBatches
from .cli import given
from .config import ConfigError, TrainConfig
from .connect import init_ray
from .data import (ArrayDataset, TrainingData, batches_per_epoch, check_hold_out,
                   load_arrays)
from .engine import (DivergenceError, describe_precision, evaluate, make_scaler,
                     resolve_precision, train_epoch, unwrap)
from .faults import ENV as FAULT_ENV
from .faults import from_spec as fault_from_spec
from .model import CustomResNet
from .progress import interval_seconds
from .resume import CHECKPOINT_FILE, DIVERGED_FILE, CheckpointError, read_state
from .runs import RunFolder
from .schedule import OneCycle
from .tracking import TensorBoardLog
from .transforms import eval_transform, train_transform

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                  "test_acc_plain", "epoch_seconds", "images_per_second"]
STEP_COLUMNS = ["step", "epoch", "lr", "momentum"]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr_min, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr_min, momentum=cfg.momentum,
                           nesterov=True, weight_decay=cfg.weight_decay)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"].cpu())  # a checkpoint read onto a GPU has it there
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


@dataclass
class RunClock:
    """Wall time of a run that may be done in pieces, summed over the commands that ran it.

    Each command counts up to its last checkpoint (the partial epoch of an interrupted one is
    redone and counted then); the gaps between commands are not counted. A checkpoint written
    before this count existed restarts it at the epoch resumed (`from_epoch`).
    """
    start: float = field(default_factory=time.perf_counter)
    before: float = 0.0  # wall seconds of the earlier commands
    commands: int = 1
    from_epoch: int = 1

    def resume(self, state: dict) -> None:
        if "wall_seconds" in state:
            self.before, self.commands = state["wall_seconds"], state["commands"] + 1
            self.from_epoch = state["wall_from_epoch"]
        else:
            self.from_epoch = state["epoch"] + 1

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def state(self) -> dict:
        return {"wall_seconds": self.seconds(), "commands": self.commands,
                "wall_from_epoch": self.from_epoch}


def _seed_loader_worker(worker_id: int) -> None:
    # Each loader process gets a distinct, reproducible seed from torch's per-worker seed.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def albumentations_loader(cfg: TrainConfig, data: TrainingData, rank: int, world: int,
                          generator: torch.Generator, pin_memory: bool = False):
    """This rank's training DataLoader: albumentations per image in `cfg.loader_workers`
    processes, shuffled by `cfg.seed`.

    The sampler is ours: the one Ray's prepare_data_loader would add shuffles with seed 0,
    whatever --seed says. One worker keeps torch's RandomSampler, driven by `generator`.
    """
    dataset = ArrayDataset(data.arrays.x_train, data.arrays.y_train,
                           train_transform(data.mean, data.std))
    sampler = (torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                   shuffle=True, seed=cfg.seed)
               if world > 1 else None)
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size // max(world, 1), shuffle=sampler is None,
        sampler=sampler, num_workers=cfg.loader_workers, worker_init_fn=_seed_loader_worker,
        generator=generator, pin_memory=pin_memory)


def train_loop_per_worker(config: dict) -> dict:
    """The loop every Ray worker runs; returns the run summary (kept from rank 0)."""
    import ray.train
    import ray.train.torch

    clock = RunClock()
    cfg = TrainConfig.from_dict(config["train"])
    ctx = ray.train.get_context()                                       # Ray: who am I
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()                               # Ray: my device
    if device.type == "cpu":
        torch.set_num_threads(cfg.cpus_per_worker)
    precision = resolve_precision(cfg.precision, device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    data = config["data"]
    if isinstance(data, ray.ObjectRef):  # the driver's arrays, never --data-dir itself
        data = ray.get(data)                                            # Ray: object store
    arrays, mean, std = data.arrays, data.mean, data.std
    placement = _placement(rank, world, device)
    if rank == 0:
        print(f"[raycifar] {describe_precision(cfg.precision, device)}", flush=True)
    # Each rank evaluates its own slice of the test set; sums are all-reduced.
    test_idx = np.arange(rank, len(arrays.y_test), world)
    test_ds = ArrayDataset(arrays.x_test[test_idx], arrays.y_test[test_idx],
                           eval_transform(mean, std))
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    train_ds = None  # albumentations' per-image pipeline, unless the device augments
    if cfg.augment == "gpu":  # the data on the device, augmented batch-wise there
        train_loader = DeviceBatches(arrays.x_train, arrays.y_train, cfg.batch_size // world,
                                     mean, std, device, cfg.seed, rank, world,
                                     channels_last=cfg.channels_last)
    else:
        train_loader = ray.train.torch.prepare_data_loader(               # Ray: to device
            albumentations_loader(cfg, data, rank, world, loader_gen, device.type == "cuda"),
            add_dist_sampler=False)
        train_ds = train_loader.dataset
    test_loader = torch.utils.data.DataLoader(test_ds, batch_size=512, num_workers=0)

    model = CustomResNet(len(arrays.classes), cfg.logit_scale)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)                        # Ray: device + DDP
    if cfg.compile:  # compiles on the first batch; DDP's buckets become graph breaks
        model = torch.compile(model)
    optimizer = make_optimizer(cfg, model)
    cycle = OneCycle(cfg.lr_min, cfg.lr_max, cfg.epochs, cfg.peak_epoch, len(train_loader))
    scheduler = cycle.build(optimizer, cfg.cycle_momentum)
    scaler = make_scaler(precision, device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    bare = unwrap(model)

    history: list[dict] = []
    steps: list[dict] = []
    start_epoch, train_seconds = 1, 0.0
    fault = fault_from_spec(config.get("fault"))
    shared = RunFolder(cfg.run_dir)  # every rank may flag a divergence
    if shared.exists(DIVERGED_FILE):  # Ray restarted us after one: do not train into it again
        raise DivergenceError(shared.read_json(DIVERGED_FILE)["message"])
    checkpoint = ray.train.get_checkpoint()                             # Ray: resume?
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = read_state(os.path.join(d, CHECKPOINT_FILE), device)
        if state["scheduler"]["total_steps"] != scheduler.total_steps:
            raise CheckpointError(
                f"{cfg.run_dir}: the checkpoint's schedule has {state['scheduler']['total_steps']}"
                f" steps, this run {scheduler.total_steps} (another worker count or data size?);"
                " resume with the same settings, or start fresh with another --name")
        bare.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        loader_gen.set_state(state["loader_rng"].cpu())
        _set_rng_state(state["rng"])
        history, steps = state["history"], state["steps"]
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
        clock.resume(state)
        if rank == 0:
            print(f"[raycifar] resuming {cfg.name} after epoch {state['epoch']}", flush=True)

    run = RunFolder(cfg.run_dir) if rank == 0 else None
    if run is not None and not checkpoint:
        run.write_json("config.json", {"config": cfg.to_dict(), **config.get("meta", {}),
                                       "steps_per_epoch": len(train_loader), "world_size": world,
                                       "device": str(device), "precision": precision,
                                       "mean": mean, "std": std, "classes": arrays.classes,
                                       "workers": placement})

    ev = None  # the last epoch's evaluation, reused for the final predictions
    for epoch in range(start_epoch, cfg.epochs + 1):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)                                    # reshuffle DDP shards
        # albumentations draws from its own generator, seeded from OS entropy unless told; a
        # seed per (epoch, rank) makes runs repeatable and a resumed epoch redo the same crops
        # (loader processes re-seed their copy from torch's per-worker seed instead).
        if train_ds is not None:
            train_ds.transform.set_random_seed(int(np.random.SeedSequence(
                [cfg.seed, epoch, rank]).generate_state(1)[0]))
        try:
            res = train_epoch(
                model, train_loader, optimizer, scheduler, loss_fn, scaler, device=device,
                precision=precision, channels_last=cfg.channels_last, epoch=epoch,
                epochs=cfg.epochs, first_step=(epoch - 1) * len(train_loader),
                progress=rank == 0, progress_seconds=config.get("progress_seconds"),
                before_step=fault and (lambda i: fault.maybe_fire(epoch, i, rank, bare)))
        except DivergenceError as e:  # no checkpoint for this epoch: the last one stays good
            kept = (f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else
                    "no epoch had finished")
            message = f"{e}; {kept}"
            shared.write_json(DIVERGED_FILE, {"message": message, "epoch": epoch, "rank": rank})
            raise DivergenceError(message) from e
        ev = evaluate(model, test_loader, device=device, precision=precision,
                      channels_last=cfg.channels_last, tta=cfg.tta)
        train_seconds += res.seconds
        row = {"epoch": epoch, "lr": res.steps[-1].lr, "train_loss": res.loss,
               "train_acc": res.accuracy, "test_loss": ev["loss"], "test_acc": ev["accuracy"],
               "test_acc_plain": ev["accuracy_plain"], "epoch_seconds": res.seconds,
               # every rank saw the same number of images in about the same time
               "images_per_second": res.images / res.seconds}
        history.append(row)
        steps.extend(asdict(s) for s in res.steps)
        if run is not None:
            _record_epoch(run, cfg, row, history, steps, {
                "model": bare.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "loader_rng": loader_gen.get_state(), "rng": _rng_state(), "epoch": epoch,
                "history": history, "steps": steps, "train_seconds": train_seconds,
                **clock.state(), "config": cfg.to_dict()})
        else:
            ray.train.report(row)                                       # Ray: barrier
        if epoch == cfg.stop_after_epoch and epoch < cfg.epochs:        # every rank stops
            if rank == 0:
                print(f"[raycifar] stopping after epoch {epoch} as asked; run the same --name "
                      "again to continue", flush=True)
            return {"stopped_after_epoch": epoch}

    if ev is None:  # resumed after the last epoch: nothing evaluated in this call yet
        ev = evaluate(model, test_loader, device=device, precision=precision,
                      channels_last=cfg.channels_last, tta=cfg.tta)
    return _finish(cfg, bare, ev, test_idx, arrays, history, train_seconds, clock, world,
                   device, run, precision)


def _placement(rank: int, world: int, device: torch.device) -> list[dict]:
    """Where every rank runs (node id and IP, device), gathered on every rank; rank 0 prints
    it once and config.json keeps it."""
    import socket

    import ray
    import torch.distributed as dist

    mine = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),  # Ray: where
            "node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
            "device": str(device)}
    everyone = [mine]
    if world > 1 and dist.is_available() and dist.is_initialized():
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
    if rank == 0:
        where = ", ".join(f"rank {w['rank']} on node {w['node_id'][:8]} ({w['node_ip']}, "
                          f"{w['device']})" for w in everyone)
        print(f"[raycifar] workers: {where}", flush=True)
    return everyone


def _record_epoch(run: RunFolder, cfg: TrainConfig, row: dict, history: list[dict],
                  steps: list[dict], state: dict) -> None:
    """Rank 0: rewrite the per-epoch files, log a line, report with a checkpoint."""
    import ray.train

    run.write_csv("metrics.csv", history, METRIC_COLUMNS)
    run.write_csv("lr_steps.csv", steps, STEP_COLUMNS)
    with TensorBoardLog(run) as tb:  # this epoch's file only: a resume never duplicates one
        tb.log_steps(s for s in steps if s["epoch"] == row["epoch"])
        tb.log_epoch(row)
    print(f"[raycifar] epoch {row['epoch']}/{cfg.epochs} lr {row['lr']:.4f} train loss "
          f"{row['train_loss']:.4f} acc {row['train_acc']:.4f} | test loss {row['test_loss']:.4f}"
          f" acc {row['test_acc']:.4f} | {row['epoch_seconds']:.0f}s "
          f"{row['images_per_second']:.0f} img/s", flush=True)
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, os.path.join(d, CHECKPOINT_FILE))
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))  # Ray: barrier


def _finish(cfg: TrainConfig, bare: nn.Module, ev: dict, test_idx: np.ndarray, arrays,
            history: list[dict], train_seconds: float, clock: RunClock, world: int,
            device: torch.device, run: Optional[RunFolder], precision: str) -> dict:
    """Gather test predictions from every rank; rank 0 writes predictions, the weights of
    `bare` (the unwrapped network) and the summary."""
    import torch.distributed as dist

    part = (test_idx, ev["probs"].float().cpu().numpy(), ev["labels"].cpu().numpy())
    parts = [part]
    if dist.is_available() and dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, part)
    if run is None:
        return {}
    idx = np.concatenate([p[0] for p in parts])
    order = np.argsort(idx)
    probs = np.concatenate([p[1] for p in parts])[order]
    labels = np.concatenate([p[2] for p in parts])[order].astype(np.int64)
    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != labels)
    run.write_npz("predictions.npz", labels=labels, preds=preds, probs=probs.astype(np.float32),
                  classes=np.array(arrays.classes), wrong_index=wrong,
                  wrong_images=arrays.x_test[wrong])
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in bare.state_dict().items()}, buf)
    run.write_bytes("model.pt", buf.getvalue())
    accs = [h["test_acc"] for h in history]
    best = int(np.argmax(accs)) if accs else -1
    images_per_second = (sum(h["epoch_seconds"] * h["images_per_second"] for h in history)
                         / train_seconds) if train_seconds else 0.0
    summary = {
        "final_test_acc": float((preds == labels).mean()),
        "best_test_acc": accs[best] if accs else None,
        "best_epoch": history[best]["epoch"] if accs else None,
        "test_images": int(len(labels)), "train_images": int(len(arrays.y_train)),
        "epochs": len(history), **clock.state(), "train_seconds": train_seconds,
        "images_per_second": images_per_second, "workers": world, "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else f"cpu x{torch.get_num_threads()} threads"),
        "precision": precision, "tta": cfg.tta, "lr_min": cfg.lr_min, "lr_max": cfg.lr_max,
    }
    run.write_json("summary.json", summary)
    return summary


# ----------------------------------------------------------------------------- driver side

def _git_commit() -> Optional[str]:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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

    from .cluster import user_error

    meta = meta or {"version": __version__, "git_commit": _git_commit()}
    if data is None:
        data = TrainingData.of(load_arrays(cfg))
    if cfg.num_workers > 0 and not isinstance(data, ray.ObjectRef):
        data = ray.put(data)  # once per run; each node's workers read their node's copy
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.to_dict(), "meta": meta, "data": data,
                           "fault": os.environ.get(FAULT_ENV),
                           # read (and checked) here: workers on a cluster have another env
                           "progress_seconds": interval_seconds()},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.storage_path,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=callbacks),
    )
    try:
        return trainer.fit()
    except Exception as e:
        user = user_error(e)
        if user is not None:
            raise user from e
        raise


def main(args) -> int:
    from .cli import config_from_args
    from .cluster import check_placement, check_shared_storage
    from .connect import resolve_use_gpu
    from .resume import check_resumable, latest_checkpoint
    from .runs import check_writable

    cfg = config_from_args(args)
    if args.lr_search:
        from .tune import check_search_args
        check_search_args(args.search_epochs, args.max_concurrent)
        if lr_mode(args) != "auto" or args.lr_from:
            raise ConfigError(["--lr-search refines LRs it finds: drop --lr-max/--lr-min, "
                               "--lr manual and --lr-from, or add --lr auto"])
    started = time.perf_counter()
    # Everything that can be checked without workers is checked before Ray starts: the data
    # (read here, on the driver, and only here), the cycle it allows, the storage path.
    arrays = load_arrays(cfg)
    print(f"[raycifar] data: {len(arrays.y_train)} train / {len(arrays.y_test)} test images, "
          f"classes {arrays.classes}", flush=True)
    cycle = check_cycle(cfg, len(arrays.y_train))
    if args.lr_search:
        check_hold_out(args.holdout, len(arrays.y_train))
    check_writable(cfg.storage_path)
    data = TrainingData.of(arrays)
    use_gpu = bool(cfg.use_gpu)
    if cfg.num_workers > 0:
        import ray

        joined = init_ray(args.address)
        use_gpu = resolve_use_gpu(cfg.use_gpu)
        room = check_placement(cfg, ray.nodes(), use_gpu, local=not joined)
        # an autoscaling cluster that cannot place the workers yet will add nodes for them
        check_shared_storage(cfg.storage_path, ray.nodes(), shared=cfg.shared_storage,
                             expected_nodes=2 if room < cfg.num_workers else 0)
    run = RunFolder(cfg.run_dir)
    run.delete(DIVERGED_FILE)  # a new command may try again (a changed LR fails the check below)
    cfg, lr_source = choose_lrs(cfg, args, use_gpu, latest_checkpoint(run) is not None, data)
    after = check_resumable(cfg, len(arrays.classes), cycle.total_steps)
    if after is not None:
        print(f"[raycifar] {cfg.run_dir} has a checkpoint: resuming after epoch {after} of "
              f"{cfg.epochs} (use another --name to start fresh)", flush=True)
    elif run.exists("metrics.csv"):
        print(f"[raycifar] {cfg.run_dir} has no checkpoint to resume from: starting at epoch 1",
              flush=True)
    print(f"[raycifar] LRMAX {cfg.lr_max:.4g}, LRMIN {cfg.lr_min:.4g} from {lr_source['source']}",
          flush=True)
    hint = loader_hint(cfg, use_gpu)
    if hint:
        print(f"[raycifar] note: {hint}", flush=True)
    try:
        result = fit(cfg, use_gpu, {"version": __version__, "git_commit": _git_commit(),
                                    "command": " ".join(__import__("sys").argv),
                                    "lr_source": lr_source}, data=data)
        if result.return_value is None:  # Ray Train aborted the run on Ctrl-C / SIGTERM
            raise KeyboardInterrupt
    except (KeyboardInterrupt, SystemExit) as e:
        # Ray Train turns Ctrl-C (and so SIGTERM, see raycifar.connect) into an abort that
        # leaves fit() with SystemExit(1) or an empty result.
        done = check_resumable(cfg, len(arrays.classes))
        print(f"[raycifar] interrupted; {cfg.run_dir} keeps the checkpoint of epoch {done}"
              if done else "[raycifar] interrupted before the first epoch ended", flush=True)
        raise KeyboardInterrupt from e
    s = result.return_value
    if "stopped_after_epoch" in s:
        print(f"[raycifar] stopped after epoch {s['stopped_after_epoch']}; run the same command "
              f"without --stop-after-epoch to continue {cfg.run_dir}", flush=True)
        return 0
    print(f"[raycifar] done in {time.perf_counter() - started:.0f}s: final test accuracy "
          f"{s['final_test_acc']:.4f} (best {s['best_test_acc']:.4f} at epoch {s['best_epoch']}), "
          f"{s['images_per_second']:.0f} train images/s; run folder {cfg.run_dir}", flush=True)
    return 0


def check_cycle(cfg: TrainConfig, train_images: int) -> OneCycle:
    """The run's One Cycle, built on the driver so that too little data for it is one error
    line here, not a traceback from every worker."""
    world = max(cfg.num_workers, 1)
    return OneCycle(cfg.lr_min, cfg.lr_max, cfg.epochs, cfg.peak_epoch,
                    batches_per_epoch(train_images, cfg.batch_size, world))


GPU_FEEDING_LOADERS = 16  # ~70,000 / ~5,000 images/s on the H200 machine, rounded up


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


def lr_mode(args) -> str:
    """auto (find LRMAX/LRMIN) unless asked for manual or the LRs were typed in."""
    if args.lr:
        return args.lr
    return "manual" if given(args) & {"lr_max", "lr_min"} else "auto"


def choose_lrs(cfg: TrainConfig, args, use_gpu: bool, resuming: bool,
               data: Optional[TrainingData] = None) -> tuple[TrainConfig, dict]:
    """LRMAX/LRMIN from the flags, an earlier finding (--lr-from), the run being resumed, or
    the range test (on `data`, the driver's, when given)."""
    from . import tune

    mode = lr_mode(args)
    if args.lr_from:
        finding = tune.load_finding(args.lr_from)
    elif mode == "auto" and resuming:  # the LRs this run started with, however found
        meta = RunFolder(cfg.run_dir).read_json("config.json")
        finding = {"lr_max": meta["config"]["lr_max"], "lr_min": meta["config"]["lr_min"],
                   "source": f"{cfg.run_dir}/config.json, the run being resumed (found by "
                             f"{meta.get('lr_source', {}).get('source', 'its flags')})"}
    elif mode == "auto":
        data = data or TrainingData.of(load_arrays(cfg))
        settings = tune.range_test_settings(args)
        finding = tune.matching_finding(cfg, settings, len(data.arrays.y_train))
        if finding is not None:  # e.g. `tune lr-find` ran first, or training never started
            print(f"[raycifar] {cfg.run_dir}/lr_finder.json holds a range test with these "
                  "settings on this data: using it instead of running it again", flush=True)
        else:
            if cfg.num_workers == 0:
                init_ray(args.address)
            finding = tune.lr_find(cfg, settings, use_gpu=use_gpu, data=data)
        finding["source"] = f"range test ({finding['method']}, {cfg.run_dir}/lr_finder.json)"
        if args.lr_search:
            center = finding["lr_max"]
            finding = tune.search(cfg, center, k=args.search_candidates,
                                  epochs=args.search_epochs, use_gpu=use_gpu,
                                  lr_min_div=center / finding["lr_min"], data=data,
                                  validation=args.holdout,
                                  max_concurrent=args.max_concurrent)
            finding["source"] = f"ASHA search ({cfg.run_dir}/best.json)"
    else:
        return cfg, {"source": "flags --lr-max/--lr-min", "lr_max": cfg.lr_max,
                     "lr_min": cfg.lr_min}
    return cfg.replace(lr_max=finding["lr_max"], lr_min=finding["lr_min"]), finding


def build_parser():
    import argparse

    from .cli import add_config_arguments, add_debug_flag
    from .tune import add_range_test_arguments

    parser = argparse.ArgumentParser(
        prog="python -m raycifar.train",
        description="Train the custom ResNet on CIFAR-10 with One Cycle under Ray Train.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_config_arguments(parser)
    parser.add_argument("--address", default=None,
                        help="the Ray cluster to join (host:port, 'auto' or ray://host:port); "
                             "default: RAY_ADDRESS (set in `ray job submit` jobs), else the "
                             "cluster `ray start` runs on this node, else a new local Ray")
    lr = parser.add_argument_group("finding LRMAX and LRMIN")
    lr.add_argument("--lr", choices=["auto", "manual"], default=None,
                    help="auto: run the LR range test first and train with the LRMAX/LRMIN "
                         "it finds; manual: train with --lr-max/--lr-min (default: auto, "
                         "unless --lr-max or --lr-min is given)")
    lr.add_argument("--lr-search", action="store_true",
                    help="refine the LRMAX found by an ASHA search of short runs")
    lr.add_argument("--search-candidates", type=int, default=4,
                    help="LRMAX candidates in the search (log grid x1/4..x4)")
    lr.add_argument("--search-epochs", type=int, default=4, help="epochs per search run")
    lr.add_argument("--holdout", type=int, default=5000,
                    help="training images held out to rank the search's candidates")
    lr.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                    help="search trials at once (default: as many as the cluster can place "
                         "now; give it on an autoscaling cluster that adds nodes on demand)")
    lr.add_argument("--lr-from", metavar="RUN_DIR", default=None,
                    help="reuse the LRMAX/LRMIN found in an earlier run folder")
    add_range_test_arguments(lr)
    add_debug_flag(parser)
    return parser


if __name__ == "__main__":
    # Re-import as `raycifar.train` so Ray pickles the worker loop by reference, not from
    # `__main__` by value.
    from raycifar import train as _module
    from raycifar.cli import run_cli

    raise SystemExit(run_cli(_module.main, _module.build_parser()))
