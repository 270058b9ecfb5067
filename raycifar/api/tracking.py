"""`--tracker mlflow|wandb` around a command: the tracker run opened before any worker
starts (a tracker that is missing or cannot be reached is one `error:` line then, not an
hour later), followed while the run trains, ended with the run's outcome, its model and its
report. What is sent, and how a resumed run keeps its tracker run, is store/trackers.py.

Once training has begun a tracker never stops it: a failure to send is a warning and the run
folder still holds everything (a user who asked for a tracker is told at once when it cannot
be reached; a blip an hour into a run is not worth the run).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..recipe.config import TrainConfig
from ..recipe.logs import log
from ..store import runs
from ..store.trackers import TrackedRun, following
from .results import default_out


@contextmanager
def tracked(cfg: TrainConfig, role: str = "train", name: Optional[str] = None,
            run_dir: Optional[str] = None) -> Iterator[Optional[TrackedRun]]:
    """The tracker run of `cfg.run_dir` (None with `tracker: none`), mirrored while the
    block runs; an exception out of the block ends it as interrupted (Ctrl-C, SIGTERM) or
    failed. The block ends it itself with `close` (else it ends as finished)."""
    if cfg.tracker == "none":
        yield None
        return
    run = TrackedRun.open(cfg.tracker, run_dir or cfg.run_dir, name or cfg.name, role)
    log.info(f"tracking {name or cfg.name} in {run.describe()}")
    try:
        with following(run):
            yield run
    except KeyboardInterrupt:
        _end(run, "interrupted")
        raise
    except BaseException:
        _end(run, "failed")
        raise
    _end(run, "finished")


def close(run: Optional[TrackedRun], outcome: str, report: bool = False) -> None:
    """End the tracker run as `outcome`; with `report`, the run's report drawn and sent too
    (into <run>/report for a local run folder, a temporary folder for one on cloud storage;
    a "find" run's report is its LR finder plot)."""
    if run is None or run.ended:
        return
    if not report:
        _end(run, outcome)
        return
    uri = run.folder.uri
    with tempfile.TemporaryDirectory(prefix="raycifar-report-") as tmp:
        out = tmp if "://" in uri or run.role == "find" else default_out(uri)
        try:
            draw(run, out)
        except Exception as e:  # the plots are a courtesy: the run itself is done
            log.warning(f"the report for {run.name} could not be drawn ({e}); "
                        "sending the run without it")
            out = None
        _end(run, outcome, out)


def draw(run: TrackedRun, out: str) -> None:
    """The report of the run's folder into `out`: `raycifar report`'s, or for a "find" run
    (the LRs alone, no training) the range test's plot."""
    from ..reading.report import draw_lr_finder, read_columns, write_report  # matplotlib

    if run.role != "find":
        write_report(run.folder.uri, out)
        return
    folder = run.folder
    if folder.exists(runs.LR_FINDER_CSV) and folder.exists(runs.LR_FINDER_JSON):
        choice = folder.read_json(runs.LR_FINDER_JSON)
        if choice.get("lr_max") is not None:
            curve = read_columns(folder, runs.LR_FINDER_CSV, runs.LR_FINDER_COLUMNS[1:])
            Path(out).mkdir(parents=True, exist_ok=True)
            draw_lr_finder(curve, choice, Path(out) / "lr_finder.png")


def _end(run: TrackedRun, outcome: str, report_dir: Optional[str] = None) -> None:
    if not run.ended:
        run.finish_quietly(outcome, report_dir)
