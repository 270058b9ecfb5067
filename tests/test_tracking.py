"""TensorBoard events in a run folder: what they hold, read back from the files, and resumes."""

import struct
from collections import Counter

import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from raycifar.recipe.lr_finder import RangeTestResult
from raycifar.store.range_test import save_range_test
from raycifar.store.runs import RunFolder
from raycifar.store.tracking import LR_FIND_FOLDER, log_epoch, read_run


def events(path):
    """Every Event in a TFRecord file, checking both CRCs (independent of tracking.py)."""
    data, at, out = path.read_bytes(), 0, []
    while at < len(data):
        header = data[at:at + 8]
        assert struct.unpack("<I", data[at + 8:at + 12])[0] == masked_crc32c(header)
        (n,) = struct.unpack("<Q", header)
        body = data[at + 12:at + 12 + n]
        assert struct.unpack("<I", data[at + 12 + n:at + 16 + n])[0] == masked_crc32c(body)
        out.append(event_pb2.Event.FromString(body))
        at += 16 + n
    return out


def scalars(folder):
    """(tag, step) -> value over every event file in `folder`, and how often each pair occurs."""
    found, seen = {}, Counter()
    for f in sorted(folder.glob("*tfevents*")):
        for e in events(f):
            for v in e.summary.value:
                found[v.tag, e.step] = v.simple_value
                seen[v.tag, e.step] += 1
    return found, seen


def epoch_rows(epoch, steps_per_epoch=3, bump=0.0):
    row = {"epoch": epoch, "lr": 0.1 * epoch, "train_loss": 2.0 / epoch + bump,
           "train_acc": 0.2 * epoch, "test_loss": 2.5 / epoch, "test_acc": 0.15 * epoch,
           "test_acc_plain": 0.14 * epoch, "epoch_seconds": 10.0, "images_per_second": 300.0}
    first = (epoch - 1) * steps_per_epoch
    steps = [{"step": first + i, "epoch": epoch, "lr": 0.01 * (first + i + 1), "momentum": 0.9}
             for i in range(steps_per_epoch)]
    return row, steps


def record(run, epochs, bump=0.0):
    """What worker.record does each epoch: the epoch's row and its steps, one file."""
    for epoch in epochs:
        row, steps = epoch_rows(epoch, bump=bump)
        log_epoch(run, row, steps)


@pytest.mark.parametrize("uri", [False, True])
def test_epochs_and_steps_are_written_as_scalars(tmp_path, uri):
    run = RunFolder(f"file://{tmp_path}/run" if uri else str(tmp_path / "run"))
    record(run, [1, 2, 3])
    folder = tmp_path / "run" / "tensorboard"
    assert sorted(p.name for p in folder.iterdir()) == [
        f"events.out.tfevents.00000{e}.raycifar" for e in (1, 2, 3)]
    assert events(folder / "events.out.tfevents.000001.raycifar")[0].file_version.startswith(
        "brain.Event")
    found, seen = scalars(folder)
    assert found["epoch/test_acc", 2] == pytest.approx(0.30)
    assert found["epoch/train_loss", 3] == pytest.approx(2.0 / 3)
    assert found["epoch/images_per_second", 1] == 300.0
    assert sorted(s for t, s in found if t == "epoch/lr") == [1, 2, 3]
    assert sorted(s for t, s in found if t == "step/lr") == list(range(9))
    assert found["step/lr", 4] == pytest.approx(0.05) and found["step/momentum", 8] == \
        pytest.approx(0.9)
    assert "epoch/epoch" not in {t for t, _ in found}
    assert set(seen.values()) == {1}
    assert sorted(read_run(run)) == sorted((t, s, v) for (t, s), v in found.items())


def test_a_resume_adds_its_epochs_without_duplicates(tmp_path):
    run = RunFolder(str(tmp_path))
    record(run, [1, 2, 3])
    # A second command resumes from the checkpoint of epoch 2 (epoch 3's report was lost in a
    # crash), so it trains epoch 3 again, with other numbers, then 4 and 5.
    record(run, [3, 4, 5], bump=1.0)
    found, seen = scalars(tmp_path / "tensorboard")
    assert max(seen.values()) == 1
    assert sorted(s for t, s in found if t == "epoch/test_loss") == [1, 2, 3, 4, 5]
    assert sorted(s for t, s in found if t == "step/lr") == list(range(15))
    assert found["epoch/train_loss", 3] == pytest.approx(2.0 / 3 + 1.0)  # the redone epoch
    assert found["epoch/train_loss", 2] == pytest.approx(1.0)


def test_the_range_test_curve_is_written_next_to_lr_finder_csv(tmp_path):
    result = RangeTestResult(lrs=[1e-4, 1e-3, 1e-2], losses=[2.3, 2.1, 3.0],
                             smoothed=[2.3, 2.2, 2.5], curve=[2.29, 2.15, 2.6], lr_max=1e-3,
                             lr_min=1e-4, method="minimum", lr_min_rule="onset",
                             stopped_early=True)
    save_range_test(RunFolder(str(tmp_path)), result)
    save_range_test(RunFolder(str(tmp_path)), result)  # a second sweep replaces the first
    assert (tmp_path / "lr_finder.csv").exists()
    found, seen = scalars(tmp_path / LR_FIND_FOLDER)
    assert max(seen.values()) == 1
    assert found["lr_find/lr", 1] == pytest.approx(1e-3)
    assert found["lr_find/loss", 2] == pytest.approx(3.0)
    assert found["lr_find/smoothed_loss", 0] == pytest.approx(2.3)
    assert found["lr_find/curve", 1] == pytest.approx(2.15)
