import math

import pytest
import torch
from torch import nn

from raycifar.recipe.engine import DivergenceError, Learner, evaluate, train_epoch
from raycifar.recipe.runtime import Runtime, resolve_precision

CPU = Runtime(torch.device("cpu"))
from raycifar.recipe.schedule import OneCycle


def tiny_problem(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # learnable from channel 0
    return list(zip(x.split(16), y.split(16)))


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 2))


def fit(model, batches, epochs, lr_max=0.5):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    cycle = OneCycle(lr_max / 10, lr_max, epochs, 1, len(batches))
    learner = Learner(model, opt, cycle.build(opt), CPU.scaler(), nn.CrossEntropyLoss(), CPU)
    results = []
    for e in range(1, epochs + 1):
        results.append(train_epoch(learner, batches, epoch=e, first_step=(e - 1) * len(batches)))
    return results, cycle


def test_training_lowers_loss_and_records_every_step_lr():
    batches = tiny_problem()
    results, cycle = fit(tiny_model(), batches, epochs=4)
    assert results[-1].loss < results[0].loss * 0.7
    assert results[-1].accuracy > 0.9
    steps = [s for r in results for s in r.steps]
    assert [s.step for s in steps] == list(range(16))
    assert [s.lr for s in steps] == pytest.approx([cycle.lr(k) for k in range(16)])
    assert all(s.momentum == 0.9 for s in steps)
    assert results[0].images == 64 and results[0].seconds > 0


def test_evaluate_counts_and_tta_uses_the_mirror():
    batches = tiny_problem()
    model = tiny_model()
    fit(model, batches, epochs=3)
    ev = evaluate(model, batches, CPU)
    assert ev["count"] == 64
    assert ev["accuracy"] == ev["accuracy_plain"]
    assert torch.allclose(ev["probs"].sum(1), torch.ones(64))
    # TTA averages in the mirrored batch: same plain accuracy, different probabilities
    ev_tta = evaluate(model, batches, CPU, tta=True)
    assert ev_tta["accuracy_plain"] == ev["accuracy"]
    assert not torch.allclose(ev_tta["probs"], ev["probs"])


def test_nan_loss_stops_with_epoch_step_and_lr():
    batches = tiny_problem()
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = OneCycle(0.01, 0.1, 2, 1, len(batches)).build(opt)

    def nan_after_two(out, y, calls=[0]):
        calls[0] += 1
        loss = nn.functional.cross_entropy(out, y)
        return loss * math.nan if calls[0] == 3 else loss

    with pytest.raises(DivergenceError, match=r"loss became nan at epoch 1, step 2 \(lr .*\); "
                                              "lower --lr-max"):
        train_epoch(Learner(model, opt, sched, CPU.scaler(), nan_after_two, CPU), batches)


def test_auto_precision_on_this_cpu_follows_its_flags_not_the_mkldnn_check():
    # The mkldnn check says True on AVX-512 CPUs that only emulate bf16; every kind
    # of CPU is pinned in test_precision.py, this checks the real reading on this machine.
    from raycifar.recipe.runtime import NATIVE_BF16_FLAGS, cpu_flags

    got = resolve_precision("auto", torch.device("cpu"))
    native = any(f in (cpu_flags() or ()) for f in NATIVE_BF16_FLAGS)
    assert got == ("bf16" if native else "fp32")
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"


def test_unwrap_finds_the_network_inside_compile_and_ddp_style_wrappers():
    from raycifar.recipe.engine import unwrap

    net = nn.Sequential(nn.Linear(2, 2))

    class Wrapper(nn.Module):  # DDP keeps the network as `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap(net) is net
    assert unwrap(Wrapper(net)) is net
    assert unwrap(torch.compile(Wrapper(net), backend="eager")) is net
    assert set(unwrap(torch.compile(net, backend="eager")).state_dict()) == {"0.weight", "0.bias"}


def test_cuda_graph_steps_are_marked_only_for_graph_modes_on_a_gpu(monkeypatch):
    """reduce-overhead and max-autotune replay CUDA graphs: each step must tell torch a new
    step begins (else the last replay's outputs may be overwritten while still read)."""
    from raycifar.recipe.config import TrainConfig

    cfg = TrainConfig(lr_max=0.4, lr_min=0.04)
    cuda = Runtime(torch.device("cuda"))  # never placed on: Learner.build only reads the type
    for changes, rt, graphs in [({"compile": True, "compile_mode": "reduce-overhead"}, cuda, True),
                                ({"compile": True, "compile_mode": "max-autotune"}, cuda, True),
                                ({"compile": True}, cuda, False),
                                ({"compile_mode": "reduce-overhead"}, cuda, False),
                                ({"compile": True, "compile_mode": "reduce-overhead"}, CPU, False)]:
        learner = Learner.build(cfg.replace(**changes), tiny_model(), 4, rt)
        assert learner.graphs is graphs, changes
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    learner = Learner.build(cfg, tiny_model(), 4, CPU)
    x, y = tiny_problem()[0]
    learner.step(x, y)
    learner.graphs = True
    learner.step(x, y)
    assert marks == [1]
    # evaluation too: each forward (the image, then its mirror under TTA) is a new step
    marks.clear()
    evaluate(learner.model, [(x, y)], CPU, tta=True)
    assert marks == []
    evaluate(learner.model, [(x, y), (x, y)], CPU, tta=True, graphs=True)
    assert marks == [1] * 4


