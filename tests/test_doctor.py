"""`python -m raycifar.doctor`: the devices, auto precision on each, versions, the cluster."""

import os
import subprocess
import sys
import time

import pytest
import torch

from raycifar.cli import doctor
from raycifar.recipe import runtime


def pretend_gpus(monkeypatch, gpus):
    """torch sees these (name, capability) GPUs; only the queries doctor and runtime ask."""
    class Props:
        def __init__(self, i):
            self.total_memory = (16 if gpus[i][1][0] < 8 else 141) * 2**30

    index = lambda d: 0 if d is None else (d.index if isinstance(d, torch.device) else d)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: gpus[index(d)][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: gpus[index(d)][1])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: Props(index(d)))
    monkeypatch.setattr(torch.version, "hip", None)


def test_each_gpu_shows_its_capability_and_what_auto_picks_there(monkeypatch):
    pretend_gpus(monkeypatch, [("Tesla T4", (7, 5)), ("NVIDIA H200", (9, 0))])
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    lines = doctor.device_lines()
    assert lines[0].endswith(", bf16 flags: none")
    assert lines[1] == "  " + runtime.describe_precision("auto", torch.device("cpu"))
    assert lines[1].startswith("  precision auto -> fp32: this CPU has no native bf16")
    assert lines[2] == "gpu 0: Tesla T4, compute capability 7.5, 16 GiB"
    assert lines[3].startswith("  precision auto -> fp16: Tesla T4, compute capability 7.5: ")
    assert lines[4] == "gpu 1: NVIDIA H200, compute capability 9.0, 141 GiB"
    assert lines[5].startswith("  precision auto -> bf16: NVIDIA H200, compute capability 9.0")


def test_without_gpus_or_a_cluster_it_says_what_a_run_would_start(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no `ray start` address file there
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    lines = doctor.device_lines()
    assert "bf16 flags: amx_bf16" in lines[0]
    assert lines[1] == "  precision auto -> bf16: this CPU does bf16 natively (amx_bf16 flag)"
    assert lines[2] == "gpus: none visible to torch (CUDA_VISIBLE_DEVICES='')"
    [ray_line] = doctor.cluster_lines(None)
    assert ray_line.startswith("ray: no cluster to join") and "a run starts a local Ray" in ray_line


def test_doctor_runs_in_seconds_without_a_cluster(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "raycifar.doctor"], env=env,
                          capture_output=True, text=True, timeout=60)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith("cpu: ") and out[1].startswith("  precision auto -> ")
    assert any(line.startswith("versions: raycifar ") and f"torch {torch.__version__}" in line
               for line in out)
    assert out[-1].startswith("ray: no cluster to join")
    assert seconds < 15, seconds  # imports only: ~3 s on a 2-core machine


@pytest.mark.ray
def test_doctor_joins_the_cluster_a_run_would_join_and_lists_it(ray_cluster):
    address = ray_cluster.get_runtime_context().gcs_address
    done = subprocess.run([sys.executable, "-m", "raycifar.doctor"],
                          env={**os.environ, "RAY_ADDRESS": address}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == (f"ray: a run joins the cluster at {address}: "
                                            "1 node(s): 2 CPU, 0 GPU in all")
