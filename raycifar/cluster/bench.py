"""Throughput, start-up time and peak memory of raycifar's training loop, plain and under Ray.

Throughput runs two epochs of `--subset` images and times the second (warm) one, with the same
model, global batch, precision (--precision; a GradScaler in fp16), layout and device (the GPU
if any). The variants are interleaved within each repeat, so machine drift hits all alike;
medians reported.

ray, ray_2workers  raycifar's worker loop under Ray Train, 1 / 2 workers (global batch split):
    the images/s it records in metrics.csv; covers the steps incl. DDP and the loop's reads of
    its device-side sums (one per 50 steps), excludes evaluation, checkpoints and Ray's
    reporting between epochs.
plain, plain_gpu_augment  raycifar's own training epoch (recipe/engine.py) in this process, no Ray,
    fed by the albumentations DataLoader (--augment, --loader-workers) or by DeviceBatches.
plain_compile, plain_contiguous, plain_bf16  `plain` with one option turned (on a GPU the
    augment=gpu loop instead: the albumentations loop waits for its loader there, which would
    hide the option's effect): the model under torch.compile (inductor), the NCHW layout
    instead of channels_last, bf16 autocast. Each is skipped where `plain` already runs that
    way; plain_bf16 runs only when named in --only (on a CPU without native bf16 it is ~20x
    slower). compile_extra: how much longer the compiled loop's first (compiling) epoch took
    than its warm one.
loader_worker  images/s ONE DataLoader worker delivers through the albumentations transform with
    no model (collation included, worker start excluded), set against `plain`'s rate and, the
    fairer yardstick, against `plain_gpu_augment`'s (the model's rate with no loader to wait for;
    on a fast GPU the plain loop only shows how fast its loader is).
first_step  seconds from calling fit() until rank 0 is about to draw its first batch (the
    timeline's train_start + worker_data + worker_setup): controller and worker start, process
    group, the worker's imports, data from the object store, model build; excludes starting
    Ray. command_to_first_step: once, from this process's start to that moment in the first Ray
    run (imports and Ray's start included).
gpu_peak_*  torch.cuda.max_memory_allocated of each plain loop (Ray workers' GPUs: not seen).
host_peak_rss_*  ru_maxrss of this process and of its largest finished child (a loader worker);
    Ray's processes are not this process's waited-for children and are not counted.

    python -m raycifar.bench --data-dir /tmp/cifar10-dev --subset 3072 --repeats 3
    python -m raycifar.bench --data-dir /tmp/cifar10-dev --only plain,plain_compile
"""

from __future__ import annotations

import resource
import shlex
import tempfile
import time
from typing import Callable, Optional

import torch

from ..reading.bench_figures import loader_verdict, machine_info, ratios, summarise
from ..recipe.config import ConfigError, TrainConfig
from ..recipe.data import ArrayDataset, CifarArrays, TrainingData, load_arrays
from ..recipe.engine import Learner, build_model, seed_everything, train_batches, train_epoch
from ..recipe.logs import log
from ..recipe.runtime import Runtime, resolve_precision
from ..recipe.transforms import train_transform
from ..store import runs
from ..store.runs import RunFolder
from .connect import init_ray, resolve_use_gpu

Measure = Callable[[], dict]


def _device(cfg: TrainConfig) -> torch.device:
    return torch.device("cuda" if cfg.use_gpu is not False and torch.cuda.is_available()
                        else "cpu")


def _warm_rate(epoch: Callable[[], int]) -> tuple[float, float]:
    """Run `epoch` (which returns the images it saw) twice: images/s of the second run, and
    how many seconds longer the first took."""
    start = time.perf_counter()
    epoch()
    first = time.perf_counter() - start
    start = time.perf_counter()
    images = epoch()
    warm = time.perf_counter() - start
    return images / warm, first - warm


