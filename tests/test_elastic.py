"""Elastic runs on a simulated cluster: a worker node is lost mid-run and the run goes on with
the node left, every epoch once, then grows back when a node joins again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raycifar.recipe.state import CheckpointError
from raycifar.store.resume import checkpoint_epoch
from raycifar.store.runs import RunFolder

from conftest import TINY_WIDTH, write_folder
from simcluster import new_cluster

# The run stalls (a hung rank 0, RAYCIFAR_FAULT) where the test needs it to wait rather than
# train on: at epoch 3 while the node is killed, and at epoch 5, at world size 1, until it grows
# back. Ray's elastic policy sees a returning node through Ray Data's autoscaling coordinator,
# which looks at the cluster every 20 s (not configurable): the stall outlasts that, and the
# run needs no epochs to spend while it waits.
EPOCHS = 6
KILL_AT, GROW_AT = 3, 5
RESIZE_SECONDS = 4
# Ray's GCS declares a silent node dead after `failure_threshold` missed health checks of
# `period` (defaults 5 x 3 s): shortened so the test waits seconds, not a quarter-minute.
FAST_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
              "RAY_health_check_failure_threshold": "3"}


def rows(run: RunFolder) -> list[dict]:
    return run.read_csv("metrics.csv") if run.exists("metrics.csv") else []


def saved_epoch(run: RunFolder):
    try:
        return checkpoint_epoch(run)
    except CheckpointError:  # Ray's snapshot file caught being rewritten
        return None


def wait_for(what, proc: subprocess.Popen, timeout: float, log: Path) -> float:
    deadline = time.monotonic() + timeout
    while not what():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting (rc {proc.poll()}):\n"
                                 f"{log.read_text()[-4000:]}")
        time.sleep(0.2)
    return time.monotonic()


def test_a_lost_worker_with_no_restarts_left_is_one_line_naming_the_resume_epoch(tmp_path):
    import ray.exceptions
    from ray.train import WorkerGroupError

    from raycifar.cluster.ray_compat import lost_worker
    from raycifar.cluster.trainer import LostWorkerError
    from raycifar.store.resume import mark_done

    from conftest import tiny_train_config

    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    # As Ray Train 2.60 reports a dead worker: its poll failed, Ray's error kept inside.
    poll = WorkerHealthCheckFailedError("A worker health check failed.",
                                        failure=ray.exceptions.ActorDiedError())
    died = WorkerGroupError("Training failed due to worker errors",
                            {0: RuntimeError("gloo: Connection reset by peer"), 1: poll})
    what = lost_worker(died)
    assert what == "ActorDiedError: The actor died unexpectedly before finishing this task."
    assert lost_worker(WorkerGroupError("x", {0: ValueError("a bug")})) is None
    cfg = tiny_train_config(tmp_path, num_workers=2, min_workers=1)
    assert str(LostWorkerError(cfg, what)).endswith(
        "restart(s) are used up; no epoch had finished, so the same command starts afresh "
        "(--max-failures allows more)")
    assert str(LostWorkerError(cfg.replace(min_workers=0), what)).endswith(
        "(--max-failures allows more, --num-workers MIN-MAX goes on with the nodes left)")
    folder = tmp_path / "runs" / "tiny" / "checkpoint_x"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"0" * 10)
    mark_done(str(folder), 3)  # a whole checkpoint Ray had not registered yet
    message = str(LostWorkerError(cfg, what))
    assert message.startswith(f"a training worker was lost ({what}) and the run's 3 restart(s)")
    assert "the same command resumes after epoch 3" in message and "\n" not in message


@pytest.mark.ray
def test_a_lost_node_is_survived_and_the_run_grows_back(tmp_path):
    sim = new_cluster(env=FAST_DEATH)
    try:
        sim.start_head(cpus=0)  # the driver and Train's controller only: workers go elsewhere
        sim.add_node(cpus=1)
        sim.add_node(cpus=1)
        data = write_folder(sim.forbidden / "data", n_train=64, n_test=8)  # 12 steps of 16
        storage = tmp_path / "runs"
        argv = [sys.executable, "-m", "raycifar.train", "--data-dir", str(data),
                "--cache-dir", str(sim.forbidden / "cache"), "--storage-path", str(storage),
                "--name", "spot", "--num-workers", "1-2", "--cpus-per-worker", "1",
                "--resize-seconds", str(RESIZE_SECONDS), "--epochs", str(EPOCHS),
                "--peak-epoch", "2", "--batch-size", "16", "--lr-max", "0.05",
                "--lr-min", "0.005", "--precision", "fp32", "--no-channels-last",
                "--loader-workers", "0", "--width", str(TINY_WIDTH), "--shared-storage"]
        log = tmp_path / "train.log"
        stalled = {e: tmp_path / f"stalled{e}" for e in (KILL_AT, GROW_AT)}
        stalls = ",".join(f"stall:epoch={e}:seconds=200:once={marker}"
                          for e, marker in stalled.items())  # once: a restarted group goes on
        with open(log, "w") as out:
            # Ray's reservation still counts the dead node for up to 20 s, so the first restart
            # waits out a worker-group start for 2 (60 s by default; 10 s here).
            env = {**sim.driver_env(), "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10",
                   "RAYCIFAR_FAULT": stalls}
            proc = subprocess.Popen(argv, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, text=True)
        run = RunFolder(str(storage / "spot"))
        try:
            # killed while epoch KILL_AT stalls, once the epoch before's checkpoint is whole on
            # storage: its upload runs behind the next epoch's training, and a node lost before
            # it lands legitimately costs that epoch too
            wait_for(lambda: stalled[KILL_AT].exists() and len(rows(run)) == KILL_AT - 1
                     and rows(run)[-1]["world_size"] == "2"
                     and saved_epoch(run) == KILL_AT - 1, proc, 240, log)
            killed_after = len(rows(run))
            sim.kill_node("sim_node_2")
            lost_at = time.monotonic()
            smaller = wait_for(lambda: any(r["world_size"] == "1" for r in rows(run)), proc, 120,
                               log)
            first_small = next(r for r in rows(run) if r["world_size"] == "1")
            back_training = smaller - float(first_small["epoch_seconds"]) - lost_at
            # the node joins while the run waits at world size 1, so the grow cuts that short
            wait_for(stalled[GROW_AT].exists, proc, 120, log)
            sim.add_node(cpus=1)
            joined_at = time.monotonic()
            grown = wait_for(lambda: rows(run)[-1]["world_size"] == "2"
                             and int(rows(run)[-1]["epoch"]) > int(first_small["epoch"]),
                             proc, 120, log)
            assert proc.wait(timeout=240) == 0, log.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        final = rows(run)
        sizes = [int(r["world_size"]) for r in final]
        assert [int(r["epoch"]) for r in final] == list(range(1, EPOCHS + 1))  # each once
        assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2, sizes
        summary = json.loads((storage / "spot" / "summary.json").read_text())
        assert summary["world_sizes"] == sizes and summary["epochs"] == EPOCHS
        steps = [int(s["step"]) for s in run.read_csv("lr_steps.csv")]
        assert steps == list(range(EPOCHS * 12))  # One Cycle went on where it was
        lost_epochs = killed_after - (int(first_small["epoch"]) - 1)  # finished, trained again
        grow_seconds = grown - joined_at
        print(f"\nnode lost after epoch {killed_after}: training again "
              f"{back_training:.1f}s later at world size 1 (finished epochs trained again: "
              f"{lost_epochs}); a node joined and the run was back at 2 workers "
              f"{grow_seconds:.1f}s later (resize every {RESIZE_SECONDS}s); world sizes {sizes}")
        assert back_training < 90
        assert lost_epochs == 0  # only the epoch in progress when the node died is redone
    finally:
        sim.stop()
