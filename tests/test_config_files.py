"""`--config FILE` and `raycifar.fit("FILE")`: presets, files a user writes, and a run's own
config.json, read with the flags given beside them winning."""

from __future__ import annotations

import json

import pytest

from raycifar.api.training import from_file, train_config
from raycifar.cli import train, tune
from raycifar.cli.args import config_from_args, given, parse
from raycifar.cli.lr_flags import lr_choice, range_test_config, search_config
from raycifar.recipe import config_files
from raycifar.recipe.config import ConfigError, RangeTestConfig, SearchConfig, TrainConfig

from conftest import tiny_train_config


def train_args(*argv: str):
    return parse(train.build_parser(), list(argv))


def test_the_presets_are_shipped_and_each_validates_for_every_command_that_trains():
    assert config_files.presets() == ["default", "gpu-fast", "smoke"]
    for name in config_files.presets():
        args = train_args("--config", name)
        cfg, choice = config_from_args(args), lr_choice(args)
        assert cfg.name == config_files.load(name).fields.get("name", TrainConfig.name)
        assert choice.mode == "auto"  # every preset finds its LRs
        for command in ("lr-find", "search", "seeds"):
            config_from_args(parse(tune.build_parser(), [command, "--config", name]))
    smoke = config_from_args(train_args("--config", "smoke"))
    assert (smoke.subset, smoke.epochs, smoke.peak_epoch) == (2048, 2, 1)
    assert range_test_config(train_args("--config", "smoke")).num_steps == 20
    assert config_from_args(train_args("--config", "gpu-fast")).augment == "gpu"


def test_the_default_preset_is_what_no_flags_run():
    """Every setting default.yaml spells out is the dataclass default: the file documents the
    recipe and cannot drift from it."""
    found = config_files.load("default")
    no_flags = TrainConfig()
    for key, value in found.fields.items():
        assert value == getattr(no_flags, key), key
    for key, value in found.range_test.items():
        assert value == getattr(RangeTestConfig(), key), key
    assert len(found.fields) >= 20 and found.lr == "auto" and not found.search
    plain, preset = train_args(), train_args("--config", "default")
    assert config_from_args(preset) == config_from_args(plain)
    assert lr_choice(preset) == lr_choice(plain)


def test_flags_given_win_over_the_file_and_typed_lrs_are_typed(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 6\npeak_epoch: 2\nlr_max: 0.2\nlr_min: 2e-3\nnum_workers: 2-4\n"
                    "tta: false\nrange_test: {start_lr: 1e-5, mode: linear}\n")
    args = train_args("--config", str(path), "--epochs", "8", "--tta")
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.peak_epoch, cfg.tta) == (8, 2, True)
    assert (cfg.lr_max, cfg.lr_min) == (0.2, 0.002)  # "2e-3": a string to YAML, read as a number
    assert (cfg.min_workers, cfg.num_workers) == (2, 4)  # elastic, as --num-workers 2-4
    assert lr_choice(args).mode == "manual" and {"lr_max", "lr_min"} <= given(args)
    sweep = range_test_config(args)
    assert (sweep.start_lr, sweep.mode) == (1e-5, "linear")
    assert lr_choice(train_args("--config", str(path), "--lr", "auto")).mode == "auto"
    with pytest.raises(ConfigError, match="give --num-workers MIN-MAX or --min-workers"):
        config_from_args(train_args("--config", str(path), "--min-workers", "1"))


def test_a_search_in_the_file_is_turned_on_where_the_command_has_one(tmp_path):
    path = tmp_path / "search.json"
    path.write_text(json.dumps({"epochs": 4, "peak_epoch": 1,
                                "search": {"candidates": 3, "epochs": 2, "length": "short"}}))
    args = train_args("--config", str(path), "--candidates", "5")
    assert args.lr_search and lr_choice(args).search == SearchConfig(candidates=5, epochs=2,
                                                                     length="short")
    srch = parse(tune.build_parser(), ["search", "--config", str(path)])
    assert search_config(srch) == SearchConfig(candidates=3, epochs=2, length="short")
    found = parse(tune.build_parser(), ["lr-find", "--config", str(path)])  # no search there
    assert config_from_args(found).epochs == 4 and not hasattr(found, "lr_search")
    path.write_text(json.dumps({"search": True}))
    assert lr_choice(train_args("--config", str(path))).search == SearchConfig()


