import math

import numpy as np
import pytest
import torch
from torch import nn

from raycifar.recipe.lr_finder import (RangeTestError, curve_beta_for, ema, lr_schedule, range_test,
                                       reread, suggest_lr_max, suggest_lr_min, suggest_minimum,
                                       suggest_steepest, suggest_valley, zero_lag)
from raycifar.store.range_test import save_range_test


def synthetic_curve(n=200, lo=1e-4, hi=10.0, knee=0.1, noise=0.0, seed=0):
    """Flat, then a sigmoid drop centred at `knee` (steepest there), then a blow-up."""
    lrs = np.geomspace(lo, hi, n)
    x = np.log10(lrs / knee)
    loss = 2.3 - 1.5 / (1 + np.exp(-3 * x)) + np.where(lrs > 3 * knee, (lrs / (3 * knee)) ** 2 - 1, 0)
    rng = np.random.default_rng(seed)
    return lrs, loss + rng.normal(0, noise, n)


def test_sweeps_are_exponential_or_linear():
    e = lr_schedule(sweep(1e-3, 1.0, 10))
    assert e[0] == pytest.approx(1e-3) and e[-1] == pytest.approx(1.0)
    assert e[1] / e[0] == pytest.approx(e[2] / e[1])
    lin = lr_schedule(sweep(0.1, 1.0, 10, mode="linear"))
    assert np.diff(lin) == pytest.approx(np.full(9, 0.1))


@pytest.mark.parametrize("args, message", [
    ((1.0, 0.1, 100), "need 0 < start_lr < end_lr"),
    ((1e-4, 1.0, 5), "num_steps=5 is too few for a usable curve: must be >= 10"),
])
def test_bad_sweeps_fail_when_their_settings_are_built(args, message):
    """On the driver, before Ray starts: one place checks a sweep (RangeTestConfig)."""
    from raycifar.recipe.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        sweep(*args)


def test_ema_is_bias_corrected():
    assert ema([5.0, 5.0, 5.0]) == pytest.approx([5.0, 5.0, 5.0])


@pytest.mark.parametrize("knee", [0.01, 0.1, 0.5])
def test_steepest_finds_the_knee_of_a_clean_curve(knee):
    lrs, loss = synthetic_curve(knee=knee)
    assert suggest_steepest(lrs, loss) == pytest.approx(knee, rel=0.1)


def test_steepest_on_a_noisy_curve_after_smoothing():
    lrs, loss = synthetic_curve(noise=0.05, knee=0.1)
    got = suggest_steepest(lrs, ema(loss, 0.9))
    assert 0.03 < got < 0.3  # the EMA lags a little; within half a decade


def test_steepest_ignores_an_early_spike():
    lrs, loss = synthetic_curve(knee=0.1)
    loss[:5] = [9.0, 1.0, 9.0, 1.0, 9.0]
    assert suggest_steepest(lrs, loss, skip_start=10) == pytest.approx(0.1, rel=0.1)


def test_the_zero_lag_curve_does_not_lag_where_the_ema_does():
    lrs, loss = synthetic_curve(n=100, knee=0.1)
    true = suggest_steepest(lrs, loss)
    assert suggest_steepest(lrs, zero_lag(loss)) == pytest.approx(true, rel=0.15)
    # a 100-step sweep read through the beta=0.98 EMA points far to the right of the knee
    assert suggest_steepest(lrs, ema(loss, 0.98)) > 2 * true
    noisy = synthetic_curve(n=100, knee=0.1, noise=0.05)[1]
    assert 0.05 < suggest_steepest(lrs, zero_lag(noisy)) < 0.2


def test_minimum_is_where_the_loss_stops_falling():
    lrs, loss = synthetic_curve(knee=0.1)
    bottom = lrs[10 + int(np.argmin(loss[10:-5]))]
    assert suggest_minimum(lrs, loss) == pytest.approx(bottom)
    assert 0.1 < bottom < 0.5  # past the knee, before the blow-up at 3x the knee


def test_steepest_ignores_a_steep_fall_after_the_minimum():
    # BatchNorm networks can recover during the blow-up and fall steeply again at huge LRs
    lrs, loss = synthetic_curve(knee=0.1)
    tail = lrs > 2.0
    loss[tail] = loss[tail][0] - 20 * np.log10(lrs[tail] / 2.0)
    assert suggest_steepest(lrs, loss, skip_end=1) == pytest.approx(0.1, rel=0.1)


def test_suggestions_ignore_a_recovery_after_the_blow_up():
    from raycifar.recipe.lr_finder import suggest_lr_max, usable_end
    lrs, loss = synthetic_curve(n=100, knee=0.1)
    loss = np.minimum(loss, 2.5)  # blows up past 0.3 ...
    late = lrs > 3.0
    loss[late] = 2.5 - 2.0 * np.log10(lrs[late] / 3.0)  # ... then falls below the dip again
    c = zero_lag(loss)
    assert 0.3 < lrs[usable_end(c)] < 1.0
    for method in ("steepest", "valley", "minimum"):
        assert suggest_lr_max(lrs, c, method) < 0.5, method


