"""`python -m raycifar.tune`: the LR range test and the LRMAX search as Tune runs, on their own.

    python -m raycifar.tune lr-find --data-dir D --name N     # writes N/lr_finder.{csv,json}
    python -m raycifar.tune search  --data-dir D --name N     # ... and N/lr_search.csv, best.json
    python -m raycifar.tune seeds --seeds 5 --data-dir D --name N   # N-seed0..4, seeds.json
    python -m raycifar.tune triangle --out tri.png            # plot a triangular cyclic LR

lr-find and search run `raycifar.api.training.find` (what `raycifar.find_lrs` runs); the Tune
runs themselves are `cluster/trials.py`; choosing the LRs (and reading a kept sweep again
instead of sweeping) is `cluster/lrs.py`, the same code `python -m raycifar.train` uses.
"""

from __future__ import annotations

import argparse
from typing import Optional

from ..api.tracking import close, tracked
from ..api.training import find
from ..cluster.connect import join_cluster
from ..cluster.lrs import choose_lrs
from ..cluster.trainer import driver_data
from ..cluster.trials import seeds
from ..recipe.config import RaycifarError
from ..recipe.logs import log
from ..store import runs
from ..store.runs import RunFolder
from ..store.seeds import describe as describe_seeds
from .args import add_config_arguments, add_debug_flag, config_from_args, run_cli
from .lr_flags import add_lr_arguments, lr_choice, range_test_config, search_config


def main(args: argparse.Namespace) -> int:
    """One subcommand, after parsing."""
    if args.command == "triangle":
        return _triangle(args)
    if args.command == "seeds":
        return run_seeds(args)
    searching = search_config(args) if args.command == "search" else None
    find(config_from_args(args), range_test_config(args), searching, args.address)
    return 0


def run_seeds(args: argparse.Namespace) -> int:
    """N trainings that differ only in --seed, as parallel Tune trials, with the LRs chosen
    once (by the range test unless typed in); re-run, it resumes the unfinished seeds with the
    LRs it chose the first time."""
    cfg = config_from_args(args)
    choice = lr_choice(args)
    if args.seeds < 1:
        raise RaycifarError(f"--seeds {args.seeds} must be >= 1")
    data, _ = driver_data(cfg, choice.search and choice.search.holdout)
    with tracked(cfg, "seeds", f"{cfg.name}-seeds") as tracker:
        use_gpu = join_cluster(cfg, args.address)
        folder = RunFolder(cfg.run_dir)
        cfg, found = choose_lrs(cfg, choice, use_gpu, folder.exists(runs.CONFIG), data,
                                args.address, nest=tracker)
        log.info(f"LRMAX {cfg.lr_max:.4g}, LRMIN {cfg.lr_min:.4g} from {found.describe()}, "
                 f"shared by {args.seeds} seeds from {cfg.seed}")
        meta = runs.run_meta(found)
        folder.write_json(runs.CONFIG, {"config": cfg.to_dict(), **meta, "seeds": args.seeds})
        summary = seeds(cfg, args.seeds, use_gpu, data, meta, args.max_concurrent, nest=tracker)
        log.info(f"{describe_seeds(summary)}; {cfg.run_dir}/seeds.json")
        close(tracker, "stopped" if summary["unfinished"] else "finished", report=True)
    return 0 if not summary["unfinished"] else 1


def _triangle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..reading.report import draw_triangular
    from ..recipe.schedule import triangular_lrs

    try:
        lrs = triangular_lrs(args.base_lr, args.max_lr, args.step_size, args.cycles)
    except ValueError as e:
        raise RaycifarError(str(e)) from e
    out = draw_triangular(args.step_size, lrs, Path(args.out))
    log.info(f"{len(lrs)} iterations, LR {args.base_lr:g} to {args.max_lr:g}; wrote {out}")
    return 0


def build_parser(prog: str = "raycifar tune") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    find = sub.add_parser("lr-find", help="the LR range test as a Tune run", allow_abbrev=False)
    srch = sub.add_parser("search", help="range test, then the ASHA search of LRMAX",
                          allow_abbrev=False)
    seed = sub.add_parser("seeds", help="N trainings differing only in --seed, as parallel "
                                        "Tune trials; seeds.csv and seeds.json", allow_abbrev=False)
    for p in (find, srch, seed):
        add_config_arguments(p)
        p.add_argument("--address", default=None,
                       help="the Ray cluster to join ('local': a new local Ray); default: "
                            "RAY_ADDRESS, else the cluster `ray start` runs on this node, "
                            "else a new local Ray")
        add_lr_arguments(p, search_flag=p is seed, choice_flags=p is seed)
        add_debug_flag(p)
    seed.add_argument("--seeds", type=int, default=5, help="how many seeds (--seed, --seed+1, ...)")
    tri = sub.add_parser("triangle", help="plot a triangular cyclic LR (torch CyclicLR)",
                         allow_abbrev=False)
    tri.add_argument("--base-lr", type=float, default=0.004)
    tri.add_argument("--max-lr", type=float, default=0.4)
    tri.add_argument("--step-size", type=int, default=176, help="iterations per half cycle")
    tri.add_argument("--cycles", type=int, default=3)
    tri.add_argument("--out", default="triangular_lr.png", help="PNG to write")
    add_debug_flag(tri)
    return parser


def cli(argv: Optional[list[str]] = None, prog: str = "raycifar tune") -> int:
    return run_cli(main, build_parser(prog), argv)
