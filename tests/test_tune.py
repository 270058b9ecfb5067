"""Ray Tune for real on a local Ray: the range test as a Tune run, and the ASHA LR search."""

import json
import time
from pathlib import Path

import pytest

from raycifar.api import training as api_training
from raycifar.cluster.lrs import load_finding, matching_finding
from raycifar.cluster.trials import candidates, lr_find, search
from raycifar.recipe.config import RangeTestConfig, SearchConfig
from raycifar.store.range_test import save_range_test
from raycifar.store.runs import RunFolder, RunFolderError

from conftest import TINY_WIDTH, free_cpus, tiny_train_config

pytestmark = pytest.mark.ray


def test_candidates_are_a_log_grid_around_the_center():
    assert candidates(0.4, 3, span=4) == pytest.approx([0.1, 0.4, 1.6])
    assert candidates(0.4, 1) == [0.4]


def test_lr_find_runs_as_a_tune_trial_and_writes_the_finding(tmp_path, ray_cluster):
    cfg = tiny_train_config(tmp_path, name="tune", epochs=24, peak_epoch=5)
    sweep = {"start_lr": 1e-3, "end_lr": 1.0, "num_steps": 15}
    finding = lr_find(cfg, RangeTestConfig(**sweep))
    run = RunFolder(cfg.run_dir)
    rows = run.read_csv("lr_finder.csv", ["lr", "loss", "smoothed_loss"])
    assert 3 <= len(rows) <= 15
    assert finding["tune_steps_reported"] == len(rows)  # every step reached Tune
    assert 1e-3 <= finding["lr_min"] < finding["lr_max"] <= 1.0
    assert load_finding(cfg.run_dir).lr_max == finding["lr_max"]

    # `train --lr auto` over the same sweep reuses it, reading it with the rules asked for now
    same = matching_finding(cfg, RangeTestConfig(**sweep, method=finding["method"],
                                                 lr_min_rule=finding["lr_min_rule"]))
    assert same["lr_max"] == finding["lr_max"] and "reread" not in same["settings"]
    other = matching_finding(cfg, RangeTestConfig(**sweep, method="valley", lr_min_rule="div",
                                                  lr_min_div=4.0))
    assert other["method"] == "valley" and other["lr_min"] == pytest.approx(other["lr_max"] / 4)
    assert "read again from lr_finder.csv" in other["settings"]["reread"]
    assert load_finding(cfg.run_dir).lr_max == other["lr_max"]
    assert matching_finding(cfg, RangeTestConfig(**{**sweep, "num_steps": 16})) is None
    assert matching_finding(cfg.replace(batch_size=8), RangeTestConfig(**sweep)) is None

    # a sweep whose reading fails is kept, and the error says so
    from raycifar.recipe.lr_finder import RangeTestError
    flat = cfg.replace(name="tune-flat")
    with pytest.raises(RangeTestError, match=r"\(the sweep is kept in .*tune-flat/lr_finder.csv"):
        # LRs far too high: the loss only rises, so there is no onset to read LRMIN from
        lr_find(flat, RangeTestConfig(start_lr=3.0, end_lr=30.0, num_steps=12))
    kept = RunFolder(flat.run_dir)
    assert 2 <= len(kept.read_csv("lr_finder.csv", ["lr", "loss"])) <= 12
    assert kept.read_json("lr_finder.json")["lr_max"] is None


