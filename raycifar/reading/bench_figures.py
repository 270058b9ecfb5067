"""The bench's figures: medians per figure, ratios of medians, whether the albumentations
loader keeps the model fed, the machine, and the markdown of BENCHMARKS.md. Pure functions of
what `bench.py` measured (and of this machine, for `machine_info`).
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Optional

import torch

from ..recipe import timeline

FIGURES = {  # key: (label, unit), in report order
    "ray": ("Ray Train loop, 1 worker", "img/s"),
    "ray_2workers": ("Ray Train loop, 2 workers", "img/s"),
    "plain": ("plain PyTorch loop", "img/s"),
    "plain_gpu_augment": ("plain loop, augment=gpu (DeviceBatches)", "img/s"),
    "plain_compile": ("plain loop, torch.compile", "img/s"),
    "plain_contiguous": ("plain loop, contiguous (NCHW) layout", "img/s"),
    "plain_bf16": ("plain loop, bf16 autocast", "img/s"),
    "compile_extra": ("torch.compile: first epoch's extra time", "s"),
    "loader_worker": ("one albumentations loader worker, no model", "img/s"),
    "first_step": ("fit() to first step, Ray 1 worker", "s"),
    "command_to_first_step": ("process start to first step of the first Ray run", "s"),
    "gpu_peak_plain": ("GPU peak allocated, plain loop", "MiB"),
    "gpu_peak_plain_gpu_augment": ("GPU peak allocated, plain loop augment=gpu", "MiB"),
    "gpu_peak_plain_compile": ("GPU peak allocated, plain loop torch.compile", "MiB"),
    "gpu_peak_plain_contiguous": ("GPU peak allocated, plain loop contiguous", "MiB"),
    "gpu_peak_plain_bf16": ("GPU peak allocated, plain loop bf16", "MiB"),
    "host_peak_rss_self": ("host peak RSS, bench process", "MiB"),
    "host_peak_rss_children": ("host peak RSS, largest finished child process", "MiB"),
}

def summarise(values: dict[str, list[float]]) -> dict[str, dict]:
    """Median and per-repeat values of each figure, in report order."""
    return {k: {"label": FIGURES[k][0], "unit": FIGURES[k][1], "values": list(values[k]),
                "median": statistics.median(values[k])} for k in FIGURES if values.get(k)}


def ratios(figures: dict[str, dict], loader_workers: int,
           options_base: str = "plain") -> dict[str, dict]:
    """Ratios of medians; those whose figures are missing are left out. The option variants
    are set against `options_base`, the loop they turned (see `options_on`)."""
    med = {k: f["median"] for k, f in figures.items()}
    on = "plain" if options_base == "plain" else "plain augment=gpu"
    spec = [("ray_over_plain", "Ray 1 worker / plain loop", "ray", "plain", 1),
            ("ray2_over_ray1", "Ray 2 workers / Ray 1 worker", "ray_2workers", "ray", 1),
            ("gpu_augment_over_plain", "plain augment=gpu / plain", "plain_gpu_augment",
             "plain", 1),
            ("compile_over_plain", f"{on} torch.compile / {on}", "plain_compile",
             options_base, 1),
            ("contiguous_over_plain", f"{on} contiguous / {on}", "plain_contiguous",
             options_base, 1),
            ("bf16_over_plain", f"{on} bf16 / {on}", "plain_bf16", options_base, 1),
            ("loader_worker_over_plain", "one loader worker / plain loop's step rate",
             "loader_worker", "plain", 1),
            ("loader_workers_over_plain", f"{loader_workers} loader workers / plain loop's step "
             "rate", "loader_worker", "plain", loader_workers),
            ("loader_workers_over_unfed", f"{loader_workers} loader workers / augment=gpu loop's "
             "step rate (< 1: the loader holds the model back)", "loader_worker",
             "plain_gpu_augment", loader_workers)]
    return {key: {"label": label, "value": n * med[a] / med[b]}
            for key, label, a, b, n in spec if a in med and med.get(b)}


def loader_verdict(figures: dict[str, dict], loaders: int, unfed: str = "plain_gpu_augment"
                   ) -> tuple[Optional[bool], Optional[str]]:
    """Whether `loaders` albumentations workers keep the model fed, and a note saying so.

    The yardstick is `unfed`, the loop fed by DeviceBatches (`plain` itself under --augment
    gpu): the model's step rate with no loader to wait for. The albumentations-fed plain loop's
    rate already includes waiting for its loader (on a fast GPU it is the loader's rate, and
    comparing the loader with it proves nothing); it is the fallback."""
    med = {k: f["median"] for k, f in figures.items()}
    one = med.get("loader_worker")
    if not one:
        return None, None
    if med.get(unfed):
        keeps_up = loaders * one > med[unfed]
        return keeps_up, (
            f"{loaders} albumentations loader workers deliver {loaders * one / med[unfed]:.2f}x "
            "what the model consumes when no loader holds it back (the augment=gpu loop's rate): "
            + ("the loader is not the bottleneck" if keeps_up else
               f"the loader IS the bottleneck; about {math.ceil(med[unfed] / one)} workers, or "
               "--augment gpu, would keep the model fed"))
    if med.get("plain"):
        keeps_up = loaders * one > med["plain"]
        return keeps_up, (
            f"{loaders} albumentations loader workers deliver {'more' if keeps_up else 'less'} "
            "than the plain loop consumes (whose rate includes its own loading; measure "
            "plain_gpu_augment too for the model's rate without it)")
    return None, None


def machine_info(precision: str) -> dict:
    from importlib.metadata import version

    cpu, ram = "unknown CPU", 0.0
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            ram = next(int(l.split()[1]) for l in f if l.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration, ValueError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(ram, 1), "gpu": gpu,
            "torch": torch.__version__, "ray": version("ray"), "precision": precision}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# raycifar benchmark", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, GPU: "
             f"{m['gpu'] or 'none'}; torch {m['torch']}, ray {m['ray']}; precision "
             f"{m['precision']}; batch {result['batch_size']}, {result['subset'] or 'all'} "
             f"training images, median of {result['repeats']} repeat(s).", "",
             f"Command: `{result['command']}`", "",
             "| figure | unit | median | per repeat |", "|---|---|---|---|"]
    for f in result["figures"].values():
        lines.append(f"| {f['label']} | {f['unit']} | {f['median']:.1f} | "
                     + ", ".join(f"{v:.1f}" for v in f["values"]) + " |")
    lines += ["", "| ratio of medians | value |", "|---|---|"]
    lines += [f"| {r['label']} | {r['value']:.2f} |" for r in result["ratios"].values()]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    lines += ["", "What each figure covers and excludes: `python -m raycifar.bench --help`.", ""]
    return "\n".join(lines)


def time_split(summary: dict) -> list[tuple[str, float, str]]:
    """Where one finished run's time went (its summary.json): (part, seconds, share of the
    steps' time). The start-up phases (timeline.PHASES) come first when the run has them."""
    steps, ev, rec = (summary[k] for k in ("train_seconds", "eval_seconds", "record_seconds"))
    startup = summary.get("startup") or {}
    in_all = startup.get("in_all")  # from the command's start: the driver's phases too
    parts = [(f"start-up: {text}", startup[k]) for k, _, _, text in timeline.PHASES
             if k in startup and k != "in_all"]
    if in_all is not None:
        parts.append(("start-up in all: the command's start to the first step", in_all))
    parts += [("training steps", steps), ("evaluation (every epoch)", ev),
              ("run files and checkpoints (every epoch)", rec)]
    total = summary.get("command_seconds")
    if total is not None:
        rest = total - steps - ev - rec
        parts += [("start-up and the rest: Ray, data, range test, workers, final files", rest)
                  if in_all is None else
                  ("the rest: between epochs, the final predictions and model.pt", rest - in_all),
                  ("command, start to finished run folder", total)]
    return [(name, s, f"{s / steps:.0%} of the steps") for name, s in parts]