class SyncCounter:
    """Counts the calls that make the host wait for a device: a tensor's value read on the
    host (`item`, `int()`, `float()`, `bool()`, `tolist`, `numpy`) or copied to it (`cpu`)."""

    NAMES = ("item", "__int__", "__float__", "__bool__", "__index__", "tolist", "numpy", "cpu")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _name=name, _original=original, **k):
                self.calls.append(_name)
                return _original(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("progress, precision", [(False, "fp32"), (True, "fp32"),
                                                  (False, "fp16")])
def test_a_training_epoch_reads_the_device_once_per_fifty_steps(monkeypatch, progress,
                                                                precision, capsys):
    """No step waits for the device: the sums live there and are read every READ_EVERY steps
    (and at the end), whatever the loader (the on-device augmentation here) and the meter; in
    fp16 the loss scaler's found-inf check stays on the device too (a fused optimizer)."""
    from raycifar.recipe.batch_augment import DeviceBatches
    from raycifar.recipe.config import TrainConfig
    from raycifar.recipe.engine import READ_EVERY, make_optimizer
    from raycifar.recipe.sharding import GlobalBatches

    steps = 3 * READ_EVERY + 7
    rng = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (steps * 4, 8, 8, 3), dtype=torch.uint8, generator=rng).numpy()
    y = (x[..., 0].mean((1, 2)) > 127).astype("int64")
    loader = DeviceBatches(x, y, GlobalBatches(len(y), 4, seed=0), [0.5] * 3, [0.25] * 3,
                           torch.device("cpu"), pad=2, cutout=2)
    model = tiny_model()
    model[1] = nn.Linear(192, 2)
    rt = Runtime(torch.device("cpu"), precision)
    opt = make_optimizer(TrainConfig(lr_max=0.1, lr_min=0.01), model, rt)
    learner = Learner(model, opt, OneCycle(0.01, 0.1, 2, 1, steps).build(opt), rt.scaler(),
                      nn.CrossEntropyLoss(), rt)
    loader.set_epoch(1)
    counter = SyncCounter(monkeypatch)
    result = train_epoch(learner, loader, epoch=1, progress=progress, progress_seconds=3600)
    monkeypatch.undo()
    assert len(result.steps) == steps and result.images == steps * 4
    reads = steps // READ_EVERY + 1  # every READ_EVERY steps, and the last
    assert len(counter.calls) <= reads + 2, counter.calls  # + what the end of the epoch reads
    assert 0 < result.accuracy <= 1 and math.isfinite(result.loss)
    if progress:  # the meter shows what was read
        assert f"({steps}/{steps} batches)" in capsys.readouterr().out


def test_the_epoch_loss_and_accuracy_match_a_host_side_count():
    batches = tiny_problem()
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    learner = Learner(model, opt, OneCycle(0.01, 0.05, 2, 1, len(batches)).build(opt),
                      CPU.scaler(), nn.CrossEntropyLoss(), CPU)
    reference = tiny_model()
    reference.load_state_dict(model.state_dict())
    losses, right = [], 0
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    ref_sched = OneCycle(0.01, 0.05, 2, 1, len(batches)).build(ref_opt)
    for x, y in batches:  # the same steps, counted on the host
        out = reference(x)
        loss = nn.functional.cross_entropy(out, y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_sched.step()
        losses.append(loss.item() * len(y))
        right += int((out.argmax(1) == y).sum())
    result = train_epoch(learner, batches)
    assert result.loss == pytest.approx(sum(losses) / 64, rel=1e-6)
    assert result.accuracy == right / 64


def test_a_nan_between_reads_names_its_own_step():
    from raycifar.recipe.engine import READ_EVERY

    batches = tiny_problem(n=16 * (READ_EVERY + 10))
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = OneCycle(0.01, 0.1, 2, 1, len(batches)).build(opt)
    at = READ_EVERY + 3  # read after step READ_EVERY + 10 (the last), not at once

    def nan_at(out, y, calls=[0]):
        calls[0] += 1
        loss = nn.functional.cross_entropy(out, y)
        return loss * math.inf if calls[0] - 1 >= at else loss

    with pytest.raises(DivergenceError, match=rf"loss became inf at epoch 1, step {at} \(lr "):
        train_epoch(Learner(model, opt, sched, CPU.scaler(), nan_at, CPU), batches)
