"""A run folder mirrored into MLflow or W&B (`--tracker mlflow|wandb`), from the driver.

The run folder stays the record (store/runs.py); a tracker run is a copy of it that the
driver keeps up to date while the workers train, so the workers need neither the tracker's
library nor its credentials, and a tracker has one writer:

    config.json        -> params: every TrainConfig field, where the LRs came from, version,
                          commit, command (sent once: MLflow params are write-once)
    metrics.csv        -> epoch/<column> per epoch (x: the epoch)
    lr_steps.csv       -> step/lr, step/momentum per optimizer step (the One Cycle)
    lr_finder.csv      -> lr_find/lr, /loss, /smoothed_loss, /curve per sweep step
    lr_finder.json, best.json
                       -> lr_find.*, search.*: the reading and the search's pick (MLflow
                          tags, as a reading read again changes; W&B config)
    seeds.json         -> the summary of a seeds run
    at the end         -> summary.json's figures, the model, the report, the run's files

What has been sent is kept in the folder's `trackers.json` (per role and tool: the tracker
run's id, the epochs and steps sent), so a resumed run reopens its tracker run and sends only
what is new, and a Tune trial's run (a search candidate, a seed) is a child of the search's
or seeds run: MLflow's `mlflow.parentRunId`, W&B's group. `Follower` mirrors on a thread
every few seconds; any failure there is a warning, and the next pass tries again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

from ..recipe.logs import log
from . import runs
from .runs import RunFolder
from .seeds import SEEDS_JSON
from .tracker_backends import OUTCOMES, TrackerError, backend

TRACKERS_FILE = "trackers.json"
FOLLOW_SECONDS = 10.0
FILES = [runs.CONFIG, runs.SUMMARY, runs.METRICS, runs.STEPS, runs.LR_FINDER_CSV,
         runs.LR_FINDER_JSON, runs.LR_SEARCH, runs.BEST, "seeds.csv", SEEDS_JSON]

__all__ = ["TrackedRun", "TrackerError", "Follower", "following", "params_of"]


def _flat(prefix: str, values: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts as one level of dotted keys."""
    if isinstance(values, dict):
        for k, v in values.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = values
    return out


def params_of(meta: dict) -> dict[str, Any]:
    """config.json's settings as tracker params: the TrainConfig fields by their own names,
    `lr_source.*`, and the version, commit and command line."""
    out = _flat("", meta.get("config", {}), {})
    _flat("lr_source", meta.get("lr_source") or {}, out)
    for key in ("version", "git_commit", "command", "seeds", "world_size", "precision",
                "device"):
        if meta.get(key) is not None:
            _flat(key, meta[key], out)
    return out


def _number(text: Any) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _numbers(row: dict) -> dict[str, float]:
    return {k: x for k, v in row.items() if (x := _number(v)) is not None}


