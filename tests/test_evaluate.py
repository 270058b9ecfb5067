"""`python -m raycifar.evaluate`: a finished (tiny, in-process) run's model on test data."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raycifar.cli import evaluate
from raycifar.cli.args import run_cli
from raycifar.reading.report import PREDICTIONS
from raycifar.store.runs import RunFolder

from conftest import write_folder


def run(argv: list[str]) -> int:
    return run_cli(evaluate.main, evaluate.build_parser(), argv)


def read(folder: Path, name: str) -> tuple[dict, dict]:
    out = RunFolder(str(folder))
    return out.read_json(f"evaluation-{name}.json"), out.read_npz(f"predictions-{name}.npz")


def test_reproduces_the_runs_accuracy_and_predictions_on_its_own_data(trained_run, capsys):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert 0 < summary["final_test_acc"] < 1  # the tiny run gets some wrong: a real check

    assert run([str(trained_run)]) == 0
    assert f"final_test_acc {summary['final_test_acc']:.4f}: reproduced" in capsys.readouterr().out
    figures, pred = read(trained_run, "test")  # written into the run folder by default
    assert figures["accuracy"] == summary["final_test_acc"]  # exactly (CPU, fp32)
    assert figures["images"] == summary["test_images"] == 12  # the run's subset, not all 24
    assert figures["own_data"] and figures["tta"] and figures["data"]["subset"] == 60
    last = (trained_run / "metrics.csv").read_text().splitlines()[-1].split(",")
    assert figures["accuracy_plain"] == float(last[6])  # test_acc_plain of the last epoch

    ran = dict(np.load(trained_run / "predictions.npz"))
    assert set(pred) == set(ran) and set(PREDICTIONS) <= set(pred)  # report/compare read these
    for key in ("labels", "preds", "classes", "wrong_index", "wrong_images"):
        np.testing.assert_array_equal(pred[key], ran[key], err_msg=key)
    np.testing.assert_allclose(pred["probs"], ran["probs"], rtol=0, atol=1e-6)


def test_other_data_uses_the_whole_test_split_unless_subset_says(trained_run, tmp_path):
    cfg = json.loads((trained_run / "config.json").read_text())["config"]
    copy = shutil.copytree(cfg["data_dir"], tmp_path / "copy")  # same images, another folder
    out = tmp_path / "out"
    assert run([str(trained_run), "--data-dir", str(copy), "--out", str(out)]) == 0
    figures, pred = read(out, "copy")  # named after the data folder
    assert not figures["own_data"] and figures["images"] == 24 and figures["data"]["subset"] == 0

    assert run([str(trained_run), "--data-dir", str(copy), "--subset", "60", "--no-tta",
                "--name", "sub", "--out", str(out)]) == 0
    figures, pred = read(out, "sub")
    ran = np.load(trained_run / "predictions.npz")
    np.testing.assert_array_equal(pred["labels"], ran["labels"])  # the run's seed picks them
    assert not figures["tta"] and figures["accuracy"] == figures["accuracy_plain"]
    assert not (trained_run / "evaluation-sub.json").exists()


def test_a_different_class_set_is_one_error_line(trained_run, tmp_path, capsys):
    other = write_folder(tmp_path / "birds", n_train=2, n_test=2, classes=["bird", "cat", "dog"])
    assert run([str(trained_run), "--data-dir", str(other), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("raycifar evaluate: error: ")
    assert "has classes ['bird', 'cat', 'dog']" in err and "['cat', 'dog', 'frog']" in err
    assert not list(tmp_path.glob("evaluation-*"))


@pytest.mark.parametrize("case, message", [
    ("no_model", "has no model.pt: the run has not finished"),
    ("no_run", "does not exist; pass a run folder"),
    ("not_a_run", "has no config.json: not a run folder"),
    ("batch", "--batch-size must be >= 1, not 0"),
    ("subset", "subset=5 must be 0 (all data) or >= 10 images"),
])
def test_user_errors_are_one_line(trained_run, tmp_path, capsys, case, message):
    folder = tmp_path / "run"
    folder.mkdir()
    if case == "no_model":
        shutil.copy(trained_run / "config.json", folder)
    argv = {"no_model": [str(folder)], "no_run": [str(tmp_path / "nope")],
            "not_a_run": [str(folder)], "batch": [str(trained_run), "--batch-size", "0"],
            "subset": [str(trained_run), "--subset", "5", "--out", str(tmp_path)]}[case]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_inference_modules_do_not_import_ray():
    code = ("import sys, raycifar.reading.evaluate, raycifar.reading.predict; "
            "sys.exit(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_compare_and_report_read_an_evaluations_predictions(trained_run, tmp_path):
    """The model on other data: evaluate writes predictions-NAME.npz, and jobs/compare.py and
    jobs/report.py take it with --predictions."""
    from raycifar.reading.compare import compare
    from raycifar.reading.report import write_report
    from raycifar.recipe.config import RaycifarError

    other = write_folder(tmp_path / "other", n_train=4, n_test=6, seed=5)
    run_copy = tmp_path / "run"
    shutil.copytree(trained_run, run_copy)
    assert run([str(run_copy), "--data-dir", str(other), "--name", "other"]) == 0
    figures, pred = read(run_copy, "other")
    with pytest.raises(RaycifarError, match="predictions-other.npz does not exist"):
        compare(str(trained_run), str(run_copy), predictions="predictions-other.npz")
    twin = tmp_path / "twin"
    shutil.copytree(run_copy, twin)
    same = compare(str(run_copy), str(twin), predictions="predictions-other.npz")
    assert same.gap.paired and same.gap.gap == 0 and len(pred["labels"]) == 18
    md = write_report(str(run_copy), str(tmp_path / "report"), "predictions-other.npz")
    assert f"counts sum to {len(pred['labels'])} test images" in md.read_text()
