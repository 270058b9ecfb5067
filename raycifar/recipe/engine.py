"""Plain PyTorch: build what trains (model, loaders, optimizer), one step, one epoch,
evaluation and predictions. No Ray in here.

The worker loop (cluster/worker.py), the range test's trial (cluster/trials.py) and the bench
build their model and training batches with `build_model` and `train_batches`, and all of them
train with `Learner.step`: the range test's sweep (lr_finder.range_test) too, with the sweep's
LR in place of One Cycle's.
Both loops accept a model wrapped in DDP or not; `all_reduce_sums` combines per-rank sums when
a torch.distributed process group exists (Ray Train sets one up), and is a no-op otherwise.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .batch_augment import DeviceBatches, DeviceTestBatches
from .config import RaycifarError, TrainConfig
from .data import ArrayDataset, TrainingData, batches_per_epoch
from .model import CustomResNet
from .progress import EpochProgress
from .runtime import Runtime
from .schedule import OneCycle
from .sharding import GlobalBatches
from .transforms import eval_transform, train_transform


class DivergenceError(RaycifarError):
    """The training loss became NaN or infinite; `step` is the first such global step."""

    def __init__(self, message: str, step: Optional[int] = None):
        super().__init__(message)
        self.step = step


@dataclass
class Step:
    step: int
    epoch: int
    lr: float
    momentum: float


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    images: int
    seconds: float
    steps: list[Step] = field(default_factory=list)


# ----------------------------------------------------------------------------- building

def build_model(cfg: TrainConfig, num_classes: int, rt: Runtime) -> nn.Module:
    """The network for `cfg`, on the runtime's device and in its memory layout."""
    return rt.place(CustomResNet(num_classes, cfg.logit_scale, cfg.width))


def make_optimizer(cfg: TrainConfig, model: nn.Module,
                   rt: Optional[Runtime] = None) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (or AdamW), starting at LRMIN as the cycle does.

    In fp16 the optimizer is torch's fused kernel: GradScaler then hands it the found-inf flag
    on the device, where with any other optimizer `scaler.step` reads that flag on the host
    every step (a sync that would drain a GPU's queue). The arithmetic is the same."""
    fused = {"fused": True} if rt is not None and rt.precision == "fp16" else {}
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr_min, weight_decay=cfg.weight_decay,
                                 **fused)
    sgd = torch.optim.SGD(model.parameters(), lr=cfg.lr_min, momentum=cfg.momentum,
                          nesterov=True, weight_decay=cfg.weight_decay, **fused)
    if fused:  # fused SGD's first step fills momentum from uninitialised memory and keeps it
        for p in model.parameters():  # when the loss scaler skips that step; zeros are what
            sgd.state[p]["momentum_buffer"] = torch.zeros_like(p)  # a first step starts from
    return sgd


@dataclass
class Learner:
    """What one optimizer step needs: the (maybe DDP-wrapped) model, optimizer, the LR
    schedule stepped per batch (One Cycle; the range test's sweep in its place), loss scaler
    and loss, on a runtime."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: Callable
    rt: Runtime
    graphs: bool = False  # the model replays CUDA graphs (torch.compile's reduce-overhead)

    @classmethod
    def build(cls, cfg: TrainConfig, model: nn.Module, steps_per_epoch: int,
              rt: Runtime) -> "Learner":
        optimizer = make_optimizer(cfg, model, rt)
        cycle = OneCycle(cfg.lr_min, cfg.lr_max, cfg.epochs, cfg.peak_epoch, steps_per_epoch)
        graphs = (cfg.compile and cfg.compile_mode in ("reduce-overhead", "max-autotune")
                  and rt.device.type == "cuda")
        return cls(model, optimizer, cycle.build(optimizer, cfg.cycle_momentum), rt.scaler(),
                   nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), rt, graphs)

    @property
    def bare(self) -> nn.Module:
        return unwrap(self.model)

    def step(self, x: torch.Tensor, y: torch.Tensor,
             weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch already on the device; (mean loss, logits). The
        gradient is taken of `weight` x the mean loss: this rank's share of an unevenly split
        global batch (`sharding.loss_weight`; 1 when the split is even)."""
        if self.graphs:  # a new step: the last replay's outputs are read, its memory reusable
            torch.compiler.cudagraph_mark_step_begin()
        with self.rt.autocast():
            out = self.model(x)
            loss = self.loss_fn(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss if weight == 1.0 else loss * weight).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_loader_worker(worker_id: int) -> None:
    # Each loader process gets a distinct, reproducible seed from torch's per-worker seed.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def train_batches(cfg: TrainConfig, data: TrainingData, rt: Runtime, rank: int = 0,
                  world: int = 1):
    """This rank's slices of the epoch's global batches (`sharding.GlobalBatches`: shuffled by
    `cfg.seed` and the epoch, the same at any world size; call `set_epoch`).

    `augment=gpu`: `DeviceBatches`, the data on the device, augmented batch-wise there.
    Otherwise albumentations per image in `cfg.loader_workers` processes; the batch sampler is
    ours (the sampler Ray's prepare_data_loader would add shuffles with seed 0 whatever --seed
    says, and splits by world size).
    """
    a = data.arrays
    plan = GlobalBatches(len(a.y_train), cfg.batch_size, cfg.seed, rank, world)
    if cfg.augment == "gpu":
        return DeviceBatches(a.x_train, a.y_train, plan, data.mean, data.std, rt.device,
                             channels_last=rt.channels_last)
    dataset = ArrayDataset(a.x_train, a.y_train, train_transform(data.mean, data.std))
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=plan, num_workers=cfg.loader_workers,
        worker_init_fn=_seed_loader_worker, pin_memory=rt.device.type == "cuda")