def test_search_runs_two_trials_at_once_and_asha_stops_free_their_cpus(tmp_path, ray_cluster,
                                                                       monkeypatch):
    """... tracked in W&B (offline): each candidate a run in the search's group, once, also
    when the search is run again and Tune restores it with its pickled callbacks."""
    from raycifar.store.trackers import TrackedRun

    from test_trackers import wandb_read

    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = tiny_train_config(tmp_path, name="search", epochs=24, peak_epoch=5)
    # Two good LRs first; the two hopeless ones reach ASHA's rung after good results are
    # recorded, so they are stopped, and the last one can only run if a stopped trial's CPU
    # came back (2 CPUs, 1 per trial).
    lrs = [0.05, 0.03, 1e-7, 2e-7]
    started = time.perf_counter()
    parent = TrackedRun.open("wandb", cfg.run_dir, "search-lrs", "find")
    best = search(cfg, 0.05, SearchConfig(epochs=3, holdout=12), lrs=lrs, nest=parent)
    parent.finish("finished")
    seconds = time.perf_counter() - started
    rows = RunFolder(cfg.run_dir).read_csv("lr_search.csv", ["lr_max", "epochs_run"])
    assert sorted(float(r["lr_max"]) for r in rows) == sorted(lrs)
    runs = {float(r["lr_max"]): int(r["epochs_run"]) for r in rows}
    assert runs[1e-7] < 3 and runs[2e-7] < 3  # stopped by ASHA
    assert best["lr_max"] in (0.05, 0.03) and best["lr_min"] == pytest.approx(best["lr_max"] / 10)
    assert free_cpus(ray_cluster) == 2  # nothing leaked
    assert seconds < 600
    # The same search again restores its experiment: no trial starts over (the trials'
    # Train runs would append to metrics.csv), and the pick is the same.
    trial_rows = {p.name: (p / "metrics.csv").read_text()
                  for p in Path(cfg.storage_path).glob("search-trial-*")}
    assert len(trial_rows) == len(lrs)
    started = time.perf_counter()
    parent = TrackedRun.open("wandb", cfg.run_dir, "search-lrs", "find")
    assert search(cfg, 0.05, SearchConfig(epochs=3, holdout=12), lrs=lrs, nest=parent) == best
    parent.finish("finished")
    assert time.perf_counter() - started < seconds / 2
    assert {p.name: (p / "metrics.csv").read_text()
            for p in Path(cfg.storage_path).glob("search-trial-*")} == trial_rows
    assert len(list(Path(cfg.storage_path).glob("search-lr-search-*"))) == 1
    children = {p.name: json.loads((p / "trackers.json").read_text())["train"]["wandb"]
                for p in Path(cfg.storage_path).glob("search-trial-*")}
    assert len(children) == len(lrs)
    for name, state in children.items():
        got = wandb_read(tmp_path, state["run_id"])
        assert got["folders"] == 1 and got["run"].run_group == "search-lrs", name
        assert got["run"].display_name == name and got["run"].job_type == "train"
        epochs = int(RunFolder(f"{cfg.storage_path}/{name}").read_csv("metrics.csv")[-1]["epoch"])
        assert [h["epoch"] for h in got["history"] if "epoch/test_acc" in h] == list(
            range(1, epochs + 1))
        assert state["outcome"] in ("finished", "stopped")  # ASHA stopped the weak ones


def test_an_interrupted_search_resumes_its_trials_where_their_checkpoints_are(tmp_path,
                                                                             ray_cluster):
    """Ctrl-C (here SIGINT to the driver) while the candidate trains (one: what is pinned is
    per trial); the same search run again restores its Tune experiment, and each unfinished
    trial's Train run goes on from its last checkpoint: the epochs it had checkpointed are not trained again (their metrics.csv
    rows, timings included, are as they were) and every epoch appears once."""
    import json
    import signal
    import subprocess
    import sys

    from raycifar.store.resume import checkpoint_epoch

    cfg = tiny_train_config(tmp_path, name="cut", epochs=24, peak_epoch=5)
    settings, lrs = SearchConfig(epochs=8, holdout=12), [0.05]  # one trial's Train run
    address = ray_cluster.get_runtime_context().gcs_address
    script = (
        "import json, sys, ray\n"
        "from raycifar.cluster.trials import search\n"
        "from raycifar.recipe.config import SearchConfig, TrainConfig\n"
        f"ray.init(address={address!r},\n"
        f"         runtime_env={{'env_vars': {{'RAY_ADDRESS': {address!r}}}}})\n"
        f"cfg = TrainConfig.from_dict(json.loads({json.dumps(json.dumps(cfg.to_dict()))}))\n"
        f"search(cfg, 0.05, SearchConfig(epochs=8, holdout=12), lrs={lrs!r})\n")
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180

    def trial_folders():
        return sorted(Path(cfg.storage_path).glob("cut-trial-*"))

    def epochs_done(folder: Path) -> int:
        metrics = folder / "metrics.csv"
        return max(0, len(metrics.read_text().splitlines()) - 1) if metrics.exists() else 0

    while time.time() < deadline and driver.poll() is None:
        done = [epochs_done(f) for f in trial_folders()]
        if done and max(done) >= 2:
            break
        time.sleep(0.2)
    assert driver.poll() is None, driver.stderr.read()[-2000:]
    driver.send_signal(signal.SIGINT)
    driver.wait(timeout=90)
    kept = {}
    for folder in trial_folders():
        epoch = checkpoint_epoch(RunFolder(str(folder))) or 0
        rows = (folder / "metrics.csv").read_text().splitlines()
        kept[folder.name] = (epoch, rows[:1 + epoch])
    assert any(epoch >= 1 and epoch < settings.epochs for epoch, _ in kept.values()), kept

    best = search(cfg, 0.05, settings, lrs=lrs)
    assert best["lr_max"] in lrs
    # restored, not started again: the same trials (ids), no new ones for the same candidates
    after = {f.name for f in trial_folders()}
    assert set(kept) <= after and len(after) == len(lrs)
    for name, (epoch, rows) in kept.items():
        now = (Path(cfg.storage_path) / name / "metrics.csv").read_text().splitlines()
        assert now[:1 + epoch] == rows, name  # checkpointed epochs not trained again
        epochs = [int(r.split(",")[0]) for r in now[1:]]
        assert epochs == list(range(1, len(epochs) + 1)), name  # each epoch once
    table = RunFolder(cfg.run_dir).read_csv("lr_search.csv", ["lr_max", "epochs_run"])
    assert sorted(float(r["lr_max"]) for r in table) == sorted(lrs)


