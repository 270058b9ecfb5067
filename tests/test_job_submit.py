"""`ray job submit` against a real head, as jobs/README.md does on a cluster: a short training
run shipped with --working-dir, then a complete run folder.

The head is our own (`ray start --head` on 127.0.0.1, every port chosen here, its own temp
dir), so it can run beside any other Ray on the machine, and it is stopped by killing exactly
its processes: never `ray stop`, which stops every Ray of the user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from raycifar.runs import RunFolder
from raycifar.train import METRIC_COLUMNS, STEP_COLUMNS

from conftest import write_folder

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` of this interpreter
RUN_FILES = ("config.json", "metrics.csv", "lr_steps.csv", "predictions.npz", "model.pt",
             "summary.json")


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ray_env() -> dict:
    """This session's environment (conftest: no token auth, fast Train polling, quiet logs)
    without any address that would point the CLI at another Ray."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # A busy machine starts the dashboard agent slowly; the raylet's default wait for it
    # (agent_register_timeout_ms) then aborts the head.
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_agent_register_timeout_ms="120000")
    return env


def _psutil():
    import ray  # noqa: F401  (puts the psutil Ray bundles on sys.path)
    import psutil

    return psutil


def own_processes(temp_dir: str):
    """Every process of the head started with `temp_dir`: those whose command line names it
    (gcs_server, raylet, dashboard, agents, monitors) and all their descendants (workers,
    the job supervisor and the job's driver)."""
    psutil = _psutil()
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in (p.info["cmdline"] or [])):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_head(temp_dir: str) -> None:
    psutil = _psutil()

    procs = own_processes(temp_dir)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture
def ray_head():
    """A head on 127.0.0.1 with 2 CPUs; yields (gcs address, dashboard URL)."""
    # Short: Ray puts unix sockets under it, and their paths must stay under ~107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rcj", dir="/tmp")
    gcs, dash, client, agent_http, agent_grpc, metrics, env_agent = free_ports(7)
    cmd = [*RAY_CLI, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent_http),
           "--dashboard-agent-grpc-port", str(agent_grpc),
           "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(env_agent),
           "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", temp_dir,
           "--disable-usage-stats"]
    # Ray's own processes (Train's state actor, the placement-group cleaner) look the cluster
    # up with address "auto", which fails while another Ray runs on this machine; RAY_ADDRESS,
    # inherited from `ray start`, names ours. No idle workers started ahead: on a busy machine
    # they compete with the raylet's registration, which `ray start` waits for only 30 s.
    head_env = {**ray_env(), "RAY_ADDRESS": f"127.0.0.1:{gcs}",
                "RAY_enable_worker_prestart": "0"}
    try:
        for attempt in (1, 2):  # a busy machine sometimes misses Ray's fixed 30 s start window
            started = subprocess.run(cmd, env=head_env, capture_output=True, text=True,
                                     timeout=180)
            if started.returncode == 0:
                break
            stop_head(temp_dir)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_trains_and_writes_the_run_folder(tmp_path, ray_head):
    from ray.job_submission import JobStatus, JobSubmissionClient

    gcs, dashboard = ray_head
    data = write_folder(tmp_path / "data", n_train=24, n_test=8)
    storage = tmp_path / "runs"
    # sys.executable, not `python`: the job runs with the environment `ray start` had, whose
    # `python` may not be the interpreter that has this package and its dependencies.
    entrypoint = [sys.executable, "-m", "raycifar.train", "--address", gcs,
                  "--data-dir", str(data), "--num-workers", "1", "--cpus-per-worker", "1",
                  "--epochs", "2", "--peak-epoch", "1", "--batch-size", "16",
                  "--precision", "fp32", "--no-channels-last", "--loader-workers", "0",
                  "--storage-path", str(storage), "--name", "jobtest",
                  "--cache-dir", str(tmp_path / "cache"), "--lr-max", "0.05", "--lr-min", "0.005"]
    submission_id = f"raycifar-jobtest-{os.getpid()}-{int(time.time())}"
    # The repository is the working dir; Ray 2.60 leaves out .git and what .gitignore lists.
    submit = [*RAY_CLI, "job", "submit", "--address", dashboard,
              "--submission-id", submission_id, "--working-dir", str(REPO), "--", *entrypoint]
    done = subprocess.run(submit, env=ray_env(), capture_output=True, text=True, timeout=240)
    logs = done.stdout + done.stderr

    client = JobSubmissionClient(dashboard)
    status = client.get_job_status(submission_id)
    assert status == JobStatus.SUCCEEDED, f"{status}\n{logs[-4000:]}"
    assert done.returncode == 0, logs[-4000:]
    assert "[raycifar] done in" in client.get_job_logs(submission_id)
    assert "Found multiple active Ray instances" not in logs  # RAY_ADDRESS reached Ray's actors

    run = RunFolder(str(storage / "jobtest"))
    for name in RUN_FILES:
        assert run.exists(name), f"{name} missing; job logs:\n{logs[-4000:]}"
    rows = run.read_csv("metrics.csv", required=METRIC_COLUMNS)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    config = run.read_json("config.json")
    assert config["world_size"] == 1 and config["config"]["name"] == "jobtest"
    assert config["steps_per_epoch"] == 5  # 72 images in batches of 16, the last one partial
    assert len(run.read_csv("lr_steps.csv", required=STEP_COLUMNS)) == 2 * 5
    summary = run.read_json("summary.json")
    assert summary["epochs"] == 2 and summary["test_images"] == 3 * 8
