"""The command line: --help documents every option; bad input ends in one line, exit 2, fast."""

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from raycifar.config import TrainConfig
from raycifar.train import build_parser

from conftest import write_folder


def run_cli(*args, timeout=60):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "raycifar.train", *args], capture_output=True,
                       text=True, timeout=timeout, env=env)
    return p, time.perf_counter() - start


def test_help_documents_every_config_field():
    text = build_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
    for flag in ("--address", "--debug", "--subset", "--lr-max", "--lr-min", "--use-gpu",
                 "--no-use-gpu", "--cpus-per-worker", "--storage-path"):
        assert flag in text


def test_flags_map_onto_config():
    from raycifar.cli import config_from_args

    args = build_parser().parse_args(["--epochs", "3", "--peak-epoch", "1", "--no-tta",
                                      "--storage-path", "rel/runs", "--precision", "fp32"])
    c = config_from_args(args)
    assert (c.epochs, c.peak_epoch, c.tta, c.precision) == (3, 1, False, "fp32")
    assert os.path.isabs(c.storage_path) and c.storage_path.endswith("rel/runs")


def test_unknown_flags_are_rejected():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--epoch", "3"])


def bad_inputs(tmp):
    good = write_folder(tmp / "good", n_train=4, n_test=2)
    empty = tmp / "empty"
    empty.mkdir()
    noimg = write_folder(tmp / "noimg", n_train=2, n_test=1)
    (noimg / "train" / "ghost").mkdir()
    broken = write_folder(tmp / "broken", n_train=2, n_test=1)
    (broken / "train" / "cat" / "0000.png").write_bytes(b"\x89PNG garbage")
    common = ["--cache-dir", str(tmp / "cache"), "--storage-path", str(tmp / "runs")]
    return {
        "missing data dir": ([*common, "--data-dir", str(tmp / "nope")], "does not exist"),
        "empty data dir": ([*common, "--data-dir", str(empty)], "holds neither"),
        "class folder without images": ([*common, "--data-dir", str(noimg)], "holds no"),
        "unreadable image": ([*common, "--data-dir", str(broken)], "cannot read image"),
        "batch not splittable": ([*common, "--data-dir", str(good), "--num-workers", "3"],
                                 "cannot be split evenly"),
        "lr_min >= lr_max": ([*common, "--data-dir", str(good), "--lr-min", "1", "--lr-max",
                              "0.1"], "must be below lr_max"),
        "peak_epoch >= epochs": ([*common, "--data-dir", str(good), "--epochs", "5",
                                  "--peak-epoch", "5"], "peak_epoch=5 must be in"),
        "search too short": ([*common, "--data-dir", str(good), "--lr", "auto", "--lr-search",
                              "--search-epochs", "1"], "needs >= 2 epochs"),
        "too many workers": ([*common, "--data-dir", str(good), "--num-workers", "4",
                              "--cpus-per-worker", "1", "--batch-size", "8"],
                             "cannot be placed"),
    }


@pytest.mark.ray
def test_bad_input_is_one_line_nonzero_and_quick(tmp_path):
    failures = []
    for case, (args, message) in bad_inputs(tmp_path).items():
        p, seconds = run_cli(*args)
        err_lines = [ln for ln in p.stderr.splitlines() if "error:" in ln]
        ok = (p.returncode == 2 and "Traceback" not in p.stderr and len(err_lines) == 1
              and message in err_lines[0] and seconds < 60)
        if not ok:
            failures.append(f"{case}: rc={p.returncode} {seconds:.0f}s\n{p.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
