"""`python -m raycifar.bench`: the pure pieces, the plain loops on tiny data, and one whole run."""

from __future__ import annotations

import functools
import json
import re

import pytest
import torch

from raycifar.cli import bench as bench_cli
from raycifar.cluster import bench
from raycifar.reading import bench_figures
from raycifar.recipe.config import TrainConfig

from conftest import tiny_train_config, write_folder

MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "ram_gib": 8.0, "gpu": None, "torch": "2.x",
           "ray": "2.60.0", "precision": "fp32"}


def _result(values: dict[str, list[float]], notes=("a note",)) -> dict:
    figures = bench_figures.summarise(values)
    return {"machine": MACHINE, "repeats": 3, "command": "python -m raycifar.bench --subset 64",
            "figures": figures, "ratios": bench_figures.ratios(figures, 2), "notes": list(notes),
            "batch_size": 16, "subset": 64}


def test_summarise_takes_medians_in_report_order_and_drops_empty_figures():
    figs = bench_figures.summarise({"plain": [30.0, 10.0, 20.0], "ray": [9.0, 11.0, 10.0],
                            "gpu_peak_plain": []})
    assert list(figs) == ["ray", "plain"]  # FIGURES order, not insertion order
    assert figs["plain"]["median"] == 20.0 and figs["plain"]["values"] == [30.0, 10.0, 20.0]
    assert figs["ray"]["unit"] == "img/s" and figs["ray"]["label"] == bench_figures.FIGURES["ray"][0]


def test_ratios_are_of_medians_and_leave_out_missing_figures():
    figs = bench_figures.summarise({"plain": [20.0], "ray": [10.0], "loader_worker": [15.0]})
    r = bench_figures.ratios(figs, loader_workers=2)
    assert r["ray_over_plain"]["value"] == pytest.approx(0.5)
    assert r["loader_worker_over_plain"]["value"] == pytest.approx(0.75)
    assert r["loader_workers_over_plain"]["value"] == pytest.approx(1.5)
    assert "2 loader workers" in r["loader_workers_over_plain"]["label"]
    assert "ray2_over_ray1" not in r and "gpu_augment_over_plain" not in r


def test_loader_is_judged_against_the_model_unfed_where_that_was_measured():
    # medians of the H200 run in results/gpu-h200: the plain loop waits for its loader, so it
    # only shows the loader's speed; the augment=gpu loop shows what the model could take
    figs = bench_figures.summarise({"plain": [6612.9], "plain_gpu_augment": [71523.1],
                            "loader_worker": [4968.4]})
    rat = bench_figures.ratios(figs, loader_workers=2)
    assert rat["loader_workers_over_plain"]["value"] > 1          # the circular verdict
    assert rat["loader_workers_over_unfed"]["value"] == pytest.approx(2 * 4968.4 / 71523.1)
    keeps_up, note = bench_figures.loader_verdict(figs, 2)
    assert keeps_up is False
    assert "IS the bottleneck" in note and "about 15 workers" in note  # ceil(71523.1 / 4968.4)

    cpu = bench_figures.summarise({"plain": [40.2], "plain_gpu_augment": [44.7],
                           "loader_worker": [2273.7]})                # BENCHMARKS.md, CPU
    keeps_up, note = bench_figures.loader_verdict(cpu, 2)
    assert keeps_up is True and "not the bottleneck" in note


def test_loader_verdict_falls_back_to_the_plain_loop_or_says_nothing():
    figs = bench_figures.summarise({"plain": [20.0], "loader_worker": [5.0]})
    keeps_up, note = bench_figures.loader_verdict(figs, 2)
    assert keeps_up is False and "less than the plain loop consumes" in note
    # under --augment gpu the plain loop is the one that waits for no loader
    keeps_up, note = bench_figures.loader_verdict(figs, 2, unfed="plain")
    assert keeps_up is False and "about 4 workers" in note
    assert bench_figures.loader_verdict(bench_figures.summarise({"plain": [20.0]}), 2) == (None, None)


