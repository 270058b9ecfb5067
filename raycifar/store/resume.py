"""What a re-run with the same `--name` resumes from, checked before any worker starts.

Ray Train keeps its checkpoints in `<run dir>/checkpoint_*/` and lists them in
`checkpoint_manager_snapshot.json`; a new run with the same storage path and name starts from
the latest one. `latest_checkpoint` reads that choice and `check_resumable` opens it the way the
workers will, so a truncated file, another network's weights or another configuration is a
one-line error that says how to start fresh, not a traceback from inside a Ray worker (and not
a checkpoint silently ignored).

A divergence leaves a mark per rank in the run folder's `diverged/`: a worker group that Ray
restarts (with `--max-failures`) stops at once on the earliest of them instead of training into
the same NaN again. A new command clears them.
"""

from __future__ import annotations

import io
from typing import Optional

from ..recipe.config import TrainConfig
from ..recipe.state import CHECKPOINT_FILE, CheckpointError, TrainState, read_state
from .runs import RunFolder, RunFolderError

# Ray Train 2.60 lists a run's checkpoints in this file of the run folder; the latest one is
# what a new fit() with the same storage path and name resumes from.
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def latest_checkpoint_dir(run) -> Optional[str]:
    """The name of the checkpoint folder Ray Train will resume `run` (a RunFolder) from
    (a private format of Ray's, read here because the driver reads it without Ray)."""
    if not run.exists(SNAPSHOT_FILE):
        return None
    latest = run.read_json(SNAPSHOT_FILE).get("latest_checkpoint_result")
    return latest["checkpoint_dir_name"] if latest else None


STATE_KEYS = TrainState.keys()
# Settings a resumed run may change: where things are, how many processes, when to stop, and
# whether the same network is torch.compile'd.
MAY_CHANGE = {"data_dir", "data_format", "cache_dir", "loader_workers", "num_workers",
              "cpus_per_worker", "gpus_per_worker", "use_gpu", "storage_path", "shared_storage",
              "name",
              "max_failures", "stop_after_epoch", "compile", "compile_mode"}


def latest_checkpoint(run: RunFolder) -> Optional[str]:
    """The checkpoint folder Ray will resume from, or None for a fresh start."""
    try:
        return latest_checkpoint_dir(run)
    except (RunFolderError, AttributeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{run.uri}/{SNAPSHOT_FILE} is unreadable ({e}); "
                              f"{_fresh(run)}") from e


def _fresh(run: RunFolder) -> str:
    return f"start fresh with another --name, or delete {run.uri}"


def load_state(run: RunFolder, checkpoint_dir: str) -> dict:
    """The training state in a checkpoint folder; CheckpointError if it is not one of ours."""
    where = f"{run.uri}/{checkpoint_dir}/{CHECKPOINT_FILE}"
    try:
        data = run.read_bytes(f"{checkpoint_dir}/{CHECKPOINT_FILE}")
        state = read_state(io.BytesIO(data))
    except Exception as e:  # truncated zip, pickle error, missing file: all mean the same here
        raise CheckpointError(f"cannot read the checkpoint {where} ({type(e).__name__}: "
                              f"{e}); {_fresh(run)}") from e
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{where} is not a raycifar checkpoint (no {', '.join(missing)}); "
                              f"{_fresh(run)}")
    return state


def config_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """The settings that differ between a checkpoint's run and `cfg` and may not."""
    now = cfg.to_dict()
    then = {**TrainConfig().to_dict(), **saved}  # a setting added since: its default then
    return [f"{k}: {then[k]!r} then, {now[k]!r} now" for k in sorted(now)
            if k not in MAY_CHANGE and then[k] != now[k]]


def check_resumable(cfg: TrainConfig, num_classes: int,
                    total_steps: Optional[int] = None) -> Optional[int]:
    """The epoch a re-run of `cfg` resumes after (None: a fresh start), or CheckpointError.

    `total_steps` is the length of this run's One Cycle. Another worker count is fine as long
    as it leaves the schedule as it was (the global batch, not the worker count, sets the steps
    per epoch, up to rounding when the images do not split evenly across workers).
    """
    from ..recipe.model import CustomResNet

    run = RunFolder(cfg.run_dir)
    name = latest_checkpoint(run)
    if name is None:
        return None
    state = load_state(run, name)
    changed = config_changes(state["config"], cfg)
    if changed:
        raise CheckpointError(f"{cfg.run_dir} was trained with other settings ("
                              f"{'; '.join(changed)}); run it with the same settings to resume, "
                              f"or {_fresh(run)}")
    then = total_steps if total_steps is None else state["scheduler"]["total_steps"]
    if then != total_steps:
        workers = state["config"].get("num_workers")
        raise CheckpointError(
            f"{cfg.run_dir} was checkpointed with a One Cycle of {then} steps ({workers} "
            f"workers) and this run's would have {total_steps} ({cfg.num_workers} workers): "
            f"resume with --num-workers {workers}, or {_fresh(run)}")
    try:
        CustomResNet(num_classes, cfg.logit_scale, cfg.width).load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"the weights in {run.uri}/{name} do not fit this network "
                              f"({first[1].strip() if len(first) > 1 else first[0]}); "
                              f"{_fresh(run)}") from e
    return int(state["epoch"])
