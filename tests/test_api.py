"""The Python API (`raycifar.fit`, `find_lrs`, `open_run` and a Run's evaluate, predict,
report): what a notebook calls, over the same code the commands run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import raycifar
from raycifar.api.training import train_config
from raycifar.cluster.connect import cluster_to_join
from raycifar.recipe.config import ConfigError, RangeTestConfig, SearchConfig
from conftest import REPO, tiny_train_config


def test_importing_the_package_loads_neither_torch_nor_ray():
    code = ("import sys, raycifar; raycifar.TrainConfig; "
            "print('torch' in sys.modules, 'ray' in sys.modules, callable(raycifar.fit))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.split()
    assert out == ["False", "False", "True"]


def test_settings_come_as_a_config_a_dict_or_keywords(tmp_path):
    base = tiny_train_config(tmp_path)
    cfg, typed = train_config(base, {"epochs": 5})
    assert cfg == base.replace(epochs=5) and not typed
    cfg, typed = train_config({"subset": 100, "storage_path": "runs"}, {"lr_max": 0.1})
    assert cfg.subset == 100 and cfg.lr_max == 0.1 and typed
    assert cfg.storage_path == str(tmp_path.cwd() / "runs")  # made absolute, as the CLI does
    cfg, _ = train_config(None, {"num_workers": (2, 4)})
    assert (cfg.min_workers, cfg.num_workers, cfg.elastic) == (2, 4, True)
    with pytest.raises(ConfigError, match="unknown config key"):
        train_config(None, {"epoch": 3})
    with pytest.raises(ConfigError, match="without min_workers"):
        train_config(None, {"num_workers": (2, 4), "min_workers": 1})
    with pytest.raises(ConfigError, match="must be a TrainConfig or a dict"):
        train_config("smoke.yaml", {})


def test_lr_finding_settings_come_typed_or_as_dicts(tmp_path):
    from raycifar.api.training import as_range_test, as_search, lr_choice

    assert as_range_test({"num_steps": 40}) == RangeTestConfig(num_steps=40)
    assert as_search(True) == SearchConfig() and as_search(None) is None
    assert as_search({"candidates": 3}).candidates == 3
    with pytest.raises(ConfigError, match="search: unknown field"):
        as_search({"candidate": 3})
    with pytest.raises(ConfigError, match=">= 10"):  # the sweep's own check, not another
        as_range_test({"num_steps": 5})
    assert lr_choice(None, None, None, None, typed=True).mode == "manual"
    assert lr_choice(None, None, None, True, typed=False).search == SearchConfig()
    with pytest.raises(ConfigError, match="--lr-search refines LRs it finds"):
        lr_choice(None, None, None, True, typed=True)


def test_local_means_a_new_local_ray_whatever_runs_here(monkeypatch):
    from raycifar.cluster import ray_compat

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setattr(ray_compat, "started_cluster_address", lambda: "10.0.0.2:6379")
    assert cluster_to_join("local") is None
    assert cluster_to_join(None) == "10.0.0.1:6379"


def test_fit_in_process_then_use_the_run(tmp_path):
    """`num_workers=0` trains in this process (no Ray): the Run's figures are summary.json's,
    its metrics metrics.csv's, and evaluate/predict/report work from it; a second fit in the
    same process is a run of its own."""
    cfg = tiny_train_config(tmp_path, num_workers=0, epochs=2)
    run = raycifar.fit(cfg, name="api", lr="manual")  # else a TrainConfig's LRs are found
    assert run.finished and run.run_dir == str(tmp_path / "runs" / "api")
    summary = json.loads((tmp_path / "runs" / "api" / "summary.json").read_text())
    assert run.summary == summary and run.final_test_acc == summary["final_test_acc"]
    assert [m["epoch"] for m in run.metrics] == [1, 2]
    assert isinstance(run.metrics[-1]["test_acc"], float)
    assert run.config["config"]["name"] == "api" and run.config["lr_source"]["source"] == "flags"
    assert run.lr_finder is None  # the LRs were typed in
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # no Ray started

    again = raycifar.open_run(run.run_dir)
    assert again.summary == run.summary
    figures = again.evaluate()
    assert figures["accuracy"] == run.final_test_acc and figures["own_data"]
    found = again.predict(str(tmp_path / "data" / "test" / "dog"), top_k=2)
    assert len(found) == 8 and found.classes == ["cat", "dog", "frog"]
    assert all(len(p.top) == 2 for p in found) and found[0].path.endswith("0000.png")
    assert again.report().name == "report.md"
    assert (tmp_path / "runs" / "api" / "report" / "training_curves.png").exists()

    stopped = raycifar.fit(cfg.to_dict(), name="api-2", epochs=3, stop_after_epoch=1)
    assert stopped.stopped_after_epoch == 1 and not stopped.finished
    assert [m["epoch"] for m in stopped.metrics] == [1]
    resumed = raycifar.fit(cfg.to_dict(), name="api-2", epochs=3)  # a dict's LRs are typed
    assert [m["epoch"] for m in resumed.metrics] == [1, 2, 3]


def test_open_run_refuses_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(raycifar.RaycifarError, match="not a run folder"):
        raycifar.open_run(str(tmp_path))


@pytest.mark.ray
def test_lrs_found_and_a_fit_in_one_process_share_the_local_ray_they_started(tmp_path):
    """A script (or notebook) finds the LRs and then fits, both with `address="local"`: the
    first call starts a local Ray although RAY_ADDRESS names another cluster, the fit reuses
    it, and its LRs are the range test's, found through the API."""
    cfg = tiny_train_config(tmp_path, epochs=2)
    script = textwrap.dedent(f"""
        import json, ray, raycifar
        from raycifar.recipe.config import TrainConfig
        cfg = TrainConfig.from_dict(json.loads({json.dumps(json.dumps(cfg.to_dict()))}))
        found = raycifar.find_lrs(cfg, address="local", range_test={{"num_steps": 10}})
        first = ray.get_runtime_context().gcs_address
        a = raycifar.fit(cfg, address="local", name="a", lr_from=cfg.run_dir)
        print(json.dumps({{"found": [found.lr_max, found.lr_min, found.source],
                          "a": [a.config["config"]["lr_max"], a.config["config"]["lr_min"]],
                          "acc": a.final_test_acc,
                          "same_ray": ray.get_runtime_context().gcs_address == first}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=240,
                          env={**__import__("os").environ, "RAY_ADDRESS": "127.0.0.1:9"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["found"][2] == "range-test" and out["a"] == out["found"][:2]
    assert out["same_ray"] and 0 <= out["acc"] <= 1