def test_markdown_holds_the_machine_the_command_every_figure_and_ratio():
    values = {"ray": [9.0, 11.0, 10.0], "ray_2workers": [12.0, 13.0, 14.0],
              "plain": [20.0, 21.0, 22.0], "plain_gpu_augment": [30.0, 31.0, 32.0],
              "plain_compile": [24.0, 25.0, 26.0], "compile_extra": [60.0, 61.0, 62.0],
              "loader_worker": [100.0, 110.0, 120.0], "first_step": [5.0, 6.0, 7.0],
              "command_to_first_step": [12.5], "host_peak_rss_self": [900.0],
              "host_peak_rss_children": [300.0]}
    result = _result(values, notes=["Ray 2 workers: 1 CPU(s) and batch 8 each"])
    text = bench_figures.markdown(result)
    assert "Test CPU 9000, 2 cores, 8.0 GiB RAM, GPU: none" in text
    assert "torch 2.x, ray 2.60.0; precision fp32" in text
    assert "`python -m raycifar.bench --subset 64`" in text
    for key, vals in values.items():
        label, unit = bench_figures.FIGURES[key]
        row = f"| {label} | {unit} | {sorted(vals)[len(vals) // 2]:.1f} | "
        assert row + ", ".join(f"{v:.1f}" for v in vals) + " |" in text, key
    for r in result["ratios"].values():
        assert f"| {r['label']} | {r['value']:.2f} |" in text
    assert "| Ray 1 worker / plain loop | 0.48 |" in text
    assert "| plain torch.compile / plain | 1.19 |" in text
    assert "- Ray 2 workers: 1 CPU(s) and batch 8 each" in text


def test_run_repeats_interleaves_variants_and_times_the_command_once():
    calls = []

    def fake(name, value, **extra):
        def measure():
            calls.append(name)
            return {name: value, **extra}
        return measure

    steps = [fake("ray", 10.0, ready_at=105.0, first_step=3.0), fake("plain", 20.0,
             gpu_peak_plain=None), fake("ray_2workers", 15.0, ready_at=200.0)]
    values = bench.run_repeats(steps, repeats=3, started=100.0)
    assert calls == ["ray", "plain", "ray_2workers"] * 3
    assert values["plain"] == [20.0] * 3 and values["first_step"] == [3.0] * 3
    assert values["command_to_first_step"] == [5.0]  # the first Ray run only
    assert "gpu_peak_plain" not in values  # None: no GPU


def _cfg(**changes) -> TrainConfig:
    return TrainConfig(batch_size=16, cpus_per_worker=2, **changes)


def test_plan_skips_two_workers_on_one_gpu():
    steps, notes = bench.plan(_cfg(), None, use_gpu=True, cluster={"CPU": 16, "GPU": 1})
    assert len(steps) == 6  # ray, plain, augment=gpu, compile, contiguous, loader worker
    assert any("Ray 2 workers skipped: 1 GPU(s)" in n for n in notes)


def test_plan_gives_two_cpu_workers_half_the_cluster_each():
    steps, notes = bench.plan(_cfg(), None, use_gpu=False, cluster={"CPU": 6})
    assert len(steps) == 7
    assert "Ray 2 workers: 3 CPU(s) and batch 8 each" in notes
    _, notes = bench.plan(_cfg(), None, use_gpu=False, cluster={"CPU": 1})
    assert "Ray 2 workers: 1 CPU(s) and batch 8 each" in notes


def test_plan_skips_a_variant_that_is_already_the_plain_one():
    for changes, skipped in [({"augment": "gpu"}, "augment=gpu"),
                             ({"compile": True}, "torch.compile"),
                             ({"channels_last": False}, "the contiguous layout")]:
        steps, notes = bench.plan(_cfg(**changes), None, use_gpu=False, cluster={"CPU": 2})
        assert len(steps) == 6, changes
        assert f"plain loop {skipped} skipped: `plain` already runs with it" in notes
    steps, notes = bench.plan(_cfg(precision="bf16"), None, use_gpu=False, cluster={"CPU": 2},
                              only={"plain", "plain_bf16"})
    assert len(steps) == 1 and "plain loop bf16 skipped: `plain` already runs with it" in notes


