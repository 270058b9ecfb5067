"""`raycifar predict RUN IMAGE...` (`python -m raycifar.predict`): top-k classes of image files;
the flags and the output; the work is `raycifar.api.results.predict` (`raycifar.predict`)."""

from __future__ import annotations

import argparse
import json
from typing import Optional

from ..api.results import predict
from .args import add_debug_flag, run_cli


def main(args: argparse.Namespace) -> int:
    found = predict(args.run, args.images, top_k=args.top_k, tta=args.tta, use_gpu=args.use_gpu)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
    else:
        for r in found:
            print(f"{r.path}: " + ", ".join(f"{c} {100 * v:.1f}%" for c, v in r.top))
    return 0


def build_parser(prog: str = "raycifar predict") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Top-k classes of image files with a finished run's model. Each image is "
                    "converted to RGB and resized to 32x32 with Pillow's bilinear filter "
                    "(antialiased when shrinking; the aspect ratio is not kept), then "
                    "normalised with the run's mean/std.")
    parser.add_argument("run", help="the run folder (<storage_path>/<name>; a path or URI)")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, or folders whose images to classify (sorted; other "
                             "files there are skipped with a warning)")
    parser.add_argument("--top-k", type=int, default=3, help="classes shown per image "
                        "(default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image with its mirror image (default: as the run)")
    parser.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="run on the GPU (default: when there is one)")
    add_debug_flag(parser)
    return parser


def cli(argv: Optional[list[str]] = None, prog: str = "raycifar predict") -> int:
    return run_cli(main, build_parser(prog), argv)
