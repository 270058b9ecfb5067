"""Live progress of an epoch: plain lines off a terminal (Ray workers, CI), tqdm on one."""

import io
import re

import pytest
import torch
from torch import nn

from raycifar.recipe.config import RaycifarError
from raycifar.recipe.engine import Learner, train_epoch
from raycifar.recipe.progress import ENV, EpochProgress, format_seconds, interval_seconds
from raycifar.recipe.runtime import Runtime
from raycifar.recipe.schedule import OneCycle

LINE = re.compile(r"^\[raycifar\] epoch 2/5  +(\d+)% \((\d+)/8 batches\)  (\d+) img/s  "
                  r"loss (\d+\.\d{4})  acc (\d\.\d{4})  (eta|took) \S+$")


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def run_epoch(monkeypatch, stream, interval, batches=8):
    import raycifar.recipe.progress as progress

    monkeypatch.setattr(progress.sys, "stdout", stream)  # EpochProgress's default stream
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batches * 4, 3, 4, 4, generator=g)
    data = list(zip(x.split(4), (x[:, 0].mean((1, 2)) > 0).long().split(4)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = OneCycle(0.01, 0.1, 5, 1, batches).build(opt)
    cpu = Runtime(torch.device("cpu"))
    learner = Learner(model, opt, sched, cpu.scaler(), nn.CrossEntropyLoss(), cpu)
    return train_epoch(learner, data, epoch=2, epochs=5, progress=True,
                       progress_seconds=interval)


def test_off_a_terminal_prints_periodic_plain_lines_with_every_field(monkeypatch):
    stream = Stream(tty=False)
    res = run_epoch(monkeypatch, stream, interval=0)  # 0: a line after every batch
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 8, lines  # one per batch, the last one not repeated by close()
    found = [LINE.match(line) for line in lines]
    assert all(found), lines
    assert [int(m.group(2)) for m in found] == list(range(1, 9))
    assert [int(m.group(1)) for m in found][-1] == 100 and found[-1].group(6) == "took"
    assert found[0].group(6) == "eta"
    assert float(found[-1].group(4)) == pytest.approx(res.loss, abs=1e-4)
    assert float(found[-1].group(5)) == pytest.approx(res.accuracy, abs=1e-4)


def test_plain_lines_come_every_interval_and_once_at_the_end():
    now = [0.0]
    stream = Stream(tty=False)
    p = EpochProgress(10, epoch=1, epochs=3, interval=30, stream=stream, clock=lambda: now[0])
    for b in range(1, 11):
        now[0] = 12.0 * b  # 12 s a batch: a line after batches 3, 6 and 9 (>= 30 s apart)
        p.update(b, 64 * b, 1.0, 0.5, 1.0)
    p.close()
    lines = stream.getvalue().splitlines()
    assert [re.search(r"\((\d+)/10", x).group(1) for x in lines] == ["3", "6", "9", "10"]
    assert lines[0] == ("[raycifar] epoch 1/3   30% (3/10 batches)  5 img/s  loss 1.0000  "
                        "acc 0.5000  eta 1m24s")


def test_default_interval_is_30s_and_the_env_sets_it(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert interval_seconds() == 30.0
    monkeypatch.setenv(ENV, "5")
    assert interval_seconds() == 5.0
    assert interval_seconds(2) == 2.0  # a parameter wins over the environment
    monkeypatch.setenv(ENV, "soon")
    with pytest.raises(RaycifarError, match=r"RAYCIFAR_PROGRESS_SECONDS='soon' is not a number"):
        interval_seconds()
    assert [format_seconds(s) for s in (52, 185, 3720)] == ["52s", "3m05s", "1h02m"]


def test_on_a_terminal_it_is_still_a_tqdm_bar(monkeypatch):
    from tqdm import tqdm

    stream = Stream(tty=True)
    p = EpochProgress(8, epoch=2, interval=0, stream=stream)
    assert isinstance(p.bar, tqdm) and not p.plain
    p.close()
    stream = Stream(tty=True)
    run_epoch(monkeypatch, stream, interval=0)
    out = stream.getvalue()
    assert "\r" in out and "epoch 2: 100%" in out and "8/8" in out
    assert "[raycifar]" not in out


def test_no_progress_prints_nothing():
    stream = Stream(tty=False)
    p = EpochProgress(4, epoch=1, enabled=False, interval=0, stream=stream)
    p.update(1, 4, 1.0, 0.5, 1.0)
    p.close()
    assert stream.getvalue() == ""