def batch_plan(batches) -> Optional[GlobalBatches]:
    """The `GlobalBatches` behind training batches (a DataLoader's or `DeviceBatches`')."""
    for name in ("batch_sampler", "plan"):
        plan = getattr(batches, name, None)
        if isinstance(plan, GlobalBatches):
            return plan
    return None


def set_epoch(batches, epoch: int) -> None:
    """Draw `epoch`'s global batches (a no-op for batches without a plan)."""
    plan = batch_plan(batches)
    if plan is not None:
        plan.set_epoch(epoch)


def test_batches(data: TrainingData, rank: int = 0, world: int = 1,
                 rt: Optional[Runtime] = None) -> tuple[Iterable, np.ndarray]:
    """This rank's slice of the test set (every world-th image) and the slice's indices;
    evaluate() all-reduces the sums, finish gathers the predictions by index.

    With a runtime (`augment=gpu`): the slice lives on its device as uint8 and is normalised
    there, 2048 images a batch; without: albumentations' Normalize, 512 a batch, on the CPU.
    The two give the same predictions (tests/test_batch_augment.py)."""
    idx = np.arange(rank, len(data.arrays.y_test), world)
    x, y = data.arrays.x_test[idx], data.arrays.y_test[idx]
    if rt is not None:
        return DeviceTestBatches(x, y, data.mean, data.std, rt.device,
                                 channels_last=rt.channels_last), idx
    dataset = ArrayDataset(x, y, eval_transform(data.mean, data.std))
    return torch.utils.data.DataLoader(dataset, batch_size=512, num_workers=0), idx


def one_cycle(cfg: TrainConfig, train_images: int) -> OneCycle:
    """The run's One Cycle for `train_images` (its steps do not depend on the worker count);
    built on the driver too, so that too little data for it is one error line there, not a
    traceback from every worker."""
    return OneCycle(cfg.lr_min, cfg.lr_max, cfg.epochs, cfg.peak_epoch,
                    batches_per_epoch(train_images, cfg.batch_size))


# ----------------------------------------------------------------------------- running

def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP's and torch.compile's wrappers: plain state_dict keys."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _momentum(group: dict) -> float:
    return float(group["betas"][0] if "betas" in group else group.get("momentum", 0.0))


