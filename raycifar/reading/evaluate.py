"""A finished run's model on test data: `python -m raycifar.evaluate RUN`.

Owns loading a trained run (`load_trained`: `model.pt` and the normalisation, class names,
precision and logit scale of `config.json`), the rule for which test images to evaluate, and
the evaluation files. Plain PyTorch through `engine.evaluate`; Ray is never imported.

Which images: the test split of the data source given (`--data-dir`, `--data-format`,
`--cache-dir`; each defaults to the run's own). On the run's own source (the same format and
folder; any copy of the torchvision download counts) the run's `subset` and `seed` are kept, so
the images are the ones the run was tested on and its `final_test_acc` is reproduced (on the
same kind of device). On other data the whole test split is used. `--subset N` overrides both:
the seeded N // 5 test images that `train --subset N --seed <run's seed>` tests on, 0 = all.
A run trained with `--validation` was scored on held-out training images; this scores the test
split. The class names must equal the run's, in the same order.

Writes, into the run folder or `--out`: `evaluation-<name>.json` and `predictions-<name>.npz`
(the arrays of the run's `predictions.npz`).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..recipe.config import RaycifarError, TrainConfig
from ..recipe.data import ArrayDataset, CifarArrays, load_arrays, resolve_format
from ..recipe.engine import evaluate as evaluate_model
from ..recipe.model import CustomResNet
from ..recipe.runtime import Runtime
from ..recipe.transforms import eval_transform
from ..store import runs
from ..store.runs import RunFolder, RunFolderError


class ClassMismatchError(RaycifarError):
    """The data's classes are not the ones the model was trained on."""


@dataclass
class TrainedRun:
    """A finished run's network, ready for inference, and what it needs to read images."""
    uri: str
    model: torch.nn.Module
    cfg: TrainConfig
    meta: dict[str, Any]  # config.json as written
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    device: torch.device
    precision: str        # autocast precision used here (see `load_trained`)

    @property
    def rt(self) -> Runtime:
        return Runtime(self.device, self.precision, self.cfg.channels_last)


def pick_device(use_gpu: Optional[bool]) -> torch.device:
    """CUDA when asked (or, with None, when there is one); the CPU otherwise."""
    if use_gpu and not torch.cuda.is_available():
        raise RaycifarError("--use-gpu: this machine has no CUDA GPU; drop the flag")
    return torch.device("cuda" if use_gpu or (use_gpu is None and torch.cuda.is_available())
                        else "cpu")


