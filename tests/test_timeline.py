"""The start-up timeline: phases from moments, and the split `bench --split` prints."""

import time

import pytest

from raycifar.reading import bench_figures
from raycifar.recipe import timeline

# A command with a range test, as the driver, the trial and rank 0 would note it (seconds).
MOMENTS = {"process": 100.0, "main": 101.5, "data": 102.5, "ray": 106.5, "trial": 109.5,
           "sweep": 110.0, "sweep_end": 112.0, "range_test_done": 112.5, "lrs": 112.6,
           "fit": 112.7, "worker": 120.0, "worker_data": 120.5, "first_step": 122.0}


def test_phases_cover_the_command_up_to_the_first_step_without_gaps():
    p = timeline.phases(MOMENTS)
    assert p == pytest.approx({
        "imports": 1.5, "data": 1.0, "ray": 4.0, "range_test_start": 3.0,
        "range_test_setup": 0.5, "range_test_sweep": 2.0, "range_test_end": 0.5,
        "before_fit": 0.1, "train_start": 7.3, "worker_data": 0.5, "worker_setup": 1.5,
        "in_all": 22.0})
    # the parts add up to the whole, less the reading of the LRs after Tune returned (0.1 s)
    assert sum(v for k, v in p.items() if k != "in_all") == pytest.approx(22.0 - 0.1)


def test_without_a_range_test_the_lr_choice_is_one_phase_and_trials_have_the_workers_alone():
    no_test = {k: v for k, v in MOMENTS.items()
               if k not in ("trial", "sweep", "sweep_end", "range_test_done")}
    p = timeline.phases(no_test)
    assert p["lr_choice"] == pytest.approx(6.1) and "range_test_sweep" not in p
    searched = timeline.phases({**MOMENTS, "search": 112.5})
    assert searched["lr_search"] == pytest.approx(0.1) and "lr_choice" not in searched
    worker_only = timeline.phases({k: MOMENTS[k] for k in ("worker", "worker_data",
                                                          "first_step")})
    assert list(worker_only) == ["worker_data", "worker_setup"]


def test_the_driver_notes_its_moments_afresh_for_each_command():
    timeline.note("ray", 1.0)
    timeline.start()
    noted = timeline.noted()
    assert set(noted) == {"process", "main"} and noted["process"] <= noted["main"] <= time.time()
    assert time.time() - noted["process"] < 3600  # this process started within the hour
    timeline.note("data")
    assert timeline.noted()["data"] >= noted["main"]


def test_the_split_lists_the_start_up_in_order_and_adds_up_to_the_command():
    summary = {"train_seconds": 16.8, "eval_seconds": 1.2, "record_seconds": 0.8,
               "command_seconds": 45.0, "startup": timeline.phases(MOMENTS), "epochs": 24,
               "device_name": "NVIDIA H200", "precision": "bf16", "train_images": 45000}
    rows = bench_figures.time_split(summary)
    names = [n for n, _, _ in rows]
    assert names[0] == "start-up: Python's start and the imports"
    assert names.index("start-up: range test: the sweep's steps") < \
        names.index("start-up: fit() to the worker loop: Train's controller, the worker group, "
                    "its imports, the process group")
    parts = dict((n, s) for n, s, _ in rows)
    assert parts["start-up in all: the command's start to the first step"] == pytest.approx(22.0)
    assert parts["the rest: between epochs, the final predictions and model.pt"] == \
        pytest.approx(45.0 - 22.0 - 16.8 - 1.2 - 0.8)
    text = bench_figures.split_markdown("runs/x", summary)
    assert "**12% of the steps' time**" in text  # (1.2 + 0.8) / 16.8
    assert "| start-up: Ray: started here, or joined | 4.0 | 24% of the steps |" in text


def test_bench_split_prints_the_markdown_alone(tmp_path):
    import json
    import subprocess
    import sys

    summary = {"train_seconds": 16.8, "eval_seconds": 1.2, "record_seconds": 0.8,
               "command_seconds": 45.0, "startup": timeline.phases(MOMENTS), "epochs": 24,
               "device_name": "NVIDIA H200", "precision": "bf16", "train_images": 45000}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    done = subprocess.run([sys.executable, "-m", "raycifar.bench", "--split", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == bench_figures.split_markdown(str(tmp_path), summary)
    assert done.stdout.startswith(f"# Where the time of {tmp_path} went")
