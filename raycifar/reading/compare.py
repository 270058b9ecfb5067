"""Two runs on the same test set, side by side: the accuracy gap and how much of it is noise.

One accuracy on n test images carries a binomial standard error of sqrt(p(1-p)/n): 0.42 points
at 90% on 5,000 images, more than many of the gaps people quote. When both runs wrote
`predictions.npz` for the same test images the comparison is paired: the gap's standard error
comes from the images the two runs got differently, and McNemar's exact test asks whether
those discordant images split evenly. Without predictions only the unpaired error is known,
which overstates the noise of a gap on one shared test set. Neither covers seed-to-seed
variation of training itself: that needs repeated runs.

Reads only what the runs wrote (`metrics.csv`, and `summary.json`, `predictions.npz` when
there), through `RunFolder`, so run folders on cloud storage work too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import numpy as np

from ..store import runs
from ..store.runs import RunFolderError
from .report import existing_run, read_columns, read_optional


@dataclass
class Run:
    """What a comparison reads of one run folder."""
    uri: str
    metrics: dict[str, np.ndarray]
    test_images: Optional[int]
    labels: Optional[np.ndarray] = None
    preds: Optional[np.ndarray] = None
    finished: bool = False

    @cached_property
    def epochs(self) -> list[int]:
        return self.metrics["epoch"].astype(int).tolist()

    def at(self, epoch: int, column: str) -> float:
        """One metrics.csv figure of the given epoch."""
        return float(self.metrics[column][self.epochs.index(epoch)])


def load(uri: str, predictions: str = runs.PREDICTIONS) -> Run:
    run = existing_run(uri)
    metrics = read_columns(run, runs.METRICS, runs.REQUIRED_METRICS)
    summary = read_optional(run, runs.SUMMARY, lambda: run.read_json(runs.SUMMARY))
    labels = preds = None
    if predictions != runs.PREDICTIONS and not run.exists(predictions):
        raise RunFolderError(f"{uri}/{predictions} does not exist; write it with "
                             f"`raycifar evaluate {uri} --data-dir ...`")
    if run.exists(predictions):
        z = run.read_npz(predictions)
        if "labels" not in z or "preds" not in z or z["labels"].shape != z["preds"].shape:
            raise RunFolderError(f"{uri}/{predictions} is malformed: needs 'labels' and "
                                 "'preds' of one shape")
        labels, preds = z["labels"].astype(np.int64), z["preds"].astype(np.int64)
    n = (len(labels) if labels is not None
         else int(summary["test_images"]) if summary and summary.get("test_images") else None)
    return Run(uri, metrics, n, labels, preds, finished=summary is not None)


def exact_mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: of b + c discordant images, is a b:c split or one
    more lopsided likely when each goes either way with probability 1/2?"""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # exact integers, one rounding at the end


@dataclass
class Gap:
    """Accuracy of B minus accuracy of A, in fractions, with its standard error."""
    acc_a: float
    acc_b: float
    n: Optional[int]
    se: Optional[float]
    paired: bool
    only_a: int = 0  # right in A only (paired)
    only_b: int = 0  # right in B only (paired)
    p_value: Optional[float] = None

    @property
    def gap(self) -> float:
        return self.acc_b - self.acc_a


def paired_gap(labels: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray) -> Gap:
    right_a, right_b = preds_a == labels, preds_b == labels
    d = right_b.astype(np.float64) - right_a
    n = len(labels)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    return Gap(float(right_a.mean()), float(right_b.mean()), n, se, True, only_a, only_b,
               exact_mcnemar_p(only_a, only_b))


def unpaired_gap(acc_a: float, acc_b: float, n: Optional[int]) -> Gap:
    se = math.sqrt((acc_a * (1 - acc_a) + acc_b * (1 - acc_b)) / n) if n else None
    return Gap(acc_a, acc_b, n, se, False)


@dataclass
class Comparison:
    a: Run
    b: Run
    epochs: list[int]  # the epochs both runs have; the gap is at the last
    gap: Gap
    tolerance: Optional[float]  # in fractions
    notes: list[str] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        return self.epochs[-1]

    @property
    def within(self) -> Optional[bool]:
        return None if self.tolerance is None else abs(self.gap.gap) <= self.tolerance


