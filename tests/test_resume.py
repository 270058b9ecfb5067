"""Checkpoint checks before a resume, and the fault-injection spec (no Ray)."""

import io
import os

import pytest
import torch

from raycifar.recipe.config import ConfigError
from raycifar.recipe.faults import Fault, from_spec
from raycifar.recipe.model import CustomResNet
from raycifar.store.resume import (CHECKPOINT_FILE, SNAPSHOT_FILE, STATE_KEYS, CheckpointError,
                                   check_resumable, latest_checkpoint)
from raycifar.store.runs import DIVERGED, RunFolder, first_divergence, mark_divergence

from conftest import TINY_WIDTH, tiny_train_config


def write_checkpoint(cfg, state: dict = None, raw: bytes = None, name="checkpoint_a") -> RunFolder:
    """A run folder laid out as Ray Train leaves it, with one checkpoint."""
    run = RunFolder(cfg.run_dir)
    if state is None:
        state = {k: None for k in STATE_KEYS}
        state.update(model=CustomResNet(3, width=TINY_WIDTH).state_dict(), epoch=2,
                     config=cfg.to_dict())
    if raw is None:
        buf = io.BytesIO()
        torch.save(state, buf)
        raw = buf.getvalue()
    run.write_bytes(f"{name}/{CHECKPOINT_FILE}", raw)
    run.write_json(SNAPSHOT_FILE, {"latest_checkpoint_result": {"checkpoint_dir_name": name}})
    return run


def test_a_run_folder_without_checkpoints_starts_fresh(tmp_path):
    cfg = tiny_train_config(tmp_path)
    assert check_resumable(cfg, 3) is None
    RunFolder(cfg.run_dir).write_text("metrics.csv", "epoch\n1\n")
    assert check_resumable(cfg, 3) is None


def test_a_good_checkpoint_gives_its_epoch(tmp_path):
    cfg = tiny_train_config(tmp_path)
    run = write_checkpoint(cfg)
    assert latest_checkpoint(run) == "checkpoint_a"
    assert check_resumable(cfg, 3) == 2
    # where the data lives, the worker count and when to stop may change between sessions
    moved = cfg.replace(num_workers=2, stop_after_epoch=3, data_dir=str(tmp_path / "elsewhere"))
    assert check_resumable(moved, 3) == 2


def test_a_truncated_checkpoint_is_an_error_that_says_how_to_start_fresh(tmp_path):
    cfg = tiny_train_config(tmp_path)
    buf = io.BytesIO()
    torch.save({"model": CustomResNet(3, width=TINY_WIDTH).state_dict()}, buf)
    write_checkpoint(cfg, raw=buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read the checkpoint .*state\.pt.*"
                                              r"start fresh with another --name"):
        check_resumable(cfg, 3)


def test_another_networks_weights_are_an_error(tmp_path):
    cfg = tiny_train_config(tmp_path)
    state = {k: None for k in STATE_KEYS}
    state.update(model=CustomResNet(10, width=TINY_WIDTH).state_dict(), epoch=1,
                 config=cfg.to_dict())
    write_checkpoint(cfg, state=state)
    with pytest.raises(CheckpointError, match=r"do not fit this network \(size mismatch for "
                                              r"fc\.weight.*start fresh"):
        check_resumable(cfg, 3)


def test_a_file_that_is_not_our_checkpoint_is_an_error(tmp_path):
    cfg = tiny_train_config(tmp_path)
    write_checkpoint(cfg, state={"weights": CustomResNet(3, width=TINY_WIDTH).state_dict()})
    with pytest.raises(CheckpointError, match=r"is not a raycifar checkpoint \(no model, "):
        check_resumable(cfg, 3)


def test_another_config_is_an_error_naming_what_changed(tmp_path):
    cfg = tiny_train_config(tmp_path)
    write_checkpoint(cfg)
    with pytest.raises(CheckpointError, match=r"other settings \(lr_max: 0\.05 then, 0\.1 now; "
                                              r"seed: 0 then, 1 now\).*start fresh"):
        check_resumable(cfg.replace(lr_max=0.1, seed=1), 3)


def test_an_unreadable_snapshot_is_an_error(tmp_path):
    cfg = tiny_train_config(tmp_path)
    RunFolder(cfg.run_dir).write_text(SNAPSHOT_FILE, "{not json")
    with pytest.raises(CheckpointError, match="is unreadable"):
        check_resumable(cfg, 3)


