"""`raycifar bench` (`python -m raycifar.bench`): throughput, start-up and memory of the
training loop, plain and under Ray, as markdown (and JSON); or, with `--split`, where finished
runs' time went. What each figure covers: `raycifar.cluster.bench`, printed by `--help`."""

from __future__ import annotations

import argparse
import json
from typing import Optional

from ..cluster import bench
from ..reading.bench_figures import markdown, side_by_side, split_markdown
from ..recipe import timeline
from ..recipe.logs import log
from ..store import runs
from ..store.runs import RunFolder
from .args import add_config_arguments, add_debug_flag, config_from_args, run_cli


def build_parser(prog: str = "raycifar bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    add_config_arguments(p)
    p.set_defaults(subset=3072)
    p.add_argument("--repeats", type=int, default=3, help="repeats (median reported)")
    p.add_argument("--out", default="BENCHMARKS.md", help="Markdown report")
    p.add_argument("--json", default=None, help="also write the figures as JSON here")
    p.add_argument("--address", default=None, help="join this Ray cluster; default: start one")
    p.add_argument("--split", default=None, nargs="+", metavar="RUN_DIR",
                   help="instead of measuring: where a finished run's time went (training "
                        "steps, evaluation, run files and checkpoints, start-up), from its "
                        "summary.json; with several runs, their figures side by side")
    p.add_argument("--only", default=None, metavar="VARIANT[,VARIANT]",
                   help=f"measure only these of {', '.join(bench.VARIANTS)} (default: all but "
                        f"{', '.join(sorted(bench.OPT_IN))})")
    add_debug_flag(p)
    return p


def main(args: argparse.Namespace, argv: list[str]) -> int:
    if args.split:  # the command's output is markdown alone
        summaries = [RunFolder(uri).read_json(runs.SUMMARY) for uri in args.split]
        print(split_markdown(args.split[0], summaries[0]) if len(summaries) == 1 else
              side_by_side(args.split, summaries), end="")
        return 0
    only = None if args.only is None else {v.strip() for v in args.only.split(",") if v.strip()}
    result = bench.measure(config_from_args(args), args.repeats, only, args.address,
                           timeline.process_start(), ["python", "-m", "raycifar.bench", *argv])
    text = markdown(result)
    log.info(f"bench done:\n{text}")
    with open(args.out, "w") as f:
        f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def cli(argv: Optional[list[str]] = None, prog: str = "raycifar bench") -> int:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    return run_cli(lambda args: main(args, argv), build_parser(prog), argv)