def load_trained(uri: str, device: torch.device) -> TrainedRun:
    """Load RUN's weights and config. The run's recorded precision is used on the device kind
    it trained on; on the other kind fp32 (bf16 on a CPU without bf16 units is ~20x slower)."""
    run = RunFolder(uri)
    if not run.exists():
        raise RunFolderError(f"{uri} does not exist; pass a run folder (<storage_path>/<name>)")
    if not run.exists(runs.CONFIG):
        raise RunFolderError(f"{uri} has no config.json: not a run folder; pass "
                             "<storage_path>/<name> of a finished run")
    if not run.exists(runs.MODEL):
        raise RunFolderError(f"{uri} has no model.pt: the run has not finished (training "
                             "writes it after the last epoch); finish it or pass another run")
    meta = run.read_json(runs.CONFIG)
    missing = [k for k in ("config", "mean", "std", "classes", "precision")
               if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise RunFolderError(f"{uri}/config.json is malformed: missing {missing}")
    # Keys a later version dropped would fail `from_dict`; they cannot matter for inference.
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig.from_dict({k: v for k, v in meta["config"].items() if k in known})
    classes = [str(c) for c in meta["classes"]]
    try:
        weights = torch.load(io.BytesIO(run.read_bytes(runs.MODEL)), map_location="cpu",
                             weights_only=True)
        model = CustomResNet(len(classes), cfg.logit_scale, cfg.width)
        model.load_state_dict(weights)
    except Exception as e:  # unpickling and key/shape errors come in many types
        raise RunFolderError(f"{uri}/model.pt does not hold this run's network for "
                             f"{len(classes)} classes ({type(e).__name__}: {e})") from e
    model = model.to(device).eval()
    if cfg.channels_last:  # as trained: the same conv kernels, the same last digits
        model = model.to(memory_format=torch.channels_last)
    trained_on = torch.device(str(meta.get("device", "cpu"))).type
    precision = meta["precision"] if trained_on == device.type else "fp32"
    return TrainedRun(uri, model, cfg, meta, tuple(meta["mean"]), tuple(meta["std"]), classes,
                      device, precision)


def _same_source(a: TrainConfig, b: TrainConfig) -> bool:
    """Do two configs read the same data (format, and folder unless downloaded)?"""
    fa = resolve_format(a.data_dir, a.data_format)
    try:
        fb = resolve_format(b.data_dir, b.data_format)
    except RaycifarError:  # the run's folder is not on this machine
        return False
    if fa != fb:
        return False
    return fa == "download" or (Path(a.data_dir).expanduser().resolve()
                                == Path(b.data_dir).expanduser().resolve())


def eval_config(trained: TrainedRun, data_dir: Optional[str], data_format: Optional[str],
                cache_dir: Optional[str], subset: Optional[int]) -> tuple[TrainConfig, bool]:
    """The run's config pointed at the data asked for (None = the run's own), with the subset
    rule of the module docstring applied; and whether that is the run's own data."""
    run_cfg = trained.cfg
    cfg = run_cfg.replace(
        data_dir=run_cfg.data_dir if data_dir is None else data_dir,
        data_format=run_cfg.data_format if data_format is None else data_format,
        cache_dir=run_cfg.cache_dir if cache_dir is None else cache_dir, validation=0)
    own = _same_source(cfg, run_cfg)
    return cfg.replace(subset=subset if subset is not None else
                       run_cfg.subset if own else 0), own


def check_classes(trained: TrainedRun, arrays: CifarArrays, source: str) -> None:
    if list(arrays.classes) != trained.classes:
        raise ClassMismatchError(
            f"{source} has classes {list(arrays.classes)}, the model in {trained.uri} was "
            f"trained on {trained.classes}; evaluate on data with the run's classes, in its order")


def run_evaluation(trained: TrainedRun, cfg: TrainConfig, tta: bool,
                   batch_size: int = 512) -> tuple[dict, dict[str, np.ndarray]]:
    """Evaluate on the test split of `cfg`'s data: the figures and the predictions arrays."""
    arrays = load_arrays(cfg)
    source = cfg.data_dir or f"the CIFAR-10 download in {cfg.cache_dir}"
    check_classes(trained, arrays, source)
    ds = ArrayDataset(arrays.x_test, arrays.y_test, eval_transform(trained.mean, trained.std))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0)
    ev = evaluate_model(trained.model, loader, trained.rt, tta)
    probs = ev["probs"].float().cpu().numpy()
    labels = ev["labels"].cpu().numpy().astype(np.int64)
    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != labels)
    predictions = {"labels": labels, "preds": preds, "probs": probs.astype(np.float32),
                   "classes": np.array(arrays.classes), "wrong_index": wrong,
                   "wrong_images": arrays.x_test[wrong]}
    figures = {"accuracy": float((preds == labels).mean()) if len(labels) else 0.0,
               "accuracy_plain": ev["accuracy_plain"], "loss": ev["loss"],
               "images": int(len(labels)), "tta": tta,
               "data": {"data_dir": cfg.data_dir, "cache_dir": cfg.cache_dir,
                        "data_format": resolve_format(cfg.data_dir, cfg.data_format),
                        "subset": cfg.subset, "seed": cfg.seed},
               "device": str(trained.device), "precision": trained.precision}
    return figures, predictions
