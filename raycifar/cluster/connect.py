"""Joining a Ray cluster, or starting a local one that behaves.

`init_ray` is what `raycifar train`, `raycifar tune` and `raycifar bench` call before anything
touches Ray. It joins a cluster the way a bare `ray.init()` would (`--address`, `RAY_ADDRESS`,
a `ray start` cluster on this node) and starts a local Ray only when there is none; a local
Ray gets its own GCS port. SIGTERM is made to act like Ctrl-C so that `kill`, a scheduler or
`ray job stop` end a run with its checkpoint kept.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Optional

from ..recipe.config import RaycifarError
from . import ray_compat

LOCAL = "local"  # --address local: a new local Ray, whatever runs on this node
_connected: Optional[str] = None  # what init_ray connected this process to (LOCAL: started it)


def set_ray_env_defaults() -> None:
    """Quieter, single-copy logs and the dashboard's Train tab, unless the user set them."""
    for key, value in {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                       "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
                       "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}.items():
        os.environ.setdefault(key, value)


def cluster_to_join(address: Optional[str]) -> Optional[str]:
    """The cluster a driver joins, by Ray's own convention; None means "start a local Ray".

    In order: `--address`; `RAY_ADDRESS` (set in every `ray job submit` job, and by hosted
    workspaces); the cluster that `ray start` runs on this node. A Ray that another process
    started with `ray.init()` is never joined: it goes away with that process.
    """

    if address == LOCAL:
        return None
    for found in (address, os.environ.get("RAY_ADDRESS"), ray_compat.started_cluster_address()):
        if found:
            if found.startswith(("http://", "https://")):
                raise RaycifarError(
                    f"{found} is a dashboard address, the one `ray job submit` takes; a "
                    "training driver joins the cluster's GCS (host:6379, or 'auto' on a node "
                    "of the cluster): pass --address auto, or submit the command as a job")
            return found
    return None


def init_ray(address: Optional[str]) -> bool:
    """Join the cluster `cluster_to_join` finds, or start a local Ray; True unless this call
    started a local Ray (whose size we know: nothing more will join it).

    Joining passes nothing but the address: whatever the user's cluster has is what we use.
    SIGTERM then behaves like Ctrl-C (see `_sigterm_like_ctrl_c`). `address="local"` (Ray's
    own word for it) starts a fresh local Ray even where a `ray start` cluster runs here.

    A later call in the same process (a notebook's second `raycifar.fit`) reuses the Ray this
    process is connected to when it asks for the same cluster, and leaves it for the one asked
    for otherwise. A Ray someone else connected (`ray.init()` in a notebook or a test) is used
    as it is.

    Ray Train's placement-group cleaner finds "its" cluster through RAY_ADDRESS or, without
    it, the most recently started one; with two local runs on one machine it would watch the
    wrong cluster and free a live run's workers. A local Ray therefore gets a GCS port chosen
    here, and its jobs get RAY_ADDRESS pointing at it.
    """
    import ray  # here, so that `--help` and bad input never wait for Ray to import

    global _connected
    set_ray_env_defaults()
    target = cluster_to_join(address)
    if ray.is_initialized():
        if _connected is None:  # someone (a test, a notebook) connected this process already
            return True
        if _connected == (target or LOCAL):  # an earlier call of ours: the same cluster
            return bool(target)
        ray.shutdown()  # ours, but another cluster is asked for now
        _connected = None
    if target:
        # The `ray start` cluster of this node is joined as Ray finds it itself ("auto": the
        # same address file), since Ray 2.60 turns token authentication on for a cluster found
        # that way when a token exists; an address given (--address, RAY_ADDRESS) is passed
        # as it is and needs RAY_AUTH_MODE=token on a token cluster, as for Ray's own tools.
        found_here = not address and not os.environ.get("RAY_ADDRESS")
        try:
            ray.init(address="auto" if found_here else target)
        except ConnectionError as e:
            token = ("" if found_here or os.environ.get("RAY_AUTH_MODE") else
                     "; a cluster with token authentication also needs RAY_AUTH_MODE=token "
                     "and its token (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")
            raise RaycifarError(
                f"cannot reach the Ray cluster at {target} ({str(e).splitlines()[0]}); start it "
                "(`ray start --head`), pass the right --address, or `ray stop` a stale one "
                f"so that a local Ray starts{token}") from e
    else:
        ray_compat.start_local_head(free_port())
    _connected = target or LOCAL
    _sigterm_like_ctrl_c()
    return bool(target)

def peek(address: Optional[str]) -> tuple[Optional[str], list[dict]]:
    """The cluster a run would join (`cluster_to_join`) and its `ray.nodes()`, joined as
    `init_ray` would and left again; (None, []) where a run would start a local Ray (nothing is
    started here). For `raycifar doctor`."""
    import ray

    target = cluster_to_join(address)
    if not target:
        return None, []
    found_here = not address and not os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address="auto" if found_here else target, log_to_driver=False,
                 logging_level="ERROR")
    except ConnectionError as e:
        raise RaycifarError(f"a run would join the Ray cluster at {target}, which does not "
                            f"answer ({str(e).splitlines()[0]})") from e
    try:
        return target, ray.nodes()
    finally:
        ray.shutdown()


def nodes() -> list[dict]:
    """`ray.nodes()` of the joined cluster (dead nodes linger in it; see cluster.alive_nodes)."""
    import ray

    return ray.nodes()


def resolve_use_gpu(use_gpu: Optional[bool]) -> bool:
    """`--use-gpu`/`--no-use-gpu` as given; unset: whether the joined cluster has GPUs now."""
    import ray

    if use_gpu is not None:
        return use_gpu
    return ray.cluster_resources().get("GPU", 0) > 0


def join_cluster(cfg, address: Optional[str]) -> bool:
    """Join (or start) Ray and check that `cfg`'s workers and storage fit the cluster; returns
    whether to train on GPUs."""
    from .placement import check_placement, check_shared_storage

    joined = init_ray(address)
    use_gpu = resolve_use_gpu(cfg.use_gpu)
    room = check_placement(cfg, nodes(), use_gpu, local=not joined)
    # an autoscaling cluster that cannot place the workers yet will add nodes for them (a
    # local Ray never grows: an elastic run there stays on this node)
    check_shared_storage(cfg.storage_path, nodes(), shared=cfg.shared_storage,
                         expected_nodes=2 if joined and room < cfg.num_workers else 0)
    return use_gpu


def _sigterm_like_ctrl_c() -> None:
    """SIGTERM (`kill`, a scheduler, `ray job stop`) ends a run like Ctrl-C does.

    ray.init makes SIGTERM a bare exit. Instead it goes to whatever handles Ctrl-C at the
    moment: inside `TorchTrainer.fit` that is Ray Train's graceful abort, elsewhere Python's
    KeyboardInterrupt; either way `main` says which epoch's checkpoint the next run resumes
    from, and Ray shuts down on the way out.
    """
    def on_sigterm(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