class TrackedRun:
    """One run folder's tracker run. `open` starts or reopens it; `mirror` sends what the
    folder has gained since the last call; `finish` sends the summary and files and ends it."""

    def __init__(self, tracker, folder: RunFolder, name: str, role: str, state: dict,
                 parent: Optional["TrackedRun"] = None):
        self.tracker, self.folder, self.name, self.role = tracker, folder, name, role
        self.state, self.parent = state, parent
        self.children: list[TrackedRun] = []
        self.lock = threading.RLock()
        self.warned = False
        self.ended = False

    @classmethod
    def open(cls, kind: str, run_dir: str, name: str, role: str = "train",
             parent: Optional["TrackedRun"] = None) -> "TrackedRun":
        """Start the tracker run of `run_dir` for `role` (train, find, seeds), or reopen the
        one its trackers.json names when it lives in the same place. TrackerError (one line)
        when the library is missing or the tracker refuses or cannot be reached."""
        folder = RunFolder(run_dir)
        kept = _read_state(folder).get(role, {}).get(kind, {})
        tracker = backend(kind)
        same = kept.get("where") == tracker.where()
        run_id = tracker.start(name, kept.get("run_id") if same else None,
                               parent.tracker if parent is not None else None, role)
        state = kept if same and kept.get("run_id") == run_id else {}
        state.update(run_id=run_id, where=tracker.where())
        run = cls(tracker, folder, name, role, state, parent)
        run._save()
        if parent is not None:
            parent.children.append(run)
        return run

    def describe(self) -> str:
        return self.tracker.describe()

    def start_over(self) -> None:
        """A new tracker run for a new attempt in the same folder (no checkpoint to resume
        from): the last attempt's run ends as interrupted and keeps its figures."""
        with self.lock:
            self.tracker.end("interrupted")
            kind = self.tracker.kind
            self.tracker = backend(kind)
            parent = self.parent.tracker if self.parent is not None else None
            self.state = {"run_id": self.tracker.start(self.name, None, parent, self.role),
                          "where": self.tracker.where()}
            self._save()

    # ------------------------------------------------------------------ what the folder has
    def mirror(self) -> int:
        """Send what is new in the folder; returns how many epochs were sent."""
        with self.lock:
            if self.ended:
                return 0
            self._params()
            self._range_test()
            # a "find" run (tune lr-find/search) is the LRs alone, whatever trained there
            sent = self._epochs() if self.role != "find" else 0
            self._save()
            return sent

    def mirror_quietly(self) -> None:
        """mirror(), a failure a warning (once per run) and the next call tries again."""
        try:
            self.mirror()
        except Exception as e:  # a tracker hiccup must not stop a training run
            if not self.warned:
                log.warning(f"{self.describe()}: could not send {self.name}'s latest "
                            f"figures ({type(e).__name__}: {e}); training goes on, and the "
                            "next pass tries again")
                self.warned = True

    def _params(self) -> None:
        folder, state = self.folder, self.state
        if not state.get("params") and folder.exists(runs.CONFIG):
            self.tracker.params(params_of(folder.read_json(runs.CONFIG)))
            state["params"] = True
        # a reading can change (read again with another method): sent as tags, which may
        # change, each time the file does
        for name, prefix in ((runs.LR_FINDER_JSON, "lr_find"), (runs.BEST, "search")):
            if folder.exists(name):
                text = folder.read_text(name)
                digest = hashlib.sha256(text.encode()).hexdigest()[:16]
                if state.get(prefix) == digest:
                    continue
                found = json.loads(text)
                keep = {k: v for k, v in found.items() if k not in ("settings", "moments")}
                keep.update({f"settings.{k}": v for k, v in found.get("settings", {}).items()
                             if k != "moments"})
                self.tracker.tags(_flat(prefix, keep, {}))
                state[prefix] = digest

    def _range_test(self) -> None:
        """The sweep of this folder, or of the run the LRs were taken from (`--lr-from`)."""
        if self.state.get("sweep"):
            return
        source: Optional[RunFolder] = self.folder
        if not source.exists(runs.LR_FINDER_CSV):
            meta = self.folder.read_json(runs.CONFIG) if self.folder.exists(runs.CONFIG) else {}
            where = (meta.get("lr_source") or {}).get("where", "")
            source = RunFolder(os.path.dirname(where)) if where else None
        if source is None or not source.exists(runs.LR_FINDER_CSV):
            return
        rows = source.read_csv(runs.LR_FINDER_CSV, ["step", "lr", "loss"])
        self.tracker.log("lr_find", [(int(float(r["step"])), {k: v for k, v in _numbers(r).items()
                                                              if k != "step"}) for r in rows])
        self.state["sweep"] = len(rows)

    def _epochs(self) -> int:
        """New metrics.csv rows, and every lr_steps.csv row up to the last epoch metrics.csv
        has (the worker writes metrics.csv first: steps written after a pass go next time)."""
        if not self.folder.exists(runs.METRICS):
            return 0
        done = self.state.get("epochs", 0)
        rows = self.folder.read_csv(runs.METRICS, runs.REQUIRED_METRICS)
        if not rows:
            return 0
        last = max(int(r["epoch"]) for r in rows)
        if self.folder.exists(runs.STEPS):
            at = self.state.get("steps", -1)
            steps = [(int(s["step"]), _numbers(s)) for s in
                     self.folder.read_csv(runs.STEPS, runs.STEP_COLUMNS)
                     if int(s["step"]) > at and int(s["epoch"]) <= last]
            if steps:
                self.tracker.log("step", [(i, {k: v for k, v in s.items()
                                               if k not in ("step", "epoch")})
                                          for i, s in steps])
                self.state["steps"] = steps[-1][0]
        new = [r for r in rows if int(r["epoch"]) > done]
        if not new:
            return 0
        self.tracker.log("epoch", [(int(r["epoch"]), {k: v for k, v in _numbers(r).items()
                                                      if k != "epoch"}) for r in new])
        self.state["epochs"] = last
        return len(new)

    # ------------------------------------------------------------------ the end
    def finish(self, outcome: str, report_dir: Optional[str] = None,
               with_model: bool = True) -> None:
        """Send the rest of the folder, its summary, the model and the report (a local folder
        of files), then end the tracker run as `outcome` (one of OUTCOMES). Children still
        open end with it."""
        assert outcome in OUTCOMES, outcome
        with self.lock:
            if self.ended:
                return
            for child in self.children:
                child.finish_quietly("interrupted" if outcome == "finished" else outcome,
                                     with_model=with_model)
            try:
                self.mirror()
                self._summary()
                if outcome in ("finished", "stopped"):
                    self._files(report_dir, with_model)
            finally:  # whatever failed to send, the tracker run does not stay open
                self.ended = True
                self.tracker.end(outcome)
                self.state["outcome"] = outcome
                self._save()

    def finish_quietly(self, outcome: str, report_dir: Optional[str] = None,
                       with_model: bool = True) -> None:
        """finish(), a failure a warning: the run folder holds everything anyway."""
        try:
            self.finish(outcome, report_dir, with_model)
            log.info(f"{self.describe()}: {outcome}")
        except Exception as e:
            log.warning(f"{self.describe()} could not be ended as {outcome} "
                        f"({type(e).__name__}: {e}); the run folder {self.folder.uri} holds "
                        "everything")
            self.ended = True

    def _summary(self) -> None:
        for name in (runs.SUMMARY, SEEDS_JSON):
            if self.folder.exists(name):
                found = self.folder.read_json(name)
                flat = {k: x for k, v in _flat("", found, {}).items()
                        if (x := _number(v)) is not None}
                self.tracker.summary(flat, int(self.state.get("epochs", 0)))

    def _files(self, report_dir: Optional[str], with_model: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="raycifar-tracker-") as tmp:
            def local(name: str) -> str:
                path = os.path.join(tmp, name)
                with open(path, "wb") as f:
                    f.write(self.folder.read_bytes(name))
                return path

            files = [local(n) for n in FILES if self.folder.exists(n)]
            if files:
                self.tracker.artifacts("files", files)
            if with_model and self.folder.exists(runs.MODEL):
                self.tracker.artifacts("model", [local(runs.MODEL)])
        if report_dir and os.path.isdir(report_dir):
            self.tracker.artifacts("report", sorted(
                os.path.join(report_dir, n) for n in os.listdir(report_dir)
                if os.path.isfile(os.path.join(report_dir, n))))

    def _save(self) -> None:
        kept = _read_state(self.folder)
        kept.setdefault(self.role, {})[self.tracker.kind] = self.state
        self.folder.write_json(TRACKERS_FILE, kept)


def _read_state(folder: RunFolder) -> dict:
    try:
        return folder.read_json(TRACKERS_FILE) if folder.exists(TRACKERS_FILE) else {}
    except (ValueError, OSError):
        return {}


class Follower:
    """Mirrors runs on a thread every `seconds` until stopped; `runs` says which (a run and
    the children it has by then)."""

    def __init__(self, runs_now: Callable[[], Iterable[TrackedRun]],
                 seconds: float = FOLLOW_SECONDS):
        self.runs_now, self.seconds = runs_now, seconds
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="raycifar-tracker", daemon=True)

    def _loop(self) -> None:
        while not self.stopping.wait(self.seconds):
            for run in list(self.runs_now()):
                run.mirror_quietly()

    def start(self) -> "Follower":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


@contextmanager
def following(run: Optional[TrackedRun], seconds: Optional[float] = None
              ) -> Iterator[Optional[TrackedRun]]:
    """Mirror `run` and its open children while the block runs (nothing when run is None)."""
    if run is None:
        yield None
        return
    follower = Follower(lambda: [run] + [c for c in run.children if not c.ended],
                        FOLLOW_SECONDS if seconds is None else seconds).start()
    try:
        yield run
    finally:
        follower.stop()
