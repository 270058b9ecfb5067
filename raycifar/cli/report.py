"""Draw a finished run's report: PNG plots and a report.md that links them.

    raycifar report ~/raycifar_runs/cifar10-onecycle
    raycifar report s3://bucket/runs/cifar10-onecycle --out reports/onecycle

The work is `raycifar.api.results.report` (`raycifar.report`) over `raycifar.reading.report`;
this module parses the flags and prints where the output went.
"""

from __future__ import annotations

import argparse
from typing import Optional

from .args import add_debug_flag, run_cli


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
    from ..api.results import report

    print(f"report: {report(args.run, args.out, args.predictions)}")
    return 0


def cli(argv: Optional[list[str]] = None, prog: str = "raycifar report") -> int:
    return run_cli(main, build_parser(prog), argv)