@pytest.mark.parametrize("text, says", [
    ("epochs: ten\nbogus: 1\nrange_test: {num_steps: x}\n",
     ["unknown key(s) ['bogus']", "epochs='ten' should be int", "range_test.num_steps='x'"]),
    ("epochs: [1\n", ["is not valid YAML", "line 2"]),
    ("- 1\n- 2\n", ["holds a list, not a mapping"]),
    ("lr: sometimes\nsearch: 3\n", ["lr='sometimes' is not one of", "search must be a mapping"]),
    ("use_gpu: 1\ndata_dir: 5\n", ["use_gpu=1 should be bool or null",
                                   "data_dir=5 should be str or null"]),
    ("epochs: 2\n", ["peak_epoch=5 must be in [1, epochs-1=1]"]),  # TrainConfig's own check
])
def test_a_bad_file_is_one_error_naming_every_problem_and_exit_2(tmp_path, capsys, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert train.cli(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raycifar train: error: ") and "Traceback" not in err
    for part in says:
        assert part in err


def test_a_missing_file_names_the_presets(capsys):
    assert train.cli(["--config", "nope"]) == 2
    assert "no such file or run folder, nor a shipped preset (presets: default, gpu-fast, " \
           "smoke)" in capsys.readouterr().err


def test_a_run_folder_runs_again_as_it_was(tmp_path):
    """A run's folder (its config.json) makes the same run again, LRs included, under another
    name; in this process, without Ray (num_workers 0)."""
    import raycifar

    cfg = tiny_train_config(tmp_path, num_workers=0, epochs=2, lr_max=0.07, lr_min=0.003)
    assert raycifar.fit(cfg, lr="manual").finished
    run_dir = tmp_path / "runs" / "tiny"
    assert train.cli(["--config", str(run_dir), "--name", "again"]) == 0
    before = json.loads((run_dir / "config.json").read_text())
    after = json.loads((tmp_path / "runs" / "again" / "config.json").read_text())
    assert {**before["config"], "name": "again"} == after["config"]
    assert after["lr_source"]["source"] == "flags" and after["config"]["lr_max"] == 0.07


def test_the_api_takes_a_file_with_keywords_over_it(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("subset: 100\nepochs: 4\npeak_epoch: 1\nrange_test: {num_steps: 30}\n"
                    "search: {candidates: 2}\n")
    fields, lr, lr_from, range_test, search = from_file(path, None, None, {"end_lr": 5.0},
                                                        None)
    cfg, typed = train_config(fields, {"epochs": 6})
    assert (cfg.subset, cfg.epochs, typed, lr, lr_from) == (100, 6, False, None, None)
    assert range_test == {"num_steps": 30, "end_lr": 5.0} and search == {"candidates": 2}
    assert from_file("smoke", "manual", None, None, False)[1:] == ("manual", None,
                                                                   {"num_steps": 20}, False)
    assert RangeTestConfig(**range_test).end_lr == 5.0


def test_the_documented_example_reads_as_it_says(tmp_path):
    from conftest import REPO

    text = (REPO / "docs" / "config-files.md").read_text()
    example = text.split("```yaml\n")[1].split("```")[0]
    path = tmp_path / "example.yaml"
    path.write_text(example)
    args = train_args("--config", str(path))
    cfg, choice = config_from_args(args), lr_choice(args)
    assert (cfg.subset, cfg.epochs, cfg.min_workers, cfg.num_workers) == (5000, 12, 2, 4)
    assert choice.mode == "auto" and choice.range_test.num_steps == 50
    assert choice.search == SearchConfig(candidates=3)