def test_lr_from_a_folder_without_a_finding_is_a_clear_error(tmp_path):
    with pytest.raises(RunFolderError, match="holds no lr_finder.json or best.json"):
        load_finding(str(tmp_path))


def test_a_sweep_kept_after_a_failed_reading_is_read_again_not_swept_again(tmp_path,
                                                                          monkeypatch, capsys):
    import numpy as np

    from raycifar.cli import tune
    from raycifar.recipe.data import load_arrays
    from raycifar.recipe.lr_finder import RangeTestError, reread

    cfg = tiny_train_config(tmp_path, name="flat")
    sweep = {"start_lr": 1e-4, "end_lr": 1e-3, "num_steps": 30, "mode": "exp"}
    lrs = list(np.geomspace(1e-4, 1e-3, 30))
    flat = list(2.3 + np.random.default_rng(0).normal(0, 0.002, 30))
    with pytest.raises(RangeTestError) as caught:
        reread(lrs, flat, lr_min_rule="onset", settings=sweep)
    n = len(load_arrays(cfg).y_train)
    caught.value.sweep.settings.update(batch_size=16, train_images=n, seed=cfg.seed)
    save_range_test(RunFolder(cfg.run_dir), caught.value.sweep)  # what the Tune trial leaves behind
    with pytest.raises(RunFolderError, match="holds no LRs: its range test could not be read "
                                             r"\(the loss never fell"):
        load_finding(cfg.run_dir)

    def no_ray(*args):
        raise AssertionError("a kept sweep is read again without Ray")

    monkeypatch.setattr(api_training, "init_ray", no_ray)  # where `tune` reaches Ray
    argv = ["lr-find", "--data-dir", cfg.data_dir, "--cache-dir", cfg.cache_dir,
            "--storage-path", cfg.storage_path, "--name", "flat", "--batch-size", "16",
            "--width", str(TINY_WIDTH),
            "--start-lr", "1e-4", "--end-lr", "1e-3", "--num-steps", "30"]
    assert tune.cli([*argv, "--lr-min-rule", "onset"]) == 2  # the rule that failed, again
    assert "the loss never fell" in capsys.readouterr().err
    with pytest.raises(RangeTestError, match="the loss never fell.*read from the sweep kept in"):
        matching_finding(cfg, RangeTestConfig(**sweep, lr_min_rule="onset"), train_images=n)
    assert tune.cli([*argv, "--method", "minimum", "--lr-min-rule", "div"]) == 0
    assert "read again, not swept again" in capsys.readouterr().out
    found = RunFolder(cfg.run_dir).read_json("lr_finder.json")
    assert found["lr_min"] == pytest.approx(found["lr_max"] / 10)
    assert "the first reading failed: the loss never fell" in found["settings"]["reread"]
    assert load_finding(cfg.run_dir).lr_max == found["lr_max"]


def test_a_full_length_search_trains_the_runs_own_cycle_with_the_found_lrmin(tmp_path,
                                                                            ray_cluster):
    """The same search() as the short one above, planned `full`: every candidate trains the
    run's whole cycle (here 3 epochs) with the found LRMIN, on the held-out split."""
    cfg = tiny_train_config(tmp_path, name="full", epochs=3, peak_epoch=1)
    best = search(cfg, 0.05, SearchConfig(candidates=2, holdout=12, length="full"),
                  lr_min=0.004)
    rows = RunFolder(cfg.run_dir).read_csv("lr_search.csv", ["lr_max", "lr_min", "epochs_run"])
    assert [float(r["lr_min"]) for r in rows] == [0.004, 0.004]
    assert sorted(float(r["lr_max"]) for r in rows) == pytest.approx([0.0125, 0.2])
    ran = sorted(int(r["epochs_run"]) for r in rows)
    assert ran[0] >= 2 and ran[-1] == 3  # ASHA judges past the peak (epoch 2) at the earliest
    assert best["length"] == "full" and best["search_epochs"] == 3