def test_fault_specs_parse_and_bad_ones_are_refused():
    assert from_spec(None) == () and from_spec("") == ()
    assert from_spec("stall:epoch=3:once=/a,kill:epoch=5:rank=1") == (
        Fault("stall", 3, once="/a"), Fault("kill", 5, rank=1))
    with pytest.raises(ConfigError):
        from_spec("stall:epoch=3,")  # an empty second fault
    assert Fault.parse("kill:epoch=2:step=3:rank=1:once=/x") == Fault("kill", 2, 3, 1, "/x")
    assert Fault.parse("nan:epoch=1") == Fault("nan", 1)
    assert Fault.parse("stall:epoch=3:seconds=0.5") == Fault("stall", 3, seconds=0.5)
    for bad in ("explode:epoch=1", "kill:step=2", "kill:epoch=1:when=now", "kill:epoch",
                "stall:epoch=1:seconds=long"):
        with pytest.raises(ConfigError):
            Fault.parse(bad)


def test_a_stall_waits_at_its_place_only(tmp_path):
    import time

    stall = Fault.parse("stall:epoch=2:step=1:seconds=0.3")
    model = CustomResNet(3, width=TINY_WIDTH)
    started = time.monotonic()
    for epoch, step in ((1, 1), (2, 0), (2, 2)):
        stall.maybe_fire(epoch, step, 0, model)
    assert time.monotonic() - started < 0.2
    stall.maybe_fire(2, 1, 0, model)
    assert time.monotonic() - started >= 0.3


def test_a_nan_fault_fires_once_at_its_place(tmp_path):
    model = CustomResNet(3, width=TINY_WIDTH)
    marker = tmp_path / "fired"
    fault = Fault("nan", epoch=2, step=1, once=str(marker))
    fault.maybe_fire(2, 0, 0, model)
    fault.maybe_fire(1, 1, 0, model)
    fault.maybe_fire(2, 1, 1, model)  # another rank
    assert all(torch.isfinite(p).all() for p in model.parameters()) and not marker.exists()
    fault.maybe_fire(2, 1, 0, model)
    assert marker.exists() and torch.isnan(next(model.parameters())).all()
    fresh = CustomResNet(3, width=TINY_WIDTH)
    fault.maybe_fire(2, 1, 0, fresh)  # the marker is there: a restarted worker is spared
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


def test_the_earliest_divergence_any_rank_marked_is_the_one_named(tmp_path):
    run = RunFolder(str(tmp_path / "run"))
    assert first_divergence(run) is None
    # Under DDP a NaN on rank 0 at step 7 reaches rank 1 at step 8, and rank 1 may write last.
    mark_divergence(run, 0, "at step 7", epoch=2, step=7)
    mark_divergence(run, 1, "at step 8", epoch=2, step=8)
    assert first_divergence(run)["message"] == "at step 7"
    mark_divergence(run, 3, "at step 6", epoch=2, step=6)
    assert first_divergence(run)["rank"] == 3
    assert len(run.list(DIVERGED)) == 3
    run.delete_folder(DIVERGED)
    assert first_divergence(run) is None


