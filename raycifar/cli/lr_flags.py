"""The flags that choose LRMIN and LRMAX (`--lr`, `--lr-from`, the range test's and the
search's), one name each in `raycifar train` and `raycifar tune`, and the one `LRChoice` they
make, built before anything runs (flags that cannot go together fail there)."""

from __future__ import annotations

import argparse

from ..recipe.config import (LR_MODES, SEARCH_LENGTHS, SWEEP_MODES, LRChoice, RangeTestConfig,
                             SearchConfig)
from ..recipe.lr_finder import LRMAX_METHODS, LRMIN_RULES
from .args import given


def add_lr_arguments(parser: argparse.ArgumentParser, search_flag: bool = True,
                     choice_flags: bool = True) -> None:
    """The range test's and the search's flags; `--lr-search` where the search is optional,
    `--lr` and `--lr-from` where LRs may also be typed in or taken from an earlier run."""
    d, s = RangeTestConfig(), SearchConfig()
    group = parser.add_argument_group("finding LRMAX and LRMIN")
    if choice_flags:
        group.add_argument("--lr", choices=LR_MODES, default=None,
                           help="auto: run the LR range test first and train with the "
                                "LRMAX/LRMIN it finds; manual: train with --lr-max/--lr-min "
                                "(default: auto, unless --lr-max or --lr-min is given)")
        group.add_argument("--lr-from", metavar="RUN_DIR", default=None,
                           help="reuse the LRMAX/LRMIN found in an earlier run folder")
    group.add_argument("--start-lr", type=float, default=d.start_lr,
                       help="range test: first LR of the sweep")
    group.add_argument("--end-lr", type=float, default=d.end_lr,
                       help="range test: last LR of the sweep")
    group.add_argument("--num-steps", type=int, default=d.num_steps,
                       help="range test: batches in the sweep")
    group.add_argument("--sweep", choices=SWEEP_MODES, default=d.mode,
                       help="range test: how the LR rises")
    group.add_argument("--method", choices=LRMAX_METHODS, default=d.method,
                       help="how LRMAX is read off the range test's curve: minimum = where "
                            "the loss stops falling (Smith's upper bound), steepest = where it "
                            "falls fastest, valley = fastai's rule")
    group.add_argument("--lr-min-rule", choices=LRMIN_RULES, default=d.lr_min_rule,
                       help="LRMIN = LRMAX / --lr-min-div, or where the loss starts to fall")
    group.add_argument("--lr-min-div", type=float, default=d.lr_min_div,
                       help="the divisor of the 'div' rule")
    if search_flag:
        group.add_argument("--lr-search", action="store_true",
                           help="refine the LRMAX found by an ASHA search of short runs")
    group.add_argument("--candidates", type=int, default=s.candidates,
                       help="search: LRMAX candidates (log grid x1/4..x4)")
    group.add_argument("--search-epochs", type=int, default=s.epochs,
                       help="search: epochs per candidate")
    group.add_argument("--holdout", type=int, default=s.holdout,
                       help="search: training images held out to rank the candidates")
    group.add_argument("--search-length", choices=SEARCH_LENGTHS, default=None,
                       help="search: short = --search-epochs of One Cycle per candidate, judged "
                            "after one epoch; full = the run's own cycle with the found LRMIN, "
                            "judged from halfway (default: full on GPUs, short on CPUs)")
    group.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                       help="search or seeds: trials at once (default: as many as the cluster "
                            "can place now; give it on an autoscaling cluster that adds nodes "
                            "on demand)")


def range_test_config(args: argparse.Namespace) -> RangeTestConfig:
    return RangeTestConfig(start_lr=args.start_lr, end_lr=args.end_lr,
                           num_steps=args.num_steps, mode=args.sweep, method=args.method,
                           lr_min_rule=args.lr_min_rule, lr_min_div=args.lr_min_div)


def search_config(args: argparse.Namespace) -> SearchConfig:
    return SearchConfig(candidates=args.candidates, epochs=args.search_epochs,
                        holdout=args.holdout, max_concurrent=args.max_concurrent,
                        length=args.search_length)


def lr_mode(args: argparse.Namespace) -> str:
    """auto (find LRMAX/LRMIN) unless asked for manual or the LRs were typed in."""
    if getattr(args, "lr", None):
        return args.lr
    return "manual" if given(args) & {"lr_max", "lr_min"} else "auto"


def lr_choice(args: argparse.Namespace) -> LRChoice:
    """The LR flags of `raycifar train` or `raycifar tune seeds` as one checked choice."""
    searching = getattr(args, "lr_search", False)
    return LRChoice(mode=lr_mode(args), lr_from=getattr(args, "lr_from", None),
                    range_test=range_test_config(args),
                    search=search_config(args) if searching else None)
