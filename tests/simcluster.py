"""Real Ray clusters started with `ray start` on this machine, the way a user starts one.

A head (and, for a simulated multi-node cluster, more nodes joined with `ray start --address`)
on 127.0.0.1, every port chosen here, everything under one temp root of its own, so it runs
beside any other Ray on the machine. It is stopped by killing exactly its processes: never
`ray stop`, which stops every Ray of the user.

`RAY_TMPDIR` points Ray's default temp dir into that root, so `ray start` records the cluster
in `<root>/ray/ray_current_cluster`, where a driver started with the same `RAY_TMPDIR` finds
it: what a bare `ray.init()` on a cluster node does with `/tmp/ray/ray_current_cluster`.

The nodes can forbid their worker processes to open anything under a folder: a
`sitecustomize` audit hook in every Ray worker (not in drivers) raises PermissionError on
such an open or listing and writes it to a log, which a test reads to prove that workers
never touched `--data-dir`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` of this interpreter

FORBID_HOOK = '''\
"""Test hook (tests/simcluster.py): Ray workers may not open anything under FORBID."""
import os
import sys

_FORBID = os.environ.get("RAYCIFAR_TEST_FORBID")
_LOG = os.environ.get("RAYCIFAR_TEST_FORBID_LOG")
if _FORBID and _LOG and sys.argv and sys.argv[0].endswith("default_worker.py"):
    def _forbid(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args:
            path = args[0]
            if isinstance(path, (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(path))
                if path.startswith(_FORBID):
                    with open(_LOG, "a") as log:
                        log.write(f"{os.getpid()} {event} {path}\\n")
                    raise PermissionError(f"a Ray worker opened {path}")

    sys.addaudithook(_forbid)
'''


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
    # (agent_register_timeout_ms) then aborts the node.
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_agent_register_timeout_ms="120000")
    return env


def _psutil():
    import psutil
    import ray  # noqa: F401  (puts the psutil Ray bundles on sys.path)

    return psutil


def own_processes(root: str):
    """Every process whose command line names `root` (gcs_server, raylets, dashboards,
    agents) and all their descendants (workers, job supervisors and drivers)."""
    psutil = _psutil()
    roots = [p for p in psutil.process_iter(["cmdline"])
             if any(root in part for part in (p.info["cmdline"] or []))]
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def kill_processes(root: str, grace: float = 5) -> None:
    """SIGTERM `root`'s processes, and SIGKILL those still there after `grace` seconds (all
    of them at once when `grace` is 0)."""
    psutil = _psutil()
    alive = own_processes(root)
    if grace > 0:
        for p in alive:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@dataclass
class SimCluster:
    """A cluster of `ray start` nodes under `root`; `gcs` and `dashboard` are its addresses."""

    root: Path
    gcs: str = ""
    dashboard: str = ""
    forbidden: Path = field(init=False)
    nodes: list[str] = field(default_factory=list)  # the custom resource naming each node
    killed: list[str] = field(default_factory=list)  # nodes kill_node took down
    token: Optional[Path] = None  # a token file: the cluster and its drivers use token auth
    env: dict = field(default_factory=dict)  # more environment for the nodes (Ray's config)

    def __post_init__(self):
        self.forbidden = self.root / "driver-only"  # workers may not open anything here
        self.forbidden.mkdir()
        hook = self.root / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(FORBID_HOOK)

    @property
    def forbidden_log(self) -> Path:
        return self.root / "forbidden-opens.log"

    def driver_env(self) -> dict:
        """A driver's environment on the head: no address, Ray's default temp dir ours; with
        a token, RAY_AUTH_MODE unset and the token where Ray looks for one, as a user's."""
        env = {**ray_env(), "RAY_TMPDIR": str(self.root)}
        if self.token is not None:
            del env["RAY_AUTH_MODE"]
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token)
        return env

    def _node_env(self) -> dict:
        path = os.pathsep.join(p for p in (str(self.root / "hook"),
                                           os.environ.get("PYTHONPATH")) if p)
        # Ray's own processes (Train's state actor, the placement-group cleaner) look the
        # cluster up by address; RAY_ADDRESS names ours among others on the machine. No idle
        # workers started ahead: they compete with the raylet's registration on 2 cores.
        return {**self.driver_env(), "PYTHONPATH": path, "RAY_ADDRESS": self.gcs,
                "RAY_enable_worker_prestart": "0",
                **({"RAY_AUTH_MODE": "token"} if self.token is not None else {}),
                "RAYCIFAR_TEST_FORBID": str(self.forbidden),
                "RAYCIFAR_TEST_FORBID_LOG": str(self.forbidden_log), **self.env}

    def _start(self, args: list[str], name: str, cpus: int, gpus: float = 0) -> None:
        agent_http, agent_grpc, metrics, env_agent = free_ports(4)
        cmd = [*RAY_CLI, "start", *args, "--node-ip-address", "127.0.0.1",
               "--dashboard-agent-listen-port", str(agent_http),
               "--dashboard-agent-grpc-port", str(agent_grpc),
               "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(env_agent),
               "--num-cpus", str(cpus), "--num-gpus", f"{gpus:g}",
               "--resources", json.dumps({name: 1}), "--disable-usage-stats"]
        for attempt in (1, 2):  # a busy machine sometimes misses Ray's fixed start window
            done = subprocess.run(cmd, env=self._node_env(), capture_output=True, text=True,
                                  timeout=180)
            if done.returncode == 0:
                self.nodes.append(name)
                return
            time.sleep(2)
        raise AssertionError(f"ray start {name} failed:\n{done.stdout}\n{done.stderr}")

    def start_head(self, cpus: int = 2, gpus: float = 0) -> None:
        """The head; `gpus` it declares without having them (GPU placement tests)."""
        gcs, dash, client = free_ports(3)
        self.gcs = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        self._start(["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(dash), "--ray-client-server-port", str(client)],
                    "sim_node_0", cpus, gpus)

    def add_node(self, cpus: int = 2) -> None:
        # Each node its own temp dir, as on separate machines (a node takes the head's
        # otherwise): nodes sharing one would each forward every worker's log lines.
        name = f"sim_node_{len(self.nodes)}"
        self._start(["--address", self.gcs, "--temp-dir", str(self.root / name)], name, cpus)
        self.wait_for_nodes(len(self.nodes) - len(self.killed))

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of a worker node (its raylet, agents and Ray workers), as a
        reclaimed spot instance or a power cut would: nothing is told, nothing cleans up."""
        assert name != "sim_node_0", "the head hosts the driver; kill a worker node"
        kill_processes(str(self.root / name), grace=0)
        self.killed.append(name)

    def alive_nodes(self) -> dict[str, str]:
        """node id -> the custom resource that names it, for the alive nodes."""
        from ray.util.state import list_nodes

        out = {}
        for n in list_nodes(address=self.dashboard, detail=True):
            if n.state == "ALIVE":
                names = [r for r in n.resources_total if r.startswith("sim_node_")]
                out[n.node_id] = names[0] if names else "?"
        return out

    def wait_for_nodes(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.alive_nodes()) < n:
            assert time.monotonic() < deadline, f"fewer than {n} nodes came up"
            time.sleep(0.5)

    def stop(self) -> None:
        # gcs_server, the raylets and the autoscaler's monitor sit out SIGTERM (as for the
        # session's head in conftest.py): a short grace, then KILL
        kill_processes(str(self.root), grace=2)
        shutil.rmtree(self.root, ignore_errors=True)


def new_cluster(**options) -> SimCluster:
    # Short: Ray puts unix sockets under it, and their paths must stay under ~107 bytes.
    return SimCluster(Path(tempfile.mkdtemp(prefix="rcs", dir="/tmp")), **options)
