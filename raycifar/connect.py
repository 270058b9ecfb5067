"""Joining a Ray cluster, or starting a local one that behaves.

`init_ray` is what `raycifar.train`, `raycifar.tune` and `raycifar.bench` call before anything
touches Ray. A local Ray gets its own GCS port and a driver resource for Tune trials; SIGTERM
is made to act like Ctrl-C so that `kill`, a scheduler or `ray job stop` end a run with its
checkpoint kept.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Optional


def set_ray_env_defaults() -> None:
    """Quieter, single-copy logs and the dashboard's Train tab, unless the user set them."""
    for key, value in {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                       "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
                       "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}.items():
        os.environ.setdefault(key, value)


DRIVER_RESOURCE = "tune_driver"  # what Tune trials hold instead of a CPU (see raycifar.tune)
DRIVER_SLOTS = 4                  # trial drivers a local cluster can hold at once


def init_ray(address: Optional[str]) -> None:
    """Join `address`, or start a local Ray that its own workers can find among others.

    SIGTERM then behaves like Ctrl-C (see `_sigterm_like_ctrl_c`).

    Ray Train's placement-group cleaner finds "its" cluster through RAY_ADDRESS or, without
    it, the most recently started one; with two local runs on one machine it would watch the
    wrong cluster and free a live run's workers. A local Ray therefore gets a GCS port chosen
    here, and its jobs get RAY_ADDRESS pointing at it.
    """
    import ray  # here, so that `--help` and bad input never wait for Ray to import

    set_ray_env_defaults()
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        port = free_port()
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by Ray when it starts the head
        try:
            ray.init(_node_ip_address="127.0.0.1", resources={DRIVER_RESOURCE: DRIVER_SLOTS},
                     runtime_env={"env_vars": {"RAY_ADDRESS": f"127.0.0.1:{port}"}})
        finally:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
    _sigterm_like_ctrl_c()


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