def test_a_loss_that_climbs_from_the_start_asks_for_a_lower_start_lr():
    from raycifar.recipe.lr_finder import suggest_lr_max
    lrs, loss = synthetic_curve(n=100, knee=1e-5)  # the useful range lies below the sweep
    loss = loss + np.where(lrs > 3e-4, np.log10(lrs / 3e-4), 0)  # rising from step ~10 on
    for method in ("steepest", "minimum"):
        with pytest.raises(RangeTestError, match="starts too high; use a lower --start-lr"):
            suggest_lr_max(lrs, zero_lag(loss), method)


def test_reread_gives_the_suggestions_a_new_sweep_would():
    lrs, loss = synthetic_curve(n=100, knee=0.1, noise=0.02)
    again = reread(list(lrs), list(loss), method="minimum", lr_min_rule="onset")
    c = zero_lag(loss)
    assert again.lr_max == suggest_minimum(lrs, c)
    assert again.lr_min == suggest_lr_min(lrs, c, again.lr_max, "onset")
    assert again.smoothed == pytest.approx(ema(loss, 0.98)) and again.curve == pytest.approx(c)
    with pytest.raises(RangeTestError, match="is not one of"):
        reread(list(lrs), list(loss), method="guess")


def test_valley_is_two_thirds_down_the_longest_descent():
    lrs, loss = synthetic_curve(knee=0.1)
    bottom = int(np.argmin(loss))  # the sigmoid falls from the first point to the bottom
    want = lrs[int(round(bottom * 2 / 3))]
    assert suggest_valley(lrs, loss) == pytest.approx(want)
    assert loss[lrs == suggest_valley(lrs, loss)][0] < loss[0]


def test_lr_min_rules():
    lrs, loss = synthetic_curve(knee=0.1)
    assert suggest_lr_min(lrs, loss, 0.4, "div") == pytest.approx(0.04)
    onset = suggest_lr_min(lrs, loss, 0.4, "onset")
    assert 1e-3 < onset < 0.05
    with pytest.raises(RangeTestError, match="never fell"):
        suggest_lr_min(lrs, np.full(len(lrs), 2.0), 0.4, "onset")


