"""`TrainState`: what an epoch checkpoint holds, saved, restored and checked in one place.

A checkpoint is `state.pt` in the folder Ray Train registers, a dict of the fields below (the
dataclass's field names are the keys, so adding a field is a one-place change). Tensors load
onto the reader's own device (`load`): a run checkpointed on GPUs resumes on a CPU-only
cluster, and each local rank of a multi-GPU node loads onto its own GPU.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from .config import RaycifarError

CHECKPOINT_FILE = "state.pt"


class CheckpointError(RaycifarError):
    """The checkpoint a run would resume from is unreadable or belongs to another run."""


def rng_state(cuda: bool = False) -> dict:
    """The global RNGs: torch's CPU generator, numpy's and Python's; with `cuda`, every GPU's
    too (the range test restores them in the same process; a checkpoint leaves them out, as a
    resumed run may have other GPUs)."""
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
         "python": random.getstate()}
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"].cpu())  # a checkpoint read onto a GPU has it there
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s:
        torch.cuda.set_rng_state_all(s["cuda"])


@dataclass
class RunClock:
    """Wall time of a run that may be done in pieces, summed over the commands that ran it.

    Each command counts up to its last checkpoint (the partial epoch of an interrupted one is
    redone and counted then); the gaps between commands are not counted.
    """
    start: float = field(default_factory=time.perf_counter)
    before: float = 0.0  # wall seconds of the earlier commands
    commands: int = 1

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def state(self) -> dict:
        return {"wall_seconds": self.seconds(), "commands": self.commands}


@dataclass
class TrainState:
    """Everything a worker needs to go on after `epoch` as if it had never stopped."""

    model: dict                   # the unwrapped network's state_dict
    optimizer: dict
    scheduler: dict
    scaler: dict
    rng: dict                     # torch, numpy and Python global RNGs
    epoch: int                    # the last epoch finished; metrics.csv and lr_steps.csv hold
                                  # its history (runs.read_history), not the checkpoint
    train_seconds: float          # the training steps so far
    eval_seconds: float           # evaluation so far
    record_seconds: float         # writing the run files and checkpoints so far
    config: dict                  # TrainConfig.to_dict() of the run
    wall_seconds: float           # RunClock: the commands so far
    commands: int

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def capture(cls, epoch: int, learner, seconds: dict, clock: RunClock,
                config: dict) -> "TrainState":
        """The state after `epoch` of a `engine.Learner` (its unwrapped network's weights)."""
        return cls(model=learner.bare.state_dict(), optimizer=learner.optimizer.state_dict(),
                   scheduler=learner.scheduler.state_dict(), scaler=learner.scaler.state_dict(),
                   rng=rng_state(), epoch=epoch,
                   **seconds, config=config, **clock.state())

    def restore(self, learner, where: str = "") -> RunClock:
        """Put this state into `learner` and the global RNGs (the batches follow from the seed
        and the epoch); returns the run's clock, counting on from the commands before."""
        then, now = self.scheduler["total_steps"], learner.scheduler.total_steps
        if then != now:  # the driver checks this first (resume.check_resumable); Tune's fits
            raise CheckpointError(  # do not go through it
                f"{where}: the checkpoint's One Cycle has {then} steps, this run's {now} (other "
                "data or another batch size); start fresh with another --name")
        learner.bare.load_state_dict(self.model)
        # load_state_dict brings back the saved groups' `fused`/`foreach`; this run's optimizer
        # keeps its own (fused in fp16 only: an fp32 checkpoint resumed in fp16 must stay fused)
        impl = [{k: g.get(k) for k in ("fused", "foreach")}
                for g in learner.optimizer.param_groups]
        learner.optimizer.load_state_dict(self.optimizer)
        for group, kept in zip(learner.optimizer.param_groups, impl):
            group.update(kept)
        learner.scheduler.load_state_dict(self.scheduler)
        if self.scaler or not learner.scaler.is_enabled():
            learner.scaler.load_state_dict(self.scaler)  # a disabled scaler ignores it
        # else: an fp32/bf16 checkpoint resumed in fp16 (`auto` on another GPU): the loss
        # scale starts afresh, as it does at a run's start; it settles within a few steps
        set_rng_state(self.rng)
        return RunClock(before=self.wall_seconds, commands=self.commands + 1)

    def save(self, folder: str) -> None:
        # A shallow dict: dataclasses.asdict would deep-copy every weight first.
        torch.save({k: getattr(self, k) for k in self.keys()},
                   os.path.join(folder, CHECKPOINT_FILE))

    @classmethod
    def load(cls, source: Any, device: Optional[torch.device] = None) -> "TrainState":
        """From a path or file object, tensors on `device` (default: the CPU)."""
        raw = read_state(source, device or torch.device("cpu"))
        return cls(**{k: raw[k] for k in cls.keys()})


def read_state(source: Any, device: Any = "cpu") -> dict:
    """A checkpoint's raw dict with its tensors on `device`, whatever device wrote them."""
    return torch.load(source, weights_only=False, map_location=device)
