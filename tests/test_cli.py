"""The command line: --help documents every option; bad input ends in one line, exit 2, fast."""

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from raycifar.api.training import GPU_FEEDING_LOADERS, loader_hint
from raycifar.cli.train import build_parser
from raycifar.recipe.config import TrainConfig

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
    from raycifar.cli.args import config_from_args

    args = build_parser().parse_args(["--epochs", "3", "--peak-epoch", "1", "--no-tta",
                                      "--storage-path", "rel/runs", "--precision", "fp32"])
    c = config_from_args(args)
    assert (c.epochs, c.peak_epoch, c.tta, c.precision) == (3, 1, False, "fp32")
    assert os.path.isabs(c.storage_path) and c.storage_path.endswith("rel/runs")


@pytest.mark.parametrize("argv, mode", [
    ([], "auto"),                                  # LRMAX and LRMIN are found by default
    (["--epochs", "3"], "auto"),
    (["--lr-max", "0.2"], "manual"),               # ... unless typed in
    (["--lr-min=0.001"], "manual"),
    (["--lr-max", "0.2", "--lr", "auto"], "auto"),  # asked for explicitly
    (["--lr", "manual"], "manual"),
])
def test_lrs_are_found_unless_typed_in(argv, mode):
    from raycifar.cli.lr_flags import lr_mode

    assert lr_mode(build_parser().parse_args(argv)) == mode


def test_a_resumed_run_keeps_its_lrs_however_they_were_found(tmp_path):
    from raycifar.cli.lr_flags import lr_choice
    from raycifar.cluster.lrs import choose_lrs
    from raycifar.store.runs import RunFolder

    cfg = TrainConfig(storage_path=str(tmp_path), name="r")
    RunFolder(cfg.run_dir).write_json("config.json", {
        "config": {**cfg.to_dict(), "lr_max": 0.0955, "lr_min": 0.00145},
        "lr_source": {"lr_max": 0.0955, "lr_min": 0.00145, "source": "range-test",
                      "where": ".../lr_finder.json", "method": "minimum"}})
    for argv in ([], ["--lr", "auto"]):  # no range test runs: this would need Ray and data
        resumed, found = choose_lrs(cfg, lr_choice(build_parser().parse_args(argv)), False,
                                    True)
        assert (resumed.lr_max, resumed.lr_min) == (0.0955, 0.00145)
        assert found.source == "resumed" and found.found_by == "range-test"
        assert "the run being resumed" in found.describe()
    typed, found = choose_lrs(cfg, lr_choice(build_parser().parse_args(["--lr-max", "0.3"])),
                              False, True)
    assert typed.lr_max == cfg.lr_max and found.source == "flags"


def test_a_search_of_typed_in_lrs_is_refused_before_anything_runs(tmp_path):
    from raycifar.cli.train import main
    from raycifar.recipe.config import ConfigError

    args = build_parser().parse_args(["--data-dir", str(tmp_path / "nowhere"), "--lr-max",
                                      "0.2", "--lr-search"])
    with pytest.raises(ConfigError, match="--lr-search refines LRs it finds"):
        main(args)


