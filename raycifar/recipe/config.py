"""Typed, validated training configuration: the one place that holds defaults.

`TrainConfig` is frozen and checked at construction. Every problem is collected and reported
at once, each naming the key, the value, what is allowed and how to fix it, so a typo gives
one clear message instead of a traceback from inside a Ray worker.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional

DATA_FORMATS = ("auto", "download", "batches", "folder")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENTS = ("albumentations", "gpu")
# torch.compile's modes: reduce-overhead replays CUDA graphs (on a GPU), max-autotune also
# tries kernel configurations (minutes of compiling) and replays CUDA graphs too
GRAPH_MODES = ("reduce-overhead", "max-autotune")
COMPILE_MODES = ("default",) + GRAPH_MODES
# where a run's parameters, metrics and files are also sent (TensorBoard files are always
# written): each an optional extra, raycifar[mlflow] and raycifar[wandb]
TRACKERS = ("none", "mlflow", "wandb")


class RaycifarError(Exception):
    """An error a user can fix; the CLI prints it as one line, without a traceback."""


class ConfigError(RaycifarError, ValueError):
    """One or more configuration values are invalid."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems) if len(problems) == 1 else
                         "invalid configuration:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on, with units.

    The defaults are the spec (24 epochs, peak at the end of epoch 5, global batch 512) plus
    Page's ResNet-9 recipe (SGD Nesterov 0.9, weight decay 5e-4 on the mean loss, logits x0.125,
    label smoothing 0.2).
    """

    # --- data ---
    data_dir: Optional[str] = None        # None: torchvision download into cache_dir
    data_format: str = "auto"             # auto | download | batches | folder
    cache_dir: str = "~/.cache/raycifar"  # downloads and decoded-array caches live here
    subset: int = 0                       # >0: train on `subset` images, test on subset // 5
    loader_workers: int = 2               # DataLoader worker processes per Ray worker
    validation: int = 0                   # >0: evaluate on this many held-out *training*
                                          # images instead of the test set (LR searches)
    augment: str = "albumentations"       # albumentations (per image, loader processes) |
                                          # gpu (whole batches on the training device)

    # --- schedule (One Cycle, stepped per batch) ---
    epochs: int = 24
    peak_epoch: int = 5                   # LR reaches lr_max on the last step of this epoch
    lr_max: float = 0.4                   # per global batch of 512, mean loss
    lr_min: float = 0.004                 # start and end LR (no annihilation)
    cycle_momentum: bool = False          # Page's recipe keeps momentum fixed

    # --- optimisation ---
    batch_size: int = 512                 # global: each batch split across the workers
    optimizer: str = "sgd"                # sgd (Nesterov) | adam
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    logit_scale: float = 0.125            # multiplies the logits (Page's ResNet-9)
    width: int = 64                       # the prep layer's channels; the layers have 2x, 4x
                                          # and 8x (64 is the spec's network; smaller ones
                                          # are for smoke runs and tests)
    precision: str = "auto"               # auto | fp32 | bf16 | fp16 (autocast); auto on a
                                          # GPU by compute capability: bf16 >= 8.0, fp16 (loss
                                          # scaling) on 7.x, fp32 below; on CPUs bf16 only
                                          # with avx512_bf16/amx_bf16 (aarch64: bf16) in the
                                          # CPU flags, else fp32: emulated bf16 is 2.5-20x
                                          # slower (runtime.py)
    channels_last: bool = True
    compile: bool = False                 # torch.compile the training model (inductor)
    compile_mode: str = "default"         # COMPILE_MODES, when compile
    tta: bool = True                      # test accuracy averages the image and its mirror
    seed: int = 0
    stop_after_epoch: int = 0             # >0: stop after this epoch; re-run the name to go on

    # --- Ray ---
    num_workers: int = 1                  # workers; an elastic run's most
    min_workers: int = 0                  # >0: elastic, from min_workers to num_workers as the
                                          # cluster has room (CLI: --num-workers MIN-MAX)
    resize_seconds: float = 60.0          # elastic: how often Ray looks for room to grow
    cpus_per_worker: int = 2
    gpus_per_worker: float = 1.0          # on GPUs; below 1 packs workers (of several trials)
                                          # onto one GPU: this network uses ~1 GB of it
    use_gpu: Optional[bool] = None        # None: use GPUs when the cluster has them
    storage_path: str = "~/raycifar_runs" # absolute path or URI (s3://, gs://)
    shared_storage: bool = False          # a local storage_path every node mounts (NFS)
    name: str = "cifar10-onecycle"
    max_failures: Optional[int] = None    # restarts after a worker or node dies before giving
                                          # up (-1 = forever); None: ELASTIC_FAILURES for an
                                          # elastic run, else 0. Preemptions (a node drained
                                          # with notice) are retried apart from these, always

    # --- reporting ---
    tracker: str = "none"                 # TRACKERS: also log the run to MLflow or W&B

    def __post_init__(self) -> None:
        problems = _validate(self)
        if problems:
            raise ConfigError(problems)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError([f"unknown config key(s) {unknown}; known keys: {sorted(known)}"])
        return cls(**values)

    @property
    def elastic(self) -> bool:
        return self.min_workers > 0

    @property
    def failures_allowed(self) -> int:
        """Ray's max_failures for this run: as set, else a few for an elastic run (a lost node
        is worth a restart on the nodes left; a bug is not worth many), none for a fixed one."""
        if self.max_failures is not None:
            return self.max_failures
        return ELASTIC_FAILURES if self.elastic else 0

    def worker_resources(self, use_gpu: bool) -> dict[str, float]:
        """What each Train worker (and the range test's trial) reserves on the cluster."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if use_gpu else {})}

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def run_dir(self) -> str:
        """`<storage_path>/<name>`, the folder every output of this run goes to."""
        return self.storage_path.rstrip("/") + "/" + self.name


ELASTIC_FAILURES = 3


def resolve_storage_path(path: str) -> str:
    """Ray needs an absolute path or a URI: expand `~` and make relative paths absolute."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def gpu_sharing_problem(num_workers: int, gpus_per_worker: float) -> Optional[str]:
    """Why `num_workers` training workers of `gpus_per_worker` GPUs each cannot run, or None.

    A fraction of a GPU lets Ray place several workers on one GPU, and it does: every rank of a
    2 x 0.5 run gets GPU 0. Ray Train then builds an NCCL process group over them, and NCCL
    refuses two ranks on one device ("Duplicate GPU detected") at the first collective. So a
    fraction is for one-worker trials only (several trials, each its own process group, share
    a GPU), and a multi-worker run takes whole GPUs.
    """
    if num_workers > 1 and gpus_per_worker < 1:
        return (f"--num-workers {num_workers} with --gpus-per-worker {gpus_per_worker:g} would "
                "put ranks of one NCCL process group on the same GPU, which NCCL refuses "
                "(Duplicate GPU detected); a fraction packs one-worker trials onto a GPU "
                "(tune seeds/search --num-workers 1 --gpus-per-worker 0.25), and a "
                "multi-worker run takes whole GPUs (--gpus-per-worker 1)")
    return None


def _validate(c: TrainConfig) -> list[str]:
    p: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            p.append(msg)

    need(c.data_format in DATA_FORMATS,
         f"data_format={c.data_format!r} is not one of {DATA_FORMATS}")
    need(c.optimizer in OPTIMIZERS, f"optimizer={c.optimizer!r} is not one of {OPTIMIZERS}")
    need(c.augment in AUGMENTS, f"augment={c.augment!r} is not one of {AUGMENTS}")
    need(c.precision in PRECISIONS, f"precision={c.precision!r} is not one of {PRECISIONS}")
    need(c.tracker in TRACKERS, f"tracker={c.tracker!r} is not one of {TRACKERS}")
    need(c.compile_mode in COMPILE_MODES,
         f"compile_mode={c.compile_mode!r} is not one of {COMPILE_MODES}")
    need(c.epochs >= 1, f"epochs={c.epochs} must be >= 1")
    need(1 <= c.peak_epoch < c.epochs,
         f"peak_epoch={c.peak_epoch} must be in [1, epochs-1={c.epochs - 1}]: "
         "the LR has to fall after the peak; lower --peak-epoch or raise --epochs")
    need(c.lr_min > 0, f"lr_min={c.lr_min} must be > 0")
    need(c.lr_max > c.lr_min,
         f"lr_min={c.lr_min} must be below lr_max={c.lr_max}; swap them or lower --lr-min")
    need(c.batch_size >= 1, f"batch_size={c.batch_size} must be >= 1")
    need(c.num_workers >= 0, f"num_workers={c.num_workers} must be >= 0 (0 = in-process)")
    if c.num_workers >= 1 and c.batch_size >= 1:
        need(c.batch_size >= c.num_workers,
             f"batch_size={c.batch_size} cannot give each of num_workers={c.num_workers} an "
             "image; use fewer workers or a larger batch")
    need(c.cpus_per_worker >= 1, f"cpus_per_worker={c.cpus_per_worker} must be >= 1")
    need(0 < c.gpus_per_worker <= 1 or float(c.gpus_per_worker).is_integer(),
         f"gpus_per_worker={c.gpus_per_worker} must be a fraction in (0, 1] (workers sharing "
         "a GPU) or a whole number")
    if c.use_gpu:  # left to the cluster (None): checked once it is known (cluster/placement.py)
        sharing = gpu_sharing_problem(c.num_workers, c.gpus_per_worker)
        need(sharing is None, sharing or "")
    need(not (c.compile and c.compile_mode in GRAPH_MODES and c.num_workers > 1),
         f"compile_mode={c.compile_mode!r} replays CUDA graphs, which DDP with BatchNorm is "
         "not known to run right (pytorch issues 139207, 128218); with num_workers="
         f"{c.num_workers} use --compile-mode default, or one worker")
    need(c.loader_workers >= 0, f"loader_workers={c.loader_workers} must be >= 0")
    need(c.subset == 0 or c.subset >= 10,
         f"subset={c.subset} must be 0 (all data) or >= 10 images")
    need(c.validation >= 0, f"validation={c.validation} must be >= 0")
    need(0 <= c.momentum < 1, f"momentum={c.momentum} must be in [0, 1)")
    need(c.weight_decay >= 0, f"weight_decay={c.weight_decay} must be >= 0")
    need(0 <= c.label_smoothing < 1, f"label_smoothing={c.label_smoothing} must be in [0, 1)")
    need(c.logit_scale > 0, f"logit_scale={c.logit_scale} must be > 0")
    need(c.width >= 1, f"width={c.width} must be >= 1")
    need(0 <= c.stop_after_epoch <= c.epochs,
         f"stop_after_epoch={c.stop_after_epoch} must be in [0, epochs={c.epochs}]")
    need(c.max_failures is None or c.max_failures >= -1,
         f"max_failures={c.max_failures} must be >= -1 (-1 = forever)")
    need(0 <= c.min_workers <= max(c.num_workers, 0),
         f"min_workers={c.min_workers} must be between 0 (a fixed size) and num_workers="
         f"{c.num_workers}")
    need(c.resize_seconds > 0, f"resize_seconds={c.resize_seconds} must be > 0")
    need(bool(c.name) and "/" not in c.name,
         f"name={c.name!r} must be a non-empty folder name without '/'")
    return p


# ----------------------------------------------------------------------------- finding the LRs

LRMAX_METHODS = ("steepest", "valley", "minimum")
LRMIN_RULES = ("div", "onset")
SWEEP_MODES = ("exp", "linear")
SEARCH_LENGTHS = ("short", "full")
LR_MODES = ("auto", "manual")


@dataclass(frozen=True)
class RangeTestConfig:
    """The LR range test: the sweep (what it costs) and how LRMAX and LRMIN are read off it
    (cheap to change: a kept sweep is read again, not swept again)."""

    start_lr: float = 1e-4                # first LR of the sweep
    end_lr: float = 10.0                  # last LR of the sweep
    num_steps: int = 100                  # batches of the training batch size
    mode: str = "exp"                     # exp | linear rise
    method: str = "minimum"               # LRMAX: minimum | steepest | valley (lr_finder.py)
    lr_min_rule: str = "onset"            # LRMIN: onset (where the loss starts to fall) | div
    lr_min_div: float = 10.0              # LRMIN = LRMAX / this under the `div` rule

    def __post_init__(self) -> None:
        p = []
        if not 0 < self.start_lr < self.end_lr:
            p.append(f"start_lr={self.start_lr}, end_lr={self.end_lr}: need 0 < start_lr < "
                     "end_lr; check --start-lr/--end-lr")
        if self.num_steps < 10:  # the readings smooth over a tenth of the sweep
            p.append(f"num_steps={self.num_steps} is too few for a usable curve: must be >= 10;"
                     " raise --num-steps")
        for name, value, allowed in (("mode", self.mode, SWEEP_MODES),
                                     ("method", self.method, LRMAX_METHODS),
                                     ("lr_min_rule", self.lr_min_rule, LRMIN_RULES)):
            if value not in allowed:
                p.append(f"{name}={value!r} is not one of {allowed}")
        if self.lr_min_div <= 1:
            p.append(f"lr_min_div={self.lr_min_div} must be > 1; raise --lr-min-div")
        if p:
            raise ConfigError(p)

    SWEEP = ("start_lr", "end_lr", "num_steps", "mode")  # what a kept sweep must match

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SearchConfig:
    """The ASHA search of LRMAX around the range test's suggestion."""

    candidates: int = 4                   # LRMAX values on a log grid, x1/span .. x span
    epochs: int = 4                       # One Cycle epochs per candidate
    holdout: int = 5000                   # training images held out to rank the candidates
    max_concurrent: Optional[int] = None  # trials at once; None: what the cluster can place
    length: Optional[str] = None          # short | full (the run's own cycle); None: full on
                                          # GPUs, short on CPUs (trials.search_plan)
    span: float = 4.0

    def __post_init__(self) -> None:
        p = []
        if self.candidates < 1:
            p.append(f"candidates={self.candidates} must be >= 1; raise --candidates")
        if self.epochs < 2:
            p.append(f"--search-epochs {self.epochs}: each candidate needs >= 2 epochs, so its "
                     "LR can rise to the peak and fall after it")
        if self.holdout < 1:
            p.append(f"holdout={self.holdout} must be >= 1; raise --holdout")
        if self.length not in (None, *SEARCH_LENGTHS):
            p.append(f"length={self.length!r} is not one of {SEARCH_LENGTHS}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            p.append(f"--max-concurrent {self.max_concurrent} must be >= 1 (leave it out to "
                     "run as many trials as the cluster can place)")
        if p:
            raise ConfigError(p)


@dataclass(frozen=True)
class LRChoice:
    """How a run gets LRMAX and LRMIN, as the command line asked: found (`auto`: the range
    test, then the ASHA search when `search` is set), typed in (`manual`: the config's own
    lr_max/lr_min), or taken from an earlier run folder (`lr_from`). Built once from the flags
    (cli.lr_flags.lr_choice) and passed down; a resumed run keeps the LRs it started with."""

    mode: str = "auto"                    # LR_MODES
    lr_from: Optional[str] = None         # an earlier run folder whose finding to reuse
    range_test: RangeTestConfig = RangeTestConfig()
    search: Optional[SearchConfig] = None  # None: no search after the range test

    def __post_init__(self) -> None:
        p = []
        if self.mode not in LR_MODES:
            p.append(f"mode={self.mode!r} is not one of {LR_MODES}")
        if self.search is not None and (self.mode != "auto" or self.lr_from):
            p.append("--lr-search refines LRs it finds: drop --lr-max/--lr-min, --lr manual "
                     "and --lr-from, or add --lr auto")
        if p:
            raise ConfigError(p)


LR_SOURCES = ("flags", "range-test", "search", "earlier-run", "resumed")


@dataclass(frozen=True)
class Finding:
    """LRMAX and LRMIN and where they came from; config.json keeps it as `lr_source`.

    `source` is one of LR_SOURCES; `where` the file that holds the evidence (lr_finder.json,
    best.json, an earlier run's file, the resumed run's config.json); `method` how they were
    read (minimum, asha-search, ...); for a resumed run `found_by` is the source it had.
    """

    lr_max: float
    lr_min: float
    source: str
    where: str = ""
    method: Optional[str] = None
    found_by: Optional[str] = None

    def __post_init__(self) -> None:
        if self.source not in LR_SOURCES:
            raise ConfigError([f"source={self.source!r} is not one of {LR_SOURCES}"])

    def describe(self) -> str:
        said = {"flags": "--lr-max/--lr-min (or a config file's lr_max/lr_min)",
                "range-test": "range test",
                "search": "ASHA search", "earlier-run": "an earlier run",
                "resumed": "the run being resumed"}[self.source]
        how = ", ".join(x for x in (self.method, self.where) if x)
        found = f"; found by {self.found_by}" if self.found_by else ""
        return f"{said} ({how}{found})" if how or found else said

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Finding":
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)
                      if f.name in d})
