"""Faults on a real local Ray: a killed worker, an interrupted driver, a divergence, determinism.

The faults are real (SIGKILL of a Train worker process, SIGINT/SIGTERM of the CLI, NaN weights);
`RAYCIFAR_FAULT` only says where they strike (see raycifar/recipe/faults.py).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from raycifar.cli.args import run_cli
from raycifar.cli.train import build_parser, main
from raycifar.cluster.placement import user_error
from raycifar.cluster.trainer import fit
from raycifar.recipe.engine import DivergenceError
from raycifar.recipe.faults import ENV
from raycifar.store.resume import (CHECKPOINT_FILE, CheckpointError, checkpoint_epoch,
                                   latest_checkpoint)
from raycifar.store.runs import METRIC_COLUMNS, RunFolder

from conftest import TINY_WIDTH, tiny_train_config

pytestmark = pytest.mark.ray

DETERMINISTIC = [c for c in METRIC_COLUMNS if c not in ("epoch_seconds", "images_per_second")]


def metrics(cfg) -> list[dict]:
    rows = RunFolder(cfg.run_dir).read_csv("metrics.csv", required=METRIC_COLUMNS)
    return [{k: r[k] for k in DETERMINISTIC} for r in rows]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, ray_cluster):
    """An uninterrupted 2-worker run, the reference for the faulted ones."""
    tmp = tmp_path_factory.mktemp("clean")
    cfg = tiny_train_config(tmp, name="clean", num_workers=2, max_failures=1)
    started = time.perf_counter()
    summary = fit(cfg).return_value
    return cfg, summary, time.perf_counter() - started


def test_a_killed_worker_is_restarted_from_the_last_epoch(clean, tmp_path, monkeypatch):
    """Also the determinism check: a second run with the same seed and worker count (here one
    that loses a worker on the way) gives the clean run's metrics to the last digit."""
    ref_cfg, ref, ref_seconds = clean
    cfg = ref_cfg.replace(storage_path=str(tmp_path / "runs"))
    marker = tmp_path / "killed"
    monkeypatch.setenv(ENV, f"kill:epoch=2:step=1:rank=1:once={marker}")
    started = time.perf_counter()
    summary = fit(cfg).return_value
    seconds = time.perf_counter() - started
    assert marker.exists()  # the worker really was killed
    run = RunFolder(cfg.run_dir)
    assert [r["epoch"] for r in metrics(cfg)] == ["1", "2", "3"]  # each epoch exactly once
    steps = run.read_csv("lr_steps.csv")
    assert [int(s["step"]) for s in steps] == list(range(len(steps)))  # no gap, no repeat
    ref_steps = RunFolder(ref_cfg.run_dir).read_csv("lr_steps.csv")
    assert [s["lr"] for s in steps] == [s["lr"] for s in ref_steps]
    # Restored weights, optimizer, schedule and RNG: the same numbers as the clean run.
    assert metrics(cfg) == metrics(ref_cfg)
    assert summary["final_test_acc"] == ref["final_test_acc"]
    print(f"\nrecovery: {seconds:.1f}s with a worker killed vs {ref_seconds:.1f}s clean "
          f"(+{seconds - ref_seconds:.1f}s), 1 partial epoch redone")


def test_a_divergence_stops_with_its_place_and_keeps_the_last_good_checkpoint(
        clean, tmp_path, monkeypatch):
    # one worker: the divergence mark stops a restarted group however many ranks it has
    cfg = clean[0].replace(storage_path=str(tmp_path / "runs"), name="nan", num_workers=1)
    monkeypatch.setenv(ENV, f"nan:epoch=2:step=2:once={tmp_path / 'fired'}")
    with pytest.raises(Exception) as info:
        fit(cfg)  # max_failures=1: the restarted group stops at once on the divergence mark
    err = user_error(info.value)
    assert isinstance(err, DivergenceError), info.value
    assert str(err).startswith("loss became nan at epoch 2, step 6 (lr ")  # 4 steps per epoch
    assert "lower --lr-max" in str(err) and "the checkpoint of epoch 1 is kept" in str(err)
    run = RunFolder(cfg.run_dir)
    assert [r["epoch"] for r in metrics(cfg)] == ["1"]
    state = torch.load(io.BytesIO(run.read_bytes(f"{latest_checkpoint(run)}/{CHECKPOINT_FILE}")),
                       weights_only=False)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_corrupt_checkpoint_gets_one_line_and_exit_2(clean, tmp_path, capsys):
    cfg = clean[0]
    copy = tmp_path / "runs" / cfg.name
    shutil.copytree(cfg.run_dir, copy)
    path = copy / latest_checkpoint(RunFolder(str(copy))) / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:1000])
    argv = ["--data-dir", cfg.data_dir, "--cache-dir", cfg.cache_dir, "--storage-path",
            str(tmp_path / "runs"), "--name", cfg.name, "--num-workers", "2",
            "--cpus-per-worker", "1", "--epochs", "3", "--peak-epoch", "1", "--batch-size",
            "16", "--lr-max", "0.05", "--lr-min", "0.005", "--label-smoothing", "0",
            "--loader-workers", "0", "--precision", "fp32", "--no-channels-last",
            "--width", str(TINY_WIDTH),
            "--max-failures", "1"]
    assert run_cli(main, build_parser(), argv) == 2
    # lines Ray forwards from its processes ("(TrainController pid=...)") may arrive late
    # from an earlier test's run on the shared cluster: only this command's own lines count
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not re.match(r"(\x1b\[\d+m)?\(\w+ pid=\d+", line)]
    assert len(err) == 1 and "cannot read the checkpoint" in err[0]
    assert "start fresh with another --name" in err[0]


