"""`--tracker mlflow|wandb` against the real libraries writing real local stores: MLflow's
sqlite store read back with MlflowClient, W&B's offline run files read back record by record.
Training here runs in-process (Ray Train's local mode, LRs typed in: no Ray cluster); the
Tune children (a search's candidates, seeds) are checked by the Ray tests in test_tune.py and
test_seeds.py."""

from __future__ import annotations

import glob
import json
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from raycifar.recipe.config import ConfigError, TrainConfig
from raycifar.store import runs
from raycifar.store.runs import RunFolder
from raycifar.store.tracker_backends import TrackerError
from raycifar.store.trackers import TRACKERS_FILE, Follower, TrackedRun

from conftest import tiny_train_config

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables made (a second or two of migrations), copied
    by each test."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, empty_mlflow_db):
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts in ./mlruns
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    return mlflow.MlflowClient(uri)


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    d = tmp_path / "wandb-files"
    d.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(d))
    monkeypatch.setenv("WANDB_PROJECT", "tests")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return d


def runs_of(client, experiment: str = "tests"):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def wandb_records(wandb_dir: Path, run_id: str) -> list:
    """Every record of every offline folder of this run id, in order (a resumed run writes a
    folder per command; `wandb sync` uploads them into one run). The .wandb file is a
    LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks (CRC, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for path in sorted(glob.glob(f"{wandb_dir}/wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
        data, pos, chunk = Path(path).read_bytes(), 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
            pos += 7
            chunk += data[pos:pos + n]
            pos += n
            if kind in (1, 4):  # a full record, or the last chunk of one
                rec = pb.Record()
                rec.ParseFromString(chunk)
                out.append(rec)
                chunk = b""
    return out


def wandb_read(wandb_dir: Path, run_id: str) -> dict:
    """What the offline files of a run hold: run info, config keys, history rows, summary,
    artifacts (name -> file paths)."""
    got = {"run": None, "config": {}, "history": [], "summary": {}, "artifacts": {}, "folders":
           len(glob.glob(f"{wandb_dir}/wandb/offline-run-*-{run_id}"))}
    for rec in wandb_records(wandb_dir, run_id):
        kind = rec.WhichOneof("record_type")
        key = (lambda item: item.key or "/".join(item.nested_key))
        if kind == "run":
            got["run"] = rec.run
            got["config"].update({key(i): json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            got["config"].update({key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            got["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            got["summary"].update({key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "artifact":
            got["artifacts"][rec.artifact.name] = sorted(m.path for m in
                                                         rec.artifact.manifest.contents)
    return got


def fit_tiny(tmp_path, **changes):
    import raycifar

    cfg = tiny_train_config(tmp_path, num_workers=0, epochs=3, subset=60, **changes)
    return cfg, raycifar.fit(cfg.to_dict(), lr="manual")


def test_the_tracker_is_a_checked_setting(tmp_path):
    assert TrainConfig().tracker == "none"
    with pytest.raises(ConfigError, match="tracker='tensorboard' is not one of"):
        TrainConfig(tracker="tensorboard")
    from raycifar.cli.train import build_parser

    assert build_parser().parse_args(["--tracker", "wandb"]).tracker == "wandb"


def test_an_mlflow_run_holds_the_config_metrics_lrs_model_and_report(tmp_path, mlflow_store):
    cfg, run = fit_tiny(tmp_path, tracker="mlflow", stop_after_epoch=2)
    (first,) = runs_of(mlflow_store)
    assert first.info.status == "KILLED" and first.info.run_name == "tiny"  # stopped
    assert [s for s, _ in history(mlflow_store, first.info.run_id, "epoch/test_acc")] == [1, 2]

    # in-process training (Ray Train's local mode) keeps no checkpoint: the same name trains
    # from epoch 1 again, a new attempt, so a new tracker run (the resumed case, into the same
    # run, is test_seeds' under Ray)
    cfg, run = fit_tiny(tmp_path, tracker="mlflow")
    got = {r.info.run_id: r for r in runs_of(mlflow_store)}
    assert len(got) == 2 and got[first.info.run_id].info.status == "KILLED"
    (tracked,) = [r for rid, r in got.items() if rid != first.info.run_id]
    rid = tracked.info.run_id
    assert tracked.info.status == "FINISHED"
    params = tracked.data.params
    for field, value in cfg.to_dict().items():  # every setting, by its own name
        assert field in params, field
    assert params["lr_max"] == "0.05" and params["lr_source.source"] == "flags"
    assert params["command"] and params["version"]
    # every epoch and optimizer step once, at its own step: the resume sent only what was new
    metrics = RunFolder(cfg.run_dir).read_csv(runs.METRICS)
    assert history(mlflow_store, rid, "epoch/test_acc") == [
        (int(r["epoch"]), pytest.approx(float(r["test_acc"]))) for r in metrics]
    steps = RunFolder(cfg.run_dir).read_csv(runs.STEPS)
    assert [s for s, _ in history(mlflow_store, rid, "step/lr")] == [int(s["step"]) for s in steps]
    assert tracked.data.metrics["final_test_acc"] == pytest.approx(run.final_test_acc)
    files = {a.path for a in mlflow_store.list_artifacts(rid)}
    assert files == {"files", "model", "report"}
    assert {a.path for a in mlflow_store.list_artifacts(rid, "model")} == {"model/model.pt"}
    report = {a.path.split("/")[-1] for a in mlflow_store.list_artifacts(rid, "report")}
    assert {"report.md", "training_curves.png", "one_cycle.png"} <= report
    kept = {a.path.split("/")[-1] for a in mlflow_store.list_artifacts(rid, "files")}
    assert {"config.json", "summary.json", "metrics.csv", "lr_steps.csv"} <= kept
    state = json.loads(Path(cfg.run_dir, TRACKERS_FILE).read_text())["train"]["mlflow"]
    assert state["run_id"] == rid and state["epochs"] == 3 and state["outcome"] == "finished"


def test_a_wandb_offline_run_holds_the_config_metrics_model_and_report(tmp_path, wandb_dir):
    cfg, run = fit_tiny(tmp_path, tracker="wandb")
    state = json.loads(Path(cfg.run_dir, TRACKERS_FILE).read_text())["train"]["wandb"]
    got = wandb_read(wandb_dir, state["run_id"])
    assert got["folders"] == 1
    assert got["run"].display_name == "tiny" and got["run"].project == "tests"
    assert got["config"]["lr_max"] == 0.05 and got["config"]["epochs"] == 3
    assert [h["epoch"] for h in got["history"] if "epoch/test_acc" in h] == [1, 2, 3]
    steps = [h["opt_step"] for h in got["history"] if "step/lr" in h]
    assert steps == [int(s["step"]) for s in RunFolder(cfg.run_dir).read_csv(runs.STEPS)]
    assert got["summary"]["final_test_acc"] == pytest.approx(run.final_test_acc)
    assert got["artifacts"]["tiny-model"] == ["model.pt"]
    assert "report.md" in got["artifacts"]["tiny-report"]
    assert "config.json" in got["artifacts"]["tiny-files"]


def test_a_wandb_run_reopened_by_a_resumed_command_keeps_its_id(tmp_path, wandb_dir):
    folder = RunFolder(str(tmp_path / "run"))
    write_epochs(folder, 1)
    first = TrackedRun.open("wandb", folder.uri, "run")
    first.finish("stopped")
    # W&B names an offline folder by the second and the run id: a command resumed within the
    # same second (only here) would write into the first one's folder
    time.sleep(1.1)
    write_epochs(folder, 3)  # the resumed command trained epochs 2-3
    again = TrackedRun.open("wandb", folder.uri, "run")
    assert again.mirror() == 2
    again.finish("finished")
    got = wandb_read(wandb_dir, first.state["run_id"])
    assert again.state["run_id"] == first.state["run_id"] and got["folders"] == 2
    assert [h["epoch"] for h in got["history"] if "epoch/lr" in h] == [1, 2, 3]


def test_a_missing_extra_is_one_error_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    from raycifar.cli.train import cli

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if raycifar[mlflow] were not there
    cfg = tiny_train_config(tmp_path, num_workers=0)
    assert cli(tiny_argv(cfg) + ["--tracker", "mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("raycifar train: error: --tracker mlflow needs MLflow: "
                              'pip install "raycifar[mlflow]"'), err
    assert not Path(cfg.run_dir, runs.METRICS).exists()


def tiny_argv(cfg) -> list[str]:
    """The command line of tiny_train_config's run, in this process (--num-workers 0)."""
    return ["--data-dir", cfg.data_dir, "--cache-dir", cfg.cache_dir, "--storage-path",
            cfg.storage_path, "--num-workers", "0", "--lr-max", "0.05", "--lr-min", "0.005",
            "--epochs", "3", "--peak-epoch", "1", "--batch-size", "16", "--width", "16",
            "--precision", "fp32", "--no-channels-last", "--loader-workers", "0"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracker_out_of_reach_stops_the_command_before_any_worker(tmp_path):
    cfg = tiny_train_config(tmp_path, num_workers=0)
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    argv = [sys.executable, "-m", "raycifar.train", *tiny_argv(cfg), "--tracker", "mlflow"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m raycifar.train: error: MLflow at http://127.0.0.1:") and \
        "refused or could not be reached" in last, out.stderr[-2000:]
    assert "epoch 1/" not in out.stdout + out.stderr
    assert not Path(cfg.run_dir, runs.METRICS).exists()


def write_epochs(folder: RunFolder, n: int) -> None:
    cols = runs.METRIC_COLUMNS
    folder.write_csv(runs.METRICS, [{**{c: 0.5 for c in cols}, "epoch": e}
                                    for e in range(1, n + 1)], cols)


def test_a_tracker_failing_mid_run_is_a_warning_and_the_next_pass_catches_up(
        tmp_path, mlflow_store, capsys, monkeypatch):
    from raycifar.recipe.logs import setup

    setup()
    folder = RunFolder(str(tmp_path / "run"))
    folder.write_json(runs.CONFIG, {"config": TrainConfig().to_dict(), "version": "x"})
    write_epochs(folder, 1)
    tracked = TrackedRun.open("mlflow", folder.uri, "run")
    follower = Follower(lambda: [tracked], seconds=0.05).start()
    try:
        _wait(lambda: len(history(mlflow_store, tracked.tracker.run_id, "epoch/lr")) == 1)
        good = tracked.tracker.client
        # the server goes away: sending fails with MLflow's own error, warned once
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        tracked.tracker.client = mlflow.MlflowClient(f"http://127.0.0.1:{closed_port()}")
        write_epochs(folder, 3)
        _wait(lambda: tracked.warned)
        assert tracked.state["epochs"] == 1  # nothing counted as sent
        tracked.tracker.client = good        # ... and back
        _wait(lambda: tracked.state["epochs"] == 3)
    finally:
        follower.stop()
    assert [s for s, _ in history(mlflow_store, tracked.tracker.run_id, "epoch/lr")] == [1, 2, 3]
    warnings = [line for line in capsys.readouterr().out.splitlines() if "could not send" in line]
    assert len(warnings) == 1 and "training goes on" in warnings[0]
    assert warnings[0].startswith("[raycifar] warning: MLflow run ")


def _wait(ok, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_tune_trials_become_children_and_the_callback_survives_tunes_pickling(
        tmp_path, mlflow_store):
    """What Tune calls on the driver, called here as Tune would, trial by trial; a restored
    Tuner brings back its pickled callbacks, which find the command's tracker run by name."""
    from raycifar.cluster.tracking import TrackTrials, track_trials

    parent_folder = RunFolder(str(tmp_path / "seeds"))
    parent = TrackedRun.open("mlflow", parent_folder.uri, "seeds-seeds", "seeds")
    folders = {s: RunFolder(str(tmp_path / f"seeds-seed{s}")) for s in (0, 1)}
    (callback,) = track_trials("exp", parent, lambda t: folders[t.config["seed"]].uri)
    callback = pickle.loads(pickle.dumps(callback))  # as a restored Tuner has it
    assert isinstance(callback, TrackTrials)
    trials = [SimpleNamespace(trial_id=f"t{s}", config={"seed": s}) for s in (0, 1)]
    for t in trials:
        callback.on_trial_start(0, trials, t)
        folders[t.config["seed"]].write_json(runs.CONFIG, {"config": TrainConfig().to_dict()})
        write_epochs(folders[t.config["seed"]], 2)
        callback.on_trial_result(0, trials, t, {})
    folders[0].write_json(runs.SUMMARY, {"final_test_acc": 0.9})
    callback.on_trial_complete(0, trials, trials[0])
    callback.on_trial_error(0, trials, trials[1])
    parent.finish("finished")
    got = {r.info.run_name: r for r in runs_of(mlflow_store)}
    assert set(got) == {"seeds-seeds", "seeds-seed0", "seeds-seed1"}
    for s, status in ((0, "FINISHED"), (1, "FAILED")):
        child = got[f"seeds-seed{s}"]
        assert child.data.tags["mlflow.parentRunId"] == parent.tracker.run_id
        assert child.info.status == status
        assert len(history(mlflow_store, child.info.run_id, "epoch/test_acc")) == 2
    assert got["seeds-seed0"].data.metrics["final_test_acc"] == 0.9
    # a command without a tracker leaves a restored Tuner's callbacks with nothing to do
    assert [type(c) for c in track_trials("exp", None, lambda t: "")] == [TrackTrials]
    callback.on_trial_start(0, trials, SimpleNamespace(trial_id="t9", config={"seed": 9}))
    assert len(runs_of(mlflow_store)) == 3


def test_a_trial_the_scheduler_stops_ends_with_the_experiment_and_its_last_epoch(
        tmp_path, mlflow_store):
    """ASHA stops a candidate after a result while its worker trains on: the epoch it writes
    after Tune's on_trial_complete is sent too, and the child ends as stopped when Tune ends
    the experiment (the race that left a stopped candidate's tracker run an epoch short)."""
    from raycifar.cluster.tracking import track_trials

    parent = TrackedRun.open("mlflow", str(tmp_path / "search"), "search-lrs", "find")
    folder = RunFolder(str(tmp_path / "search-trial-a"))
    (callback,) = track_trials("asha", parent, lambda t: folder.uri, with_model=False)
    trial = SimpleNamespace(trial_id="a", config={})
    callback.on_trial_start(0, [trial], trial)
    folder.write_json(runs.CONFIG, {"config": TrainConfig().to_dict()})
    write_epochs(folder, 1)
    callback.on_trial_complete(0, [trial], trial)  # stopped: no summary.json
    write_epochs(folder, 2)  # the epoch its worker finished meanwhile
    (child,) = parent.children
    assert not child.ended
    callback.on_experiment_end([trial])
    assert child.ended and child.state["outcome"] == "stopped"
    parent.finish("finished")
    got = {r.info.run_name: r for r in runs_of(mlflow_store)}
    assert got["search-trial-a"].info.status == "KILLED"  # MLflow's word for stopped
    assert [s for s, _ in history(mlflow_store, child.tracker.run_id, "epoch/test_acc")] == [1, 2]


def test_stopped_trials_end_once_their_train_workers_are_gone(monkeypatch):
    """What on_experiment_end waits for: Ray's state API asked until no RayTrainWorker of
    this job is alive, for `timeout` at most, and not at all where the API cannot answer."""
    import time

    from raycifar.cluster import tracking

    asked = []

    def list_actors(filters, **kw):
        asked.append(dict((k, v) for k, _, v in filters))
        return ["a worker"] if len(asked) < 3 else []

    monkeypatch.setattr(tracking.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(tracking.ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_job_id=lambda: "02000000"))
    monkeypatch.setattr(tracking, "list_actors", list_actors)
    tracking.wait_for_train_workers(timeout=5, every=0.01)
    assert len(asked) == 3 and asked[0] == {"class_name": "RayTrainWorker", "state": "ALIVE",
                                            "job_id": "02000000"}
    monkeypatch.setattr(tracking, "list_actors", lambda **kw: ["for ever"])
    started = time.monotonic()
    tracking.wait_for_train_workers(timeout=0.2, every=0.01)
    assert 0.2 <= time.monotonic() - started < 2

    def unreachable(**kw):
        raise ConnectionError("no dashboard")

    monkeypatch.setattr(tracking, "list_actors", unreachable)
    started = time.monotonic()
    tracking.wait_for_train_workers(timeout=5)
    assert time.monotonic() - started < 0.5


def test_a_finished_run_reopened_sends_nothing_twice_and_a_new_attempt_gets_a_new_run(
        tmp_path, mlflow_store):
    folder = RunFolder(str(tmp_path / "done"))
    write_epochs(folder, 1)
    first = TrackedRun.open("mlflow", folder.uri, "done")
    first.finish("finished")
    again = TrackedRun.open("mlflow", folder.uri, "done")  # e.g. tune lr-find, then search
    assert again.tracker.run_id == first.tracker.run_id and again.mirror() == 0
    again.finish("finished")
    (run,) = runs_of(mlflow_store)
    assert run.info.status == "FINISHED"
    assert len(history(mlflow_store, run.info.run_id, "epoch/lr")) == 1
    again = TrackedRun.open("mlflow", folder.uri, "done")
    again.start_over()  # no checkpoint: training starts at epoch 1 again
    assert again.tracker.run_id != first.tracker.run_id and again.mirror() == 1
    statuses = sorted(r.info.status for r in runs_of(mlflow_store))
    assert statuses == ["KILLED", "RUNNING"]


def test_steps_written_after_a_pass_are_sent_by_the_next(tmp_path, mlflow_store):
    """The worker writes an epoch's metrics.csv row, then its lr_steps.csv rows: a pass
    between the two sends the rest of that epoch's steps next time, even with no new row."""
    folder = RunFolder(str(tmp_path / "run"))
    write_epochs(folder, 1)
    steps = [{"step": i, "epoch": 1, "lr": 0.1 * i, "momentum": 0.9} for i in range(4)]
    folder.write_csv(runs.STEPS, steps[:2], runs.STEP_COLUMNS)
    tracked = TrackedRun.open("mlflow", folder.uri, "run")
    assert tracked.mirror() == 1
    folder.write_csv(runs.STEPS, steps, runs.STEP_COLUMNS)
    tracked.finish("finished")
    assert [s for s, _ in history(mlflow_store, tracked.tracker.run_id, "step/lr")] == [0, 1, 2, 3]


def test_wandb_without_a_key_online_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(TrackerError, match="W&B .* refused or could not be reached: .*API key"):
        TrackedRun.open("wandb", str(tmp_path / "run"), "run")


def test_lr_find_from_a_kept_sweep_is_one_find_run_with_the_curve_and_its_plot(
        tmp_path, mlflow_store, capsys):
    """`tune lr-find --tracker mlflow` where the sweep is kept (read again: no Ray): a
    reading that fails ends the tracker run as failed; the next command reopens the same run
    and finishes it with the sweep, the LRs and the plot."""
    import numpy as np

    from raycifar.cli import tune
    from raycifar.recipe.data import load_arrays
    from raycifar.recipe.lr_finder import RangeTestError, reread
    from raycifar.store.range_test import save_range_test

    cfg = tiny_train_config(tmp_path, name="kept")
    lrs = list(np.geomspace(1e-4, 1e-1, 30))
    flat = list(2.3 + np.random.default_rng(0).normal(0, 0.002, 30))  # onset finds no fall
    with pytest.raises(RangeTestError) as caught:
        reread(lrs, flat, lr_min_rule="onset", settings={
            "start_lr": 1e-4, "end_lr": 1e-1, "num_steps": 30, "mode": "exp"})
    sweep = caught.value.sweep
    sweep.settings.update(batch_size=16, train_images=len(load_arrays(cfg).y_train),
                          seed=cfg.seed)
    save_range_test(RunFolder(cfg.run_dir), sweep)  # what the Tune trial leaves behind
    argv = ["lr-find", "--data-dir", cfg.data_dir, "--cache-dir", cfg.cache_dir,
            "--storage-path", cfg.storage_path, "--name", "kept", "--batch-size", "16",
            "--start-lr", "1e-4", "--end-lr", "1e-1", "--num-steps", "30",
            "--tracker", "mlflow"]
    assert tune.cli([*argv, "--lr-min-rule", "onset"]) == 2
    (failed,) = runs_of(mlflow_store)
    assert failed.info.status == "FAILED" and failed.info.run_name == "kept-lrs"
    assert tune.cli([*argv, "--method", "minimum", "--lr-min-rule", "div"]) == 0
    (run,) = runs_of(mlflow_store)
    rid = run.info.run_id
    assert rid == failed.info.run_id and run.info.status == "FINISHED"
    assert len(history(mlflow_store, rid, "lr_find/loss")) == 30
    found = RunFolder(cfg.run_dir).read_json(runs.LR_FINDER_JSON)
    # the failed reading's tags replaced by the one that worked
    assert float(run.data.tags["lr_find.lr_max"]) == pytest.approx(found["lr_max"])
    assert run.data.tags["lr_find.method"] == "minimum"
    assert {a.path for a in mlflow_store.list_artifacts(rid, "report")} == {"report/lr_finder.png"}
    assert not history(mlflow_store, rid, "epoch/test_acc")  # no training in a find run
