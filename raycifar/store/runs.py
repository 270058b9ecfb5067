"""The run folder: its schema (file names, columns) and reading and writing files under
`<storage_path>/<name>/` on any filesystem.

Local paths and URIs (s3://, gs://) go through pyarrow's filesystems, as Ray's own storage does,
so a run on a cluster can write to a bucket and the report can read from it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np
import pyarrow.fs as pafs

from ..recipe.config import RaycifarError

# The run folder's schema: every file name and CSV column, in one place.
CONFIG = "config.json"            # resolved config, version, commit, placement, data stats
METRICS = "metrics.csv"           # a row per epoch
STEPS = "lr_steps.csv"            # a row per optimizer step
PREDICTIONS = "predictions.npz"   # test labels, predictions, probabilities, wrong images
MODEL = "model.pt"                # final weights, a plain state_dict
SUMMARY = "summary.json"          # final figures
TENSORBOARD = "tensorboard"       # event files (tracking.py)
LR_FINDER_CSV = "lr_finder.csv"   # the range test's sweep
LR_FINDER_JSON = "lr_finder.json"  # its reading: LRMAX, LRMIN, method, settings
LR_SEARCH = "lr_search.csv"       # the LRMAX search's candidates
BEST = "best.json"                # the search's pick
DIVERGED = "diverged"             # rank-<r>.json per diverged rank: Ray's restarts stop at once

@dataclass(frozen=True)
class EpochRow:
    """One epoch's figures: a row of metrics.csv, and what every rank reports to Ray Train
    (which hands it to Tune: the search ranks and tabulates trials by its fields)."""

    epoch: int
    lr: float                   # the LR of the epoch's last step
    train_loss: float
    train_acc: float
    test_loss: float            # on the test set, or the held-out images of --validation
    test_acc: float             # with flip TTA when the run has it
    test_acc_plain: float       # without TTA
    epoch_seconds: float        # the training steps only
    images_per_second: float    # every rank's images per second of steps
    world_size: int             # the workers that trained the epoch (elastic runs vary)


METRIC_COLUMNS = [f.name for f in dataclasses.fields(EpochRow)]
# What a metrics.csv must have to be read: runs written before `world_size` lack it.
REQUIRED_METRICS = [c for c in METRIC_COLUMNS if c != "world_size"]
# The row's fields a search reads back from Tune (ASHA's metric, the search table)
RANK_BY, TABULATE = "test_loss", "test_acc"
STEP_COLUMNS = ["step", "epoch", "lr", "momentum"]
LR_FINDER_COLUMNS = ["step", "lr", "loss", "smoothed_loss", "curve"]
LR_SEARCH_COLUMNS = ["lr_max", "lr_min", "epochs_run", "held_out_acc", "held_out_loss"]
PREDICTION_KEYS = ("labels", "preds", "probs", "classes", "wrong_index", "wrong_images")


def read_history(run: "RunFolder", upto_epoch: int) -> tuple[list[dict], list[dict]]:
    """metrics.csv's and lr_steps.csv's rows of epochs 1..upto_epoch, typed as written (a
    checkpoint holds neither: a resumed run rebuilds them from here; rows of a later epoch
    whose checkpoint was lost are dropped, and that epoch is trained again)."""
    def typed(row: dict, ints: tuple[str, ...]) -> dict:
        return {k: None if v in ("", None) else int(v) if k in ints else float(v)
                for k, v in row.items()}

    history = [typed(r, ("epoch", "world_size")) for r in run.read_csv(METRICS, REQUIRED_METRICS)]
    steps = [typed(r, ("step", "epoch")) for r in run.read_csv(STEPS, STEP_COLUMNS)]
    return ([h for h in history if h["epoch"] <= upto_epoch],
            [s for s in steps if s["epoch"] <= upto_epoch])


class RunFolderError(RaycifarError):
    """A run folder or one of its files is missing or malformed."""


class RunFolder:
    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), self.uri

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str = "") -> bool:
        info = self.fs.get_file_info(self._path(name) if name else self.root)
        return info.type != pafs.FileType.NotFound

    def size(self, name: str) -> Optional[int]:
        """A file's size in bytes; None if it is not there."""
        info = self.fs.get_file_info(self._path(name))
        return info.size if info.type == pafs.FileType.File else None

    def write_bytes(self, name: str, data: bytes) -> None:
        folder, _, base = name.rpartition("/")
        self.fs.create_dir(self._path(folder) if folder else self.root, recursive=True)
        # Write then move, so a reader never sees half a file.
        tmp = self._path(f"{folder}/.{base}.tmp" if folder else f".{base}.tmp")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self._path(name))

    def delete(self, name: str) -> None:
        """Remove a file if it is there."""
        if self.exists(name):
            self.fs.delete_file(self._path(name))

    def list(self, folder: str) -> list[str]:
        """The names of the files directly under <run>/<folder>, sorted ([] if none)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self._path(folder), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.is_file and not i.base_name.startswith("."))

    def list_folders(self, folder: str = "") -> list[str]:
        """The names of the folders directly under <run>/<folder> (or the run), sorted."""
        infos = self.fs.get_file_info(pafs.FileSelector(
            self._path(folder) if folder else self.root, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def delete_folder(self, folder: str) -> None:
        """Remove a folder and everything in it if it is there."""
        if self.exists(folder):
            self.fs.delete_dir(self._path(folder))

    def read_bytes(self, name: str) -> bytes:
        if not self.exists(name):
            raise RunFolderError(f"{self._path(name)} does not exist; is {self.uri} a run folder?")
        with self.fs.open_input_stream(self._path(name)) as f:
            return f.read()

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read_text(name))
        except json.JSONDecodeError as e:
            raise RunFolderError(f"{self._path(name)} is not valid JSON ({e})") from e

    def write_csv(self, name: str, rows: Iterable[dict], columns: list[str]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        self.write_text(name, buf.getvalue())

    def read_csv(self, name: str, required: Iterable[str] = ()) -> list[dict[str, str]]:
        rows = list(csv.DictReader(io.StringIO(self.read_text(name))))
        missing = [c for c in required if not rows or c not in rows[0]]
        if missing:
            raise RunFolderError(f"{self._path(name)} is malformed: no rows or missing columns "
                                 f"{missing}")
        return rows

    def write_npz(self, name: str, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        self.write_bytes(name, buf.getvalue())

    def read_npz(self, name: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.read_bytes(name)), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def mark_divergence(run: RunFolder, rank: int, message: str, epoch: int,
                    step: Optional[int]) -> None:
    """One file per rank, so ranks that diverge together do not overwrite each other: under
    DDP a NaN on one rank reaches the others a step later, and the first step is the one to name."""
    run.write_json(f"{DIVERGED}/rank-{rank}.json",
                   {"message": message, "epoch": epoch, "step": step, "rank": rank})


def first_divergence(run: RunFolder) -> Optional[dict]:
    """The earliest divergence any rank marked, or None."""
    marks = [run.read_json(f"{DIVERGED}/{n}") for n in run.list(DIVERGED) if n.endswith(".json")]
    never = float("inf")
    return min(marks, key=lambda m: (m["epoch"], never if m["step"] is None else m["step"],
                                     m["rank"]), default=None)


def check_writable(storage_path: str) -> None:
    """Write and remove a small file under `storage_path`, so that a folder that cannot be
    written or a bucket that cannot be reached (no network, no credentials) is one error line
    on the driver before any worker starts, not a pyarrow traceback from inside Ray."""
    import uuid

    probe = f".raycifar-write-check-{uuid.uuid4().hex[:8]}"
    try:
        folder = RunFolder(storage_path)
        folder.write_bytes(probe, b"")
        folder.delete(probe)
    except Exception as e:  # pyarrow raises OSError, ArrowInvalid (ValueError), ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunFolderError(
            f"cannot write to --storage-path {storage_path} ({reason}); pass a folder you can "
            "write to, or a bucket (s3://, gs://) that this machine and every node can reach "
            "with credentials") from e


# ----------------------------------------------------------------------------- provenance

def git_commit() -> Optional[str]:
    """The checkout's commit, where the package runs from a git checkout."""
    import os
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_meta(found=None, command: Optional[list[str]] = None) -> dict:
    """What config.json keeps beside the config about where a run came from: the package
    version and git commit, the command line (default: this process's), and, when the LRs were
    chosen, where from (a `config.Finding`)."""
    import sys

    from .. import __version__

    meta = {"version": __version__, "git_commit": git_commit(),
            "command": " ".join(sys.argv if command is None else command)}
    if found is not None:
        meta["lr_source"] = found.to_dict()
    return meta
