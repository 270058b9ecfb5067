"""Plain PyTorch: one training epoch, evaluation and predictions. No Ray in here.

Both loops accept a model wrapped in DDP or not; `all_reduce_sums` combines per-rank sums when
a torch.distributed process group exists (Ray Train sets one up), and is a no-op otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from .config import RaycifarError
from .progress import EpochProgress

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DivergenceError(RaycifarError):
    """The training loss became NaN or infinite."""


# CPU feature flags that mean bf16 runs in hardware: x86 AVX512_BF16 (Cooper Lake, Sapphire
# Rapids and later, AMD Zen 4 and later) or AMX-BF16 (Sapphire Rapids and later), read from Linux's
# /proc/cpuinfo `flags`; aarch64 BF16 (Armv8.6 BFDOT/BFMMLA: Graviton3, Neoverse V1/N2), `Features`.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def cpu_auto_precision(flags: Optional[frozenset[str]]) -> tuple[str, str]:
    """What `auto` means on a CPU with these feature flags (None: unreadable), and why.

    bf16 only where the hardware does it natively, fp32 everywhere else. oneDNN runs bf16 on any
    AVX-512 CPU (and torch.ops.mkldnn._is_mkldnn_bf16_supported() says True there), but without
    AVX512_BF16 or AMX it emulates it: on a 2-core Xeon with avx512f/bw/vnni and neither, this
    model's forward+backward+step at batch 128 ran at 27.7/30.0 images/s in bf16 autocast against
    77.0/70.3 in fp32 (2.5x slower, issue 23); on an AVX2-only EPYC, 2.5 against 42 (~20x).
    With AMX (a 2-vCPU Sapphire Rapids-class Xeon, batch 64) bf16 ran 2.8x faster: 352 vs 126.
    Flags that cannot be read (no /proc/cpuinfo: macOS, Windows) give fp32, the safe choice.
    """
    if flags is None:
        return "fp32", ("this CPU's feature flags cannot be read (no /proc/cpuinfo), so fp32, "
                        "the safe choice; --precision bf16 forces bf16")
    native = next((f for f in NATIVE_BF16_FLAGS if f in flags), None)
    if native:
        return "bf16", f"this CPU does bf16 natively ({native} flag)"
    return "fp32", ("this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag on x86, no bf16 "
                    "on aarch64), bf16 would be emulated (2.5-20x slower than fp32)")


@functools.lru_cache(maxsize=None)
def cpu_flags(path: str = "/proc/cpuinfo") -> Optional[frozenset[str]]:
    """This CPU's feature flags: the first `flags` (x86) or `Features` (aarch64) line of Linux's
    /proc/cpuinfo; None where there is no such file or line. Read once per path (cached)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def _auto(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU supports bf16"
        return "fp16", "this GPU has no bf16, so fp16 (with loss scaling)"
    return cpu_auto_precision(cpu_flags())


def resolve_precision(precision: str, device: torch.device) -> str:
    """What `auto` means on this device: bf16 on GPUs that have it (else fp16); on CPUs, bf16
    only with native bf16 units, fp32 elsewhere (see cpu_auto_precision for the figures)."""
    return _auto(device)[0] if precision == "auto" else precision


def describe_precision(requested: str, device: torch.device) -> str:
    """One line saying which precision `requested` gives on this device and why, e.g.
    "precision auto -> fp32: this CPU has no native bf16 (...)"."""
    if requested != "auto":
        return f"precision {requested}: set explicitly (not auto)"
    chosen, why = _auto(device)
    return f"precision auto -> {chosen}: {why}"


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    # Only fp16 needs loss scaling; a disabled scaler passes calls straight through.
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


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

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP's and torch.compile's wrappers: plain state_dict keys."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _momentum(group: dict) -> float:
    return float(group["betas"][0] if "betas" in group else group.get("momentum", 0.0))


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum per-rank figures over all ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                scheduler, loss_fn: Callable, scaler: torch.amp.GradScaler, *,
                device: torch.device, precision: str = "fp32", channels_last: bool = False,
                epoch: int = 1, epochs: Optional[int] = None, first_step: int = 0,
                progress: bool = False, progress_seconds: Optional[float] = None,
                max_steps: Optional[int] = None,
                before_step: Optional[Callable[[int], None]] = None) -> EpochResult:
    """Train one epoch, stepping `scheduler` per batch; returns this rank's figures.

    `progress` shows this epoch's progress (rank 0 asks for it; see progress.py): a tqdm bar
    when stdout is a terminal, else a plain line every `progress_seconds` (default:
    $RAYCIFAR_PROGRESS_SECONDS, else 30) and at the end. `epochs` (the run's total) only labels
    it. `before_step(i)` runs before step i of the epoch (fault injection uses it).
    """
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    steps: list[Step] = []
    total = len(loader) if hasattr(loader, "__len__") else None
    if total is not None and max_steps is not None:
        total = min(total, max_steps)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    meter = EpochProgress(total, epoch=epoch, epochs=epochs, enabled=progress,
                          interval=progress_seconds, world=world)
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if max_steps is not None and i >= max_steps:
            break
        if before_step is not None:
            before_step(i)
        x, y = _to_device(x, y, device, channels_last)
        group = optimizer.param_groups[0]
        steps.append(Step(first_step + i, epoch, float(group["lr"]), _momentum(group)))
        with autocast(precision, device):
            out = model(x)
            loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        value = loss.item()
        if not math.isfinite(value):
            raise DivergenceError(
                f"loss became {value} at epoch {epoch}, step {first_step + i} (lr "
                f"{steps[-1].lr:.4g}); lower --lr-max or use --precision fp32")
        n = y.numel()
        loss_sum += value * n
        correct += int((out.argmax(1) == y).sum())
        seen += n
        meter.update(i + 1, seen, loss_sum / seen, correct / seen, value)
    seconds = time.perf_counter() - start
    meter.close()
    loss_sum, correct, seen = all_reduce_sums([loss_sum, correct, seen], device)
    return EpochResult(loss_sum / max(seen, 1), correct / max(seen, 1), int(seen), seconds, steps)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, *, device: torch.device, precision: str = "fp32",
            channels_last: bool = False, tta: bool = False):
    """Logits of each batch (plain, and averaged with the mirror image when `tta`), labels."""
    model.eval()
    plain, averaged, labels = [], [], []
    for x, y in loader:
        x, y = _to_device(x, y, device, channels_last)
        with autocast(precision, device):
            out = model(x).float()
            avg = (out + model(torch.flip(x, dims=[3])).float()) / 2 if tta else out
        plain.append(out)
        averaged.append(avg)
        labels.append(y)
    if not labels:
        empty = torch.empty(0, device=device)
        return empty, empty, empty.long()
    return torch.cat(plain), torch.cat(averaged), torch.cat(labels)


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device,
             precision: str = "fp32", channels_last: bool = False, tta: bool = False) -> dict:
    """Test loss (plain cross-entropy) and accuracy over all ranks, plus this rank's outputs."""
    plain, averaged, labels = predict(model, loader, device=device, precision=precision,
                                      channels_last=channels_last, tta=tta)
    loss_sum = float(F.cross_entropy(averaged, labels, reduction="sum")) if labels.numel() else 0.0
    correct = int((averaged.argmax(1) == labels).sum())
    correct_plain = int((plain.argmax(1) == labels).sum())
    loss_sum, correct, correct_plain, n = all_reduce_sums(
        [loss_sum, correct, correct_plain, labels.numel()], device)
    n = max(n, 1)
    return {"loss": loss_sum / n, "accuracy": correct / n, "accuracy_plain": correct_plain / n,
            "count": int(n), "probs": torch.softmax(averaged, 1), "labels": labels}
