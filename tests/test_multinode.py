"""The card's commands on a cluster the user started: a simulated two-node cluster of
`ray start` processes on this machine (tests/simcluster.py), each node with 2 CPUs.

Every driver here runs as a user would run it on the head, without `--address` unless a test
says so. Workers of 2 CPUs fit one per node, so a two-worker run spans both nodes. The data
and the decode cache sit in a folder that Ray workers may not open (an audit hook in every
worker process logs and refuses it), so a finished run proves they never read --data-dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raycifar.store.runs import METRIC_COLUMNS, STEP_COLUMNS, RunFolder

from conftest import TINY_WIDTH, write_folder
from simcluster import RAY_CLI, new_cluster

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = ("config.json", "metrics.csv", "lr_steps.csv", "predictions.npz", "model.pt",
             "summary.json")


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node, 2 CPUs each, and a data folder only the driver may read."""
    sim = new_cluster()
    try:
        sim.start_head()
        sim.add_node()
        write_folder(sim.forbidden / "data", n_train=24, n_test=8)
        yield sim
    finally:
        sim.stop()


def tiny_args(sim, storage: Path, name: str, *more: str) -> list[str]:
    return ["--data-dir", str(sim.forbidden / "data"), "--cache-dir",
            str(sim.forbidden / "cache"), "--epochs", "2", "--peak-epoch", "1",
            "--batch-size", "16", "--precision", "fp32", "--no-channels-last",
            "--loader-workers", "0", "--width", str(TINY_WIDTH), "--storage-path", str(storage),
            "--name", name, *more]