def test_on_a_gpu_the_options_turn_the_loop_that_waits_for_no_loader(monkeypatch):
    ran = []
    monkeypatch.setattr(bench, "plain_loop", lambda c, arrays: ran.append(c) or (1.0, 0.0, None))

    def turned(**plan_args):  # (augment, compile, channels_last) of each plain loop measured
        ran.clear()
        steps, notes = bench.plan(_cfg(), None, only={"plain", "plain_gpu_augment",
                                                      "plain_compile", "plain_contiguous"},
                                  **plan_args)
        for measure in steps:
            measure()
        return [(c.augment, c.compile, c.channels_last) for c in ran], notes

    loops, _ = turned(use_gpu=False, cluster={"CPU": 2})
    assert loops == [("albumentations", False, True), ("gpu", False, True),
                     ("albumentations", True, True), ("albumentations", False, False)]
    assert bench.options_on(_cfg()) == "plain"

    monkeypatch.setattr(bench, "_device", lambda cfg: torch.device("cuda"))
    loops, notes = turned(use_gpu=True, cluster={"CPU": 16, "GPU": 1})
    assert loops == [("albumentations", False, True), ("gpu", False, True),
                     ("gpu", True, True), ("gpu", False, False)]
    assert bench.options_on(_cfg()) == "plain_gpu_augment"
    assert any("option variants turn the augment=gpu loop" in n for n in notes)

    figs = bench_figures.summarise({"plain": [6.0], "plain_gpu_augment": [70.0],
                            "plain_compile": [84.0], "plain_contiguous": [56.0]})
    r = bench_figures.ratios(figs, 2, options_base="plain_gpu_augment")
    assert r["compile_over_plain"]["value"] == pytest.approx(1.2)
    assert r["contiguous_over_plain"]["value"] == pytest.approx(0.8)
    assert r["compile_over_plain"]["label"] == \
        "plain augment=gpu torch.compile / plain augment=gpu"
    assert r["gpu_augment_over_plain"]["value"] == pytest.approx(70 / 6)


def test_plan_measures_only_the_variants_asked_for():
    steps, notes = bench.plan(_cfg(), None, use_gpu=False, cluster={"CPU": 2},
                              only={"plain", "plain_compile"})
    assert len(steps) == 2
    assert not any("Ray" in n for n in notes)
    # bf16 only when asked: emulated on CPUs without bf16 units it takes ~20x as long
    default, _ = bench.plan(_cfg(precision="fp32"), None, use_gpu=False, cluster={"CPU": 2})
    asked, _ = bench.plan(_cfg(precision="fp32"), None, use_gpu=False, cluster={"CPU": 2},
                          only=set(bench.VARIANTS))
    assert len(asked) == len(default) + 1


def test_only_names_unknown_variants_in_a_one_line_error(capsys):
    assert bench_cli.cli(["--only", "plain,turbo"]) == 2
    err = capsys.readouterr().err
    assert "--only 'plain,turbo'" in err and "plain_compile" in err


def test_parser_takes_the_train_flags_and_the_bench_ones():
    args = bench_cli.build_parser().parse_args([])
    assert (args.subset, args.repeats, args.out, args.json) == (3072, 3, "BENCHMARKS.md", None)
    args = bench_cli.build_parser().parse_args(["--augment", "gpu", "--batch-size", "64",
                                            "--repeats", "5", "--json", "b.json"])
    assert (args.augment, args.batch_size, args.repeats, args.json) == ("gpu", 64, 5, "b.json")


def test_repeats_below_one_is_a_one_line_error(capsys):
    assert bench_cli.cli(["--repeats", "0"]) == 2
    assert "repeats=0 must be >= 1" in capsys.readouterr().err


