"""Every private Ray surface raycifar touches, named in one place.

Ray keeps these out of its public API, so an upgrade may move them; `tests/test_ray_compat.py`
pins each one against the installed Ray (pyproject.toml pins Ray 2.60.0), so a change shows up
as one failing test and one function to mend here.
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