def test_a_gpu_run_through_albumentations_is_told_its_loader_sets_the_pace():
    cfg = TrainConfig()
    hint = loader_hint(cfg, use_gpu=True)
    assert hint.startswith("2 albumentations loader worker(s)") and "--augment gpu" in hint
    assert loader_hint(cfg, use_gpu=False) is None
    assert loader_hint(cfg.replace(augment="gpu"), use_gpu=True) is None
    assert loader_hint(cfg.replace(loader_workers=GPU_FEEDING_LOADERS), use_gpu=True) is None
    assert loader_hint(cfg.replace(loader_workers=GPU_FEEDING_LOADERS - 1), use_gpu=True)
    assert loader_hint(cfg.replace(loader_workers=0), use_gpu=True).startswith(
        "albumentations in the training process will hold the GPU back")


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
    # 12 good images: batches of 4 give the cycle its steps (full global batches only)
    common = ["--cache-dir", str(tmp / "cache"), "--storage-path", str(tmp / "runs"),
              "--batch-size", "4"]
    return {
        "missing data dir": ([*common, "--data-dir", str(tmp / "nope")], "does not exist"),
        "empty data dir": ([*common, "--data-dir", str(empty)], "holds neither"),
        "class folder without images": ([*common, "--data-dir", str(noimg)], "holds no"),
        "unreadable image": ([*common, "--data-dir", str(broken)], "cannot read image"),
        "batch smaller than the workers": ([*common, "--data-dir", str(good), "--num-workers",
                                            "3", "--batch-size", "2"],
                                           "cannot give each of num_workers=3 an image"),
        "lr_min >= lr_max": ([*common, "--data-dir", str(good), "--lr-min", "1", "--lr-max",
                              "0.1"], "must be below lr_max"),
        "peak_epoch >= epochs": ([*common, "--data-dir", str(good), "--epochs", "5",
                                  "--peak-epoch", "5"], "peak_epoch=5 must be in"),
        "search too short": ([*common, "--data-dir", str(good), "--lr", "auto", "--lr-search",
                              "--search-epochs", "1"], "needs >= 2 epochs"),
        "too many workers": ([*common, "--data-dir", str(good), "--num-workers", "4",
                              "--cpus-per-worker", "1", "--batch-size", "8"],
                             "cannot be placed"),
        "too little data for the cycle": ([*common, "--data-dir", str(good), "--subset", "512",
                                           "--epochs", "2", "--peak-epoch", "1",
                                           "--batch-size", "512", "--num-workers", "2"],
                                          "One Cycle needs at least one step"),
        "unwritable storage path": ([*common, "--data-dir", str(good), "--storage-path",
                                     "/proc/raycifar-runs"], "cannot write to --storage-path"),
        "unreachable bucket": ([*common, "--data-dir", str(good), "--storage-path",
                                "s3://raycifar/runs?endpoint_override=127.0.0.1:9&scheme=http"],
                               "cannot write to --storage-path s3://"),
        "holdout too large": ([*common, "--data-dir", str(good), "--lr-search", "--holdout",
                               "12"], "holding out 12 images"),
        "max-concurrent 0": ([*common, "--data-dir", str(good), "--lr-search",
                                        "--max-concurrent", "0"], "must be >= 1"),
        "dashboard address": ([*common, "--data-dir", str(good), "--address",
                               "http://127.0.0.1:8265", "--lr-max", "0.1"], "dashboard address"),
    }


@pytest.mark.ray
def test_bad_input_is_one_line_nonzero_and_quick(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cases = bad_inputs(tmp_path)
    with ThreadPoolExecutor(max_workers=3) as pool:  # each is its own process; 60 s each
        done = dict(zip(cases, pool.map(lambda c: run_cli(*c[0], timeout=120), cases.values())))
    failures = []
    for case, (args, message) in cases.items():
        p, seconds = done[case]
        err_lines = [ln for ln in p.stderr.splitlines() if "error:" in ln]
        ok = (p.returncode == 2 and "Traceback" not in p.stderr and len(err_lines) == 1
              and message in err_lines[0] and seconds < 60)
        if not ok:
            failures.append(f"{case}: rc={p.returncode} {seconds:.0f}s\n{p.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)


def test_the_lr_flags_become_one_checked_choice():
    from raycifar.cli.lr_flags import lr_choice
    from raycifar.recipe.config import ConfigError, LRChoice, RangeTestConfig

    choice = lr_choice(build_parser().parse_args(["--num-steps", "40", "--sweep", "linear",
                                                  "--lr-search", "--candidates", "3"]))
    assert choice == LRChoice(mode="auto", range_test=RangeTestConfig(num_steps=40,
                                                                     mode="linear"),
                              search=choice.search)
    assert choice.search.candidates == 3
    # a sweep too short for a curve fails here, on the driver, not in a Tune trial
    with pytest.raises(ConfigError, match="num_steps=5 is too few"):
        lr_choice(build_parser().parse_args(["--num-steps", "5"]))


@pytest.mark.parametrize("command", ["train", "tune", "evaluate", "predict", "report", "compare",
                                     "bench", "doctor"])
def test_every_command_answers_help_through_the_console_script(command, capsys):
    from raycifar.cli.main import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: raycifar {command} ")


def test_the_console_script_lists_its_commands_and_refuses_others(capsys):
    from raycifar.cli.main import COMMANDS, main

    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(f"  {c} " in out for c in COMMANDS)
    assert main(["trian"]) == 2
    assert capsys.readouterr().err.startswith("raycifar: error: no command 'trian'")


def test_the_module_and_script_entry_points_reach_the_same_commands():
    """`python -m raycifar.X`, `python -m raycifar X` and `python jobs/X.py` as the docs use them,
    each named in its own usage line; the console script itself is installed by pip."""
    import shutil

    from conftest import REPO

    cases = [([sys.executable, "-m", "raycifar.evaluate"], "python -m raycifar.evaluate"),
             ([sys.executable, "-m", "raycifar", "predict"], "raycifar predict"),
             ([sys.executable, str(REPO / "jobs" / "report.py")], "jobs/report.py")]
    if shutil.which("raycifar"):
        cases.append((["raycifar", "compare"], "raycifar compare"))
    for argv, prog in cases:
        p = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stdout.startswith(f"usage: {prog} "), (argv, p.stderr)
