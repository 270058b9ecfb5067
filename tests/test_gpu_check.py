"""jobs/gpu_check.sh rehearsed on this CPU: every stage the lent GPU machine would run, with
`python3` as the only Python it names (as on a bare GPU image) and a stub nvidia-smi."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, write_folder

pytestmark = pytest.mark.ray


def test_the_device_check_rehearses_end_to_end_on_cpu(ray_cluster, tmp_path):
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").symlink_to(sys.executable)  # the bare image's only python
    data = write_folder(tmp_path / "data")
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
           # the session's cluster, as a user's `ray start` cluster would be joined
           "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(REPO / "jobs" / "gpu_check.sh"), "--rehearse",
                           str(data), str(out)], env=env, capture_output=True, text=True,
                          timeout=540, cwd=tmp_path)
    steps = (out / "steps.txt").read_text() if (out / "steps.txt").exists() else ""
    assert done.returncode == 0, steps + done.stdout[-4000:] + done.stderr[-2000:]
    for stage in ("doctor", "train", "compare", "report", "compile-default",
                  "compile-reduce-overhead", "bench"):
        assert f"] {stage} rc=0" in steps, steps
    assert "every stage passed" in steps
    assert (out / "gpu.txt").read_text().splitlines()[1].startswith("rehearsal stub")
    assert "precision auto -> " in (out / "doctor.log").read_text()
    summary = json.loads((out / "runs" / "fast-24" / "summary.json").read_text())
    assert summary["epochs"] == 2
    figures = (out / "figures.md").read_text()  # the H200 run beside this one
    assert "`results/gpu-h200/fast-24`" in figures and "| NVIDIA H200 | cpu" in figures
    assert (out / "split.md").read_text().startswith("# Where the time of ")
    for name in ("compare.md", "BENCHMARKS.md", "bench.json", "compile-default.json",
                 "compile-reduce-overhead.json", "runs.tar.gz"):
        assert (out / name).stat().st_size > 0, name
    assert any((out / "report").glob("*.png"))


def test_the_device_check_refuses_bad_arguments(tmp_path):
    script = str(REPO / "jobs" / "gpu_check.sh")
    for argv, said in ((["--part", "3", "d"], "--part 3: use 1, 2 or all"),
                       (["--frobnicate", "d"], "unknown option --frobnicate"),
                       ([], "usage: jobs/gpu_check.sh")):
        done = subprocess.run(["bash", script, *argv], capture_output=True, text=True,
                              timeout=30, cwd=tmp_path)
        assert done.returncode != 0 and said in done.stderr, (argv, done.stderr)
