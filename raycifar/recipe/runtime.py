"""Where and how the arithmetic runs: the device, the autocast precision, the memory layout.

`Runtime` is what the training step, evaluation, the range test and the bench need to know
about the hardware, built once per process (`Runtime.on`) instead of three arguments threaded
through every call. The precision rule for `--precision auto` lives here too.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    77.0/70.3 in fp32 (2.5x slower); on an AVX2-only EPYC, 2.5 against 42 (~20x).
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


def gpu_auto_precision(capability: tuple[int, int], name: str = "this GPU",
                       rocm: bool = False) -> tuple[str, str]:
    """What `auto` means on a CUDA GPU of this compute capability, and why.

    bf16 needs the tensor cores of Ampere and later (compute capability 8.0+: A100, A10, L4,
    RTX 30xx/40xx, H100, H200). Below that torch still runs bf16, but emulated
    (`torch.cuda.is_bf16_supported()` counts that as support by default), which is slower than
    fp32; Volta and Turing (7.x: V100, T4, RTX 20xx) have fp16 tensor cores, so fp16 with loss
    scaling; Pascal and older (6.x and below: P100, K80) have no tensor cores: fp32. ROCm GPUs
    that torch runs on do bf16 (torch says so for every one of them).
    """
    major, minor = capability
    cc = f"{name}, compute capability {major}.{minor}"
    if rocm:
        return "bf16", f"{name} is a ROCm GPU, which runs bf16"
    if major >= 8:
        return "bf16", f"{cc}: bf16 on its tensor cores (8.0 and later)"
    if major == 7:
        return "fp16", (f"{cc}: no native bf16 (emulated, slower than fp32) but fp16 tensor "
                        "cores, so fp16 with loss scaling")
    return "fp32", f"{cc}: no tensor cores (below 7.0), so fp32"


def _auto(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        return gpu_auto_precision(torch.cuda.get_device_capability(device),
                                  torch.cuda.get_device_name(device),
                                  rocm=bool(torch.version.hip))
    return cpu_auto_precision(cpu_flags())


def resolve_precision(precision: str, device: torch.device) -> str:
    """What `auto` means on this device: on GPUs by compute capability (gpu_auto_precision);
    on CPUs bf16 only with native bf16 units, fp32 elsewhere (cpu_auto_precision)."""
    return _auto(device)[0] if precision == "auto" else precision


def describe_precision(requested: str, device: torch.device) -> str:
    """One line saying which precision `requested` gives on this device and why, e.g.
    "precision auto -> fp32: this CPU has no native bf16 (...)"."""
    if requested != "auto":
        return f"precision {requested}: set explicitly (not auto)"
    chosen, why = _auto(device)
    return f"precision auto -> {chosen}: {why}"


@dataclass(frozen=True)
class Runtime:
    """The device, the resolved precision (fp32, bf16 or fp16) and whether tensors are NHWC."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False

    @classmethod
    def on(cls, device: torch.device, precision: str = "auto",
           channels_last: bool = False) -> "Runtime":
        """`precision` as asked (`auto` resolved for this device). On a GPU this also lets
        cuDNN time its convolution kernels once per input shape and keep the fastest
        (`cudnn.benchmark`): every batch here is 32x32, so the timing pays for itself within
        the first epoch."""
        if torch.device(device).type == "cuda":
            torch.backends.cudnn.benchmark = True
        return cls(torch.device(device), resolve_precision(precision, torch.device(device)),
                   channels_last)

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type,
                              dtype=AUTOCAST_DTYPES[self.precision])

    def scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling; a disabled scaler passes calls straight through.
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device, in the memory layout."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def place(self, model: nn.Module) -> nn.Module:
        """`model` on the device, in the memory layout."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model
