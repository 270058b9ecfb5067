import os

import numpy as np
import pytest
import torch

from raycifar.recipe.config import TrainConfig
from raycifar.recipe.data import ArrayDataset, DataError, load_arrays, resolve_format
from raycifar.recipe.transforms import eval_transform

from conftest import CLASSES, write_batches, write_folder


def cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(cache_dir=str(tmp_path / "cache"), **kw)


def test_image_folder_source_reads_images_labels_and_class_names(tmp_path, image_folder):
    a = load_arrays(cfg(tmp_path, data_dir=str(image_folder)))
    assert a.classes == sorted(CLASSES)
    assert a.x_train.shape == (72, 32, 32, 3) and a.x_train.dtype == np.uint8
    assert a.x_test.shape == (24, 32, 32, 3)
    assert np.bincount(a.y_train).tolist() == [24, 24, 24]
    # class k was generated bright in channel k % 3 (classes are sorted: cat, dog, frog)
    for k in range(3):
        assert a.x_train[a.y_train == k].mean((0, 1, 2)).argmax() == k


def test_folder_decode_is_cached_and_invalidated_by_changes(tmp_path, image_folder):
    c = cfg(tmp_path, data_dir=str(image_folder))
    first = load_arrays(c)
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 1
    again = load_arrays(c)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    (image_folder / "train" / "cat" / "0000.png").unlink()
    assert len(load_arrays(c).y_train) == 71


def test_batches_source(tmp_path):
    d = write_batches(tmp_path)
    for data_dir in (d, d.parent):  # the folder itself or the folder holding it
        a = load_arrays(cfg(tmp_path, data_dir=str(data_dir)))
        assert a.x_train.shape == (100, 32, 32, 3) and len(a.y_test) == 20
        assert a.classes[0] == "class0"
    assert resolve_format(str(d), "auto") == "batches"


def test_batches_are_decoded_as_rgb_planes(tmp_path):
    d = write_batches(tmp_path, per_batch=2)
    import pickle
    with open(d / "data_batch_1", "rb") as f:
        raw = pickle.load(f)["data"][0]
    a = load_arrays(cfg(tmp_path, data_dir=str(d)))
    assert a.x_train[0, 0, 1, 0] == raw[1]           # R plane first
    assert a.x_train[0, 0, 0, 2] == raw[2 * 1024]     # B plane third


def test_subset_takes_n_train_and_n_over_5_test(tmp_path, image_folder):
    a = load_arrays(cfg(tmp_path, data_dir=str(image_folder), subset=30))
    assert len(a.y_train) == 30 and len(a.y_test) == 6


def test_mean_std_are_of_the_training_images():
    x = np.zeros((2, 32, 32, 3), np.uint8)
    x[1] = 255
    from raycifar.recipe.data import CifarArrays
    mean, std = CifarArrays(x, np.zeros(2), x, np.zeros(2), ["a"]).mean_std()
    assert mean == pytest.approx((0.5, 0.5, 0.5)) and std == pytest.approx((0.5, 0.5, 0.5))


def test_dataset_applies_transform():
    x = np.full((3, 32, 32, 3), 255, np.uint8)
    ds = ArrayDataset(x, np.array([0, 1, 2]), eval_transform((0.5,) * 3, (0.5,) * 3))
    img, label = ds[2]
    assert label == 2 and torch.allclose(img, torch.ones(3, 32, 32))


@pytest.mark.parametrize("breakage, message", [
    ("missing", "does not exist; pass an existing folder"),
    ("empty", "holds neither cifar-10-batches-py/ nor train/<class>/"),
    ("no_images", "holds no .jpg/.jpeg/.png images"),
    ("unreadable", "cannot read image"),
    ("wrong_size", "not 32x32"),
    ("class_mismatch", "differ"),
])
def test_bad_data_gets_one_line_with_the_fix(tmp_path, breakage, message):
    from PIL import Image

    root = tmp_path / "data"
    if breakage == "empty":
        root.mkdir()
    elif breakage != "missing":
        write_folder(root, n_train=2, n_test=1)
        if breakage == "no_images":
            (root / "train" / "ghost").mkdir()
            (root / "test" / "ghost").mkdir()
        elif breakage == "unreadable":
            (root / "train" / "cat" / "0001.png").write_bytes(b"not a png")
        elif breakage == "wrong_size":
            Image.new("RGB", (28, 28)).save(root / "test" / "dog" / "big.png")
        elif breakage == "class_mismatch":
            (root / "test" / "cat" / "0000.png").rename(root / "test" / "x.png")
            import shutil
            shutil.rmtree(root / "test" / "cat")
    with pytest.raises(DataError) as e:
        load_arrays(cfg(tmp_path, data_dir=str(root)))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_validation_holds_out_training_images(tmp_path, image_folder):
    full = load_arrays(cfg(tmp_path, data_dir=str(image_folder)))
    a = load_arrays(cfg(tmp_path, data_dir=str(image_folder), validation=12))
    assert len(a.y_train) == 60 and len(a.y_test) == 12
    rows = {r.tobytes() for r in full.x_train}
    assert all(r.tobytes() in rows for r in a.x_test)  # evaluation images come from train
    assert not {r.tobytes() for r in a.x_test} & {r.tobytes() for r in a.x_train}
    with pytest.raises(DataError, match="lower --validation"):
        load_arrays(cfg(tmp_path, data_dir=str(image_folder), validation=72))


# Run in a fresh interpreter: the test process may have Ray running (other tests' clusters),
# where the decoders rightly do not fork.
FORKED_DECODE = """
import os, sys
from pathlib import Path
import numpy as np
from raycifar.recipe import data
from raycifar.recipe.data import DataError
root = Path(sys.argv[1])
data.DECODE_CHUNK = 5
files = data._list_split(root, "train")
classes = sorted(files)
assert data._decode_processes(len(classes) * 6 // 5) == min(len(os.sched_getaffinity(0)), 3)
forked = data._decode(files, classes)
processes = data._decode_processes
data._decode_processes = lambda chunks: 1
alone = data._decode(files, classes)
assert np.array_equal(forked[0], alone[0]) and np.array_equal(forked[1], alone[1])
assert list(forked[1]) == [c for c in range(len(classes)) for _ in range(6)]
data._decode_processes = processes
(root / "train" / classes[-1] / "0003.jpg").write_bytes(b"not a jpeg")
try:
    data._decode(data._list_split(root, "train"), classes)
except DataError as e:
    assert "cannot read image" in str(e) and "0003.jpg" in str(e), e
    print("ok")
"""


def test_decoding_in_processes_gives_the_arrays_of_one_process(tmp_path):
    """A chunk of 5 images per task forces several forked decoders on any machine with 2+
    cores; the arrays and the order are those of a single-process decode, and a broken image
    inside a forked decoder is still the one-line DataError."""
    import subprocess
    import sys

    root = write_folder(tmp_path / "data", n_train=6, n_test=2, suffix=".jpg")
    done = subprocess.run([sys.executable, "-c", FORKED_DECODE, str(root)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_no_forked_decoders_where_ray_or_cuda_runs_in_this_process_or_off_linux(monkeypatch):
    import sys
    import types

    from raycifar.recipe import data

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    assert data._decode_processes(20) == 1
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False))
    assert data._decode_processes(20) == min(len(os.sched_getaffinity(0)), 16)
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # evaluate on a GPU box
    assert data._decode_processes(20) == 1
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert data._decode_processes(20) == min(len(os.sched_getaffinity(0)), 16)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert data._decode_processes(20) == 1
