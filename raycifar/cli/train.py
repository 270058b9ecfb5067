"""`raycifar train` (`python -m raycifar.train`): the flags, then `raycifar.api.training.train`
(what `raycifar.fit` runs): check, choose the LRs, fit, say how it went."""

from __future__ import annotations

import argparse
from typing import Optional

from ..api.training import train
from .args import add_config_arguments, add_debug_flag, config_from_args, run_cli
from .lr_flags import add_lr_arguments, lr_choice


def main(args: argparse.Namespace) -> int:
    train(config_from_args(args), lr_choice(args), args.address)
    return 0


def build_parser(prog: str = "raycifar train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train the custom ResNet on CIFAR-10 with One Cycle under Ray Train.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_config_arguments(parser)
    parser.add_argument("--address", default=None,
                        help="the Ray cluster to join (host:port, 'auto' or ray://host:port), or "
                             "'local' for a new local Ray whatever runs here; default: "
                             "RAY_ADDRESS (set in `ray job submit` jobs), else the cluster "
                             "`ray start` runs on this node, else a new local Ray")
    add_lr_arguments(parser)
    add_debug_flag(parser)
    return parser


def cli(argv: Optional[list[str]] = None, prog: str = "raycifar train") -> int:
    return run_cli(main, build_parser(prog), argv)
