"""What a re-run with the same `--name` resumes from, checked before any worker starts.

Ray Train keeps its checkpoints in `<run dir>/checkpoint_*/` and lists them in
`checkpoint_manager_snapshot.json`; a new run with the same storage path and name starts from
the latest one. `latest_checkpoint` reads that choice and `check_resumable` opens it the way the
workers will, so a truncated file, another network's weights or another configuration is a
one-line error that says how to start fresh, not a traceback from inside a Ray worker (and not
a checkpoint silently ignored).

A divergence leaves a mark per rank in the run folder's `diverged/`: a worker group that Ray
restarts (with `--max-failures`) stops at once on the earliest of them instead of training into
the same NaN again. A new `train` command clears them (a seeds or search trial keeps its own).
"""

from __future__ import annotations

import io
import json
import os
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
DONE_FILE = "done.json"  # beside CHECKPOINT_FILE: the epoch, the file's size and SHA-256
# Settings a resumed run may change: where things are, how many processes, when to stop,
# whether the same network is torch.compile'd, and where it is also logged.
MAY_CHANGE = {"data_dir", "data_format", "cache_dir", "loader_workers", "num_workers",
              "cpus_per_worker", "gpus_per_worker", "use_gpu", "storage_path", "shared_storage",
              "name", "max_failures", "stop_after_epoch", "compile", "compile_mode",
              "min_workers", "resize_seconds", "tracker"}


def latest_checkpoint(run: RunFolder, registered: Optional[str] = "snapshot") -> Optional[str]:
    """The checkpoint folder a run resumes from, or None for a fresh start: the one Ray
    registered last (`registered`; by default read from Ray's snapshot file), unless a later
    epoch's checkpoint is complete on storage without being registered (its node died between
    the upload and Ray's bookkeeping). A registered one is trusted as it is (if it is damaged,
    resuming says so); an unregistered one counts only if `checkpoint_done` proves it whole."""
    if registered == "snapshot":
        try:
            registered = latest_checkpoint_dir(run)
        except (RunFolderError, AttributeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{run.uri}/{SNAPSHOT_FILE} is unreadable ({e}); "
                                  f"{_fresh(run)}") from e
    after = _marked_epoch(run, registered) if registered else 0
    later = [(epoch, name) for name in run.list_folders()
             if name.startswith("checkpoint_") and name != registered
             and (epoch := _marked_epoch(run, name)) is not None and epoch > (after or 0)
             and checkpoint_done(run, name)]
    return max(later)[1] if later else registered


def checkpoint_epoch(run: RunFolder) -> Optional[int]:
    """The epoch a re-run resumes after (None: a fresh start), read cheaply: the checkpoint's
    done.json, or the state itself for a checkpoint without one."""
    name = latest_checkpoint(run)
    if name is None:
        return None
    marked = _marked_epoch(run, name)
    return marked if marked is not None else int(load_state(run, name)["epoch"])


def mark_done(folder: str, epoch: int) -> None:
    """Write DONE_FILE beside a saved CHECKPOINT_FILE in a local `folder`: the epoch and the
    state file's size, by which a copy on storage is known to be whole (an upload cut off by
    a dying node leaves a shorter file, or none; hashing 50 MB each epoch would cost more than
    an H200's epoch takes to train a tenth of)."""
    size = os.path.getsize(os.path.join(folder, CHECKPOINT_FILE))
    with open(os.path.join(folder, DONE_FILE), "w") as f:
        json.dump({"epoch": epoch, "bytes": size}, f)


def checkpoint_done(run: RunFolder, name: str) -> bool:
    """Whether checkpoint folder `name` holds the whole state file its DONE_FILE describes."""
    try:
        done = run.read_json(f"{name}/{DONE_FILE}")
    except RunFolderError:
        return False
    return run.size(f"{name}/{CHECKPOINT_FILE}") == done.get("bytes")


def _marked_epoch(run: RunFolder, name: str) -> Optional[int]:
    try:
        return int(run.read_json(f"{name}/{DONE_FILE}")["epoch"])
    except (RunFolderError, KeyError, TypeError, ValueError):
        return None  # no mark (a checkpoint written before marks, or one still uploading)


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

    `total_steps` is the length of this run's One Cycle. Another worker count is fine: the
    global batches, and so the steps, do not depend on it (`recipe.sharding`).
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
        raise CheckpointError(
            f"{cfg.run_dir} was checkpointed with a One Cycle of {then} steps and this run's "
            f"would have {total_steps} (other data or another batch size): {_fresh(run)}")
    try:
        CustomResNet(num_classes, cfg.logit_scale, cfg.width).load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"the weights in {run.uri}/{name} do not fit this network "
                              f"({first[1].strip() if len(first) > 1 else first[0]}); "
                              f"{_fresh(run)}") from e
    return int(state["epoch"])