def problem():
    torch.manual_seed(0)
    x = torch.randn(256, 3, 8, 8)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    loader = list(zip(x.split(32), y.split(32)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    return model, opt, loader


def learner(model, opt, loss_fn=None):
    """What the training steps with, its One Cycle a constant LR here (the sweep replaces it)."""
    from raycifar.recipe.engine import Learner
    from raycifar.recipe.runtime import Runtime

    rt = Runtime(torch.device("cpu"))
    return Learner(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
                   rt.scaler(), loss_fn or nn.CrossEntropyLoss(), rt)


def sweep(start_lr=1e-4, end_lr=10.0, num_steps=100, **more):
    from raycifar.recipe.config import RangeTestConfig

    return RangeTestConfig(start_lr=start_lr, end_lr=end_lr, num_steps=num_steps, **more)


def test_range_test_restores_model_optimizer_and_rng_bit_for_bit():
    model, opt, loader = problem()
    opt.zero_grad()
    nn.functional.cross_entropy(model(loader[0][0]), loader[0][1]).backward()
    opt.step()  # give the optimizer momentum buffers worth restoring
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: v["momentum_buffer"].clone() for k, v in opt.state_dict()["state"].items()}
    rng_before = torch.get_rng_state()
    res = range_test(learner(model, opt), loader, sweep(1e-3, 10, 60))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(v["momentum_buffer"], opt_before[k])
    assert opt.param_groups[0]["lr"] == 0.01
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert 1e-3 <= res.lr_min < res.lr_max <= 10
    assert res.method == "minimum" and res.lr_min_rule == "onset"  # the defaults
    assert res.lr_min <= res.lr_max / 2
    assert len(res.lrs) == len(res.losses) == len(res.smoothed) <= 60


def test_a_sweep_longer_than_the_data_starts_each_pass_on_a_new_epoch():
    """DeviceBatches (what --augment gpu feeds the range test) reshuffle and re-augment per
    epoch: a sweep of more batches than the data holds asks for the next epoch each pass."""
    import itertools

    from raycifar.recipe.batch_augment import DeviceBatches
    from raycifar.recipe.lr_finder import _cycle
    from raycifar.recipe.sharding import GlobalBatches

    x = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    db = DeviceBatches(x, np.arange(40), GlobalBatches(40, 16, seed=1), (0.5,) * 3, (0.25,) * 3,
                       "cpu")
    epochs = []
    db.plan.set_epoch = lambda e, _set=db.plan.set_epoch: (epochs.append(e), _set(e))
    seen = [y for _, y in itertools.islice(_cycle(db), 7)]
    assert epochs == [0, 1, 2, 3] and all(len(y) == 16 for y in seen)  # 2 full batches a pass
    assert torch.cat(seen[0:2]).tolist() != torch.cat(seen[2:4]).tolist()  # reshuffled


def test_range_test_stops_on_divergence():
    model, opt, loader = problem()
    res = range_test(learner(model, opt), loader, sweep(1e-2, 1e4, 100))
    assert res.stopped_early and len(res.lrs) < 100


def test_nan_from_the_first_step_is_a_clear_error():
    model, opt, loader = problem()
    with pytest.raises(RangeTestError, match="from the first step"):
        range_test(learner(model, opt, lambda out, y: out.sum() * math.nan), loader,
                   sweep(num_steps=20))


def test_results_written_to_run_folder(tmp_path):
    from raycifar.store.runs import RunFolder

    model, opt, loader = problem()
    res = range_test(learner(model, opt), loader, sweep(1e-3, 10, 30), skip_start=3,
                     skip_end=2)
    run = RunFolder(str(tmp_path / "run"))
    save_range_test(run, res)
    rows = run.read_csv("lr_finder.csv", ["lr", "loss", "smoothed_loss"])
    assert len(rows) == len(res.lrs)
    info = run.read_json("lr_finder.json")
    assert info["lr_max"] == res.lr_max and info["method"] == "minimum"


# A real 20-step sweep (1e-4 to 10, batch 512) of this network on the 45,000 dev images
# (results/range-test-20steps): flat, a fall from ~0.01, the blow-up from step 15.
SWEEP_20 = [2.3143, 2.3490, 2.3465, 2.3247, 2.3168, 2.3456, 2.3045, 2.3052, 2.2904, 2.2644,
            2.2773, 2.2544, 2.2389, 2.1977, 2.1777, 2.5371, 3.7887, 4.5619, 7.3389, 10.8356]


def test_the_curve_smooths_over_a_tenth_of_the_sweep_however_long():
    assert curve_beta_for(100) == pytest.approx(0.9)
    assert curve_beta_for(20) == pytest.approx(0.5) and curve_beta_for(10) == 0.5
    assert curve_beta_for(200) == pytest.approx(0.95) and curve_beta_for(10_000) == 0.98
    lrs = list(np.geomspace(1e-4, 10, 20))
    short = reread(lrs, SWEEP_20, lr_min_rule="div", settings={"num_steps": 20})
    assert short.settings["curve_beta"] == 0.5
    # the 100-step sweep of the same data read 0.0955; at a fixed beta of 0.9 the blow-up
    # leaks back over half of these 20 points and drags the minimum down to 0.043
    assert 0.07 < short.lr_max < 0.3
    assert suggest_lr_max(lrs, zero_lag(SWEEP_20, 0.9), "minimum") < 0.05
    lrs100, loss100 = synthetic_curve(n=100, knee=0.1, noise=0.02)
    assert reread(list(lrs100), list(loss100)).curve == pytest.approx(zero_lag(loss100, 0.9))


def test_a_sweep_that_cannot_be_read_travels_with_its_error():
    lrs = list(np.geomspace(1e-4, 1e-3, 30))
    flat = list(2.3 + np.random.default_rng(0).normal(0, 0.002, 30))  # the loss never falls
    with pytest.raises(RangeTestError, match="the loss never fell") as caught:
        reread(lrs, flat, method="minimum", lr_min_rule="onset", settings={"num_steps": 30})
    sweep = caught.value.sweep
    assert sweep.lr_max is None and sweep.lr_min is None
    assert sweep.lrs == lrs and sweep.losses == flat and len(sweep.curve) == 30
    assert "the loss never fell" in sweep.settings["error"]
    # read again with a rule that needs no onset: the error is gone from the settings
    again = reread(lrs, flat, lr_min_rule="div", settings=sweep.settings)
    assert again.lr_min == pytest.approx(again.lr_max / 10) and "error" not in again.settings
    with pytest.raises(RangeTestError) as bad_setting:
        reread(lrs, flat, method="guess")
    assert bad_setting.value.sweep is None  # nothing was read: nothing to keep


def test_the_sweep_steps_through_the_trainings_own_step(monkeypatch):
    """One step for both: whatever Learner.step does (clipping, a scaler, CUDA-graph marks)
    the range test does too, at the sweep's LR of each step; the learner's own One Cycle is
    left as it was."""
    from raycifar.recipe.engine import Learner
    from raycifar.recipe.lr_finder import lr_schedule

    seen = []
    step = Learner.step

    def counted(self, x, y):
        seen.append(self.optimizer.param_groups[0]["lr"])
        return step(self, x, y)

    monkeypatch.setattr(Learner, "step", counted)
    model, opt, loader = problem()
    trained = learner(model, opt)
    settings = sweep(1e-3, 1.0, 12)
    res = range_test(trained, loader, settings)
    assert seen == pytest.approx(list(lr_schedule(settings)[:len(seen)]))
    assert not res.stopped_early and len(seen) == len(res.lrs) == 12  # a point per step
    assert trained.scheduler.last_epoch == 0 and opt.param_groups[0]["lr"] == 0.01
