"""`raycifar evaluate RUN` (`python -m raycifar.evaluate`): a finished run's model on test data;
the flags; the work is `raycifar.api.results.evaluate` (`raycifar.evaluate`)."""

from __future__ import annotations

import argparse
from typing import Optional

from ..api.results import evaluate
from .args import add_debug_flag, run_cli


def main(args: argparse.Namespace) -> int:
    evaluate(args.run, data_dir=args.data_dir, data_format=args.data_format,
             cache_dir=args.cache_dir, subset=args.subset, tta=args.tta,
             batch_size=args.batch_size, use_gpu=args.use_gpu, name=args.name, out=args.out)
    return 0


def build_parser(prog: str = "raycifar evaluate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Evaluate a finished run's model.pt on the test split of a data source, "
                    "with the run's normalisation, classes and logit scale. On the run's own "
                    "data its subset and seed are kept: the images it was tested on.")
    parser.add_argument("run", help="the run folder (<storage_path>/<name>; a path or URI)")
    parser.add_argument("--data-dir", default=None,
                        help="a cifar-10-batches-py folder or an image tree train/<class>/, "
                             "test/<class>/ (default: the run's own; --data-format download "
                             "reads the torchvision download instead)")
    parser.add_argument("--data-format", default=None,
                        choices=("auto", "download", "batches", "folder"),
                        help="which source --data-dir holds (default: the run's own)")
    parser.add_argument("--cache-dir", default=None,
                        help="download and decode cache (default: the run's own)")
    parser.add_argument("--subset", type=int, default=None, metavar="N",
                        help="test on the N // 5 images `train --subset N` tests on (the "
                             "run's seed); 0 = the whole test split (default: the run's subset "
                             "on the run's own data, else 0)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image with its mirror image (default: as the run)")
    parser.add_argument("--batch-size", type=int, default=512, help="images per forward pass "
                        "(default 512, as training's evaluation)")
    parser.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="evaluate on the GPU (default: when there is one)")
    parser.add_argument("--name", default=None,
                        help="names the output files (default: 'test' on the run's own data, "
                             "else the data folder's name, or 'cifar10' for the download)")
    parser.add_argument("--out", default=None,
                        help="folder for the output files (default: the run folder)")
    add_debug_flag(parser)
    return parser


def cli(argv: Optional[list[str]] = None, prog: str = "raycifar evaluate") -> int:
    return run_cli(main, build_parser(prog), argv)
