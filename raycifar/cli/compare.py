"""Compare two runs on the same test set: the accuracy gap, its standard error, per-epoch gaps
and training speed, as markdown.

    raycifar compare ~/raycifar_runs/baseline ~/raycifar_runs/fast --tolerance 0.3
    raycifar compare results/dev-full /work/runs/dev-full-gpuaug --names albu,gpu --out cmp.md

The work is in `raycifar.reading.compare`; this module parses the flags and prints where the
output went.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .args import add_debug_flag, run_cli


def build_parser(prog: str = "raycifar compare") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Test accuracy of run B against run A at the last epoch both have: the gap "
                    "with its standard error (paired, with McNemar's exact test, when both "
                    "finished runs wrote predictions.npz), per-epoch gaps and training speed.")
    parser.add_argument("run_a", help="the reference run folder (local path or URI)")
    parser.add_argument("run_b", help="the run compared with it")
    parser.add_argument("--tolerance", type=float, default=None, metavar="POINTS",
                        help="also say whether |gap| is within this many percentage points")
    parser.add_argument("--names", default="A,B", metavar="A,B",
                        help="what to call the two runs in the table (default: A,B)")
    parser.add_argument("--out", default=None, help="write the markdown here instead of stdout")
    parser.add_argument("--predictions", default="predictions.npz", metavar="FILE",
                        help="the predictions file both runs hold: predictions.npz, or one "
                             "`python -m raycifar.evaluate` wrote (predictions-NAME.npz)")
    add_debug_flag(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from ..reading.compare import compare, to_markdown
    from ..recipe.config import RaycifarError

    names = args.names.split(",")
    if len(names) != 2 or not all(n.strip() for n in names):
        raise RaycifarError(f"--names takes two names separated by a comma, not {args.names!r}")
    if args.tolerance is not None and args.tolerance < 0:
        raise RaycifarError(f"--tolerance must be >= 0 points, not {args.tolerance}")
    tolerance = None if args.tolerance is None else args.tolerance / 100
    text = to_markdown(compare(args.run_a, args.run_b, tolerance, args.predictions),
                       *(n.strip() for n in names))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"comparison: {args.out}")
    else:
        sys.stdout.write(text)
    return 0



def cli(argv: Optional[list[str]] = None, prog: str = "raycifar compare") -> int:
    return run_cli(main, build_parser(prog), argv)
