"""Every private Ray surface raycifar touches, named in one place.

Ray keeps these out of its public API, so an upgrade may move them. Each is pinned by a test
against the installed Ray (pyproject.toml pins Ray 2.60.0), so a change shows up as a failing
test and one function to mend here: `started_cluster_address` by tests/test_connect.py and
tests/test_multinode.py (a driver finds a `ray start` cluster), `start_local_head` by every
test that starts a local Ray, `nested_errors` by the fault tests whose worker errors come back
as one `error:` line. The one Ray format read without Ray, Train's checkpoint snapshot file,
is `raycifar.store.resume.latest_checkpoint_dir` (pinned by tests/test_fault_tolerance.py:
real Train runs' checkpoints found and opened).
"""

from __future__ import annotations

from typing import Optional


def started_cluster_address() -> Optional[str]:
    """The GCS address of the cluster `ray start` last started (or joined) on this node.

    `ray start` writes it to `<ray temp dir>/ray_current_cluster` and `ray stop` removes it;
    a bare `ray.init()` joins the same address. A Ray started by another process's `ray.init()`
    writes no such file, so one local run never joins another. None when there is no file.
    """
    from ray._private.utils import read_ray_address

    return read_ray_address() or None


def start_local_head(port: int) -> None:
    """`ray.init()` a new one-node Ray on 127.0.0.1 whose GCS listens on `port`, and give every
    job's workers that address as RAY_ADDRESS (Ray Train's cleaner looks the cluster up by it,
    and "auto" would be ambiguous with a second Ray on the machine). Ray reads the port from
    RAY_GCS_SERVER_PORT when it starts a head, and the node's IP from the private
    `_node_ip_address` (else it may pick an interface a sandbox cannot bind)."""
    import os

    import ray

    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1",  # new, whatever RAY_ADDRESS says
                 runtime_env={"env_vars": {"RAY_ADDRESS": f"127.0.0.1:{port}"}})
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)


def lost_worker(exc: BaseException) -> Optional[str]:
    """What died, in a few words, when `exc` is Ray's report of a worker process or node that
    went away (an OOM kill, a reclaimed spot node), else None."""
    import ray.exceptions as rex

    lost = (rex.ActorDiedError, rex.ActorUnavailableError, rex.NodeDiedError,
            rex.WorkerCrashedError, rex.LocalRayletDiedError)
    for e in nested_errors(exc):
        if isinstance(e, lost):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return f"{type(e).__name__}: {first[:160]}"
    return None


def nested_errors(exc: BaseException):
    """`exc` and every exception inside it: Python's causes and contexts, a failed task's
    `cause` (Ray re-raises a task's X as a RayTaskError subclass of X whose message is the
    remote traceback; its `cause` is the plain X) and a worker group's `worker_failures`."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        # a dead worker's poll: Train's WorkerHealthCheckFailedError keeps Ray's error here
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None),
                 getattr(e, "health_check_failure", None)]
        todo += list(getattr(e, "worker_failures", {}).values())
