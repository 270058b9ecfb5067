"""`python -m raycifar.predict`: top-k classes of image files with a finished tiny run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raycifar.cli import predict as predict_cli
from raycifar.reading import predict
from raycifar.cli.args import run_cli
from raycifar.recipe.config import TrainConfig
from raycifar.recipe.data import load_arrays


def run(argv: list[str]) -> int:
    return run_cli(predict_cli.main, predict_cli.build_parser(), argv)


@pytest.fixture(scope="module")
def images(trained_run, tmp_path_factory) -> Path:
    """The run's own test images as 32x32 PNGs (t00.png ...), one 64x48 grayscale image and a
    text file, in one folder."""
    folder = tmp_path_factory.mktemp("images")
    cfg = TrainConfig.from_dict(json.loads((trained_run / "config.json").read_text())["config"])
    for i, x in enumerate(load_arrays(cfg).x_test):
        Image.fromarray(x).save(folder / f"t{i:02d}.png")
    gray = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    Image.fromarray(gray, "L").save(folder / "z_gray.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_folder_agrees_with_the_runs_predictions(trained_run, images, capsys):
    assert run([str(trained_run), str(images), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"warning: skipping {images / 'notes.txt'}: not an image Pillow reads\n"
    out = json.loads(captured.out)
    ran = np.load(trained_run / "predictions.npz")
    got = out["predictions"]
    assert [Path(p["image"]).name for p in got] == [f"t{i:02d}.png" for i in range(12)] + [
        "z_gray.png"]  # sorted, the text file left out
    assert out["tta"] is True and out["classes"] == ["cat", "dog", "frog"]
    top1 = [out["classes"].index(p["top"][0]["class"]) for p in got[:12]]
    np.testing.assert_array_equal(top1, ran["preds"])
    for p, probs in zip(got[:12], ran["probs"]):
        assert [t["probability"] for t in p["top"]] == pytest.approx(
            sorted(probs, reverse=True), abs=1e-5)
    gray = got[12]
    assert (gray["width"], gray["height"], gray["mode"]) == (64, 48, "L")
    assert len(gray["top"]) == 3 and sum(t["probability"] for t in gray["top"]) == pytest.approx(1)


def test_text_output_and_top_k(trained_run, images, capsys):
    assert run([str(trained_run), str(images / "t00.png"), str(images / "z_gray.png"),
                "--top-k", "2", "--no-tta"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{images / 't00.png'}: ")
    assert all(line.count("%") == 2 for line in lines)


def test_images_become_32x32_rgb(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (70, 50), (10, 200, 30, 128)).save(path)
    x, size, mode = predict.read_image(path)
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8 and (size, mode) == ((70, 50), "RGBA")
    assert (x == (10, 200, 30)).all()  # alpha dropped, a flat colour stays that colour
    small = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    Image.fromarray(small).save(tmp_path / "small.png")
    np.testing.assert_array_equal(predict.read_image(tmp_path / "small.png")[0], small)


@pytest.mark.parametrize("case, message", [
    ("text", "cannot read image"),
    ("broken", "cannot read image"),
    ("missing", "does not exist; pass image files"),
    ("no_model", "has no model.pt"),
    ("top_k", "--top-k must be >= 1, not 0"),
])
def test_user_errors_are_one_line(trained_run, images, tmp_path, capsys, case, message):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text((trained_run / "config.json").read_text())
    good = str(images / "t00.png")
    argv = {"text": [str(trained_run), good, str(images / "notes.txt")],
            "broken": [str(trained_run), str(tmp_path / "broken.png")],
            "missing": [str(trained_run), str(tmp_path / "nope.png")],
            "no_model": [str(tmp_path / "run"), good],
            "top_k": [str(trained_run), good, "--top-k", "0"]}[case]
    assert run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err


def test_module_entry_point(trained_run, images):
    done = subprocess.run([sys.executable, "-m", "raycifar.predict", str(trained_run),
                           str(images / "t01.png"), "--json"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["predictions"][0]["image"].endswith("t01.png")
