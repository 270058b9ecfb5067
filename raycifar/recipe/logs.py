"""One output path: `log = logging.getLogger("raycifar")`, shown as `[raycifar] message`.

The CLIs and every Ray worker call `setup()` once; the handler writes to whatever `sys.stdout`
is when a line is logged, so Ray's log forwarding, `ray job logs` and pytest's capture all see
it. Warnings read `[raycifar] warning: ...`. Errors a user can fix are not logged here: the CLI
prints them as one `prog: error: ...` line on stderr (cli.run_cli).
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("raycifar")


class _CurrentStdout(logging.StreamHandler):
    """A StreamHandler on the `sys.stdout` of the moment, not the one at construction."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property wins
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return f"[raycifar] {text}"


def setup() -> None:
    """Show raycifar's INFO lines on stdout, once per process (idempotent)."""
    if any(isinstance(h, _CurrentStdout) for h in log.handlers):
        return
    handler = _CurrentStdout()
    handler.setFormatter(_Format())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # Ray's own handlers on the root logger would print it again
