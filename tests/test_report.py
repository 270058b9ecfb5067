"""The run report: numbers, plots and report.md from a real (tiny, in-process) training run."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from raycifar.cli.args import run_cli
from raycifar.reading.report import (GALLERY_SIZE, _summary_table, confusion_matrix, gallery_items,
                                     load_run, per_class_accuracy, triangular_curve, write_report)
from raycifar.recipe.config import TrainConfig
from raycifar.store.runs import RunFolderError

from conftest import REPO, write_folder

RUN_FILES = ["config.json", "metrics.csv", "lr_steps.csv", "predictions.npz", "summary.json"]
PLOTS = {"one_cycle.png", "triangular.png", "training_curves.png", "misclassified.png",
         "confusion_matrix.png"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real run, made once: Ray Train local mode (num_workers=0) runs the loop in-process."""
    from raycifar.cluster.trainer import fit

    tmp = tmp_path_factory.mktemp("report")
    data = write_folder(tmp / "data", n_train=8, n_test=8)
    # Cat-coloured test images labelled dog: no model gets them all right, so the gallery is
    # never empty, however well the tiny run learns.
    for i in range(3):
        (data / "test" / "cat" / f"{i:04d}.png").rename(data / "test" / "dog" / f"cat{i}.png")
    cfg = TrainConfig(data_dir=str(data), cache_dir=str(tmp / "cache"),
                      storage_path=str(tmp / "runs"), name="tiny", epochs=2, peak_epoch=1,
                      batch_size=8, lr_max=0.2, lr_min=0.02, num_workers=0, cpus_per_worker=1,
                      loader_workers=0, precision="fp32", channels_last=False, width=16)
    fit(cfg)
    return Path(cfg.run_dir)


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    """The run's files (not its weights or checkpoints) in a folder this test may change."""
    copy = tmp_path / "run"
    copy.mkdir()
    for name in RUN_FILES:
        shutil.copy(run_dir / name, copy / name)
    return copy


from raycifar.cli import report as script  # noqa: E402  (jobs/report.py runs it)


def test_default_output_folder():
    from raycifar.api.results import default_out

    assert default_out("/runs/a/") == "/runs/a/report"
    assert default_out("s3://bucket/runs/a") == str(Path.cwd() / "report-a")


def assert_not_blank(png: Path) -> None:
    pixels = imread(png)[..., :3]
    assert pixels.var() > 1e-3, f"{png.name} looks blank"


def linked_pngs(md: str) -> set[str]:
    return {line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")}


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "report.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_report_without_lr_finder_draws_every_plot_and_notes_the_gap(run_dir, tmp_path):
    md_path = write_report(str(run_dir), str(tmp_path / "out"))
    pngs = {p.name for p in md_path.parent.glob("*.png")}
    assert pngs == PLOTS
    for name in pngs:
        assert_not_blank(md_path.parent / name)
    md = md_path.read_text()
    assert linked_pngs(md) == PLOTS
    assert "no LR range test (lr_finder.csv / lr_finder.json are absent)" in md
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['final_test_acc']:.2%}" in md and "images/s" in md
    assert f"| {summary['train_images']} / {summary['test_images']} |" in md
    assert '"lr_max": 0.2' in md  # the config


def test_cli_with_lr_finder_files_plots_them_into_the_default_folder(run_copy, capsys):
    lrs = np.logspace(-4, 0, 30)
    with open(run_copy / "lr_finder.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "lr", "loss", "smoothed_loss", "curve"])
        w.writerows((i, lr, 2 - np.log10(lr) / 4, 2 - np.log10(lr) / 5, 2 - np.log10(lr) / 4.5)
                    for i, lr in enumerate(lrs))
    (run_copy / "lr_finder.json").write_text(
        json.dumps({"lr_max": 0.3, "lr_min": 0.003, "method": "steepest"}))

    assert run_cli(script.main, script.build_parser(), [str(run_copy)]) == 0
    out = run_copy / "report"  # the default for a local run
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.md'}"
    assert_not_blank(out / "lr_finder.png")
    md = (out / "report.md").read_text()
    assert linked_pngs(md) == PLOTS | {"lr_finder.png"}
    assert "Suggested LRMAX 0.3, LRMIN 0.003 (method: steepest)" in md
    assert "no LR range test" not in md


def test_a_sweep_that_gave_no_lrs_is_drawn_unmarked_with_its_error(run_copy, tmp_path):
    from raycifar.reading.report import write_report

    lrs = np.logspace(-4, -3, 30)
    with open(run_copy / "lr_finder.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lr", "loss", "smoothed_loss", "curve"])
        w.writerows((lr, 2.3 + 0.01 * np.sin(i), 2.3, 2.3) for i, lr in enumerate(lrs))
    (run_copy / "lr_finder.json").write_text(json.dumps(
        {"lr_max": None, "lr_min": None, "method": "minimum",
         "settings": {"error": "the loss never fell during the range test"}}))
    md = write_report(str(run_copy), str(tmp_path / "out")).read_text()
    assert_not_blank(tmp_path / "out" / "lr_finder.png")
    assert "this sweep gave no LRs: the loss never fell during the range test" in md
    assert "LRMAX and LRMIN from: " in md


@pytest.mark.parametrize("extra, words", [
    ({"commands": 1}, "| 900 s; training 600 s |"),
    ({"commands": 3}, "| 900 s over 3 commands; training 600 s |"),
])
def test_wall_time_says_what_a_run_in_pieces_counts(extra, words):
    s = {"final_test_acc": 0.9, "best_test_acc": 0.9, "best_epoch": 24, "epochs": 24,
         "tta": True, "wall_seconds": 900, "train_seconds": 600, "images_per_second": 38,
         "workers": 1, "device": "cpu", "precision": "fp32", "lr_min": 0.001, "lr_max": 0.1,
         "train_images": 45000, "test_images": 5000, **extra}
    assert words in "\n".join(_summary_table(s))


