"""Every documented path on a simulated two-node cluster; writes this folder's evidence.

    python results/cluster-sim/run_paths.py            # from the repository root, ~5 minutes

Starts a head and a second node with `ray start` (2 CPUs each, tests/simcluster.py), puts tiny
generated data in a folder that Ray workers may not open, runs each path as a user on the head
would, and writes, per path, the command, its exit code, the tail of its output and which node
each worker ran on. The same paths are asserted by tests/test_multinode.py; this script keeps
what they printed.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import write_folder  # noqa: E402
from simcluster import RAY_CLI, new_cluster  # noqa: E402


def tiny(sim, storage: Path, name: str) -> list[str]:
    return ["--data-dir", str(sim.forbidden / "data"), "--cache-dir", str(sim.forbidden / "cache"),
            "--epochs", "2", "--peak-epoch", "1", "--batch-size", "16", "--precision", "fp32",
            "--no-channels-last", "--loader-workers", "0", "--storage-path", str(storage),
            "--name", name]


def placement(sim, run_dir: Path) -> list[str]:
    cfg = run_dir / "config.json"
    if not cfg.exists():
        return ["(no config.json: no worker started)"]
    nodes = sim.alive_nodes()
    return [f"rank {w['rank']}: {nodes.get(w['node_id'], '?')} (node {w['node_id'][:12]}, "
            f"{w['device']})" for w in json.loads(cfg.read_text())["workers"]]


def run_path(sim, name: str, argv: list[str], run_dir: Path, out: list[dict]) -> None:
    started = time.perf_counter()
    done = subprocess.run(argv, env=sim.driver_env(), capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    text = (done.stdout + done.stderr).replace(str(sim.root), "$SIM")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # what a user reads: our own lines, Ray's joining line, Tune's experiments, errors
    keep = [ln for ln in lines if re.search(r"\[raycifar\]|error|Connecting to existing|"
                                            r"Configuration for experiment|Number of trials|"
                                            r"Job '.*' (succeeded|failed)", ln)]
    (HERE / f"{name}.log").write_text("\n".join(keep) + "\n")
    opened = sim.forbidden_log.read_text() if sim.forbidden_log.exists() else ""
    out.append({"path": name, "command": shlex.join(argv).replace(str(sim.root), "$SIM"),
                "exit_code": done.returncode, "seconds": round(seconds, 1),
                "workers": placement(sim, run_dir),
                "worker_opens_of_data_dir": opened.count("\n")})


def main() -> None:
    sim = new_cluster()
    results: list[dict] = []
    try:
        sim.start_head()
        sim.add_node()
        write_folder(sim.forbidden / "data", n_train=24, n_test=8)
        train = [sys.executable, "-m", "raycifar.train"]
        lrs = ["--lr-max", "0.05", "--lr-min", "0.005"]
        shared, local = sim.root / "shared-runs", sim.root / "node-local-runs"
        run_path(sim, "train-no-address",
                 [*train, *tiny(sim, shared, "two-nodes"), "--num-workers", "2",
                  "--cpus-per-worker", "2", "--shared-storage", *lrs],
                 shared / "two-nodes", results)
        run_path(sim, "local-storage-refused",
                 [*train, *tiny(sim, local, "refused"), "--num-workers", "2",
                  "--cpus-per-worker", "2", *lrs], local / "refused", results)
        run_path(sim, "job-submit-no-address",
                 [*RAY_CLI, "job", "submit", "--address", sim.dashboard, "--working-dir",
                  str(REPO), "--", *train, *tiny(sim, shared, "job"), "--num-workers", "2",
                  "--cpus-per-worker", "2", "--shared-storage", *lrs],
                 shared / "job", results)
        run_path(sim, "lr-search",
                 [*train, *tiny(sim, shared, "searched"), "--num-workers", "1",
                  "--cpus-per-worker", "2", "--shared-storage", "--lr-search",
                  "--candidates", "2", "--search-epochs", "2", "--num-steps", "10",
                  "--start-lr", "1e-3", "--end-lr", "1", "--lr-min-rule", "div",
                  "--holdout", "12"], shared / "searched", results)
        tune = [sys.executable, "-m", "raycifar.tune"]
        run_path(sim, "seeds",
                 [*tune, "seeds", "--seeds", "2", *tiny(sim, shared, "seeds"), "--num-workers",
                  "1", "--cpus-per-worker", "2", "--shared-storage", *lrs],
                 shared / "seeds-seed0", results)
        results[-1]["workers"] += placement(sim, shared / "seeds-seed1")
        nodes = sorted(sim.alive_nodes().values())
    finally:
        sim.stop()
    summary = {"nodes": nodes, "cpus_per_node": 2, "paths": results}
    (HERE / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in results:
        print(f"{r['path']}: exit {r['exit_code']} in {r['seconds']} s; {'; '.join(r['workers'])}")


if __name__ == "__main__":
    main()
