"""Training on a real local Ray: 2 workers under DDP (gloo), the run folder, resume."""

import numpy as np
import pytest
import torch
from conftest import tiny_train_config

from raycifar.cluster.trainer import fit
from raycifar.cluster.worker import Stopped
from raycifar.store.runs import METRIC_COLUMNS, RunFolder

pytestmark = pytest.mark.ray


def test_two_workers_train_write_the_run_folder_and_resume(tmp_path, ray_cluster):
    # The spec's network (not the tests' narrow one) under Ray Train, DDP and resume.
    cfg = tiny_train_config(tmp_path, name="t", num_workers=2, stop_after_epoch=2, width=64)
    first = fit(cfg)
    assert first.return_value == Stopped(after_epoch=2)
    run = RunFolder(cfg.run_dir)
    rows = run.read_csv("metrics.csv", required=METRIC_COLUMNS)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert not run.exists("summary.json")

    # Same name again, without the stop: continues at epoch 3 from the checkpoint.
    second = fit(cfg.replace(stop_after_epoch=0))
    summary = second.return_value
    rows2 = run.read_csv("metrics.csv", required=METRIC_COLUMNS)
    assert [r["epoch"] for r in rows2] == ["1", "2", "3"]
    assert rows2[:2] == rows  # the first two epochs were not redone
    assert float(rows2[2]["train_loss"]) < float(rows2[0]["train_loss"])

    cfg_json = run.read_json("config.json")
    world, spe = cfg_json["world_size"], cfg_json["steps_per_epoch"]
    assert world == 2 and spe == 4  # 72 images in full global batches of 16, 8 per worker
    steps = run.read_csv("lr_steps.csv", required=["step", "epoch", "lr", "momentum"])
    assert [int(s["step"]) for s in steps] == list(range(3 * spe))  # no gap, no repeat
    lrs = [float(s["lr"]) for s in steps]
    assert lrs[0] == pytest.approx(0.005) and max(lrs) == pytest.approx(0.05)
    assert lrs[-1] == pytest.approx(0.005)

    # TensorBoard: a file per epoch over both commands, each epoch and step once
    from collections import Counter

    from raycifar.store.tracking import read_run
    tb = read_run(run)
    assert sorted(s for t, s, _ in tb if t == "epoch/test_acc") == [1, 2, 3]
    assert sorted(s for t, s, _ in tb if t == "step/lr") == list(range(3 * spe))
    assert max(Counter((t, s) for t, s, _ in tb).values()) == 1

    assert summary["workers"] == 2 and summary["epochs"] == 3
    # the wall time covers both commands: never less than the training time it contains
    assert summary["commands"] == 2
    assert summary["wall_seconds"] > summary["train_seconds"] > 0
    assert summary["test_images"] == 24 and summary == run.read_json("summary.json")
    pred = run.read_npz("predictions.npz")
    assert len(pred["labels"]) == 24 and pred["probs"].shape == (24, 3)
    np.testing.assert_array_equal(pred["preds"], pred["probs"].argmax(1))
    assert summary["final_test_acc"] == pytest.approx((pred["preds"] == pred["labels"]).mean())
    assert len(pred["wrong_images"]) == (pred["preds"] != pred["labels"]).sum()
    assert pred["classes"].tolist() == ["cat", "dog", "frog"]

    import io
    state = torch.load(io.BytesIO(run.read_bytes("model.pt")), weights_only=True)
    from raycifar.recipe.model import CustomResNet
    CustomResNet(num_classes=3).load_state_dict(state)


def test_the_device_batches_path_trains_under_ddp(tmp_path, ray_cluster):
    cfg = tiny_train_config(tmp_path, name="fast", num_workers=2, augment="gpu", epochs=2)
    summary = fit(cfg).return_value
    run = RunFolder(cfg.run_dir)
    rows = run.read_csv("metrics.csv", required=METRIC_COLUMNS)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert run.read_json("config.json")["steps_per_epoch"] == 4  # 72 // 16, 8 per rank
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert summary["epochs"] == 2 and summary["test_images"] == 24

