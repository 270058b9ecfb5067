"""Tune trials tracked as children of a tracker run (`--tracker` with a search or seeds).

`track_trials` gives the Tune callbacks for one Tune experiment: Tune runs them on the driver,
so each trial's run folder is mirrored from there (store/trackers.py), opened when the trial
starts (or at its first result), sent by the command's Follower thread with the parent,
ended with the trial (one the scheduler stopped early: when the experiment ends and its Train
workers are gone, so the epoch they finished after the decision is sent too). Tune keeps a
Tuner's callbacks in its experiment state and a restored Tuner uses those, so a callback holds
only the experiment's name: it finds the command's tracker run by that name in `_PARENTS`,
which `track_trials` fills (and empties for a command without a tracker).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import ray
from ray.tune import Callback
from ray.util.state import list_actors

from ..recipe.logs import log
from ..store import runs
from ..store.trackers import TrackedRun


@dataclass
class _Parent:
    run: TrackedRun
    folder_of: Callable[[Any], str]   # a Tune trial's run folder
    with_model: bool


_PARENTS: dict[str, _Parent] = {}


def track_trials(experiment: str, parent: Optional[TrackedRun],
                 folder_of: Callable[[Any], str], with_model: bool = True) -> list[Callback]:
    """The callbacks that track the trials of `experiment` under `parent`. They are there
    without a parent too (and do nothing then), so that a Tuner made without a tracker and
    restored with one tracks its trials."""
    if parent is None:
        _PARENTS.pop(experiment, None)
    else:
        _PARENTS[experiment] = _Parent(parent, folder_of, with_model)
    return [TrackTrials(experiment)]


class TrackTrials(Callback):
    """Mirrors each trial's run folder into a child of the experiment's tracker run. A
    tracker failure here is a warning: the trials go on."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self.open: dict[str, Optional[TrackedRun]] = {}
        self.stopped: list[TrackedRun] = []  # ended by the scheduler, sent when Tune ends

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment
        return {"experiment": self.experiment}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["experiment"])

    def _child(self, trial) -> Optional[TrackedRun]:
        parent = _PARENTS.get(self.experiment)
        if parent is None:
            return None
        if trial.trial_id not in self.open:
            folder = parent.folder_of(trial)
            try:
                self.open[trial.trial_id] = TrackedRun.open(
                    parent.run.tracker.kind, folder, folder.rstrip("/").rsplit("/", 1)[-1],
                    "train", parent.run)
            except Exception as e:
                log.warning(f"trial {trial.trial_id} is not tracked ({e})")
                self.open[trial.trial_id] = None
        return self.open[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._child(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # opened here at the latest; sent by the command's Follower thread, never on Tune's
        # own loop (a slow tracker would hold every trial's scheduling)
        self._child(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, failed=True)

    def on_experiment_end(self, trials, **info):
        # Tune has stopped every trial's actor by now, but the Train workers a trial started
        # die after it (their owner is gone): an epoch they write meanwhile belongs to the run
        if self.stopped:
            wait_for_train_workers()
        for child in self.stopped:
            self._finish(child, "stopped")
        self.stopped = []

    def _end(self, trial, failed: bool) -> None:
        child = self._child(trial)
        if child is None or child.ended:
            return
        if failed or child.folder.exists(runs.SUMMARY):
            self._finish(child, "failed" if failed else "finished")
        else:
            # a candidate ASHA stopped early (no summary.json) trains on while Tune stops its
            # actor, and may write one more epoch: it ends with the experiment, followed
            # until then like any open child
            self.stopped.append(child)

    def _finish(self, child: TrackedRun, outcome: str) -> None:
        parent = _PARENTS.get(self.experiment)
        child.finish_quietly(outcome, with_model=parent.with_model if parent else True)


def wait_for_train_workers(timeout: float = 30.0, every: float = 0.5) -> None:
    """Until this job has no live Ray Train worker (every trial's run has ended), or
    `timeout`; at once where Ray's state API cannot say (it needs the dashboard)."""
    if not ray.is_initialized():
        return
    job = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + timeout
    while True:
        try:
            alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"),
                                         ("state", "=", "ALIVE"), ("job_id", "=", job)],
                                timeout=5, raise_on_missing_output=False)
        except Exception as e:  # no dashboard, or it did not answer
            log.debug(f"cannot list Ray Train's workers ({e})")
            return
        if not alive or time.monotonic() > deadline:
            return
        time.sleep(every)
