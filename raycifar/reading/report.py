"""The report of a finished run: its plots (PNG) and a `report.md` that links them.

Owns every plot and is the only module that imports matplotlib. It draws on bare `Figure`s
(Agg canvas, no pyplot, no display, no global backend change) and reads only what the run wrote,
through `RunFolder`, so a run folder on s3:// or gs:// works too. Functions that compute data
(`confusion_matrix`, `gallery_items`, ...) are kept apart from those that draw, so tests can check
the numbers. Optional inputs (the LR range test, a run stopped early) become notes, not errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from matplotlib.figure import Figure

from ..recipe.config import Finding
from ..store import runs
from ..store.runs import RunFolder, RunFolderError

METRICS = runs.REQUIRED_METRICS  # the columns every metrics.csv has
PREDICTIONS = list(runs.PREDICTION_KEYS)
GALLERY_SIZE = 25
TRIANGULAR_CYCLES = 3
TRIANGULAR_STEP_EPOCHS = 2  # epochs per half cycle: the low end of Smith's advice (2-10)


@dataclass
class RunData:
    """Everything the report reads; None where the run did not write that file."""
    uri: str
    config: dict[str, Any]
    metrics: dict[str, np.ndarray]
    steps: Optional[dict[str, np.ndarray]]
    summary: Optional[dict[str, Any]]
    predictions: Optional[dict[str, np.ndarray]]
    finder: Optional[tuple[dict[str, np.ndarray], dict[str, Any]]]


def read_columns(run: RunFolder, name: str, columns: list[str]) -> dict[str, np.ndarray]:
    """A CSV as float columns; any defect is one RunFolderError naming the file."""
    try:
        rows = run.read_csv(name, required=columns)
        return {c: np.array([float(r[c]) for r in rows]) for c in columns}
    except (ValueError, TypeError) as e:  # a non-number, a short row, undecodable bytes
        raise RunFolderError(f"{run.uri}/{name} is malformed: {e}") from e


def read_optional(run: RunFolder, name: str, read: Callable[[], Any]) -> Any:
    """`read()` if the run folder holds `name`, else None."""
    return read() if run.exists(name) else None  # a run stopped early has no summary yet


def existing_run(uri: str) -> RunFolder:
    """The run folder at `uri`; a RunFolderError saying what to pass where there is none."""
    run = RunFolder(uri)
    if not run.exists():
        raise RunFolderError(f"{uri} does not exist; pass a run folder (<storage_path>/<name>)")
    return run


def load_run(uri: str, predictions_file: str = runs.PREDICTIONS) -> RunData:
    """Read a run folder; metrics.csv and config.json are required, the rest optional."""
    run = existing_run(uri)
    metrics = read_columns(run, runs.METRICS, METRICS)
    config = run.read_json(runs.CONFIG)
    if not (isinstance(config, dict) and isinstance(config.get("config"), dict)
            and "steps_per_epoch" in config):
        raise RunFolderError(f"{uri}/config.json is malformed: needs a 'config' object and "
                             "'steps_per_epoch'")
    predictions = read_optional(run, predictions_file, lambda: run.read_npz(predictions_file))
    missing = [k for k in PREDICTIONS if predictions is not None and k not in predictions]
    if missing:
        raise RunFolderError(f"{uri}/{predictions_file} is malformed: missing arrays {missing}")
    finder = None
    if run.exists(runs.LR_FINDER_CSV) and run.exists(runs.LR_FINDER_JSON):
        finder = (read_columns(run, runs.LR_FINDER_CSV, runs.LR_FINDER_COLUMNS[1:]),
                  run.read_json(runs.LR_FINDER_JSON))
        if not {"lr_max", "lr_min"} <= set(finder[1]):
            raise RunFolderError(f"{uri}/lr_finder.json is malformed: needs lr_max and lr_min")
    steps = read_optional(run, runs.STEPS,
                          lambda: read_columns(run, runs.STEPS, runs.STEP_COLUMNS))
    summary = read_optional(run, runs.SUMMARY, lambda: run.read_json(runs.SUMMARY))
    return RunData(uri, config, metrics, steps, summary, predictions, finder)


# ----------------------------------------------------------------------------- data

def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int) -> np.ndarray:
    """counts[i, j] = test images of true class i predicted as j; sums to len(labels)."""
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    return np.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


def per_class_accuracy(counts: np.ndarray) -> np.ndarray:
    """Recall of each true class (NaN for a class with no test images)."""
    totals = counts.sum(1)
    return np.divide(np.diag(counts), totals, out=np.full(len(counts), np.nan), where=totals > 0)


def gallery_items(pred: dict[str, np.ndarray],
                  limit: int = GALLERY_SIZE) -> list[tuple[int, np.ndarray, str]]:
    """(test index, RGB image, "true → predicted (confidence)") of the most confident mistakes."""
    classes = [str(c) for c in pred["classes"]]
    items = []
    for pos, idx in enumerate(pred["wrong_index"]):
        true, guess = int(pred["labels"][idx]), int(pred["preds"][idx])
        conf = float(pred["probs"][idx, guess])
        items.append((conf, int(idx), pred["wrong_images"][pos],
                      f"{classes[true]} → {classes[guess]} ({conf:.0%})"))
    items.sort(key=lambda t: (-t[0], t[1]))
    return [(idx, img, title) for _, idx, img, title in items[:limit]]


def triangular_curve(config: dict[str, Any]) -> tuple[int, list[float]]:
    """Step size (TRIANGULAR_STEP_EPOCHS epochs of steps) and the triangular LRs."""
    # torch loads only once the run folder has been read
    from ..recipe.schedule import triangular_lrs

    step_size = TRIANGULAR_STEP_EPOCHS * int(config["steps_per_epoch"])
    cfg = config["config"]
    return step_size, triangular_lrs(cfg["lr_min"], cfg["lr_max"], step_size, TRIANGULAR_CYCLES)


# ----------------------------------------------------------------------------- drawing

def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def draw_lr_finder(curve: dict[str, np.ndarray], choice: dict[str, Any], path: Path) -> Path:
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    ax.plot(curve["lr"], curve["loss"], color="0.7", lw=1, label="loss")
    ax.plot(curve["lr"], curve["smoothed_loss"], color="C0", lw=1, ls=":",
            label="EMA (divergence stop)")
    # the zero-lag curve the suggestions are read from; the EMA lags it
    ax.plot(curve["lr"], curve["curve"], color="C0", lw=2, label="smoothed (zero-lag)")
    smooth = "curve"
    if choice["lr_max"] is not None:  # None: the sweep could not be read (see report.md)
        ax.axvline(choice["lr_max"], color="C3", ls="--",
                   label=f"LRMAX = {choice['lr_max']:.3g}")
        ax.axvline(choice["lr_min"], color="C2", ls="--",
                   label=f"LRMIN = {choice['lr_min']:.3g}")
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss",
           title=f"LR range test (suggestion: {choice.get('method', '?')})"
           if choice["lr_max"] is not None else "LR range test (no suggestion)")
    finite = curve[smooth][np.isfinite(curve[smooth])]
    raw = curve["loss"][np.isfinite(curve["loss"])]
    if len(finite):  # clip the diverging tail, which would flatten the useful part
        low, start = min(finite.min(), raw.min()), finite[: max(1, len(finite) // 10)].max()
        if start > low:
            ax.set_ylim(low - 0.1 * (start - low), min(finite.max(), start + 0.6 * (start - low)))
    ax.legend(), ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def draw_one_cycle(steps: dict[str, np.ndarray], config: dict[str, Any], path: Path) -> Path:
    spe, cfg = int(config["steps_per_epoch"]), config["config"]
    epochs = steps["step"] / spe  # epochs completed before this step
    peak = int(np.argmax(steps["lr"]))
    fig = Figure(figsize=(8, 4.2))
    ax = fig.add_subplot()
    ax.plot(epochs, steps["lr"], color="C0", lw=2, label="LR used by each step")
    ax.plot(epochs[peak], steps["lr"][peak], "o", color="C3",
            label=f"peak {steps['lr'][peak]:.4g} at step {int(steps['step'][peak])} "
                  f"(epoch {int(steps['epoch'][peak])})")
    ax.axhline(cfg["lr_min"], color="C2", ls="--", label=f"LRMIN = {cfg['lr_min']:.4g}")
    last = int(np.ceil(epochs[-1] + 1 / spe))
    ax.set_xticks(range(0, last + 1, max(1, last // 24)))
    ax.set(xlabel=f"epoch ({spe} steps per epoch)", ylabel="learning rate", xlim=(0, last),
           title="One Cycle schedule used in training")
    ax.legend(), ax.grid(alpha=0.3)
    return _save(fig, path)


def draw_triangular(step_size: int, lrs: list[float], path: Path) -> Path:
    fig = Figure(figsize=(8, 3.8))
    ax = fig.add_subplot()
    ax.plot(range(len(lrs)), lrs, color="C1", lw=2)
    ax.set_xticks(range(0, len(lrs), step_size))
    ax.set(xlabel="iterations", ylabel="learning rate", xlim=(0, len(lrs) - 1),
           title=f"Triangular cyclic LR: {min(lrs):.4g} to {max(lrs):.4g}, "
                 f"step size {step_size} iterations")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def draw_training_curves(m: dict[str, np.ndarray], path: Path) -> Path:
    fig = Figure(figsize=(11, 4))
    loss, acc = fig.subplots(1, 2)
    for split, style in (("train", "-o"), ("test", "-s")):
        loss.plot(m["epoch"], m[f"{split}_loss"], style, label=split, ms=4)
        acc.plot(m["epoch"], 100 * m[f"{split}_acc"], style, label=split, ms=4)
    loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (loss, acc):
        ax.set_xticks(m["epoch"][:: max(1, -(-len(m["epoch"]) // 12))])  # <= 12 labels
        ax.legend(), ax.grid(alpha=0.3)
    return _save(fig, path)


def draw_gallery(items: list[tuple[int, np.ndarray, str]], path: Path) -> Path:
    cols = min(5, len(items))
    rows = -(-len(items) // cols)
    fig = Figure(figsize=(2.3 * cols, 2.4 * rows), layout="constrained")
    for k, (idx, img, title) in enumerate(items):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(f"test image {idx}", fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])
    return _save(fig, path)


def draw_confusion(counts: np.ndarray, classes: list[str], path: Path) -> Path:
    n = len(classes)
    side = max(0.45 * n, 2.6)  # inches of matrix; wide enough for its title
    fig = Figure(figsize=(5 + side, 1.5 + side), layout="constrained")
    ax, bars = fig.subplots(1, 2, width_ratios=[side, 2.5])
    ax.imshow(counts, cmap="Blues")
    for i, j in np.ndindex(counts.shape):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                color="white" if counts[i, j] > counts.max() / 2 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"Confusion matrix ({counts.sum()} test images)")
    acc = per_class_accuracy(counts)
    bars.barh(range(n), 100 * acc, color="C0")
    for i, a in enumerate(acc):  # inside a long bar, just past a short one
        bars.text(2 if a > 0.3 else 100 * np.nan_to_num(a) + 2, i, f"{a:.0%}", va="center",
                  fontsize=8, color="white" if a > 0.3 else "black")
    bars.set_yticks(range(n), classes)
    bars.set(xlim=(0, 100), xlabel="accuracy (%)", title="Per-class accuracy")
    bars.invert_yaxis(), bars.grid(alpha=0.3, axis="x")
    return _save(fig, path)


# ----------------------------------------------------------------------------- report.md

def _wall_time(s: dict[str, Any]) -> str:
    """The wall time, saying over how many commands a run done in pieces ran."""
    text = f"{s['wall_seconds']:.0f} s"
    if s["commands"] > 1:
        text += f" over {s['commands']} commands"
    return f"{text}; training {s['train_seconds']:.0f} s"


def _lr_source(meta: dict[str, Any]) -> str:
    source = meta.get("lr_source")
    return Finding.from_dict(source).describe() if source else "not recorded"


def _summary_table(s: dict[str, Any]) -> list[str]:
    tta = "with" if s["tta"] else "without"
    rows = [("final test accuracy", f"{s['final_test_acc']:.2%} ({tta} flip TTA)"),
            ("best test accuracy", f"{s['best_test_acc']:.2%} at epoch {s['best_epoch']}"),
            ("epochs", s["epochs"]),
            ("wall time", _wall_time(s)),
            ("training throughput", f"{s['images_per_second']:.0f} images/s"),
            ("workers / device / precision", f"{s['workers']} / {s['device']} / {s['precision']}"),
            ("LRMIN / LRMAX", f"{s['lr_min']:g} / {s['lr_max']:g}"),
            ("train / test images", f"{s['train_images']} / {s['test_images']}")]
    return ["| result | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def draw_seeds(curves: dict[int, dict[str, np.ndarray]], path: Path) -> Path:
    """Test accuracy per epoch: each seed a thin line, their mean bold."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for seed, m in sorted(curves.items()):
        ax.plot(m["epoch"], 100 * m["test_acc"], lw=0.8, alpha=0.7, label=f"seed {seed}")
    n = min(len(m["epoch"]) for m in curves.values())
    first = next(iter(curves.values()))
    mean = np.mean([m["test_acc"][:n] for m in curves.values()], axis=0)
    ax.plot(first["epoch"][:n], 100 * mean, color="k", lw=2.5,
            label=f"mean of {len(curves)} seeds")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def write_seeds_report(run: RunFolder, out: Path) -> Path:
    """report.md of a seeds run (`python -m raycifar.tune seeds`): the table, the spread, the
    per-seed curves and the shared range test."""
    from ..store.seeds import SEEDS_CSV, SEEDS_JSON, describe

    summary = run.read_json(SEEDS_JSON)
    rows = run.read_csv(SEEDS_CSV, ["seed", "run", "final_test_acc"])
    md = [f"# Seeds report: {summary['config'].get('name', run.uri)}", "",
          f"Run folder: `{run.uri}`  ", f"{describe(summary)}  ",
          f"LRMAX {summary['lr_max']:.4g}, LRMIN {summary['lr_min']:.4g} from: "
          f"{_lr_source(summary)}", ""]
    if rows:
        md += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        md += ["| " + " | ".join(r.values()) + " |" for r in rows]
        curves = {int(r["seed"]): read_columns(RunFolder(r["run"]), runs.METRICS, METRICS)
                  for r in rows}
        md += ["", "## Test accuracy per seed", "",
               f"![seeds]({draw_seeds(curves, out / 'seeds.png').name})"]
    if run.exists(runs.LR_FINDER_CSV) and run.exists(runs.LR_FINDER_JSON):
        choice = run.read_json(runs.LR_FINDER_JSON)
        curve = read_columns(run, runs.LR_FINDER_CSV, runs.LR_FINDER_COLUMNS[1:])
        if choice.get("lr_max") is not None:
            md += ["", "## LR range test (shared by every seed)", "",
                   f"![LR range test]({draw_lr_finder(curve, choice, out / 'lr_finder.png').name})"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return out / "report.md"


def write_report(uri: str, out_dir: str, predictions: str = runs.PREDICTIONS) -> Path:
    """Read the run at `uri`, write every PNG and report.md into `out_dir`; returns report.md.
    A seeds run's folder gets the seeds report instead. `predictions` names the file the
    gallery and the confusion matrix come from (one `python -m raycifar.evaluate` wrote: the
    model on other data).

    Over 60 lines because it is the report's table of contents: one `figure(...)` call per
    section, in the order report.md shows them; each plot is its own draw_* function."""
    out = Path(out_dir)
    run = existing_run(uri)
    if run.exists("seeds.json"):
        out.mkdir(parents=True, exist_ok=True)
        return write_seeds_report(run, out)
    data = load_run(uri, predictions)
    out.mkdir(parents=True, exist_ok=True)
    meta = data.config
    md = [f"# Run report: {meta['config'].get('name', uri)}", "", f"Run folder: `{uri}`  ",
          f"Code: raycifar {meta.get('version', '?')}, commit {meta.get('git_commit') or '?'}  ",
          f"Command: `{meta.get('command', 'not recorded')}`  ",
          f"LRMAX and LRMIN from: {_lr_source(meta)}", ""]
    md += _summary_table(data.summary) if data.summary else [
        "> No summary.json: the run has not finished (stopped early or still training)."]

    def figure(title: str, png: Optional[Path], caption: str) -> None:
        md.extend(["", f"## {title}", "", caption])
        if png is not None:
            md.extend(["", f"![{title}]({png.name})"])

    if data.finder:
        curve, choice = data.finder
        figure("LR range test", draw_lr_finder(curve, choice, out / "lr_finder.png"),
               f"Suggested LRMAX {choice['lr_max']:.4g}, LRMIN {choice['lr_min']:.4g} "
               f"(method: {choice.get('method', '?')})." if choice["lr_max"] is not None else
               "> Note: this sweep gave no LRs: "
               f"{choice.get('settings', {}).get('error', 'no reason recorded')}. "
               "Training took its LRs from elsewhere (see the config above).")
    else:
        figure("LR range test", None, "> Note: this run has no LR range test "
               "(lr_finder.csv / lr_finder.json are absent), so there is no plot here.")
    figure("One Cycle schedule",
           draw_one_cycle(data.steps, meta, out / "one_cycle.png") if data.steps else None,
           "The LR each optimizer step used (lr_steps.csv); ticks mark epoch boundaries."
           if data.steps else "> Note: no lr_steps.csv in this run.")
    step_size, lrs = triangular_curve(meta)
    figure("Triangular cyclic LR", draw_triangular(step_size, lrs, out / "triangular.png"),
           f"torch CyclicLR (mode triangular) between this run's LRMIN and LRMAX, "
           f"{TRIANGULAR_CYCLES} cycles, step size {step_size} iterations "
           f"({TRIANGULAR_STEP_EPOCHS} epochs).")
    figure("Training curves", draw_training_curves(data.metrics, out / "training_curves.png"),
           "Per epoch, from metrics.csv.")
    p = data.predictions
    if p is None:
        figure("Misclassified test images", None, f"> Note: no {predictions} in this run.")
    else:
        items = gallery_items(p)
        n_wrong = len(p["wrong_index"])
        shown = ("No test image is misclassified." if not n_wrong else
                 f"Only {n_wrong} test images are misclassified (fewer than {GALLERY_SIZE}); "
                 "all are shown." if n_wrong < GALLERY_SIZE else
                 f"The {len(items)} most confident of {n_wrong} misclassified test images.")
        figure("Misclassified test images",
               draw_gallery(items, out / "misclassified.png") if items else None,
               shown + (" Titles read true → predicted (confidence)." if items else ""))
        classes = [str(c) for c in p["classes"]]
        counts = confusion_matrix(p["labels"], p["preds"], len(classes))
        figure("Confusion matrix", draw_confusion(counts, classes, out / "confusion_matrix.png"),
               f"Rows are true classes; counts sum to {counts.sum()} test images.")
        md += ["", "| class | accuracy |", "|---|---|"] + [
            f"| {c} | {a:.1%} |" for c, a in zip(classes, per_class_accuracy(counts))]
    md += ["", "## Configuration", "", "```json", json.dumps(meta["config"], indent=2,
                                                             sort_keys=True), "```", ""]
    (out / "report.md").write_text("\n".join(md))
    return out / "report.md"
