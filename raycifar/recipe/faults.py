"""Fault injection, for the fault-tolerance tests and for trying recovery by hand.

Set ``RAYCIFAR_FAULT`` in the driver's environment; `cluster.trainer.fit` hands it to every
worker in the loop config (so it works on a cluster whose workers have another environment):

    RAYCIFAR_FAULT="kill:epoch=2:step=3:rank=1:once=/tmp/fired"   # SIGKILL rank 1's process
    RAYCIFAR_FAULT="nan:epoch=2:step=0:once=/tmp/fired"           # NaN into the weights
    RAYCIFAR_FAULT="stall:epoch=3:seconds=600"                    # the worker hangs there
    RAYCIFAR_FAULT="stall:epoch=3:once=/tmp/a,stall:epoch=5:once=/tmp/b"  # several, comma-separated

The fault fires on the worker with that rank (0 by default) just before the given step of the
given epoch (the step counts from 0 within the epoch). ``once`` names a marker file: the fault
fires only if the file does not exist yet and creates it first, so a restarted worker group does
not die again at the same place. A stall sleeps (600 s unless ``seconds`` says) as a hung
worker would: the run is stopped from outside while it waits (a signal to the driver).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import ConfigError

ENV = "RAYCIFAR_FAULT"
KINDS = ("kill", "nan", "stall")
FIELDS = ("epoch", "step", "rank", "once", "seconds")


@dataclass(frozen=True)
class Fault:
    kind: str
    epoch: int
    step: int = 0
    rank: int = 0
    once: Optional[str] = None
    seconds: float = 600.0  # how long a stall lasts

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        kind, *fields = spec.split(":")
        if kind not in KINDS:
            raise ConfigError([f"{ENV}={spec!r}: the fault must be one of {KINDS}"])
        values: dict = {}
        for f in fields:
            key, sep, value = f.partition("=")
            if not sep or key not in FIELDS:
                raise ConfigError([f"{ENV}={spec!r}: cannot read {f!r} (epoch=, step=, rank=, "
                                   "once=, seconds=)"])
            try:
                values[key] = (value if key == "once" else float(value) if key == "seconds"
                               else int(value))
            except ValueError:
                raise ConfigError([f"{ENV}={spec!r}: {key}= takes a number"]) from None
        if "epoch" not in values:
            raise ConfigError([f"{ENV}={spec!r}: say at which epoch (epoch=N)"])
        return cls(kind, **values)

    def maybe_fire(self, epoch: int, step: int, rank: int, model: nn.Module) -> None:
        """Fire if this is the place; called by the training loop before each step."""
        if (epoch, step, rank) != (self.epoch, self.step, self.rank):
            return
        if self.once is not None:
            try:  # O_EXCL: exactly one firing, even if two processes race to it
                os.close(os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, as in an OOM kill or a lost node
        elif self.kind == "stall":
            time.sleep(self.seconds)
        else:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def from_spec(spec: Optional[str]) -> tuple[Fault, ...]:
    """The faults of a spec: none for an empty one, several where commas separate them (so a
    `once` path holds no comma; two faults with one `once` file fire once between them)."""
    return tuple(Fault.parse(part.strip()) for part in spec.split(",")) if spec else ()
