"""The two experiment trackers, behind one small surface: `MLflowRun` and `WandbRun`.

Each object is one open tracker run. `start` creates it, or reopens the run whose id the run
folder kept (a resumed training logs into the run it started, never a second one); `params`
(write-once), `tags` (may change), `log` (rows along one axis: epochs, optimizer steps or the range test's sweep steps),
`summary`, `artifacts` and `end` are all the rest of the package uses. Where each tool keeps
its runs and who may write there comes from the tool's own environment variables
(MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT, WANDB_MODE, WANDB_API_KEY, ...),
read by the tool itself. The libraries are optional extras, imported only here.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from typing import Any, Optional

from ..recipe.config import RaycifarError

PROJECT = "raycifar"  # the MLflow experiment and the W&B project when the environment names none
# The x axis of each kind of row (TensorBoard's tags use the same prefixes, store/tracking.py).
AXES = {"epoch": "epoch", "step": "opt_step", "lr_find": "sweep_step"}
OUTCOMES = ("finished", "stopped", "interrupted", "failed")


class TrackerError(RaycifarError):
    """A tracker that is missing, refuses the run, or cannot be reached."""


def _finite(values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class MLflowRun:
    """One MLflow run: params, metrics `<axis>/<name>` at their step, artifacts."""

    kind = "mlflow"
    STATUS = {"finished": "FINISHED", "stopped": "KILLED", "interrupted": "KILLED",
              "failed": "FAILED"}

    def __init__(self) -> None:
        try:
            import mlflow
            from mlflow import MlflowClient
        except ImportError as e:
            raise TrackerError(f'--tracker mlflow needs MLflow: pip install "raycifar[mlflow]" '
                               f"({e})") from None
        self.uri = mlflow.get_tracking_uri()
        self.client = MlflowClient(self.uri)
        self.run_id: Optional[str] = None

    def where(self) -> dict:
        """What must match for a kept run id to be reopened: the store and experiment."""
        return {"tracking_uri": self.uri,
                "experiment": os.environ.get("MLFLOW_EXPERIMENT_ID")
                or os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)}

    def _experiment(self) -> str:
        wanted = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if wanted:
            return wanted
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found else self.client.create_experiment(name)

    def start(self, name: str, resume_id: Optional[str], parent: Optional["MLflowRun"],
              role: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            if resume_id and self._exists(resume_id):
                self.run_id = resume_id
                self.client.update_run(resume_id, status="RUNNING")
            else:
                tags = {"raycifar.role": role}
                if parent is not None:
                    tags["mlflow.parentRunId"] = parent.run_id
                run = self.client.create_run(self._experiment(), run_name=name, tags=tags)
                self.run_id = run.info.run_id
        except (MlflowException, OSError) as e:
            raise TrackerError(f"MLflow at {self.uri} refused or could not be reached: "
                               f"{_first_line(e)}") from None
        return self.run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:  # a run deleted in MLflow's UI is still there, but may not be written
            return self.client.get_run(run_id).info.lifecycle_stage != "deleted"
        except MlflowException as e:
            if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def params(self, values: dict[str, Any]) -> None:
        """Params are write-once in MLflow: a resumed run adds the keys it did not have."""
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:6000])
               for k, v in sorted(values.items()) if k not in have]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def tags(self, values: dict[str, Any]) -> None:
        """Tags, unlike params, may change: a reading read again replaces the last one."""
        from mlflow.entities import RunTag

        tags = [RunTag(k, (v if isinstance(v, str) else json.dumps(v))[:8000])
                for k, v in sorted(values.items())]
        for i in range(0, len(tags), 100):
            self.client.log_batch(self.run_id, tags=tags[i:i + 100])

    def log(self, axis: str, rows: list[tuple[int, dict[str, Any]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{axis}/{k}", v, now, step) for step, values in rows
                   for k, v in _finite(values).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def summary(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in _finite(values).items()])

    def artifacts(self, folder: str, paths: list[str]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, path, artifact_path=folder)

    def end(self, outcome: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS[outcome])

    def describe(self) -> str:
        return f"MLflow run {self.run_id} at {self.uri}"


class WandbRun:
    """One W&B run: config, rows logged with their own x axis (`define_metric`), summary,
    artifacts (one per folder: `model`, `report`, `files`). Several may be open in one process
    (a seeds run and its seeds), so each is its own `wandb.init(reinit="create_new")`."""

    kind = "wandb"

    def __init__(self) -> None:
        try:
            import wandb
        except ImportError as e:
            raise TrackerError(f'--tracker wandb needs W&B: pip install "raycifar[wandb]" ({e})'
                               ) from None
        self.wandb = wandb
        self.project = os.environ.get("WANDB_PROJECT", PROJECT)
        self.entity = os.environ.get("WANDB_ENTITY") or None
        self.run = None
        self.name = ""

    def where(self) -> dict:
        return {"project": self.project, "entity": self.entity,
                "offline": os.environ.get("WANDB_MODE") == "offline"}

    def start(self, name: str, resume_id: Optional[str], parent: Optional["WandbRun"],
              role: str) -> str:
        wandb = self.wandb
        self.name = name
        try:
            self.run = wandb.init(
                project=self.project, entity=self.entity, name=name,
                # read now: W&B would keep the first call's in a long-lived process
                mode=os.environ.get("WANDB_MODE") or None, dir=os.environ.get("WANDB_DIR"),
                id=resume_id or secrets.token_hex(6), resume="allow", job_type=role,
                group=parent.name if parent is not None else None, reinit="create_new",
                # the package prints its own lines; W&B keeps its hands off the console
                settings=wandb.Settings(console="off", silent=True))
        except Exception as e:  # wandb raises its own errors (UsageError, CommError, ...)
            raise TrackerError(f"W&B (project {self.project}) refused or could not be "
                               f"reached: {_first_line(e)}") from None
        for axis, x in AXES.items():
            self.run.define_metric(x, hidden=True)
            self.run.define_metric(f"{axis}/*", step_metric=x)
        return self.run.id

    def params(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    tags = params  # W&B's config may change

    def log(self, axis: str, rows: list[tuple[int, dict[str, Any]]]) -> None:
        for step, values in rows:
            self.run.log({**{f"{axis}/{k}": v for k, v in _finite(values).items()},
                          AXES[axis]: step})

    def summary(self, values: dict[str, Any], step: int) -> None:
        self.run.summary.update(_finite(values))

    def artifacts(self, folder: str, paths: list[str]) -> None:
        kind = {"model": "model", "report": "report"}.get(folder, "run-files")
        art = self.wandb.Artifact(f"{self.name}-{folder}", type=kind)
        for path in paths:
            art.add_file(path)
        self.run.log_artifact(art)

    def end(self, outcome: str) -> None:
        self.run.finish(exit_code=0 if outcome in ("finished", "stopped") else 1)

    def describe(self) -> str:
        url = getattr(self.run, "url", None)
        return f"W&B run {self.run.id}" + (f" ({url})" if url else
                                           f" in {self.run.dir} (offline: `wandb sync`)")


def backend(kind: str):
    """A new, unstarted tracker run of this kind; TrackerError if its library is missing."""
    return {"mlflow": MLflowRun, "wandb": WandbRun}[kind]()


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