def test_machine_info_names_the_versions_and_the_precision():
    m = bench_figures.machine_info("fp32")
    assert m["cores"] >= 1 and m["precision"] == "fp32" and m["ray"] and m["torch"]


def test_plain_loops_and_loader_worker_run_on_tiny_data(tmp_path):
    from raycifar.recipe.data import load_arrays

    cfg = tiny_train_config(tmp_path, batch_size=8, subset=24, use_gpu=False)  # 3 steps
    arrays = load_arrays(cfg)
    for c in (cfg, cfg.replace(augment="gpu")):
        rate, _, peak = bench.plain_loop(c, arrays)
        assert rate > 0 and peak is None
    assert bench.loader_images_per_second(cfg, arrays) > 0


def test_plain_loop_compiles_the_model_when_asked(tmp_path, monkeypatch):
    from raycifar.recipe.data import load_arrays

    compiled = []

    def fake_compile(model, **kw):  # dynamo's tracing without inductor's minutes of C++ builds
        compiled.append(type(model).__name__)
        return REAL_COMPILE(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = tiny_train_config(tmp_path, batch_size=8, subset=24, use_gpu=False)
    arrays = load_arrays(cfg)
    rate, _, _ = bench.plain_loop(cfg, arrays)
    assert rate > 0 and compiled == []
    rate, _, _ = bench.plain_loop(cfg.replace(compile=True), arrays)
    assert rate > 0 and compiled == ["CustomResNet"]


REAL_COMPILE = torch.compile


@pytest.mark.ray
def test_whole_bench_writes_markdown_and_json_with_every_variant(tmp_path, ray_cluster,
                                                                 monkeypatch):
    data = write_folder(tmp_path / "data", n_train=24, n_test=8)
    md, js = tmp_path / "BENCH.md", tmp_path / "bench.json"
    argv = ["--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"), "--subset", "32",
            "--batch-size", "16", "--lr-max", "0.05", "--lr-min", "0.005",
            "--cpus-per-worker", "1", "--loader-workers", "0", "--precision", "fp32",
            "--no-channels-last", "--no-use-gpu", "--repeats", "1", "--width", "16",
            "--out", str(md), "--json", str(js)]
    # torch.compile with dynamo alone: inductor's C++ builds take minutes on two cores
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    assert bench_cli.cli(argv) == 0

    result = json.loads(js.read_text())
    expected = ["ray", "ray_2workers", "plain", "plain_gpu_augment", "plain_compile",
                "loader_worker", "first_step", "command_to_first_step", "host_peak_rss_self"]
    for key in expected:
        assert result["figures"][key]["median"] > 0, key
        assert all(v > 0 for v in result["figures"][key]["values"]), key
    assert result["command"].endswith("--json " + str(js))
    assert isinstance(result["loader_keeps_up"], bool)

    text = md.read_text()
    assert result["command"] in text and "Machine: " in text
    for key in expected:
        row = re.search(re.escape(f"| {bench_figures.FIGURES[key][0]} | ") + r"\S+ \| ([\d.]+) \|", text)
        assert row and float(row.group(1)) > 0, key
    assert "| Ray 1 worker / plain loop |" in text


def test_the_time_split_of_a_run_adds_up_to_its_command():
    summary = {"train_seconds": 16.8, "eval_seconds": 20.0, "record_seconds": 19.0,
               "command_seconds": 128.0, "epochs": 24, "device_name": "NVIDIA H200",
               "precision": "bf16", "train_images": 45000}
    parts = dict((name, s) for name, s, _ in bench_figures.time_split(summary))
    assert parts["start-up and the rest: Ray, data, range test, workers, final files"] == \
        pytest.approx(128.0 - 16.8 - 20.0 - 19.0)
    text = bench_figures.split_markdown("runs/x", summary)
    assert "**232% of the steps' time**" in text  # (20 + 19) / 16.8
    assert "| training steps | 16.8 | 100% of the steps |" in text
    no_command = {k: v for k, v in summary.items() if k != "command_seconds"}
    assert len(bench_figures.time_split(no_command)) == 3