def _has_checkpoint(run: RunFolder) -> bool:
    """Whether Ray Train has registered a checkpoint (the snapshot may be mid-write)."""
    try:
        return latest_checkpoint(run) is not None
    except CheckpointError:
        return False


def _saved_epoch(run: RunFolder):
    """The epoch of the run's last whole checkpoint, None while there is none (or mid-write)."""
    try:
        return checkpoint_epoch(run) if run.exists("metrics.csv") else None
    except CheckpointError:
        return None


@pytest.fixture
def ray_root():
    """A Ray temp root (RAY_TMPDIR) for the local Rays one test's commands start. Their
    gcs_server and raylet name their session folder under it on their command lines, so the
    test counts its own Ray processes only, not those of other Rays on the machine (the
    session's head, another test process's clusters). Short: Ray's socket paths are capped."""
    import tempfile

    root = tempfile.mkdtemp(prefix="rcft", dir="/tmp")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ray_servers(root: str) -> set[int]:
    """The live gcs_server and raylet processes of the local Rays started under `root`."""
    out = subprocess.run(["pgrep", "-f", f"(gcs_server|raylet) .*{root}/"],
                         capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_a_terminated_driver_resumes_on_the_next_run(tmp_path, ray_root):
    """SIGTERM here; Ctrl-C (SIGINT) is sent to a run under load in the test below. The first
    command's worker stalls at the start of epoch 3 (a hung worker), so the signal lands
    mid-run however slow the machine is, and the second command trains epochs 3-4 only."""
    sig = signal.SIGTERM
    epochs = 4
    cfg = tiny_train_config(tmp_path, epochs=epochs, peak_epoch=2)
    argv = [sys.executable, "-m", "raycifar.train", "--data-dir", cfg.data_dir, "--cache-dir",
            cfg.cache_dir, "--storage-path", cfg.storage_path, "--name", "int",
            "--epochs", str(epochs), "--peak-epoch", "2", "--batch-size", "16", "--lr-max",
            "0.05", "--lr-min", "0.005", "--cpus-per-worker", "1", "--loader-workers", "0",
            "--precision", "fp32", "--width", str(TINY_WIDTH)]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},  # its own local Ray
           "RAY_TMPDIR": ray_root}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, ENV: "stall:epoch=3:seconds=300"})
    run = RunFolder(os.path.join(cfg.storage_path, "int"))
    deadline = time.time() + 240
    while _saved_epoch(run) != 2:  # epoch 2's checkpoint whole on storage, epoch 3 stalled
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    assert _ray_servers(ray_root)  # the count below sees this command's local Ray
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert len(run.read_csv("metrics.csv")) == 2  # stopped while epoch 3 had not finished
    assert f"interrupted; {run.uri} keeps the checkpoint of epoch 2" in out, out[-3000:]
    kept = 2
    deadline = time.time() + 30
    while _ray_servers(ray_root) and time.time() < deadline:  # the local Ray went with it
        time.sleep(0.5)
    assert not _ray_servers(ray_root)

    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"has a checkpoint: resuming after epoch {kept} of {epochs}" in again.stdout
    assert [int(r["epoch"]) for r in run.read_csv("metrics.csv")] == list(range(1, epochs + 1))
    steps = [int(s["step"]) for s in run.read_csv("lr_steps.csv")]
    assert steps == list(range(len(steps)))
    assert not _ray_servers(ray_root)


def test_a_run_and_a_search_at_once_end_cleanly_and_leave_nothing_behind(tmp_path, ray_root):
    """Each starts its own local Ray on the same 2 cores. The search finishes; the run gets
    Ctrl-C (SIGINT) after its first epoch and stops cleanly. No Ray process survives."""
    cfg = tiny_train_config(tmp_path)
    common = ["--data-dir", cfg.data_dir, "--cache-dir", cfg.cache_dir, "--storage-path",
              cfg.storage_path, "--peak-epoch", "1", "--batch-size", "16",
              "--lr-max", "0.05", "--lr-min", "0.005", "--cpus-per-worker", "1",
              "--loader-workers", "0", "--precision", "fp32", "--width", str(TINY_WIDTH)]
    commands = {
        "b": ["raycifar.train", *common, "--epochs", "20", "--name", "b"],
        "s": ["raycifar.tune", "search", *common, "--epochs", "3", "--name", "s",
              "--candidates", "2", "--search-epochs", "2", "--holdout", "12",
              "--num-steps", "12", "--end-lr", "1"],
    }
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
           "RAY_TMPDIR": ray_root}  # one temp root for the two, as /tmp/ray is by default
    procs = {k: subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=env)
             for k, argv in commands.items()}
    b = RunFolder(os.path.join(cfg.storage_path, "b"))
    deadline = time.time() + 400
    while not _has_checkpoint(b):  # metrics.csv gets its row a moment before the checkpoint
        assert procs["b"].poll() is None and time.time() < deadline
        time.sleep(0.2)
    assert _ray_servers(ray_root)  # the count below sees these commands' local Rays
    procs["b"].send_signal(signal.SIGINT)
    outs = {k: p.communicate(timeout=500)[0] for k, p in procs.items()}
    assert procs["s"].returncode == 0, outs["s"][-3000:]
    assert procs["b"].returncode == 130, outs["b"][-3000:]
    assert f"interrupted; {b.uri} keeps the checkpoint of epoch" in outs["b"]
    assert RunFolder(os.path.join(cfg.storage_path, "s")).exists("best.json")
    deadline = time.time() + 30
    while _ray_servers(ray_root) and time.time() < deadline:
        time.sleep(0.5)
    assert not _ray_servers(ray_root)
