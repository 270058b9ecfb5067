"""Shared fixtures: generated CIFAR-like data on disk and one local Ray cluster per session."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

# Set before Ray starts anywhere in the session: no token auth on the throwaway cluster, a
# faster controller poll than Ray's 2 s (fits end sooner; every poll is an actor call to each
# worker, and at 0.2 s they cost the saturated cores more than they saved), quiet logs.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Under pytest-xdist the test processes share the cores: each (and what it starts) gets its
# share of math threads, not torch's default of one per core in every process. On 2 cores
# (another job running too) the non-Ray tests took 94 s in two processes of two OpenMP threads
# each, 35 s with one thread each, 60 s in one process.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

CLASSES = ["cat", "dog", "frog"]
REPO = Path(__file__).resolve().parents[1]

# The suite runs in two pytest-xdist processes (`-n 2 --dist loadgroup` in pyproject's
# addopts), each test in the process its group is sent to: xdist sends a group whole to one
# process, which runs its tests one after the other. The Ray tests go in two groups, "lanes",
# which xdist hands out first (the largest groups go first), one to each process: never more
# than two Ray runs at once on the two cores. Lane "ray-shared" holds every test on the session's cluster (`ray_cluster`),
# so one such cluster serves the whole suite (an idle Ray head used 8-12 CPU seconds a minute
# here: a second one alive through the run cost ~2 CPU minutes). Lane "ray-own" holds the
# tests that start clusters or local Rays of their own, and the files whose in-process tests
# must not find their process connected to a cluster. Files that share a module or session
# fixture stay together. Every other test goes where there is room. Without xdist
# (`-p no:xdist`, `-n 0`) the groups mean nothing.
SHARED_LANE, OWN_LANE = "ray-shared", "ray-own"
# besides the Ray tests: files whose in-process tests (a fit, the CLI's main) must not find
# their process connected to the session's cluster
OWN_LANE_FILES = {"test_api.py", "test_cli.py"}
XDIST_GROUPS = {
    # the session's trained run, made once
    "test_evaluate.py": "trained-run", "test_predict.py": "trained-run",
    "test_report.py": "report",  # a module fixture
    "test_trackers.py": "trackers",  # a module fixture (an empty MLflow store)
}


def xdist_group(item) -> str | None:
    """The lane (or fixture group) of a test; None: wherever there is room."""
    name = item.path.name
    if "ray_cluster" in item.fixturenames:
        return SHARED_LANE
    if name in OWN_LANE_FILES or item.get_closest_marker("ray"):
        return OWN_LANE
    return XDIST_GROUPS.get(name)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        group = xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def class_images(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Learnable images: each class is a noisy version of its own colour."""
    base = np.zeros((32, 32, 3), np.float32)
    base[..., label % 3] = 200
    noise = rng.normal(0, 30, (n, 32, 32, 3))
    return np.clip(base + noise + 20, 0, 255).astype(np.uint8)


def write_folder(root: Path, n_train: int = 24, n_test: int = 8, classes=CLASSES,
                 suffix: str = ".png", seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(class_images(label, n, rng)):
                Image.fromarray(img).save(d / f"{i:04d}{suffix}")
    return root


def write_batches(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """A fake cifar-10-batches-py folder in CIFAR's own pickle layout."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        labels = [(i + b) % 10 for i in range(per_batch)]
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return d


# The network of the tests that exercise the machinery (Ray, resume, faults, files) rather than
# the recipe: every layer at a quarter of the spec's width, ~11x fewer FLOPs. The spec's network
# is pinned by test_model and trained under Ray by test_ray_train's two-worker run.
TINY_WIDTH = 16


def tiny_train_config(tmp_path: Path, **changes):
    """A TrainConfig over a generated 3-class image tree: seconds per epoch on one CPU."""
    from raycifar.recipe.config import TrainConfig

    data = write_folder(tmp_path / "data", n_train=24, n_test=8)
    base = dict(data_dir=str(data), cache_dir=str(tmp_path / "cache"),
                storage_path=str(tmp_path / "runs"), name="tiny", epochs=3, peak_epoch=1,
                batch_size=16, lr_max=0.05, lr_min=0.005, label_smoothing=0.0, num_workers=1,
                cpus_per_worker=1, loader_workers=0, precision="fp32", channels_last=False,
                width=TINY_WIDTH)
    return TrainConfig(**{**base, **changes})


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray head (2 CPUs) for every test that needs a cluster.

    Started with `ray start` on a port of its own and its own temp dir, and every job's workers
    get RAY_ADDRESS: Ray Train's placement-group cleaner looks the cluster up by address, and
    with a second Ray on the machine (a developer's training run) "auto" would be ambiguous,
    leaking the CPUs of trials that Tune stops. The dashboard stays on: its state API is what
    the cleaner queries.
    """
    import shutil
    import subprocess
    import sys
    import tempfile
    import time

    import ray

    from simcluster import free_ports

    # Every port chosen here, as simcluster's nodes do: a second head like this one (another
    # test process's) would otherwise share Ray's fixed defaults (the client server's 10001,
    # the dashboard agent's 52365).
    port, dashboard, client, agent_http, agent_grpc, metrics, env_agent = free_ports(7)
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="rc-ray-", dir="/tmp")  # short: Ray's socket paths are capped
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
                    "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--ray-client-server-port={client}",
                    f"--dashboard-agent-listen-port={agent_http}",
                    f"--dashboard-agent-grpc-port={agent_grpc}",
                    f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={env_agent}",
                    f"--temp-dir={temp}", "--disable-usage-stats"], check=True,
                   capture_output=True)
    try:
        ray.init(address=address, runtime_env={"env_vars": {"RAY_ADDRESS": address}})
        yield ray
    finally:
        ray.shutdown()
        # `ray stop` would stop every Ray on the machine; stop only this head's processes.
        # gcs_server, raylet and the autoscaler's monitor outlive SIGTERM (on an idle machine
        # too: still there 12 s after it), and a throwaway cluster needs no graceful end:
        # KILL what is left after 2 s.
        subprocess.run(["pkill", "-f", temp], check=False)
        deadline = time.monotonic() + 2
        while subprocess.run(["pgrep", "-f", temp], capture_output=True).returncode == 0:
            if time.monotonic() > deadline:
                subprocess.run(["pkill", "-KILL", "-f", temp], check=False)
                break
            time.sleep(0.2)
        shutil.rmtree(temp, ignore_errors=True)


def free_cpus(ray, want: float = 2, timeout: float = 30) -> float:
    """The cluster's free CPUs once `want` are free (an earlier run's workers gone), or after
    `timeout` seconds, whichever comes first."""
    import time

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < want and time.monotonic() < deadline:
        time.sleep(0.5)
    return ray.available_resources().get("CPU", 0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One finished tiny run (Ray Train local mode, in-process), its run folder; shared by the
    evaluate and predict tests. It trains on a seeded subset (60 train / 12 test images, seed 3)
    and some test images carry another class's colour, so it gets some, not all, right."""
    from raycifar.cluster.trainer import fit

    tmp = tmp_path_factory.mktemp("trained")
    cfg = tiny_train_config(tmp, num_workers=0, epochs=2, subset=60, seed=3)
    test = Path(cfg.data_dir) / "test"
    for i in range(4):  # cat-coloured images labelled dog, dog-coloured labelled frog
        (test / "cat" / f"{i:04d}.png").rename(test / "dog" / f"cat{i}.png")
        (test / "dog" / f"{i:04d}.png").rename(test / "frog" / f"dog{i}.png")
    fit(cfg)
    return Path(cfg.run_dir)
