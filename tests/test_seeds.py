"""Seeds as a Tune run, the search's two lengths, fractional GPUs: planned without Ray, run
for real on a Ray cluster (two seeds in parallel on 2 CPUs, interrupted and resumed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raycifar.cluster.trials import search_plan
from raycifar.recipe.config import SearchConfig
from raycifar.store.runs import RunFolder
from raycifar.store.seeds import spread

from conftest import TINY_WIDTH, free_cpus, tiny_train_config


def test_short_and_full_searches_are_planned_from_the_same_grid(tmp_path):
    cfg = tiny_train_config(tmp_path, epochs=24, peak_epoch=5)
    short = search_plan(cfg, 0.1, 0.002, SearchConfig(candidates=3, holdout=12), use_gpu=False)
    full = search_plan(cfg, 0.1, 0.002, SearchConfig(candidates=3, holdout=12), use_gpu=True)
    assert (short.length, full.length) == ("short", "full")  # the default follows the device
    assert [p[0] for p in short.pairs] == [p[0] for p in full.pairs] == pytest.approx(
        [0.025, 0.1, 0.4])
    # short: 4 epochs, the peak at the run's fraction, LRMIN scaled with LRMAX, judged at once
    assert (short.short.epochs, short.short.peak_epoch, short.grace) == (4, 1, 1)
    assert [p[1] for p in short.pairs] == pytest.approx([0.0005, 0.002, 0.008])
    # full: the run's own cycle and the found LRMIN, judged from halfway
    assert (full.short.epochs, full.short.peak_epoch, full.grace) == (24, 5, 12)
    assert [p[1] for p in full.pairs] == pytest.approx([0.002, 0.002, 0.002])
    for plan in (short, full):
        assert plan.short.validation == 12 and plan.short.stop_after_epoch == 0
    forced = search_plan(cfg, 0.1, 0.09, SearchConfig(candidates=3, length="full"), False)
    assert forced.length == "full" and forced.pairs[0] == pytest.approx((0.025, 0.0125))


def test_the_spread_of_seeds():
    assert spread([0.90, 0.92]) == pytest.approx(
        {"mean": 0.91, "std": 0.0141421356, "min": 0.90, "max": 0.92})
    assert spread([0.9])["std"] == 0.0


def seeds_cli(cfg, address: str, *more: str, timeout: int = 600
              ) -> subprocess.CompletedProcess:
    """`raycifar tune seeds` on the session's cluster (RAY_ADDRESS, as in a `ray job submit`
    job): a command that starts its own local Ray is tested in test_fault_tolerance."""
    argv = [sys.executable, "-m", "raycifar.tune", "seeds", "--seeds", "2",
            "--data-dir", cfg.data_dir, "--cache-dir", cfg.cache_dir, "--storage-path",
            cfg.storage_path, "--name", "seeds", "--epochs", "2", "--peak-epoch", "1",
            "--batch-size", "16", "--cpus-per-worker", "1", "--loader-workers", "0",
            "--precision", "fp32", "--no-channels-last", "--width", str(TINY_WIDTH),
            "--lr-max", "0.05", "--lr-min",
            "0.005", *more]
    env = {**__import__("os").environ, "RAY_ADDRESS": address}
    import ray

    free_cpus(ray)  # an earlier test's workers gone: both CPUs free
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.ray
def test_seeds_run_in_parallel_resume_and_report(tmp_path, monkeypatch, ray_cluster):
    """... and are tracked in MLflow: a seeds run with a child run per seed, resumed."""
    cfg = tiny_train_config(tmp_path)
    address = ray_cluster.get_runtime_context().gcs_address
    tracking = ["--tracker", "mlflow"]  # the test extra has MLflow
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)  # its artifacts go to ./mlruns
    # each seed stops after epoch 1
    stopped = seeds_cli(cfg, address, "--stop-after-epoch", "1", *tracking)
    assert stopped.returncode == 1, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    folder = RunFolder(cfg.run_dir.replace("/tiny", "/seeds"))
    assert json.loads(folder.read_text("seeds.json"))["unfinished"] == [0, 1]

    # the same name again: both seeds resume from epoch 1
    done = seeds_cli(cfg, address, *tracking)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert out.count("resuming seeds-seed") == 2
    rows = folder.read_csv("seeds.csv", ["seed", "final_test_acc", "best_test_acc_plain"])
    assert [r["seed"] for r in rows] == ["0", "1"]
    summary = folder.read_json("seeds.json")
    assert summary["n"] == 2 and summary["unfinished"] == []
    assert summary["lr_max"] == 0.05 and summary["lr_source"]["source"] == "flags"
    finals = [float(r["final_test_acc"]) for r in rows]
    assert summary["final_test_acc"]["mean"] == pytest.approx(sum(finals) / 2)
    for seed in (0, 1):
        run = RunFolder(f"{cfg.storage_path}/seeds-seed{seed}")
        assert run.read_json("config.json")["config"]["seed"] == seed
        assert [r["epoch"] for r in run.read_csv("metrics.csv")] == ["1", "2"]
    losses = [RunFolder(f"{cfg.storage_path}/seeds-seed{s}").read_csv("metrics.csv")[0]
              ["train_loss"] for s in (0, 1)]
    assert losses[0] != losses[1]  # the seeds differ, not copies of one run

    from raycifar.reading.report import write_report
    md = write_report(folder.uri, str(tmp_path / "report")).read_text()
    assert "2 seeds: final test accuracy" in md and "![seeds](seeds.png)" in md
    assert (tmp_path / "report" / "seeds.png").stat().st_size > 5000

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    tracked = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("raycifar").experiment_id])}
    assert set(tracked) == {"seeds-seeds", "seeds-seed0", "seeds-seed1"}  # resumed, not doubled
    parent = tracked["seeds-seeds"]
    assert parent.info.status == "FINISHED" and parent.data.params["seeds"] == "2"
    assert parent.data.metrics["final_test_acc.mean"] == pytest.approx(
        summary["final_test_acc"]["mean"])
    for seed in (0, 1):
        child = tracked[f"seeds-seed{seed}"]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED" and child.data.params["seed"] == str(seed)
        assert [m.step for m in client.get_metric_history(child.info.run_id,
                                                          "epoch/test_acc")] == [1, 2]
        assert "model" in {a.path for a in client.list_artifacts(child.info.run_id)}
