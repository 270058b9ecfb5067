"""The notebook (notebooks/raycifar.ipynb): committed without outputs, and run top to bottom
as a user runs it (range test on Ray, training, the report's plots shown inline) on a tiny
generated image tree, in a kernel of this interpreter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import REPO, TINY_WIDTH, write_folder

NOTEBOOK = REPO / "notebooks" / "raycifar.ipynb"
PLOTS = ["lr_finder.png", "one_cycle.png", "training_curves.png", "misclassified.png",
         "confusion_matrix.png"]
KERNEL = "raycifar-test-python"  # a name no user kernelspec shadows


def parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"one cell tagged 'parameters', not {len(tagged)}"
    return tagged[0]


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"cells {dirty} hold outputs: clear them before committing"
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_the_notebook_calls_the_python_api_not_the_commands():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for call in ("raycifar.find_lrs(", "raycifar.fit(", "run.report("):
        assert call in code, call
    for shelling in ("python -m", "!python", "!raycifar", "subprocess", "os.system"):
        assert shelling not in code, f"the notebook shells out ({shelling!r}): use the API"


def test_the_parameters_cell_defines_what_ci_and_users_set():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    names: dict = {}
    exec(nb.cells[parameters_cell(nb)].source, names)  # plain assignments, as papermill needs
    assert {"DATA_DIR": None, "SUBSET": None, "NUM_WORKERS": 1, "LR_MAX": None} \
        .items() <= names.items()  # the defaults are the real path: download, Ray, range test
    assert {"EPOCHS", "RANGE_TEST_STEPS", "WIDTH", "STORAGE_PATH", "ADDRESS", "EXTRA",
            "INSTALL_FROM"} <= names.keys()


def kernel_of_this_interpreter(root: Path, monkeypatch) -> str:
    """A kernelspec running sys.executable, found first through JUPYTER_PATH."""
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(str(root / "kernels" / KERNEL))
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
    return KERNEL


def with_parameters(nb, values: dict):
    """The notebook with a cell setting `values` after its parameters cell (as papermill
    injects it) and a last cell recording which interpreter and raycifar ran it."""
    at = parameters_cell(nb) + 1
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at, injected)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, sys, raycifar\n"
        "print(json.dumps({'python': sys.executable, 'raycifar': raycifar.__file__}))"))
    return nb


def outputs_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.ray
def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch, ray_cluster):
    from nbclient import NotebookClient

    data = write_folder(tmp_path / "data", n_train=24, n_test=8)
    test = data / "test"
    for i in range(4):  # mislabelled test images: the gallery has mistakes to show
        (test / "cat" / f"{i:04d}.png").rename(test / "dog" / f"cat{i}.png")
        (test / "dog" / f"{i:04d}.png").rename(test / "frog" / f"dog{i}.png")
    storage = tmp_path / "runs"
    nb = with_parameters(nbformat.read(NOTEBOOK, as_version=4), {
        "DATA_DIR": str(data), "SUBSET": 60, "EPOCHS": 2, "PEAK_EPOCH": 1,
        "RANGE_TEST_STEPS": 10, "NUM_WORKERS": 0, "WIDTH": TINY_WIDTH, "NAME": "nb",
        # the session's cluster, as a notebook joins one (`address="local"` starting a
        # local Ray is tested in test_api)
        "STORAGE_PATH": str(storage), "PROGRESS_SECONDS": 0,
        "ADDRESS": ray_cluster.get_runtime_context().gcs_address,
        "EXTRA": {"cache_dir": str(tmp_path / "cache"), "batch_size": 16, "seed": 3,
                  "loader_workers": 0, "cpus_per_worker": 1, "precision": "fp32",
                  "channels_last": False, "label_smoothing": 0.0},
    })
    client = NotebookClient(nb, kernel_name=kernel_of_this_interpreter(tmp_path / "jupyter",
                                                                       monkeypatch),
                            timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError naming the cell that failed
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # to read what a user would see

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    ran = json.loads(outputs_text(code[-1]).strip().splitlines()[-1])
    assert ran["python"] == sys.executable
    import raycifar  # the kernel inherits this process's environment (PYTHONPATH included)

    assert Path(ran["raycifar"]).resolve() == Path(raycifar.__file__).resolve()

    text = "\n".join(outputs_text(c) for c in code)
    assert "raycifar is importable from" in text  # the %pip cell was skipped
    assert "found by a 10-batch LR range test" in text
    assert "LRMAX" in text and "lr_finder.json" in text
    assert "[raycifar] epoch 2/2" in text  # the progress lines reach the notebook
    assert "final test accuracy" in text

    run_dir = storage / "nb"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["train_images"] == 60
    assert json.loads((run_dir / "config.json").read_text())["lr_source"]["source"] \
        == "range-test"
    for png in PLOTS:
        assert (run_dir / "report" / png).stat().st_size > 0, png
    shown = [c for c in code if c.source.startswith("show(")]
    assert [c.source for c in shown] == [f'show("{png}")' for png in PLOTS]
    for cell in shown:
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source
    tables = [o["data"]["text/html"] for c in code for o in c.outputs
              if "<table" in o.get("data", {}).get("text/html", "")]
    assert any("test_acc" in t for t in tables)  # metrics.csv as a table
