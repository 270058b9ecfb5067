"""The LR range test (Smith 2015; fastai / pytorch-lr-finder style) and its suggestions.

Plain PyTorch, no Ray. The test raises the LR every step from `start_lr` to `end_lr`
(exponentially by default), records the training loss (or, in Smith's validation mode, the loss
on a held-out batch set), smooths it with a bias-corrected EMA and stops once the smoothed loss
exceeds `diverge_factor` x its best. Model, optimizer and RNG state are snapshotted first and
restored afterwards, bit for bit.

The EMA lags the loss by about 1/(1 - beta) steps (50 at beta 0.98): over a 100-step sweep that
is a factor of ~300 in LR, so reading suggestions off it would point far to the right of where
the loss actually turns. It only drives the online stop. The suggestions read `curve`: the loss
smoothed by the same kind of EMA run forwards and then backwards, which has no lag. Its span is a
tenth of the sweep (beta 0.9 at 100 steps, 0.5 at 20; `curve_beta_for`), so it covers the same
stretch of log LR however many steps the sweep has: at a fixed 0.9 a 20-step sweep's blow-up
leaks half the sweep back and drags the minimum to the left.

A sweep whose reading fails (no onset, a climb from the start) is not thrown away: the
`RangeTestError` carries it as `.sweep` (a result with no LRs and the error in its settings) so
the caller can keep `lr_finder.csv` and read it again with another rule without sweeping again.

Suggestions for LRMAX, all ignoring the first `skip_start` and last `skip_end` points (early
spikes and the blow-up):
  * ``steepest``: the LR where the curve falls fastest against log LR (minimum gradient);
  * ``valley``: fastai's rule: the longest run of decreasing curve, two thirds of the way down;
  * ``minimum`` (the default): the LR where the curve is lowest, i.e. where the loss stops falling: Smith's
    upper bound for a cyclical schedule, the highest LR that still trains.
LRMIN by a rule: ``onset`` (the default: the LR where the curve first falls `onset_drop` (2%)
below its starting value, Smith's base LR, at most LRMAX/2) or ``div`` (LRMAX / `lr_min_div`).
With no annihilation the One Cycle ends at LRMIN, so LRMIN is also the LR training ends at;
LRMAX/10 ends too hot for this network (docs/finding-lrs.md).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from .config import LRMAX_METHODS, LRMIN_RULES, RangeTestConfig, RaycifarError
from .engine import Learner, set_epoch
from .state import rng_state, set_rng_state

DEFAULT_METHOD = RangeTestConfig.method          # the defaults of `train` and `tune` too
DEFAULT_LR_MIN_RULE = RangeTestConfig.lr_min_rule


class RangeTestError(RaycifarError):
    """The range test cannot run or its curve holds no usable signal."""

    sweep: Optional["RangeTestResult"] = None  # the recorded sweep, when only its reading failed


@dataclass
class RangeTestResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]   # the EMA (online, lags): drives the divergence stop
    curve: list[float]      # zero-lag smoothing: what the suggestions read
    lr_max: Optional[float]  # None: the reading failed (settings["error"] says why)
    lr_min: Optional[float]
    method: str
    lr_min_rule: str
    stopped_early: bool
    settings: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [{"step": i, "lr": lr, "loss": l, "smoothed_loss": s, "curve": c} for i, (lr, l, s, c)
                in enumerate(zip(self.lrs, self.losses, self.smoothed, self.curve))]

    def summary(self) -> dict:
        d = asdict(self)
        for k in ("lrs", "losses", "smoothed", "curve"):
            d.pop(k)
        d["steps_run"] = len(self.lrs)
        return d



def lr_schedule(settings: RangeTestConfig) -> np.ndarray:
    """The sweep's LR at each step (RangeTestConfig has checked the range and step count)."""
    if settings.mode == "exp":
        return np.geomspace(settings.start_lr, settings.end_lr, settings.num_steps)
    return np.linspace(settings.start_lr, settings.end_lr, settings.num_steps)


