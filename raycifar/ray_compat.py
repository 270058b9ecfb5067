"""Every private Ray surface raycifar touches, named in one place.

Ray keeps these out of its public API, so an upgrade may move them. Each is pinned by a test
against the installed Ray (pyproject.toml pins Ray 2.60.0), so a change shows up as a failing
test and one function to mend here: `started_cluster_address` by tests/test_connect.py and
tests/test_multinode.py (a driver finds a `ray start` cluster), `latest_checkpoint_dir` by
tests/test_fault_tolerance.py (real Train runs' checkpoints found and opened),
`nested_errors` by the fault tests whose worker errors come back as one `error:` line.
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


# Ray Train 2.60 lists a run's checkpoints in this file of the run folder; the latest one is
# what a new fit() with the same storage path and name resumes from.
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def latest_checkpoint_dir(run) -> Optional[str]:
    """The name of the checkpoint folder Ray Train will resume `run` (a RunFolder) from."""
    if not run.exists(SNAPSHOT_FILE):
        return None
    latest = run.read_json(SNAPSHOT_FILE).get("latest_checkpoint_result")
    return latest["checkpoint_dir_name"] if latest else None


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
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        todo += list(getattr(e, "worker_failures", {}).values())