def test_confusion_matrix_counts_every_test_image(run_dir):
    data = load_run(str(run_dir))
    p = data.predictions
    counts = confusion_matrix(p["labels"], p["preds"], len(p["classes"]))
    assert counts.shape == (3, 3)
    assert counts.sum() == len(p["labels"]) == data.summary["test_images"] == 24
    assert np.trace(counts) / counts.sum() == pytest.approx(data.summary["final_test_acc"])
    assert counts.sum(1).tolist() == [5, 11, 8]  # true classes are the rows


def test_confusion_matrix_and_per_class_accuracy_by_hand():
    counts = confusion_matrix(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 2]), 4)
    assert counts.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    acc = per_class_accuracy(counts)
    assert acc[:3] == pytest.approx([0.5, 2 / 3, 1.0]) and np.isnan(acc[3])


def test_gallery_of_the_real_run_titles_each_mistake(run_dir):
    p = load_run(str(run_dir)).predictions
    classes = p["classes"].tolist()
    items = gallery_items(p)
    n_wrong = len(p["wrong_index"])
    assert n_wrong == (p["labels"] != p["preds"]).sum()
    assert 0 < len(items) == min(GALLERY_SIZE, n_wrong)
    confidences = []
    for idx, img, title in items:
        pos = p["wrong_index"].tolist().index(idx)
        np.testing.assert_array_equal(img, p["wrong_images"][pos])
        conf = p["probs"][idx, p["preds"][idx]]
        assert title == f"{classes[p['labels'][idx]]} → {classes[p['preds'][idx]]} ({conf:.0%})"
        confidences.append(conf)
    assert confidences == sorted(confidences, reverse=True)  # most confident mistakes first


def fake_predictions(n_wrong: int, n_right: int = 5) -> dict:
    rng = np.random.default_rng(0)
    labels = np.zeros(n_wrong + n_right, np.int64)
    preds = np.r_[np.ones(n_wrong, np.int64), np.zeros(n_right, np.int64)]
    probs = np.full((len(labels), 2), 0.1, np.float32)
    probs[np.arange(len(labels)), preds] = np.linspace(0.5, 0.9, len(labels))
    wrong = np.flatnonzero(preds != labels)
    return {"labels": labels, "preds": preds, "probs": probs, "classes": np.array(["cat", "dog"]),
            "wrong_index": wrong,
            "wrong_images": rng.integers(0, 256, (len(wrong), 32, 32, 3), dtype=np.uint8)}


@pytest.mark.parametrize("n_wrong, shown", [(40, 25), (25, 25), (7, 7), (0, 0)])
def test_gallery_shows_at_most_25_and_all_when_fewer(n_wrong, shown):
    pred = fake_predictions(n_wrong)
    items = gallery_items(pred)
    assert len(items) == shown
    if shown:
        assert items[0][0] == n_wrong - 1  # the highest confidence
        assert items[0][2] == f"cat → dog ({pred['probs'][n_wrong - 1, 1]:.0%})"


def test_fewer_than_25_mistakes_are_all_shown_and_said(run_copy, tmp_path):
    run = load_run(str(run_copy))
    keep = run.predictions["wrong_index"][:3]
    p = dict(np.load(run_copy / "predictions.npz"))
    p["preds"] = p["labels"].copy()
    p["preds"][keep] = (p["labels"][keep] + 1) % 3
    p["wrong_index"], p["wrong_images"] = keep, p["wrong_images"][:3]
    np.savez(run_copy / "predictions.npz", **p)
    md = write_report(str(run_copy), str(tmp_path / "out")).read_text()
    assert "Only 3 test images are misclassified (fewer than 25); all are shown." in md


def test_triangular_curve_uses_the_runs_lrs_and_two_epochs_per_step(run_dir):
    config = load_run(str(run_dir)).config
    step_size, lrs = triangular_curve(config)
    assert step_size == 2 * config["steps_per_epoch"] == 6  # 24 images / batch 8
    assert lrs[0] == pytest.approx(0.02) and lrs[step_size] == pytest.approx(0.2)
    assert len(lrs) == 3 * 2 * step_size + 1 and lrs[-1] == pytest.approx(0.02)


@pytest.mark.parametrize("content, words", [
    ("not,a,metrics\nfile,at,all\n", "missing columns"),
    ("epoch,lr,train_loss,train_acc,test_loss,test_acc,test_acc_plain,epoch_seconds,"
     "images_per_second\n1,0.1,oops,0.5,1,0.5,0.5,1,10\n", "could not convert string"),
    (None, "metrics.csv does not exist"),
])
def test_missing_or_malformed_metrics_is_one_error_line_and_exit_2(run_copy, content, words):
    if content is None:
        (run_copy / "metrics.csv").unlink()
    else:
        (run_copy / "metrics.csv").write_text(content)
    done = run_script(str(run_copy), "--out", str(run_copy / "out"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jobs/report.py: error: ") and "metrics.csv" in lines[0]
    assert words in lines[0]
    assert not (run_copy / "out").exists()


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        load_run(str(tmp_path / "nope"))


def test_a_uri_is_read_through_pyarrow(run_dir):
    data = load_run(f"file://{run_dir}")  # the same code path as s3:// and gs://
    assert data.summary == json.loads((run_dir / "summary.json").read_text())
    assert data.metrics["epoch"].tolist() == [1.0, 2.0]
