"""A run folder as an object (`Run`, `open_run`), and using a finished run: `evaluate`,
`predict`, `report` (what `raycifar evaluate`, `predict` and `report` run). No Ray."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from ..recipe.config import RaycifarError
from ..recipe.logs import log
from ..store import runs
from ..store.runs import RunFolder, RunFolderError


@dataclass
class Run:
    """One run folder: where it is, its final figures once finished (summary.json), and
    readers for the rest. `stopped_after_epoch` is set when `stop_after_epoch` ended it early
    (fit the same name again to go on)."""

    run_dir: str
    summary: Optional[dict] = None
    stopped_after_epoch: Optional[int] = None
    _folder: RunFolder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._folder = RunFolder(self.run_dir)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def final_test_acc(self) -> Optional[float]:
        return None if self.summary is None else self.summary["final_test_acc"]

    @property
    def config(self) -> dict:
        """config.json: the resolved TrainConfig (`config`), where the LRs came from
        (`lr_source`), the data's mean/std and classes, versions, the command."""
        return self._folder.read_json(runs.CONFIG)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """metrics.csv, a dict per epoch, numbers as numbers (see runs.EpochRow)."""
        if not self._folder.exists(runs.METRICS):
            return []
        return [{k: _number(v) for k, v in row.items()}
                for row in self._folder.read_csv(runs.METRICS)]

    @property
    def lr_finder(self) -> Optional[dict]:
        """lr_finder.json (the range test's reading), if this run ran one."""
        if not self._folder.exists(runs.LR_FINDER_JSON):
            return None
        return self._folder.read_json(runs.LR_FINDER_JSON)

    def report(self, out: Optional[str] = None) -> Path:
        return report(self.run_dir, out)

    def evaluate(self, **options: Any) -> dict:
        return evaluate(self.run_dir, **options)

    def predict(self, images: Union[str, Iterable[str]], **options: Any) -> "Predictions":
        return predict(self.run_dir, images, **options)


def open_run(run_dir: str) -> Run:
    """The run folder at `run_dir` (a path or URI), finished or not."""
    run_dir = run_dir if "://" in run_dir else os.path.abspath(os.path.expanduser(run_dir))
    folder = RunFolder(run_dir)
    if not folder.exists(runs.CONFIG):
        raise RunFolderError(f"{run_dir} has no config.json: not a run folder; pass "
                             "<storage_path>/<name>")
    summary = folder.read_json(runs.SUMMARY) if folder.exists(runs.SUMMARY) else None
    return Run(run_dir, summary)


def evaluate(run_dir: str, *, data_dir: Optional[str] = None,
             data_format: Optional[str] = None, cache_dir: Optional[str] = None,
             subset: Optional[int] = None, tta: Optional[bool] = None, batch_size: int = 512,
             use_gpu: Optional[bool] = None, name: Optional[str] = None,
             out: Optional[str] = None) -> dict:
    """A finished run's model on the test split of a data source (each default: the run's
    own); writes `evaluation-<name>.json` and `predictions-<name>.npz` into the run folder
    (or `out`) and returns the figures (accuracy, loss, images, ...)."""
    from ..reading.evaluate import eval_config, load_trained, pick_device, run_evaluation

    if batch_size < 1:
        raise RaycifarError(f"--batch-size must be >= 1, not {batch_size}")
    if name is not None and (not name or "/" in name):
        raise RaycifarError(f"--name {name!r} must be a non-empty name without '/'")
    trained = load_trained(run_dir, pick_device(use_gpu))
    cfg, own = eval_config(trained, data_dir, data_format, cache_dir, subset)
    tta = trained.cfg.tta if tta is None else tta
    figures, predictions = run_evaluation(trained, cfg, tta, batch_size)
    run = RunFolder(run_dir)
    summary = run.read_json(runs.SUMMARY) if run.exists(runs.SUMMARY) else {}
    name = name or ("test" if own else Path(cfg.data_dir).name if cfg.data_dir else "cifar10")
    figures.update(run=run_dir, name=name, own_data=own,
                   run_final_test_acc=summary.get("final_test_acc"))
    folder = RunFolder(out or run_dir)
    folder.write_json(f"evaluation-{name}.json", figures)
    folder.write_npz(f"predictions-{name}.npz", **predictions)
    where = "the run's own data" if own else "other data"
    subset_note = f", subset {cfg.subset} seed {cfg.seed}" if cfg.subset else ""
    accuracy = (f"{figures['accuracy']:.4f} with flip TTA, {figures['accuracy_plain']:.4f} "
                "without" if tta else f"{figures['accuracy']:.4f} (no TTA)")
    log.info(f"{figures['images']} test images ({where}, {figures['data']['data_format']}"
             f"{subset_note}) on {trained.device} {trained.precision}: accuracy {accuracy}")
    reference = figures["run_final_test_acc"]
    if own and tta == trained.cfg.tta and not trained.cfg.validation and reference is not None:
        log.info(f"the run's final_test_acc {reference:.4f}: "
                 + ("reproduced" if reference == figures["accuracy"] else
                    "differs (another device kind or batch size changes the last digits)"))
    log.info(f"wrote {folder.uri}/evaluation-{name}.json and predictions-{name}.npz")
    return figures


@dataclass
class Predictions:
    """`predict`'s answer: a `Prediction` (path, size, mode, top [(class, probability)]) per
    image, in order (iterate or index it), and how they were made."""

    run_dir: str
    tta: bool
    classes: list[str]
    items: list

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def to_dict(self) -> dict:
        return {"run": self.run_dir, "tta": self.tta, "classes": self.classes,
                "predictions": [{"image": r.path, "width": r.size[0], "height": r.size[1],
                                 "mode": r.mode,
                                 "top": [{"class": c, "probability": v} for c, v in r.top]}
                                for r in self.items]}


def predict(run_dir: str, images: Union[str, Iterable[str]], *, top_k: int = 3,
            tta: Optional[bool] = None, use_gpu: Optional[bool] = None) -> Predictions:
    """Top-k classes of image files (or folders of them: their images, sorted) with a
    finished run's model."""
    from ..reading.evaluate import load_trained, pick_device
    from ..reading.predict import Prediction, classify, load_images

    if top_k < 1:
        raise RaycifarError(f"--top-k must be >= 1, not {top_k}")
    trained = load_trained(run_dir, pick_device(use_gpu))
    paths, pixels, info = load_images([images] if isinstance(images, (str, os.PathLike))
                                      else [str(i) for i in images])
    tta = trained.cfg.tta if tta is None else tta
    tops = classify(trained, pixels, top_k, tta)
    return Predictions(run_dir, tta, trained.classes,
                       [Prediction(str(p), size, mode, top)
                        for p, (size, mode), top in zip(paths, info, tops)])


def report(run_dir: str, out: Optional[str] = None,
           predictions: str = runs.PREDICTIONS) -> Path:
    """Draw a run's plots (LR range test, One Cycle and triangular LR, training curves,
    misclassified images, confusion matrix) and report.md into `out` (default: <run>/report
    for a local run, ./report-<name> for one on cloud storage); returns report.md's path."""
    from ..reading.report import write_report

    run = run_dir if "://" in run_dir else os.path.expanduser(run_dir)
    return write_report(run, out or default_out(run_dir), predictions)


def default_out(run: str) -> str:
    """`<run>/report` for a local run; `./report-<run name>` for a run on cloud storage."""
    if "://" in run:
        return os.path.abspath(f"report-{run.rstrip('/').rsplit('/', 1)[-1]}")
    return os.path.join(os.path.abspath(os.path.expanduser(run)), "report")


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
