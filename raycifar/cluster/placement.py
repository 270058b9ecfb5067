"""Cluster sanity checks that need no Ray import: pure functions of what `ray.nodes()` returns,
and of the exceptions Ray raises.

Placement: a local cluster that can never hold the requested workers is refused up front
(otherwise Ray would wait forever); a joined cluster only gets a warning, since its autoscaler
may still add nodes.

The rule for the run folder (`--storage-path`) on a multi-node cluster:

* Every Train worker writes its checkpoints under the storage path, rank 0 writes the run
  files, and the driver reads them back. On more than one node they must all see the same
  folder, or each node keeps its own partial copy and the run cannot be resumed or reported.
* A URI (`s3://`, `gs://`, `abfss://`, ... anything `scheme://` except `file://`) is shared:
  pyarrow reaches the same bucket from every node.
* A local path (or `file://`) is shared only when the user says so (`shared=True`, the
  `--shared-storage` flag): we cannot see from here whether `/mnt/runs` is NFS, a
  ReadWriteMany volume or a node's own disk, so the user declares it.
* One node (or none yet) is always fine, unless the caller knows the run will span more nodes
  than are alive now (`expected_nodes`): an autoscaling cluster that starts with its head alone
  places its workers on nodes that do not exist yet.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from ..recipe.config import RaycifarError, gpu_sharing_problem


def is_uri(path: str) -> bool:
    """True for `scheme://...` storage that every node reaches the same way (not `file://`)."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and bool(scheme) and scheme.lower() != "file"


def alive_nodes(nodes: Iterable[Mapping[str, Any]]) -> int:
    """How many entries of `ray.nodes()` are alive (dead nodes linger in that list)."""
    return sum(1 for n in nodes if n.get("Alive"))


def check_shared_storage(storage_path: str, nodes: Iterable[Mapping[str, Any]], *,
                         shared: bool = False, expected_nodes: int = 0) -> None:
    """Raise RaycifarError when a multi-node run would write its run folder to local disks.

    `nodes` is `ray.nodes()`; `shared` is the user's declaration that a local `storage_path`
    is mounted at the same place on every node; `expected_nodes` is how many nodes the run
    will span when the caller knows more than the alive count (0: unknown).
    """
    if shared or is_uri(storage_path):
        return
    count = max(alive_nodes(nodes), expected_nodes)
    if count <= 1:
        return
    raise RaycifarError(
        f"storage_path={storage_path!r} is a local folder but the run spans {count} nodes, "
        "so each node would keep its own partial run folder; use a bucket (--storage-path "
        "s3://BUCKET/runs or gs://BUCKET/runs) or, if that folder is on storage every node "
        "mounts at the same path (NFS, a ReadWriteMany volume), add --shared-storage")


def placeable_workers(nodes: Iterable[Mapping[str, Any]], need: Mapping[str, float]) -> int:
    """How many workers that each reserve `need` (TrainConfig.worker_resources) the alive
    nodes can hold at once; a worker sits on one node, so each node is counted on its own."""
    total = 0
    for node in nodes:
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        # a hair of slack: 4 x 0.25 GPU must fit on 1.0 GPU despite floating point
        total += min(int(have.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0)
    return total


def shape(need: Mapping[str, float]) -> str:
    """`2 CPU + 0.25 GPU` for messages."""
    return " + ".join(f"{v:g} {k}" for k, v in need.items())


def check_gpu_sharing(cfg, use_gpu: bool) -> None:
    """Refuse a multi-worker run on fractions of GPUs (config.gpu_sharing_problem): it would
    crash in NCCL wherever Ray puts its ranks on one GPU, so it is refused wherever it runs."""
    problem = gpu_sharing_problem(cfg.num_workers, cfg.gpus_per_worker) if use_gpu else None
    if problem:
        raise RaycifarError(problem)


def check_placement(cfg, nodes: Iterable[Mapping[str, Any]], use_gpu: bool,
                    local: bool) -> int:
    """Refuse (local) or warn (joined cluster) when the workers cannot all be placed now;
    refuse GPU sharing within a run (check_gpu_sharing) on any cluster.

    Returns how many workers fit."""
    check_gpu_sharing(cfg, use_gpu)
    nodes = list(nodes)
    need = cfg.worker_resources(use_gpu)
    room = placeable_workers(nodes, need)
    fewest = cfg.min_workers if cfg.elastic else cfg.num_workers
    if room >= fewest:
        return room
    what = f"an elastic run's {fewest}" if cfg.elastic else str(fewest)
    msg = (f"{what} workers of {shape(need)} each cannot be placed: the cluster has "
           f"room for {room}; lower --num-workers, --cpus-per-worker or --gpus-per-worker")
    if local:
        raise RaycifarError(msg)
    from ..recipe.logs import log

    log.warning(f"{msg} (waiting for the autoscaler)")
    return room


def trial_concurrency(nodes: Iterable[Mapping[str, Any]], cfg, use_gpu: bool, trials: int,
                      max_concurrent: Optional[int] = None, what: str = "search") -> int:
    """Trials (a search's candidates, seeds) to run at once: `max_concurrent` when given (an
    autoscaling cluster that adds nodes on demand), else what the alive nodes can place now,
    at most `trials`.

    A trial holds no CPU or GPU itself; its Train workers do. Running more trials than their
    workers can be placed would leave Train runs waiting for workers held by sibling trials,
    so a cluster that cannot place even one is an error here, not a wait forever.
    """
    check_gpu_sharing(cfg, use_gpu)
    if max_concurrent is not None:
        return max(1, min(max_concurrent, trials))
    nodes = list(nodes)
    need = cfg.worker_resources(use_gpu)
    slots = placeable_workers(nodes, need) // max(cfg.num_workers, 1)
    if slots < 1:
        raise RaycifarError(
            f"the {what} cannot place one trial: each trains {cfg.num_workers} worker(s) of "
            f"{shape(need)}, and the cluster's alive nodes have room for "
            f"{placeable_workers(nodes, need)} ({describe(nodes)}); lower --num-workers, "
            "--cpus-per-worker or --gpus-per-worker, or, on an autoscaling cluster that adds "
            "nodes on demand, pass --max-concurrent N")
    return min(slots, trials)


def describe(nodes: Iterable[Mapping[str, Any]]) -> str:
    """`2 nodes: 4 CPU, 0 GPU in all` for messages."""
    alive = [n for n in nodes if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in alive)
    gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in alive)
    return f"{len(alive)} node(s): {cpus:g} CPU, {gpus:g} GPU in all"


def user_error(exc: BaseException):
    """The RaycifarError behind a failed Ray run (worker or trial), if that is what failed it."""
    from .ray_compat import nested_errors

    for e in nested_errors(exc):
        if isinstance(e, RaycifarError):
            cause = getattr(e, "cause", None)  # the plain error, whose message is one line
            return cause if isinstance(cause, RaycifarError) else e
    return None
