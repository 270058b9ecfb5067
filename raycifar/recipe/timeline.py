"""Where a command's time goes before its first training step: named moments, and the phases
between them that summary.json keeps as `startup` (and `python -m raycifar.bench --split`
prints).

A moment is a wall-clock time (`time.time()`), taken where the work happens: the driver notes
its own (`note`), the range test's trial writes its own into lr_finder.json, rank 0 takes the
worker's. The driver's moments reach the workers in the loop config's `meta`; wall clocks
agree well enough across one cluster's nodes (NTP) for phases of a second or more.
"""

from __future__ import annotations

import os
import time
from typing import Optional

# The driver's moments of this command, in the order they happen.
_noted: dict[str, float] = {}

# (key in summary.json's startup, from, to, what happens in between). A phase whose moments
# were not both taken (no range test ran; a resumed run) is left out.
PHASES = (
    ("imports", "process", "main", "Python's start and the imports"),
    ("data", "main", "data", "the data: read (or decoded once and cached), mean/std"),
    ("ray", "data", "ray", "Ray: started here, or joined"),
    ("range_test_start", "ray", "trial", "range test: Tune's start, the trial's process "
                                          "and imports"),
    ("range_test_setup", "trial", "sweep", "range test: the trial's data, device, model"),
    ("range_test_sweep", "sweep", "sweep_end", "range test: the sweep's steps"),
    ("range_test_end", "sweep_end", "range_test_done", "range test: the trial's end, Tune's "
                                                       "results"),
    ("lr_search", "search", "lrs", "the ASHA search of LRMAX (--lr-search)"),
    ("lr_choice", "ray", "lrs", "choosing the LRs (no range test or search ran)"),
    ("before_fit", "lrs", "fit", "checks before fit(): the checkpoint to resume"),
    ("train_start", "fit", "worker", "fit() to the worker loop: Train's controller, the "
                                     "worker group, its imports, the process group"),
    ("worker_data", "worker", "worker_data", "worker: the data from the object store, where "
                                             "every rank runs"),
    ("worker_setup", "worker_data", "first_step", "worker: batches, model, DDP, the test "
                                                  "set, a checkpoint to restore"),
    ("in_all", "process", "first_step", "the command's start to the first step"),
)
FINER = ("range_test_start", "range_test_setup", "range_test_sweep", "range_test_end",
         "lr_search")  # what choosing the LRs took, where it was measured in parts


def process_start() -> float:
    """Wall-clock time this process started (Linux /proc, 10 ms ticks); else now."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def start(from_process: bool = True) -> None:
    """A command's first line: forget earlier commands' moments (tests and notebooks run
    several in one process), note its start and now. A CLI starts with its process (the
    imports count); an API call (`from_process=False`) starts now."""
    _noted.clear()
    now = time.time()
    _noted.update(process=process_start() if from_process else now, main=now)


def note(name: str, at: Optional[float] = None) -> None:
    """The driver's moment `name` is now (or `at`)."""
    _noted[name] = time.time() if at is None else at


def noted() -> dict[str, float]:
    return dict(_noted)


def phases(moments: dict[str, float]) -> dict[str, float]:
    """Seconds of each phase whose two moments were taken, in PHASES' order; `lr_choice` only
    when no range test or search ran (their parts are there instead)."""
    out = {key: moments[b] - moments[a] for key, a, b, _ in PHASES
           if a in moments and b in moments}
    if any(k in out for k in FINER):
        out.pop("lr_choice", None)
    return out