def ema(losses: Iterable[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average (so early values are not pulled to 0)."""
    out, avg = [], 0.0
    for i, x in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** i))
    return out


def curve_beta_for(num_steps: int) -> float:
    """The zero-lag curve's beta for a sweep of `num_steps`: a span of a tenth of the sweep."""
    return float(min(0.98, max(0.5, 1 - 10 / max(1, num_steps))))


def zero_lag(losses: Iterable[float], beta: float = 0.9) -> list[float]:
    """The bias-corrected EMA run forwards and then backwards: smooth, and no lag.

    The backward pass stops where the loss first doubles its lowest value so far (the
    blow-up), so losses in the hundreds cannot leak back into the part of the curve the
    suggestions read; past that point the curve is the forward EMA.
    """
    y = np.asarray(list(losses), float)
    if len(y) == 0:
        return []
    forward = np.asarray(ema(y, beta))
    blown = np.flatnonzero(y > 2 * np.minimum.accumulate(y))
    cut = int(blown[0]) if len(blown) else len(y)
    out = forward.copy()
    out[:cut] = ema(forward[:cut][::-1], beta)[::-1]
    return [float(v) for v in out]


def suggest_minimum(lrs, curve, skip_start: int = 10, skip_end: int = 5) -> float:
    lrs, c = np.asarray(lrs, float), np.asarray(curve, float)
    lo, hi = skip_start, len(lrs) - skip_end
    if hi - lo < 3:
        raise RangeTestError(f"only {len(lrs)} points: too few to find the minimum after "
                             f"skipping {skip_start} + {skip_end}; run more steps")
    return float(lrs[lo + int(np.argmin(c[lo:hi]))])


def suggest_steepest(lrs, smoothed, skip_start: int = 10, skip_end: int = 5) -> float:
    """Fastest fall against log LR, looked for only up to the curve's lowest point.

    Past the minimum the curve is the blow-up, where a network with BatchNorm can recover for a
    while and fall steeply again at an LR far too high to train with.
    """
    lrs, sm = np.asarray(lrs, float), np.asarray(smoothed, float)
    lo, hi = skip_start, len(lrs) - skip_end
    if hi - lo < 3:
        raise RangeTestError(f"only {len(lrs)} points: too few to find the steepest descent "
                             f"after skipping {skip_start} + {skip_end}; run more steps")
    hi = max(lo + 3, lo + int(np.argmin(sm[lo:hi])) + 1)
    grad = np.gradient(sm[lo:hi], np.log(lrs[lo:hi]))
    return float(lrs[lo + int(np.argmin(grad))])


def suggest_valley(lrs, smoothed) -> float:
    """fastai's valley: longest decreasing stretch, two thirds of the way along it."""
    sm = np.asarray(smoothed, float)
    n = len(sm)
    if n < 3:
        raise RangeTestError("too few points for the valley rule; run more steps")
    run_len, start_of = [1] * n, list(range(n))
    for i in range(1, n):
        for j in range(i):  # O(n^2) is fine for a few hundred points
            if sm[i] < sm[j] and run_len[j] + 1 > run_len[i]:
                run_len[i], start_of[i] = run_len[j] + 1, start_of[j]
    end = int(np.argmax(run_len))
    start = start_of[end]
    return float(lrs[start + int(round((end - start) * 2 / 3))])


def usable_end(curve, rise: float = 0.05) -> int:
    """Where the curve first climbs `rise` (5%) above its lowest point so far: the blow-up.

    Networks with BatchNorm often recover during the blow-up and fall again at LRs far too
    high to train with; the suggestions only read the curve before it.
    """
    c = np.asarray(curve, float)
    above = np.flatnonzero(c > (1 + rise) * np.minimum.accumulate(c))
    return int(above[0]) if len(above) else len(c)


def suggest_lr_max(lrs, curve, method: str = DEFAULT_METHOD, skip_start: Optional[int] = None,
                   skip_end: Optional[int] = None) -> float:
    """LRMAX by `method`, read from the curve before the blow-up (see `usable_end`).

    The skips default to the first 10% and the last 5% of the points (10 and 5 of 100).
    """
    n = len(curve)
    skip_start = max(1, n // 10) if skip_start is None else skip_start
    skip_end = max(1, n // 20) if skip_end is None else skip_end
    end = usable_end(curve)
    if end < len(curve) - skip_end:
        if end < skip_start + 3 and method != "valley":
            raise RangeTestError(
                f"the loss climbs from step {end} (LR {float(lrs[end]):.3g}) on, before the "
                f"{skip_start} skipped warm-up steps are over: the sweep starts too high; "
                "use a lower --start-lr")
        lrs, curve, skip_end = lrs[:end], curve[:end], 0
    if method == "steepest":
        return suggest_steepest(lrs, curve, skip_start, skip_end)
    if method == "minimum":
        return suggest_minimum(lrs, curve, skip_start, skip_end)
    if method == "valley":
        return suggest_valley(lrs, curve)
    raise RangeTestError(f"method={method!r} is not one of {LRMAX_METHODS}")


def suggest_lr_min(lrs, smoothed, lr_max: float, rule: str = "div", div: float = 10.0,
                   onset_drop: float = 0.02) -> float:
    if rule == "div":
        return lr_max / div
    if rule == "onset":
        sm = np.asarray(smoothed, float)
        below = np.flatnonzero(sm < sm[0] * (1 - onset_drop))
        if len(below) == 0:
            raise RangeTestError("the loss never fell during the range test: no onset to take "
                                 "LRMIN from; widen the LR range or use --lr-min-rule div")
        return float(min(lrs[int(below[0])], lr_max / 2))
    raise RangeTestError(f"lr_min rule {rule!r} is not one of {LRMIN_RULES}")


class SweepLR:
    """The sweep's LRs in One Cycle's place: the scheduler a `Learner` steps after each
    optimizer step, setting the next step's LR."""

    def __init__(self, optimizer: torch.optim.Optimizer, lrs: np.ndarray):
        self.optimizer, self.lrs, self.done = optimizer, [float(lr) for lr in lrs], 0
        self._set(self.lrs[0])

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.done += 1
        if self.done < len(self.lrs):
            self._set(self.lrs[self.done])


def _snapshot(learner: "Learner") -> dict:
    return {"model": copy.deepcopy(learner.model.state_dict()),
            "optimizer": copy.deepcopy(learner.optimizer.state_dict()),
            "scaler": learner.scaler.state_dict(), "rng": rng_state(cuda=True)}


def _restore(learner: "Learner", s: dict) -> None:
    learner.model.load_state_dict(s["model"])
    learner.optimizer.load_state_dict(s["optimizer"])
    if s["scaler"]:
        learner.scaler.load_state_dict(s["scaler"])
    set_rng_state(s["rng"])


def range_test(learner: "Learner", loader: Iterable,
               settings: RangeTestConfig = RangeTestConfig(), *, beta: float = 0.98,
               diverge_factor: float = 4.0, skip_start: Optional[int] = None,
               skip_end: Optional[int] = None,
               on_step: Optional[Callable[[int, float, float, float], None]] = None
               ) -> RangeTestResult:
    """Sweep the LR through the training's own step (`learner.step`, with the sweep's LRs in
    place of its One Cycle; `loader` cycled as needed), restore the model, optimizer, loss
    scaler and RNGs, and read LRMAX/LRMIN off the curve as `settings` says.

    `beta` smooths the loss for the online divergence stop (at `diverge_factor` x the best
    smoothed loss); `skip_start`/`skip_end` leave points out of the reading; `on_step(i, lr,
    loss, smoothed)` sees every step (the Tune trial reports them).
    """
    schedule = lr_schedule(settings)
    saved = _snapshot(learner)
    sweep = dataclasses.replace(learner, scheduler=SweepLR(learner.optimizer, schedule))
    lrs, losses, smoothed = [], [], []
    best, stopped = math.inf, False
    batches = _cycle(loader)
    try:
        for i, lr in enumerate(sweep.scheduler.lrs):
            sweep.model.train()
            x, y = sweep.rt.batch(*next(batches))
            value = sweep.step(x, y)[0].item()  # every step's loss goes to Tune anyway
            if not math.isfinite(value):
                if i == 0:
                    raise RangeTestError(f"the loss is {value} from the first step (lr {lr:.3g});"
                                         " check the data and model, or lower start_lr")
                stopped = True
                break
            lrs.append(lr)
            losses.append(value)
            smoothed = ema(losses, beta)
            if on_step is not None:
                on_step(i, lr, value, smoothed[-1])
            best = min(best, smoothed[-1])
            if smoothed[-1] > diverge_factor * best:
                stopped = True
                break
    finally:
        _restore(learner, saved)
    settings_used = {"start_lr": settings.start_lr, "end_lr": settings.end_lr,
                     "num_steps": settings.num_steps, "mode": settings.mode,
                     "diverge_factor": diverge_factor}
    return reread(lrs, losses, method=settings.method, lr_min_rule=settings.lr_min_rule,
                  lr_min_div=settings.lr_min_div, beta=beta, skip_start=skip_start,
                  skip_end=skip_end, stopped_early=stopped, settings=settings_used)


def reread(lrs: list[float], losses: list[float], *, method: str = DEFAULT_METHOD,
           lr_min_rule: str = DEFAULT_LR_MIN_RULE, lr_min_div: float = 10.0, beta: float = 0.98,
           curve_beta: Optional[float] = None, skip_start: Optional[int] = None,
           skip_end: Optional[int] = None,
           stopped_early: bool = False, settings: Optional[dict] = None) -> RangeTestResult:
    """Suggestions read again from a recorded sweep (another method or rule, no new sweep).

    `curve_beta` defaults to `curve_beta_for` the sweep's planned steps (`settings["num_steps"]`,
    else the points recorded). A failed reading raises with the sweep attached (`.sweep`).
    """
    if method not in LRMAX_METHODS:
        raise RangeTestError(f"method={method!r} is not one of {LRMAX_METHODS}")
    settings = dict(settings or {})
    settings.pop("error", None)
    if curve_beta is None:
        curve_beta = curve_beta_for(int(settings.get("num_steps") or len(lrs)))
    curve = zero_lag(losses, curve_beta)
    settings.update(beta=beta, curve_beta=curve_beta, lr_min_div=lr_min_div,
                    skip_start=skip_start, skip_end=skip_end)
    found = RangeTestResult(list(lrs), list(losses), ema(losses, beta), curve, None, None,
                            method, lr_min_rule, stopped_early, settings)
    try:
        found.lr_max = suggest_lr_max(lrs, curve, method, skip_start, skip_end)
        found.lr_min = suggest_lr_min(lrs, curve, found.lr_max, lr_min_rule, lr_min_div)
    except RangeTestError as e:
        found.lr_max = found.lr_min = None
        settings["error"] = str(e)
        e.sweep = found
        raise
    return found


def _cycle(loader: Iterable):
    """The loader's batches, pass after pass; each pass draws that pass's global batches, so a
    sweep longer than the data reshuffles (and re-augments)."""
    for n in itertools.count():
        set_epoch(loader, n)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RangeTestError("the range test's loader yields no batches")