def all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum per-rank figures over all ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# Steps between the epoch loop's reads of its device-side sums. Each read waits for the GPU to
# finish what was queued (a host sync), so the loop reads rarely: at ~8 ms a step on an H200
# one read in 50 steps costs well under 1%, and a divergence is still caught within 50 steps.
READ_EVERY = 50


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU, which runs eagerly)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(learner: Learner, loader: Iterable, *, epoch: int = 1,
                epochs: Optional[int] = None, first_step: int = 0, progress: bool = False,
                progress_seconds: Optional[float] = None,
                before_step: Optional[Callable[[int], None]] = None) -> EpochResult:
    """Train one epoch, stepping the scheduler per batch; returns this rank's figures.

    No step waits for the device: the epoch's loss and correct counts are summed on it, and the
    first non-finite loss's step is remembered there too; the host reads them every READ_EVERY
    steps, when a plain progress line is due, and at the end. A NaN or infinite loss raises
    DivergenceError at the next read, naming the step where it happened. The epoch's seconds are
    taken after the device has finished the epoch's work.

    `progress` shows this epoch's progress (rank 0 asks for it; see progress.py): a tqdm bar
    when stdout is a terminal, else a plain line every `progress_seconds` (default:
    $RAYCIFAR_PROGRESS_SECONDS, else 30) and at the end. `epochs` (the run's total) only labels
    it. `before_step(i)` runs before step i of the epoch (fault injection uses it).
    """
    learner.model.train()
    device = learner.rt.device
    zero = functools.partial(torch.zeros, (), device=device)
    loss_sum, correct = zero(dtype=torch.float64), zero(dtype=torch.int64)
    bad_step, bad_loss = zero(dtype=torch.int64) - 1, zero(dtype=torch.float64)
    seen = 0
    steps: list[Step] = []
    total = len(loader) if hasattr(loader, "__len__") else None
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    meter = EpochProgress(total, epoch=epoch, epochs=epochs, enabled=progress,
                          interval=progress_seconds, world=world)

    def read(last: torch.Tensor) -> list[float]:
        """[loss sum, correct, last loss] on the host (one sync); raise if a loss went
        non-finite since the epoch began."""
        figures = torch.stack([loss_sum, correct.double(), last.double(), bad_step.double(),
                               bad_loss]).tolist()
        if figures[3] >= 0:
            at = int(figures[3])
            raise DivergenceError(
                f"loss became {figures[4]} at epoch {epoch}, step {first_step + at} (lr "
                f"{steps[at].lr:.4g}); lower --lr-max or use --precision fp32",
                step=first_step + at)
        return figures[:3]

    plan = batch_plan(loader)
    weight = plan.weight if plan is not None else 1.0
    synchronize(device)
    start = time.perf_counter()
    figures = [0.0, 0.0, 0.0]
    for i, (x, y) in enumerate(loader):
        if before_step is not None:
            before_step(i)
        x, y = learner.rt.batch(x, y)
        group = learner.optimizer.param_groups[0]
        steps.append(Step(first_step + i, epoch, float(group["lr"]), _momentum(group)))
        loss, out = learner.step(x, y, weight)
        with torch.no_grad():  # all on the device: nothing here waits for it
            loss = loss.detach()
            loss_sum += loss.double() * y.shape[0]
            correct += (out.argmax(1) == y).sum()
            first = ~torch.isfinite(loss) & (bad_step < 0)
            bad_step = torch.where(first, i, bad_step)
            bad_loss = torch.where(first, loss.double(), bad_loss)
        seen += y.shape[0]
        if (i + 1) % READ_EVERY == 0 or meter.due() or i + 1 == total:
            figures = read(loss)
            meter.update(i + 1, seen, figures[0] / seen, figures[1] / seen, figures[2])
        else:
            meter.update(i + 1, seen)
    if steps and meter.figures_at != len(steps):  # a loader without len(): the last read
        figures = read(loss)
        meter.figures(len(steps), figures[0] / seen, figures[1] / seen, figures[2])
    synchronize(device)
    seconds = time.perf_counter() - start
    meter.close()
    loss_total, right, count = all_reduce_sums([figures[0], figures[1], seen], device)
    return EpochResult(loss_total / max(count, 1), right / max(count, 1), int(count), seconds,
                       steps)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, rt: Runtime, tta: bool = False,
            graphs: bool = False):
    """Logits of each batch (plain, and averaged with the mirror image when `tta`), labels.

    `graphs`: the model replays CUDA graphs (Learner.graphs); each forward then starts a new
    step, as a training step does, and its outputs are used up or cloned before the next."""
    model.eval()
    plain, averaged, labels = [], [], []

    def forward(x: torch.Tensor) -> torch.Tensor:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return model(x).float().clone()  # a CUDA-graph replay would reuse its memory

    for x, y in loader:
        x, y = rt.batch(x, y)
        with rt.autocast():
            out = forward(x)
            avg = (out + forward(torch.flip(x, dims=[3]))) / 2 if tta else out
        plain.append(out)
        averaged.append(avg)
        labels.append(y)
    if not labels:
        empty = torch.empty(0, device=rt.device)
        return empty, empty, empty.long()
    return torch.cat(plain), torch.cat(averaged), torch.cat(labels)


def evaluate(model: nn.Module, loader: Iterable, rt: Runtime, tta: bool = False,
             graphs: bool = False) -> dict:
    """Test loss (plain cross-entropy) and accuracy over all ranks, plus this rank's outputs."""
    plain, averaged, labels = predict(model, loader, rt, tta, graphs)
    loss_sum = float(F.cross_entropy(averaged, labels, reduction="sum")) if labels.numel() else 0.0
    correct = int((averaged.argmax(1) == labels).sum())
    correct_plain = int((plain.argmax(1) == labels).sum())
    loss_sum, correct, correct_plain, n = all_reduce_sums(
        [loss_sum, correct, correct_plain, labels.numel()], rt.device)
    n = max(n, 1)
    return {"loss": loss_sum / n, "accuracy": correct / n, "accuracy_plain": correct_plain / n,
            "count": int(n), "probs": torch.softmax(averaged, 1), "labels": labels}
