"""Command-line plumbing shared by the commands.

Flags map one to one onto `TrainConfig` fields, with the dataclass defaults, so `--help` and the
config cannot disagree. Errors a user can fix end as one `raycifar: error: ...` line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import traceback
from typing import Callable, Optional

from ..recipe.config import (AUGMENTS, COMPILE_MODES, DATA_FORMATS, OPTIMIZERS, PRECISIONS,
                             TRACKERS, ConfigError, RaycifarError, TrainConfig)

HELP = {
    "data_dir": "CIFAR-10 location: a cifar-10-batches-py folder or an image tree "
                "train/<class>/, test/<class>/ (default: download into --cache-dir)",
    "data_format": "which source --data-dir holds (auto detects it)",
    "cache_dir": "folder for the download and for decoded-image caches",
    "subset": "train on N images and test on N/5 (same code path; for smoke runs)",
    "loader_workers": "DataLoader worker processes per Ray worker",
    "validation": "hold out this many training images and evaluate on them instead of the "
                  "test set (0 = use the test set)",
    "augment": "where the training augmentation runs: albumentations = per image in "
               "--loader-workers processes; gpu = on whole batches on the training device "
               "(the GPU, or the CPU without one), data held there as uint8",
    "epochs": "number of epochs",
    "peak_epoch": "the LR peaks at the last step of this epoch",
    "lr_max": "peak LR of the One Cycle (LRMAX); giving it (or --lr-min) trains with the LRs "
              "given instead of finding them",
    "lr_min": "start and final LR of the One Cycle (LRMIN; no annihilation)",
    "cycle_momentum": "cycle momentum inversely to the LR (One Cycle's original form)",
    "batch_size": "global batch size, each batch split across the workers there are",
    "optimizer": "sgd = SGD with Nesterov momentum; adam = AdamW",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay (on the mean loss)",
    "label_smoothing": "label smoothing of the training cross-entropy",
    "logit_scale": "multiply the logits by this (Page's ResNet-9 uses 0.125)",
    "width": "the prep layer's channels, the three layers 2x, 4x, 8x as many (64: the spec's "
             "6,573,120-parameter network; a smaller one for smoke runs)",
    "precision": "autocast precision; auto = by the GPU's compute capability: bf16 on 8.0 "
                 "and later (A100, L4, H100), fp16 with loss scaling on 7.x (V100, T4), fp32 "
                 "below; on CPUs bf16 only where the CPU flags show native bf16 (avx512_bf16, "
                 "amx_bf16; aarch64 bf16), else fp32 (emulated bf16 is 2.5-20x slower); "
                 "`python -m raycifar.doctor` shows what it picks here",
    "channels_last": "NHWC memory layout (faster with bf16 on CPU and on tensor cores)",
    "compile": "torch.compile the model for training and evaluation (inductor; the first "
               "steps wait for the compiler)",
    "compile_mode": "torch.compile's mode with --compile: reduce-overhead replays CUDA graphs "
                    "on a GPU; max-autotune also searches kernel configurations",
    "tta": "test accuracy averages each image with its mirror image",
    "seed": "random seed",
    "stop_after_epoch": "stop after this epoch (checkpointed); run the same --name again to "
                        "continue (0 = train to the end)",
    "num_workers": "Ray Train workers (0 = run in this process without a cluster); MIN-MAX "
                   "(e.g. 2-4) runs elastic: it starts once MIN fit, goes on with the workers "
                   "left when a node is lost, and grows back to MAX when room returns",
    "min_workers": "an elastic run's fewest workers (0 = a fixed size; --num-workers MIN-MAX "
                   "sets both)",
    "resize_seconds": "elastic runs: seconds between Ray's looks for room to grow",
    "cpus_per_worker": "CPUs each worker reserves (torch uses this many threads)",
    "gpus_per_worker": "GPUs each worker reserves when training on GPUs; a fraction (0.25) "
                       "packs the workers of several search or seed trials onto one GPU",
    "use_gpu": "train on GPUs (default: when the cluster has any)",
    "storage_path": "where run folders go: an absolute path or a URI (s3://, gs://); "
                    "a relative path is made absolute",
    "shared_storage": "--storage-path is a folder every node mounts at the same path (NFS, a "
                      "ReadWriteMany volume); allows a local path on a multi-node cluster",
    "name": "run name; a re-run with the same name resumes from its last checkpoint",
    "max_failures": "restart the worker group this many times after a worker or node dies (-1 "
                    "= always; default: 3 for an elastic run, else 0); preemptions with notice "
                    "are retried apart from these",
    "tracker": "also log the run to MLflow (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME) or "
               "W&B (WANDB_PROJECT, WANDB_MODE, ...): its config, metrics per epoch and step, "
               "range test, LRs, model and report; needs raycifar[mlflow] or raycifar[wandb]",
}
def worker_count(text: str):
    """`--num-workers`: N, or MIN-MAX for an elastic run (a (min, max) pair)."""
    low, sep, high = text.partition("-")
    try:
        value = (int(low), int(high)) if sep else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or MIN-MAX (e.g. 4 or 2-4)")
    if sep and value[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: an elastic run needs MIN >= 1")
    return value


# Flags whose type the dataclass default cannot tell.
TYPES = {"num_workers": worker_count, "max_failures": int}

CHOICES = {"data_format": DATA_FORMATS, "optimizer": OPTIMIZERS, "precision": PRECISIONS,
           "augment": AUGMENTS, "compile_mode": COMPILE_MODES, "tracker": TRACKERS}


class _StoreGiven(argparse._StoreAction):
    """Stores the value like `store`, and notes that the flag was given (see `given`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.given_flags = getattr(namespace, "given_flags", frozenset()) | {self.dest}


def given(args: argparse.Namespace) -> frozenset:
    """The TrainConfig fields whose flags were on the command line (not their defaults)."""
    return getattr(args, "given_flags", frozenset())


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, typed and defaulted from the dataclass, and `--config`."""
    parser.add_argument("--config", dest="config_file", metavar="FILE", default=None,
                        help="settings from a YAML or JSON file, a run folder (its "
                             "config.json: the run again, with the LRs it trained with) or a "
                             "shipped preset (default, gpu-fast, smoke); flags given here win")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool) or f.name == "use_gpu":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=HELP[f.name])
            continue
        kind = TYPES.get(f.name) or {int: int, float: float}.get(type(default), str)
        parser.add_argument(flag, dest=f.name, type=kind, default=default, action=_StoreGiven,
                            choices=CHOICES.get(f.name), metavar=None if f.name in CHOICES
                            else f.name.upper(),
                            help=HELP[f.name] + ("" if default is None else
                                                 " (default: %(default)s)"))


# A config file's LR-choice keys as the flags' dests (cli.lr_flags): `search` turns on
# --lr-search, its fields and the range test's go where their flags go.
CHOICE_DESTS = {"lr": "lr", "lr_from": "lr_from"}
RANGE_TEST_DESTS = {"start_lr": "start_lr", "end_lr": "end_lr", "num_steps": "num_steps",
                    "mode": "sweep", "method": "method", "lr_min_rule": "lr_min_rule",
                    "lr_min_div": "lr_min_div"}
SEARCH_DESTS = {"candidates": "candidates", "epochs": "search_epochs", "holdout": "holdout",
                "max_concurrent": "max_concurrent", "length": "search_length"}


def parse(parser: argparse.ArgumentParser, argv: Optional[list[str]] = None
          ) -> argparse.Namespace:
    """`parser.parse_args`, with the settings of `--config FILE` (where the command, or the
    subcommand asked for, has that flag) standing where the defaults would: a flag given wins.
    The file's TrainConfig fields count as given (`given`), so its lr_max/lr_min are typed
    LRs. Keys for flags the command lacks (the search's, in `tune lr-find`) are left out."""
    from ..recipe import config_files

    argv = sys.argv[1:] if argv is None else argv
    target = _command_parser(parser, argv)
    dests = {a.dest for a in target._actions} if target else set()
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--config", dest="config_file", default=None)
    name = early.parse_known_args(argv)[0].config_file
    if name is None or "config_file" not in dests:
        return parser.parse_args(argv)
    found = config_files.load(name)  # a ConfigError: one line from run_cli
    values = dict(found.fields)
    for key, dest in CHOICE_DESTS.items():
        if getattr(found, key) is not None:
            values[dest] = getattr(found, key)
    values.update({RANGE_TEST_DESTS[k]: v for k, v in found.range_test.items()})
    if found.search:
        values["lr_search"] = True
        if isinstance(found.search, dict):
            values.update({SEARCH_DESTS[k]: v for k, v in found.search.items()})
    target.set_defaults(**{k: v for k, v in values.items() if k in dests},
                        given_flags=frozenset(found.fields))
    return parser.parse_args(argv)


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]
                    ) -> Optional[argparse.ArgumentParser]:
    """The parser that will read the TrainConfig flags: `parser`, or the subcommand's
    (`raycifar tune search ...`: the first word that names one)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            word = next((w for w in argv if not w.startswith("-")), None)
            sub = action.choices.get(word)
            return _command_parser(sub, argv[argv.index(word) + 1:]) if sub else None
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from ..recipe.config import resolve_storage_path

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["storage_path"] = resolve_storage_path(values["storage_path"])
    if isinstance(values["num_workers"], tuple):  # --num-workers MIN-MAX
        if "min_workers" in given(args):
            raise ConfigError(["give --num-workers MIN-MAX or --min-workers, not both"])
        values["min_workers"], values["num_workers"] = values["num_workers"]
    return TrainConfig(**values)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def run_cli(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
            argv: Optional[list[str]] = None) -> int:
    """Parse, run, and turn user-fixable errors into one line on stderr and exit code 2."""
    from ..recipe.logs import setup

    try:
        args = parse(parser, argv)
    except ConfigError as e:  # the --config file's
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    setup()
    try:
        return main(args)
    except RaycifarError as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; run again with the same --name to resume",
              file=sys.stderr)
        return 130
