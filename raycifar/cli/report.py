"""Draw a finished run's report: PNG plots and a report.md that links them.

    raycifar report ~/raycifar_runs/cifar10-onecycle
    raycifar report s3://bucket/runs/cifar10-onecycle --out reports/onecycle

The work is in `raycifar.reading.report`; this module parses the flags and prints where the
output went.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

from .args import add_debug_flag, run_cli


def default_out(run: str) -> str:
    """`<run>/report` for a local run; `./report-<run name>` for a run on cloud storage."""
    if "://" in run:
        return os.path.abspath(f"report-{run.rstrip('/').rsplit('/', 1)[-1]}")
    return os.path.join(os.path.abspath(os.path.expanduser(run)), "report")


def build_parser(prog: str = "raycifar report") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Write the plots (LR range test, One Cycle and triangular LR, training "
                    "curves, misclassified images, confusion matrix) and report.md of a run.")
    parser.add_argument("run", help="the run folder, <storage_path>/<name>: a local path or a "
                                    "URI (s3://, gs://)")
    parser.add_argument("--out", default=None,
                        help="local folder for the PNGs and report.md (default: <run>/report "
                             "for a local run, ./report-<name> for a run on cloud storage)")
    parser.add_argument("--predictions", default="predictions.npz", metavar="FILE",
                        help="where the gallery and confusion matrix come from: "
                             "predictions.npz, or one `python -m raycifar.evaluate` wrote "
                             "(predictions-NAME.npz: the model on other data)")
    add_debug_flag(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from ..reading.report import write_report

    run = args.run if "://" in args.run else os.path.expanduser(args.run)
    path = write_report(run, args.out or default_out(args.run), args.predictions)
    print(f"report: {path}")
    return 0



def cli(argv: Optional[list[str]] = None, prog: str = "raycifar report") -> int:
    return run_cli(main, build_parser(prog), argv)
