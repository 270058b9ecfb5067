"""`python -m raycifar.doctor`: what a run would use on this machine, in a few lines.

The devices (each GPU's name, compute capability and memory), what `--precision auto` picks
on each and why (the same function the training asks), the CPU flags that decide it on a CPU,
the versions that matter, and the Ray cluster a run would join with its resources (joined only
when there is one to join: without a cluster this takes about a second, most of it importing
torch and Ray). Like `accelerate env` and `ray status`, for pasting into a bug report.
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import Optional

import torch

from .. import __version__
from ..recipe import runtime
from .args import add_debug_flag, run_cli


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The CPU's `model name` from Linux's cpuinfo, else what Python's platform module says."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_lines() -> list[str]:
    """The CPU and every GPU torch sees, each with what `auto` precision means there."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = runtime.cpu_flags()
    native = [f for f in runtime.NATIVE_BF16_FLAGS if f in (flags or ())]
    lines = [f"cpu: {cpu_model()}, {cores} cores, bf16 flags: "
             f"{', '.join(native) if native else 'none'}",
             f"  {runtime.describe_precision('auto', torch.device('cpu'))}"]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        lines.append("gpus: none visible to torch" + (f" (CUDA_VISIBLE_DEVICES={visible!r})"
                                                       if visible is not None else ""))
    for i in range(count):
        device = torch.device("cuda", i)
        props = torch.cuda.get_device_properties(device)
        major, minor = torch.cuda.get_device_capability(device)
        lines += [f"gpu {i}: {torch.cuda.get_device_name(device)}, compute capability "
                  f"{major}.{minor}, {props.total_memory / 2**30:.0f} GiB",
                  f"  {runtime.describe_precision('auto', device)}"]
    return lines


def version_lines() -> list[str]:
    from importlib.metadata import version

    cuda = torch.version.cuda or ("ROCm " + torch.version.hip if torch.version.hip else "none")
    return [f"versions: raycifar {__version__}, Python {platform.python_version()}, torch "
            f"{torch.__version__} (built for CUDA {cuda}), Ray {version('ray')}"]


def cluster_lines(address: Optional[str]) -> list[str]:
    """The cluster a run would join and its alive resources (connect.peek); without one, the
    local Ray a run would start, from this machine's own counts."""
    from ..cluster.connect import peek
    from ..cluster.placement import describe

    target, nodes = peek(address)
    if target is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return ["ray: no cluster to join (no --address, RAY_ADDRESS or `ray start` cluster on "
                f"this node): a run starts a local Ray with {os.cpu_count()} CPUs, {gpus} GPUs"]
    return [f"ray: a run joins the cluster at {target}: {describe(nodes)}"]


def main(args: argparse.Namespace) -> int:
    for line in device_lines() + version_lines() + cluster_lines(args.address):
        print(line)
    return 0


def build_parser(prog: str = "raycifar doctor") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="What a run would use here: devices, what --precision auto picks on each "
                    "and why, versions, and the Ray cluster a run would join.")
    parser.add_argument("--address", default=None,
                        help="the cluster a run would be given with --address (default: "
                             "RAY_ADDRESS, else this node's `ray start` cluster)")
    add_debug_flag(parser)
    return parser


def cli(argv: Optional[list[str]] = None, prog: str = "raycifar doctor") -> int:
    return run_cli(main, build_parser(prog), argv)
