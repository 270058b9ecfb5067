import pytest
import torch

from raycifar.recipe.config import RaycifarError
from raycifar.recipe.schedule import OneCycle


def run_scheduler(cycle: OneCycle) -> list[float]:
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0, momentum=0.9)
    sched = cycle.build(opt)
    lrs = []
    for _ in range(cycle.total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("spe", [88, 98, 7])
def test_torch_one_cycle_starts_peaks_and_ends_as_specified(spe):
    c = OneCycle(lr_min=0.004, lr_max=0.4, epochs=24, peak_epoch=5, steps_per_epoch=spe)
    lrs = run_scheduler(c)
    assert len(lrs) == 24 * spe
    assert lrs[0] == pytest.approx(0.004)
    assert max(lrs) == pytest.approx(0.4)
    assert lrs.index(max(lrs)) == 5 * spe - 1          # last step of epoch 5
    assert lrs[-1] == pytest.approx(0.004, rel=1e-9)   # ends at LRMIN: no annihilation
    assert min(lrs) == pytest.approx(0.004, rel=1e-9)


def test_torch_scheduler_matches_the_pure_function_and_is_linear():
    c = OneCycle(0.01, 0.5, epochs=6, peak_epoch=2, steps_per_epoch=10)
    lrs = run_scheduler(c)
    for k, lr in enumerate(lrs):
        assert lr == pytest.approx(c.lr(k), abs=1e-12)
    up = [b - a for a, b in zip(lrs[: c.peak_step], lrs[1: c.peak_step + 1])]
    down = [b - a for a, b in zip(lrs[c.peak_step:-1], lrs[c.peak_step + 1:])]
    assert max(up) == pytest.approx(min(up)) and up[0] > 0
    assert max(down) == pytest.approx(min(down)) and down[0] < 0


def test_pure_function_knots():
    c = OneCycle(0.1, 1.0, epochs=4, peak_epoch=1, steps_per_epoch=5)
    assert [c.lr(0), c.lr(4), c.lr(19)] == pytest.approx([0.1, 1.0, 0.1])
    assert c.lr(2) == pytest.approx(0.55)
    with pytest.raises(ValueError):
        c.lr(20)


def test_annihilation_variant_ends_far_below_lr_min():
    c = OneCycle(0.004, 0.4, 24, 5, 10, annihilation=True)
    assert run_scheduler(c)[-1] == pytest.approx(0.004 / 1e4)


def test_momentum_is_left_alone_unless_cycled():
    c = OneCycle(0.004, 0.4, 3, 1, 4)
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0, momentum=0.9)
    c.build(opt)
    assert opt.param_groups[0]["momentum"] == 0.9


def test_too_few_steps_for_a_cycle_is_a_clear_error():
    with pytest.raises(RaycifarError, match="at least one step on each side of the peak"):
        OneCycle(0.004, 0.4, epochs=2, peak_epoch=1, steps_per_epoch=1)