def split_markdown(uri: str, summary: dict) -> str:
    outside = (summary["eval_seconds"] + summary["record_seconds"]) / summary["train_seconds"]
    lines = [f"# Where the time of {uri} went", "",
             f"{summary['epochs']} epochs on {summary['device_name']} ({summary['precision']}), "
             f"{summary['train_images']} training images; time outside the training steps, "
             f"first epoch to last checkpoint: **{outside:.0%} of the steps' time**.", "",
             "| part | seconds | share |", "|---|---|---|"]
    lines += [f"| {n} | {s:.1f} | {share} |" for n, s, share in time_split(summary)]
    return "\n".join(lines) + "\n"


# (summary.json key, row label, format) of the side-by-side table; a run without a key shows "-"
PAIRED = (("device_name", "device", "{}"), ("precision", "precision", "{}"),
          ("final_test_acc", "test accuracy, last epoch", "{:.2%}"),
          ("train_seconds", "training steps, s", "{:.1f}"),
          ("images_per_second", "images/s in the steps", "{:,.0f}"),
          ("eval_seconds", "evaluation, s", "{:.1f}"),
          ("record_seconds", "run files and checkpoints, s", "{:.1f}"),
          ("wall_seconds", "first epoch to last checkpoint, s", "{:.1f}"),
          ("startup.in_all", "command start to first step, s", "{:.1f}"),
          ("command_seconds", "command, start to finished run folder, s", "{:.1f}"))


def _figure(summary: dict, key: str):
    for part in key.split("."):
        summary = summary.get(part) if isinstance(summary, dict) else None
    return summary


def side_by_side(uris: list[str], summaries: list[dict]) -> str:
    """Several finished runs' figures in one table, a column each (the first is usually the
    earlier run on the same hardware); a figure a run's summary.json lacks shows as -."""
    lines = ["| figure | " + " | ".join(f"`{u}`" for u in uris) + " |",
             "|---|" + "---|" * len(uris)]
    for key, label, fmt in PAIRED:
        cells = [_figure(s, key) for s in summaries]
        lines.append(f"| {label} | " + " | ".join("-" if c is None else fmt.format(c)
                                                  for c in cells) + " |")
    return "\n".join(lines) + "\n"