def test_a_kill_fault_kills_its_process(tmp_path):
    import signal
    import subprocess
    import sys

    code = ("from raycifar.recipe.faults import Fault; "
            "from raycifar.recipe.model import CustomResNet; "
            f"Fault('kill', 1, once={str(tmp_path / 'k')!r}).maybe_fire(1, 0, 0, CustomResNet(3));"
            "print('survived')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL and "survived" not in p.stdout
    assert os.path.exists(tmp_path / "k")


def test_the_run_clock_sums_the_commands_of_a_run_done_in_pieces(monkeypatch):
    from raycifar.recipe import state as train

    now = iter([130.0, 520.0]).__next__
    monkeypatch.setattr(train.time, "perf_counter", now)
    first = train.RunClock(start=100.0)
    state = {"epoch": 2, **first.state()}                     # checkpoint at 130
    assert state == {"epoch": 2, "wall_seconds": 30.0, "commands": 1}
    second = train.RunClock(start=500.0, before=state["wall_seconds"],  # resumed; done at 520
                            commands=state["commands"] + 1)
    assert second.state() == {"wall_seconds": 50.0, "commands": 2}


def test_compiling_may_change_on_resume_but_the_recipe_may_not(tmp_path):
    cfg = tiny_train_config(tmp_path)
    write_checkpoint(cfg)
    assert check_resumable(cfg.replace(compile=True), num_classes=3) == 2
    with pytest.raises(CheckpointError, match="augment"):
        check_resumable(cfg.replace(augment="gpu"), num_classes=3)


def test_a_compiled_run_saves_plain_weights(tmp_path, monkeypatch):
    """torch.compile wraps the network; model.pt (and the checkpoints, written from the same
    unwrapped module) must not carry its `_orig_mod.` prefix."""
    from raycifar.cluster.trainer import fit

    real = torch.compile
    compiled = []

    def dynamo_only(model, **kw):  # inductor's C++ builds take minutes on two cores
        compiled.append(model)
        return real(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", dynamo_only)
    cfg = tiny_train_config(tmp_path, num_workers=0, epochs=2,
                            compile=True)  # Ray Train's local mode: the loop runs in here
    fit(cfg)
    assert len(compiled) == 1
    run = RunFolder(cfg.run_dir)
    weights = torch.load(io.BytesIO(run.read_bytes("model.pt")), weights_only=True)
    CustomResNet(3, width=TINY_WIDTH).load_state_dict(weights)  # strict: the same keys, no prefix
    assert run.read_json("config.json")["config"]["compile"] is True


def gpu_tagged_checkpoint(state: dict) -> bytes:
    """`state` saved as a GPU run saves it: every storage tagged "cuda:0" (test-only use of
    torch's private tagger list; a real GPU is not needed to write the tags)."""
    from torch import serialization

    entry = (1, lambda obj: "cuda:0", lambda obj, location: None)
    serialization._package_registry.append(entry)
    serialization._package_registry.sort(key=lambda e: e[0])
    try:
        buf = io.BytesIO()
        torch.save(state, buf)
    finally:
        serialization._package_registry.remove(entry)
    return buf.getvalue()


def test_a_checkpoint_written_on_a_gpu_resumes_on_a_cpu(tmp_path):
    from raycifar.store.resume import read_state

    state = {"model": CustomResNet(3, width=TINY_WIDTH).state_dict(), "rng": torch.get_rng_state()}
    raw = gpu_tagged_checkpoint(state)
    with pytest.raises(RuntimeError, match="CUDA device"):  # what a plain torch.load does
        torch.load(io.BytesIO(raw), weights_only=False)
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(raw)
    loaded = read_state(str(path), torch.device("cpu"))  # what every worker calls
    assert all(t.device.type == "cpu" for t in loaded["model"].values())
    torch.set_rng_state(loaded["rng"])
    cfg = tiny_train_config(tmp_path)
    full = {k: None for k in STATE_KEYS}
    full.update(model=state["model"], epoch=3, config=cfg.to_dict())
    write_checkpoint(cfg, raw=gpu_tagged_checkpoint(full))
    assert check_resumable(cfg, 3) == 3  # the driver's check reads it on the CPU too


def test_another_worker_count_resumes_when_the_schedule_is_the_same(tmp_path):
    cfg = tiny_train_config(tmp_path, num_workers=2)
    state = {k: None for k in STATE_KEYS}
    state.update(model=CustomResNet(3, width=TINY_WIDTH).state_dict(), epoch=2,
                 config=cfg.to_dict(),
                 scheduler={"total_steps": 15})
    write_checkpoint(cfg, state)
    assert check_resumable(cfg.replace(num_workers=1), 3, total_steps=15) == 2
    assert check_resumable(cfg.replace(num_workers=4, min_workers=1), 3, total_steps=15) == 2
    with pytest.raises(CheckpointError, match=r"One Cycle of 15 steps and this run's would have "
                                              r"18 \(other data or another batch size\): start "
                                              r"fresh"):
        check_resumable(cfg.replace(num_workers=8), 3, total_steps=18)


def test_a_bad_fault_spec_is_refused_on_the_driver(monkeypatch):
    from raycifar.cluster.trainer import checked_faults

    monkeypatch.delenv("RAYCIFAR_FAULT", raising=False)
    assert checked_faults() is None
    monkeypatch.setenv("RAYCIFAR_FAULT", "stall:epoch=3, kill:epoch=4:rank=1")
    assert checked_faults() == "stall:epoch=3, kill:epoch=4:rank=1"
    monkeypatch.setenv("RAYCIFAR_FAULT", "stall:epoch=3,stall:epoch=x")
    with pytest.raises(ConfigError, match="epoch= takes a number"):
        checked_faults()
