"""`raycifar evaluate RUN` (`python -m raycifar.evaluate`): a finished run's model on test data;
the flags and the lines it prints. The work is `raycifar.reading.evaluate`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ..reading.evaluate import eval_config, load_trained, pick_device, run_evaluation
from ..recipe.config import RaycifarError
from ..recipe.logs import log
from ..store import runs
from ..store.runs import RunFolder
from .args import add_debug_flag, run_cli


def main(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise RaycifarError(f"--batch-size must be >= 1, not {args.batch_size}")
    if args.name is not None and (not args.name or "/" in args.name):
        raise RaycifarError(f"--name {args.name!r} must be a non-empty name without '/'")
    trained = load_trained(args.run, pick_device(args.use_gpu))
    cfg, own = eval_config(trained, args.data_dir, args.data_format, args.cache_dir,
                           args.subset)
    tta = trained.cfg.tta if args.tta is None else args.tta
    figures, predictions = run_evaluation(trained, cfg, tta, args.batch_size)
    run = RunFolder(args.run)
    summary = run.read_json(runs.SUMMARY) if run.exists(runs.SUMMARY) else {}
    name = args.name or ("test" if own else Path(cfg.data_dir).name if cfg.data_dir
                         else "cifar10")
    figures.update(run=args.run, name=name, own_data=own,
                   run_final_test_acc=summary.get("final_test_acc"))
    out = RunFolder(args.out or args.run)
    out.write_json(f"evaluation-{name}.json", figures)
    out.write_npz(f"predictions-{name}.npz", **predictions)
    where = "the run's own data" if own else "other data"
    subset = f", subset {cfg.subset} seed {cfg.seed}" if cfg.subset else ""
    accuracy = (f"{figures['accuracy']:.4f} with flip TTA, {figures['accuracy_plain']:.4f} "
                "without" if tta else f"{figures['accuracy']:.4f} (no TTA)")
    log.info(f"{figures['images']} test images ({where}, {figures['data']['data_format']}"
             f"{subset}) on {trained.device} {trained.precision}: accuracy {accuracy}")
    reference = figures["run_final_test_acc"]
    if own and tta == trained.cfg.tta and not trained.cfg.validation and reference is not None:
        log.info(f"the run's final_test_acc {reference:.4f}: "
                 + ("reproduced" if reference == figures["accuracy"] else
                    "differs (another device kind or batch size changes the last digits)"))
    log.info(f"wrote {out.uri}/evaluation-{name}.json and predictions-{name}.npz")
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