def train(sim, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m raycifar.train ARGV` on the head, as a user there would run it."""
    return subprocess.run([sys.executable, "-m", "raycifar.train", *argv], env=sim.driver_env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_workers_never_opened_the_data(sim) -> None:
    log = sim.forbidden_log
    assert not log.exists(), f"Ray workers opened driver-only files:\n{log.read_text()}"


def test_the_hook_refuses_worker_opens_of_the_driver_only_folder(cluster):
    """The proof the other tests rely on: a Ray worker that opens the folder fails, logged."""
    probe = cluster.forbidden / "probe.txt"
    probe.write_text("x")
    script = ("import ray\nray.init()\n"
              "@ray.remote\ndef read(p):\n    return open(p).read()\n"
              f"print(open({str(probe)!r}).read())\n"  # the driver may
              f"ray.get(read.remote({str(probe)!r}))\n")
    done = subprocess.run([sys.executable, "-c", script], env=cluster.driver_env(),
                          capture_output=True, text=True, timeout=120)
    try:
        assert done.returncode != 0 and "PermissionError" in done.stderr, done.stderr[-3000:]
        assert done.stdout.startswith("x")
        assert str(probe) in cluster.forbidden_log.read_text()
    finally:
        cluster.forbidden_log.unlink(missing_ok=True)
        probe.unlink()


def test_train_without_address_joins_the_cluster_and_spans_both_nodes(cluster):
    storage = cluster.root / "shared-runs"
    done = train(cluster, tiny_args(cluster, storage, "two-nodes", "--num-workers", "2",
                                    "--cpus-per-worker", "2", "--shared-storage",
                                    "--lr-max", "0.05", "--lr-min", "0.005"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Connecting to existing Ray cluster" in done.stdout + done.stderr
    run = RunFolder(str(storage / "two-nodes"))
    placed = run.read_json("config.json")["workers"]
    nodes = cluster.alive_nodes()
    assert sorted(w["rank"] for w in placed) == [0, 1]
    assert {w["node_id"] for w in placed} == set(nodes)  # one worker on each node
    assert [r["epoch"] for r in run.read_csv("metrics.csv", METRIC_COLUMNS)] == ["1", "2"]
    assert run.read_json("summary.json")["workers"] == 2
    assert_workers_never_opened_the_data(cluster)


def test_a_local_storage_path_on_two_nodes_needs_shared_storage(cluster):
    storage = cluster.root / "node-local-runs"
    done = train(cluster, tiny_args(cluster, storage, "refused", "--num-workers", "2",
                                    "--cpus-per-worker", "2", "--lr-max", "0.05",
                                    "--lr-min", "0.005"), timeout=120)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "spans 2 nodes" in errors[0] and "--shared-storage" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (storage / "refused" / "config.json").exists()


def test_job_submit_without_address_trains_and_writes_the_run_folder(cluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    storage = cluster.root / "job-runs"
    # sys.executable, not `python`: the job runs with the environment `ray start` had, whose
    # `python` may not be the interpreter that has this package and its dependencies.
    entrypoint = [sys.executable, "-m", "raycifar.train",
                  *tiny_args(cluster, storage, "job", "--num-workers", "2",
                             "--cpus-per-worker", "2", "--shared-storage",
                             "--lr-max", "0.05", "--lr-min", "0.005")]
    submission_id = f"raycifar-job-{os.getpid()}-{int(time.time())}"
    # The repository is the working dir; Ray 2.60 leaves out .git and what .gitignore lists.
    submit = [*RAY_CLI, "job", "submit", "--address", cluster.dashboard,
              "--submission-id", submission_id, "--working-dir", str(REPO), "--", *entrypoint]
    done = subprocess.run(submit, env=cluster.driver_env(), capture_output=True, text=True,
                          timeout=300)
    logs = done.stdout + done.stderr
    client = JobSubmissionClient(cluster.dashboard)
    status = client.get_job_status(submission_id)
    assert status == JobStatus.SUCCEEDED, f"{status}\n{logs[-4000:]}"
    assert done.returncode == 0, logs[-4000:]
    job_log = client.get_job_logs(submission_id)
    assert "[raycifar] done in" in job_log
    assert "Found multiple active Ray instances" not in logs  # RAY_ADDRESS reached Ray's actors

    run = RunFolder(str(storage / "job"))
    for name in RUN_FILES:
        assert run.exists(name), f"{name} missing; job logs:\n{logs[-4000:]}"
    rows = run.read_csv("metrics.csv", required=METRIC_COLUMNS)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    config = run.read_json("config.json")
    assert config["world_size"] == 2 and config["config"]["name"] == "job"
    assert {w["node_id"] for w in config["workers"]} == set(cluster.alive_nodes())
    assert config["steps_per_epoch"] == 4  # 72 images in full global batches of 16
    assert len(run.read_csv("lr_steps.csv", required=STEP_COLUMNS)) == 2 * 4
    summary = run.read_json("summary.json")
    assert summary["epochs"] == 2 and summary["test_images"] == 3 * 8
    assert_workers_never_opened_the_data(cluster)


def test_lr_search_runs_the_range_test_and_the_search_on_the_cluster(cluster):
    storage = cluster.root / "search-runs"
    # --address given this time: the fourth way in (the other three: RAY_ADDRESS in the job
    # above, the `ray start` cluster of this node, a new local Ray in test_fault_tolerance)
    done = train(cluster, tiny_args(cluster, storage, "searched", "--address", cluster.gcs,
                                    "--num-workers", "1", "--cpus-per-worker", "2",
                                    "--shared-storage", "--lr-search", "--candidates",
                                    "2", "--search-epochs", "2", "--num-steps", "10",
                                    "--start-lr", "1e-3", "--end-lr", "1", "--lr-min-rule",
                                    "div", "--holdout", "12"), timeout=500)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    run = RunFolder(str(storage / "searched"))
    rows = run.read_csv("lr_search.csv", ["lr_max", "epochs_run"])
    assert len(rows) == 2
    best = run.read_json("best.json")
    assert run.read_json("config.json")["config"]["lr_max"] == pytest.approx(best["lr_max"])
    assert run.exists("summary.json") and run.exists("lr_finder.csv")
    # the start-up's phases, from the driver, the range test's trial and rank 0, in order
    summary = run.read_json("summary.json")
    startup = summary["startup"]
    assert set(startup) == {"imports", "data", "ray", "range_test_start", "range_test_setup",
                            "range_test_sweep", "range_test_end", "lr_search", "before_fit",
                            "train_start", "worker_data", "worker_setup", "in_all"}
    assert all(v >= 0 for v in startup.values()), startup
    assert startup["lr_search"] > startup["range_test_sweep"] > 0
    assert sum(startup.values()) - startup["in_all"] <= startup["in_all"] + 0.01
    assert startup["in_all"] + summary["train_seconds"] < summary["command_seconds"]
    assert run.read_json("lr_finder.json")["settings"]["device"] == "cpu"
    assert "No available node types can fulfill" not in out
    assert_workers_never_opened_the_data(cluster)


@pytest.fixture(scope="module")
def token_head():
    """A one-node cluster with token authentication that declares 4 CPUs and one GPU it does
    not have (`ray start --num-gpus 1`): the token test and the GPU packing test share it, as
    one head costs less than two."""
    from ray._private.authentication.authentication_token_generator import \
        generate_new_authentication_token

    sim = new_cluster()
    sim.token = sim.root / "auth_token"
    sim.token.write_text(generate_new_authentication_token())
    try:
        sim.start_head(cpus=4, gpus=1)
        write_folder(sim.forbidden / "data", n_train=24, n_test=8)
        yield sim
    finally:
        sim.stop()


def test_a_token_authenticated_cluster_is_joined_as_a_bare_ray_init_would(token_head):
    """Ray 2.60 turns token authentication on for a cluster it finds itself (no address, or
    "auto") when a token exists, and never for an address passed in: the `ray start` cluster
    of this node is joined as "auto", so the default path works with RAY_AUTH_MODE unset."""
    sim = token_head
    # --no-use-gpu: the head's GPU is declared, not there
    done = train(sim, tiny_args(sim, sim.root / "runs", "token", "--lr-max", "0.05",
                                "--lr-min", "0.005", "--epochs", "2", "--no-use-gpu"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert RunFolder(str(sim.root / "runs" / "token")).exists("summary.json")
    # an address given needs RAY_AUTH_MODE=token, as Ray's own tools do
    joined = subprocess.run(
        [sys.executable, "-c", "import ray; from raycifar.cluster.connect import init_ray; "
         f"init_ray('{sim.gcs}'); print(int(ray.cluster_resources()['CPU']))"],
        env={**sim.driver_env(), "RAY_AUTH_MODE": "token"}, capture_output=True, text=True,
        timeout=120)
    assert joined.returncode == 0 and joined.stdout.split()[-1] == "4", joined.stderr[-3000:]


def test_packing_ranks_of_one_run_onto_a_gpu_is_refused_before_any_worker_starts(token_head):
    """A head that declares one GPU it does not have: two workers of 0.5 GPU would both get
    GPU 0 and crash in NCCL, so every command that would train them says so in one line and
    exits; one-worker trials of a fraction are what packing is for."""
    sim = token_head
    storage = sim.root / "runs"
    packed = ["--num-workers", "2", "--gpus-per-worker", "0.5", "--cpus-per-worker", "1",
              "--lr-max", "0.05", "--lr-min", "0.005"]
    for module, extra in (("raycifar.train", []), ("raycifar.tune", ["seeds", "--seeds", "2"])):
        argv = [*extra, *tiny_args(sim, storage, module.replace(".", "-"), *packed)]
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", module, *argv], env=sim.driver_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "would put ranks of one NCCL process group on the same " \
            "GPU" in errors[0] and "--num-workers 1 --gpus-per-worker 0.25" in errors[0], errors
        assert "Traceback" not in done.stderr and "NCCL" not in done.stdout
        assert time.monotonic() - start < 60  # no retries, no waiting for a placement