def compare(uri_a: str, uri_b: str, tolerance: Optional[float] = None,
            predictions: str = runs.PREDICTIONS) -> Comparison:
    """Compare run B against run A at the last epoch both have (tolerance in fractions).

    `predictions` names the predictions file both runs hold: `predictions.npz` (their own
    test set), or one `python -m raycifar.evaluate` wrote for other data, whose paired gap is
    then the gap on that data."""
    a, b = load(uri_a, predictions), load(uri_b, predictions)
    common = sorted(set(a.epochs) & set(b.epochs))
    if not common:
        raise RunFolderError(f"{uri_a} and {uri_b} have no epoch in common")
    epoch, notes = common[-1], []
    if a.test_images and b.test_images and a.test_images != b.test_images:
        raise RunFolderError(f"the runs were tested on different sets ({a.test_images} and "
                             f"{b.test_images} images); their accuracies do not compare")
    both_final = a.finished and b.finished and epoch == a.epochs[-1] == b.epochs[-1]
    if not both_final:
        notes.append(f"compared at epoch {epoch}, the last both runs have: at least one run "
                     "is not finished there, so this is not the final gap")
    if both_final and a.labels is not None and b.labels is not None:
        if not np.array_equal(a.labels, b.labels):
            raise RunFolderError("the runs' predictions.npz hold different test labels: not "
                                 "the same test images in the same order")
        gap = paired_gap(a.labels, a.preds, b.preds)
    else:
        gap = unpaired_gap(a.at(epoch, "test_acc"), b.at(epoch, "test_acc"),
                           a.test_images or b.test_images)
        missing = [r.uri for r in (a, b) if r.labels is None]
        notes.append("unpaired standard error: " + (
            f"no predictions.npz in {', '.join(missing)}" if both_final and missing
            else "per-image predictions exist only for a finished run's last epoch")
            + "; it treats the two accuracies as independent, which overstates the noise of "
              "a gap measured on one shared test set")
    return Comparison(a, b, common, gap, tolerance, notes)


def _pts(x: Optional[float], sign: bool = False) -> str:
    return "-" if x is None else f"{100 * x:{'+' if sign else ''}.2f}"


def to_markdown(c: Comparison, name_a: str = "A", name_b: str = "B") -> str:
    g = c.gap
    lines = [f"# {name_b} against {name_a}", "",
             f"- {name_a}: `{c.a.uri}`", f"- {name_b}: `{c.b.uri}`", "",
             "| figure | value |", "|---|---|",
             f"| epoch compared | {c.epoch} |",
             f"| test accuracy, {name_a} | {_pts(g.acc_a)}% |",
             f"| test accuracy, {name_b} | {_pts(g.acc_b)}% |",
             f"| gap ({name_b} - {name_a}) | {_pts(g.gap, True)} points |",
             f"| standard error of the gap ({'paired' if g.paired else 'unpaired'}) | "
             f"{_pts(g.se)} points |"]
    if g.n:
        p = (g.acc_a + g.acc_b) / 2
        lines.append(f"| standard error of one accuracy on {g.n} images | "
                     f"{_pts(math.sqrt(p * (1 - p) / g.n))} points |")
    if g.paired:
        lines += [f"| images right in {name_a} only / {name_b} only | {g.only_a} / {g.only_b} |",
                  f"| McNemar exact p (two-sided) | {g.p_value:.3g} |"]
    if c.tolerance is not None:
        lines.append(f"| within {_pts(c.tolerance)} points? | {'yes' if c.within else 'no'} |")
    lines += ["", "Per epoch (test accuracy, %; images/s of training):", "",
              f"| epoch | {name_a} | {name_b} | gap | img/s {name_a} | img/s {name_b} |",
              "|---|---|---|---|---|---|"]
    for e in c.epochs:
        ta, tb = c.a.at(e, "test_acc"), c.b.at(e, "test_acc")
        lines.append(f"| {e} | {_pts(ta)} | {_pts(tb)} | {_pts(tb - ta, True)} | "
                     f"{c.a.at(e, 'images_per_second'):.1f} | "
                     f"{c.b.at(e, 'images_per_second'):.1f} |")
    ma, mb = (float(np.median([r.at(e, "images_per_second") for e in c.epochs]))
              for r in (c.a, c.b))
    lines += ["", f"Median training speed over these epochs: {name_a} {ma:.1f}, {name_b} "
              f"{mb:.1f} images/s ({name_b}/{name_a} {mb / ma:.2f}); epochs that shared the "
              "machine with other work pull a run's figures down."]
    notes = list(c.notes)
    if c.tolerance is not None and g.se is not None and g.se > c.tolerance:
        notes.append(f"the tolerance ({_pts(c.tolerance)} points) is smaller than the gap's "
                     f"standard error ({_pts(g.se)}): one pair of runs cannot tell a gap of "
                     "that size from noise, whichever side of it this one falls")
    if notes:
        lines += [""] + [f"Note: {n}." for n in notes]
    lines.append("\nNeither error covers seed-to-seed variation of training: that needs "
                 "repeated runs.")
    return "\n".join(lines) + "\n"
