"""One Cycle learning-rate schedule, as a pure function of the step and as torch's OneCycleLR.

Step k is the k-th optimizer step (0-based) and its LR is the one used for batch k. With
`steps_per_epoch` S, `epochs` E and `peak_epoch` P the LR starts at lr_min (step 0), rises
linearly to lr_max at the last step of epoch P (step P*S - 1) and falls linearly to exactly
lr_min at the last step (E*S - 1): no annihilation below lr_min. `annihilation=True` ends at
lr_min / 1e4 instead, for comparison with torch's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ANNIHILATION_FACTOR = 1e4


@dataclass(frozen=True)
class OneCycle:
    lr_min: float
    lr_max: float
    epochs: int
    peak_epoch: int
    steps_per_epoch: int
    annihilation: bool = False

    def __post_init__(self) -> None:
        if self.peak_step < 1 or self.peak_step >= self.total_steps - 1:
            from .config import RaycifarError

            raise RaycifarError(
                f"One Cycle needs at least one step on each side of the peak, but with "
                f"{self.steps_per_epoch} step(s) per epoch the peak is at step {self.peak_step} "
                f"of {self.total_steps}; use more data (--subset) or a smaller --batch-size")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def peak_step(self) -> int:
        return self.peak_epoch * self.steps_per_epoch - 1

    @property
    def final_lr(self) -> float:
        return self.lr_min / ANNIHILATION_FACTOR if self.annihilation else self.lr_min

    def lr(self, step: int) -> float:
        """The LR of optimizer step `step` (pure; the reference torch's scheduler is tested on)."""
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step {step} outside [0, {self.total_steps})")
        if step <= self.peak_step:
            return self.lr_min + (self.lr_max - self.lr_min) * step / self.peak_step
        frac = (step - self.peak_step) / (self.total_steps - 1 - self.peak_step)
        return self.lr_max + (self.final_lr - self.lr_max) * frac

    def build(self, optimizer: torch.optim.Optimizer,
              cycle_momentum: bool = False) -> torch.optim.lr_scheduler.OneCycleLR:
        """torch's OneCycleLR set so that it follows `lr` (its defaults would not)."""
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.lr_max,
            total_steps=self.total_steps,
            # torch puts the peak at step float(pct_start * total_steps) - 1
            pct_start=self.peak_epoch / self.epochs,
            anneal_strategy="linear",
            div_factor=self.lr_max / self.lr_min,
            final_div_factor=ANNIHILATION_FACTOR if self.annihilation else 1.0,
            three_phase=False,
            cycle_momentum=cycle_momentum,
        )


def triangular_lrs(base_lr: float, max_lr: float, step_size: int, cycles: int) -> list[float]:
    """Per-iteration LR of torch's triangular CyclicLR over `cycles` full cycles.

    Iteration 0 is at base_lr, iteration `step_size` at max_lr, `2 * step_size` back at base_lr;
    the list holds 2 * step_size * cycles + 1 values so the curve ends where it started.
    """
    if step_size < 1 or cycles < 1 or not 0 <= base_lr < max_lr:
        raise ValueError(f"need step_size >= 1, cycles >= 1 and 0 <= base_lr < max_lr; got "
                         f"step_size={step_size}, cycles={cycles}, base_lr={base_lr}, "
                         f"max_lr={max_lr}")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=base_lr, max_lr=max_lr, step_size_up=step_size,
        mode="triangular", cycle_momentum=False)
    lrs = []
    for _ in range(2 * step_size * cycles + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # torch warns when the scheduler steps before the optimizer
        scheduler.step()
    return lrs
