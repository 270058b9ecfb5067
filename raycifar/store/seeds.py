"""A seeds run's table: one row per seed from that seed's run folder, and the spread.

`python -m raycifar.tune seeds --seeds N` trains N runs that differ only in `--seed`, each in
its own run folder `<storage_path>/<name>-seed<S>/`; the seeds run's folder `<name>/` keeps the
shared range test and, from here, `seeds.csv` and `seeds.json`. Plain Python, no Ray.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Optional

from . import runs
from .runs import RunFolder

SEEDS_CSV = "seeds.csv"
SEEDS_JSON = "seeds.json"
COLUMNS = ["seed", "run", "final_test_acc", "best_test_acc", "final_test_acc_plain",
           "best_test_acc_plain", "epochs", "train_seconds"]


def seed_run_name(name: str, seed: int) -> str:
    return f"{name}-seed{seed}"


def seed_row(storage_path: str, name: str, seed: int) -> Optional[dict[str, Any]]:
    """The seed's figures from its run folder; None until it has finished (no summary.json)."""
    run = RunFolder(f"{storage_path.rstrip('/')}/{seed_run_name(name, seed)}")
    if not run.exists(runs.SUMMARY):
        return None
    s = run.read_json(runs.SUMMARY)
    metrics = run.read_csv(runs.METRICS, runs.REQUIRED_METRICS)
    plain = [float(r["test_acc_plain"]) for r in metrics]
    return {"seed": seed, "run": run.uri, "final_test_acc": s["final_test_acc"],
            "best_test_acc": s["best_test_acc"], "final_test_acc_plain": plain[-1],
            "best_test_acc_plain": max(plain), "epochs": s["epochs"],
            "train_seconds": s["train_seconds"]}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def write_table(storage_path: str, name: str, seeds: list[int], shared: dict[str, Any]) -> dict:
    """seeds.csv and seeds.json in the seeds run's folder; returns seeds.json's contents.

    `shared` is what every seed had in common (the LRs, where they came from, the config)."""
    rows = [r for r in (seed_row(storage_path, name, s) for s in seeds) if r is not None]
    folder = RunFolder(f"{storage_path.rstrip('/')}/{name}")
    folder.write_csv(SEEDS_CSV, rows, COLUMNS)
    missing = sorted(set(seeds) - {r["seed"] for r in rows})
    summary = {"n": len(rows), "seeds": seeds, "unfinished": missing, **shared,
               **{k: spread([r[k] for r in rows]) if rows else None
                  for k in ("final_test_acc", "best_test_acc", "final_test_acc_plain")}}
    folder.write_json(SEEDS_JSON, summary)
    return summary


def describe(summary: dict[str, Any]) -> str:
    acc = summary["final_test_acc"]
    if not acc:
        return "no seed finished"
    half = 1.96 * acc["std"] / math.sqrt(summary["n"]) if summary["n"] > 1 else float("nan")
    return (f"{summary['n']} seeds: final test accuracy {acc['mean']:.4f} +- {acc['std']:.4f} "
            f"(std; 95% interval of the mean +- {half:.4f}), min {acc['min']:.4f}, max "
            f"{acc['max']:.4f}")
