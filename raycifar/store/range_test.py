"""A range test's files in its run folder: `lr_finder.csv` (the sweep), `lr_finder.json` (its
reading: LRMAX, LRMIN, the method and settings) and the curve as TensorBoard events
(tensorboard/lr-find/)."""

from __future__ import annotations

from ..recipe.lr_finder import RangeTestResult
from .runs import LR_FINDER_COLUMNS, LR_FINDER_CSV, LR_FINDER_JSON, RunFolder
from .tracking import log_range_test


def save_range_test(run: RunFolder, result: RangeTestResult) -> None:
    run.write_csv(LR_FINDER_CSV, result.rows(), LR_FINDER_COLUMNS)
    run.write_json(LR_FINDER_JSON, result.summary())
    log_range_test(run, result.rows())