def plain_loop(cfg: TrainConfig, arrays: CifarArrays) -> tuple[float, float, Optional[float]]:
    """raycifar's own training epoch (recipe/engine.py: the same setup, step and epoch as the worker
    loop) in this process, without Ray, under torch.compile if `cfg.compile`: (images/s, first
    epoch's extra seconds, GPU peak MiB or None)."""
    device = _device(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        torch.set_num_threads(cfg.cpus_per_worker)
    seed_everything(cfg.seed)
    rt = Runtime.on(device, cfg.precision, cfg.channels_last)
    data = TrainingData.of(arrays)
    batches = train_batches(cfg, data, rt)
    model = build_model(cfg, len(arrays.classes), rt)
    net = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
    learner = Learner.build(cfg.replace(epochs=2, peak_epoch=1), net, len(batches), rt)

    def epoch() -> int:
        return train_epoch(learner, batches).images

    rate, extra = _warm_rate(epoch)
    if device.type != "cuda":
        return rate, extra, None
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    model = net = learner = batches = None  # drop the references, then the cached blocks
    torch.cuda.empty_cache()  # leave the GPU to the Ray workers
    return rate, extra, peak


def loader_images_per_second(cfg: TrainConfig, arrays: CifarArrays) -> float:
    """What one DataLoader worker delivers through the albumentations transform, no model."""
    mean, std = arrays.mean_std()
    loader = torch.utils.data.DataLoader(
        ArrayDataset(arrays.x_train, arrays.y_train, train_transform(mean, std)),
        batch_size=cfg.batch_size, shuffle=True, num_workers=1, persistent_workers=True)
    return _warm_rate(lambda: sum(len(y) for _, y in loader))[0]


def ray_run(cfg: TrainConfig, key: str, use_gpu: bool) -> dict:
    """One 2-epoch fit: the warm epoch's images/s, fit()-to-first-step s, and when that was."""
    from .trainer import fit

    with tempfile.TemporaryDirectory() as d:
        run_cfg = cfg.replace(storage_path=d, name="bench", epochs=2, peak_epoch=1,
                              stop_after_epoch=0, max_failures=0)
        launched = time.time()
        summary = fit(run_cfg, use_gpu, {"moments": {"fit": launched}}).return_value
        rows = RunFolder(run_cfg.run_dir).read_csv(runs.METRICS, ["images_per_second"])
    # the timeline's phases from fit() to rank 0's first step
    first_step = sum(summary["startup"][k] for k in ("train_start", "worker_data",
                                                     "worker_setup"))
    out = {key: float(rows[-1]["images_per_second"]), "ready_at": launched + first_step}
    if key == "ray":
        out["first_step"] = first_step
    return out


def host_peak_rss() -> dict:
    """ru_maxrss (KiB on Linux) of this process and of its largest finished child, in MiB."""
    return {"host_peak_rss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "host_peak_rss_children":
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


VARIANTS = ("ray", "ray_2workers", "plain", "plain_gpu_augment", "plain_compile",
            "plain_contiguous", "plain_bf16", "loader_worker")
OPT_IN = {"plain_bf16"}  # measured only when named in --only
# `plain` with one setting changed: variant -> (setting, value, what the skip note calls it)
TURNED = {"plain_gpu_augment": ("augment", "gpu", "augment=gpu"),
          "plain_compile": ("compile", True, "torch.compile"),
          "plain_contiguous": ("channels_last", False, "the contiguous layout"),
          "plain_bf16": ("precision", "bf16", "bf16")}


def plan(cfg: TrainConfig, arrays: CifarArrays, use_gpu: bool, cluster: dict,
         only: Optional[set[str]] = None) -> tuple[list[Measure], list[str]]:
    """One repeat's measurements (those in `only`, default all but OPT_IN), Ray 1 worker first
    (it also times the command's start)."""
    wanted = set(VARIANTS) - OPT_IN if only is None else set(only)
    gpu = " + 1 GPU" if use_gpu else ""
    notes = []
    if not torch.cuda.is_available():
        notes.append("no GPU here: the plain loops ran on CPU, GPU peak memory not measured")
    steps: list[Measure] = []
    if "ray" in wanted:
        notes.insert(0, f"Ray 1 worker: {cfg.cpus_per_worker} CPU(s){gpu}")
        steps.append(lambda: ray_run(cfg, "ray", use_gpu))
    if "ray_2workers" in wanted:
        two, note = two_workers(cfg, use_gpu, cluster)
        notes.append(note)
        if two is not None:
            steps.append(lambda: ray_run(two, "ray_2workers", use_gpu))

    def plain(c: TrainConfig, key: str, extra: Optional[str] = None) -> Measure:
        def measure() -> dict:
            rate, first_extra, peak = plain_loop(c, arrays)
            out = {key: rate, "gpu_peak_" + key: peak}
            if extra:
                out[extra] = first_extra
            return out
        return measure

    if "plain" in wanted:
        steps.append(plain(cfg, "plain"))
    device = _device(cfg)
    on_unfed = options_on(cfg) != "plain"
    options_base = cfg.replace(augment="gpu") if on_unfed else cfg
    if on_unfed and wanted & (set(TURNED) - {"plain_gpu_augment"}):
        notes.append("on the GPU the option variants turn the augment=gpu loop (which waits for "
                     "no loader) and their ratios are to it: the albumentations loop waits for "
                     "its loader there, which would hide what an option does to the model")
    for key, (setting, value, what) in TURNED.items():
        if key not in wanted:
            continue
        base = cfg if setting == "augment" else options_base
        now = getattr(base, setting)
        if setting == "precision":
            now = resolve_precision(now, device)
        if now == value:
            notes.append(f"plain loop {what} skipped: `plain` already runs with it")
        else:
            steps.append(plain(base.replace(**{setting: value}), key,
                               "compile_extra" if setting == "compile" else None))
    if "loader_worker" in wanted:
        steps.append(lambda: {"loader_worker": loader_images_per_second(cfg, arrays)})
    return steps, notes


def two_workers(cfg: TrainConfig, use_gpu: bool,
                cluster: dict) -> tuple[Optional[TrainConfig], str]:
    """The 2-worker variant's config (global batch split; on CPU the cluster's CPUs split too)
    and a note on how it runs, or None and why it cannot."""
    gpus, cpus = int(cluster.get("GPU", 0)), int(cluster.get("CPU", 1))
    if use_gpu and gpus < 2:
        return None, f"Ray 2 workers skipped: {gpus} GPU(s) in the cluster, 2 workers need 2"
    two = cfg.replace(num_workers=2, min_workers=0,
                      cpus_per_worker=cfg.cpus_per_worker if use_gpu else max(1, cpus // 2))
    gpu = " + 1 GPU" if use_gpu else ""
    half = cfg.batch_size // 2
    each = str(half) if cfg.batch_size % 2 == 0 else f"{half}-{half + 1}"
    return two, f"Ray 2 workers: {two.cpus_per_worker} CPU(s){gpu} and batch {each} each"


def options_on(cfg: TrainConfig) -> str:
    """The loop whose one setting the option variants (compile, contiguous, bf16) turn: `plain`,
    or on a GPU, where the albumentations loop waits for its loader, the augment=gpu loop."""
    if _device(cfg).type == "cuda" and cfg.augment != "gpu":
        return "plain_gpu_augment"
    return "plain"


def run_repeats(steps: list[Measure], repeats: int, started: float) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for r in range(repeats):
        for measure in steps:
            for key, v in measure().items():
                if key == "ready_at":  # only the first Ray run counts from the command's start
                    values.setdefault("command_to_first_step", [v - started])
                elif v is not None:
                    values.setdefault(key, []).append(v)
        log.info(f"repeat {r + 1}/{repeats}: " + ", ".join(
            f"{k} {v[-1]:.1f}" for k, v in values.items()))
    return values


def measure(cfg: TrainConfig, repeats: int, only: Optional[set[str]], address: Optional[str],
            started: float, command: list[str]) -> dict:
    """Every variant, `repeats` times, and what the figures say: the bench's result record."""
    if repeats < 1:
        raise ConfigError([f"repeats={repeats} must be >= 1"])
    if only is not None and (not only or only - set(VARIANTS)):
        raise ConfigError([f"--only {','.join(sorted(only))!r}: pick from {', '.join(VARIANTS)}"])
    cfg = cfg.replace(num_workers=1, min_workers=0)
    arrays = load_arrays(cfg)  # validates the data and fills the decode cache before timing
    init_ray(address)
    import ray

    cluster = ray.cluster_resources()
    use_gpu = resolve_use_gpu(cfg.use_gpu)
    steps, notes = plan(cfg, arrays, use_gpu, cluster, only)
    values = run_repeats(steps, repeats, started)
    values.update({k: [v] for k, v in host_peak_rss().items()})
    figures = summarise(values)
    loaders = cfg.loader_workers or TrainConfig.loader_workers
    on = options_on(cfg)
    keeps_up, note = loader_verdict(figures, loaders,
                                    "plain" if cfg.augment == "gpu" else "plain_gpu_augment")
    if note:
        notes.append(note)
    precision = resolve_precision(cfg.precision, _device(cfg))
    return {"machine": machine_info(precision), "repeats": repeats,
            "command": shlex.join(command), "figures": figures,
            "ratios": ratios(figures, loaders, on), "loader_keeps_up": keeps_up, "notes": notes,
            "options_on": on, "precision": precision, "batch_size": cfg.batch_size,
            "subset": cfg.subset, "threads": cfg.cpus_per_worker,
            "loader_workers": cfg.loader_workers}
