"""TensorBoard event files in a run folder: `tensorboard --logdir <storage-path>` shows every run.

    <run>/tensorboard/events.out.tfevents.000003.raycifar   epoch 3: its metrics.csv row
                                                            (tags epoch/<column>, step = epoch)
                                                            and its lr_steps.csv rows (step/lr,
                                                            step/momentum, step = optimizer step)
    <run>/tensorboard/lr-find/events.out.tfevents.lr-find.raycifar
                                                            the range test: lr_find/lr, /loss,
                                                            /smoothed_loss, /curve per sweep step

One file per epoch, named by the epoch, written once when the epoch ends:
  * a resumed run (or one Ray restarted after a failure) writes only the epochs it trains, and an
    epoch trained twice (its report was lost in a crash) overwrites its own file: no duplicates;
  * a TensorBoard that is already watching keeps a reader open on each file and only reads
    forward, and picks up new files in name order; a single file rewritten from the whole history
    each epoch would be replaced under it and never re-read.
The range test lives in its own folder because TensorBoard calls each folder of event files a
run: its steps are sweep steps, not training steps.

tensorboardX writes local files only, and a run folder may be a bucket (s3://, gs://): each file is
written into a local temporary folder, then copied into the run folder with `RunFolder`.
`read_scalars` reads them back (tensorboard itself need not be installed). No matplotlib.
"""

from __future__ import annotations

import glob
import os
import struct
import tempfile
from typing import Iterable, Optional

import pyarrow.fs as pafs

from .runs import RunFolder

FOLDER = "tensorboard"
LR_FIND_FOLDER = f"{FOLDER}/lr-find"
# TensorBoard reads files whose name contains "tfevents"; zero-padded so name order = epoch order.
EPOCH_FILE = "events.out.tfevents.{epoch:06d}.raycifar"
LR_FIND_FILE = "events.out.tfevents.lr-find.raycifar"
STEP_TAGS = ("lr", "momentum")            # lr_steps.csv columns logged per optimizer step
LR_FIND_TAGS = ("lr", "loss", "smoothed_loss", "curve")  # lr_finder.csv columns


def _number(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _event_file(scalars: Iterable[tuple[str, float, int]]) -> bytes:
    """The bytes of one event file holding these (tag, value, step) scalars."""
    from tensorboardX import SummaryWriter

    with tempfile.TemporaryDirectory(prefix="raycifar-tb-") as d:
        writer = SummaryWriter(d, flush_secs=3600)
        for tag, value, step in scalars:
            writer.add_scalar(tag, value, global_step=step)
        writer.close()
        (path,) = glob.glob(os.path.join(d, "events.out.tfevents.*"))
        with open(path, "rb") as f:
            return f.read()


def log_epoch(run: RunFolder, row: dict, steps: Iterable[dict]) -> None:
    """Write (or rewrite) this epoch's event file: every numeric column of its metrics.csv row
    as `epoch/<column>` at step = epoch, and its lr_steps.csv rows as `step/lr` and
    `step/momentum` at their optimizer step."""
    epoch = int(row["epoch"])
    scalars = [(f"epoch/{k}", x, epoch) for k, v in row.items()
               if k != "epoch" and (x := _number(v)) is not None]
    scalars += [(f"step/{k}", float(r[k]), int(r["step"])) for r in steps for k in STEP_TAGS]
    run.write_bytes(f"{FOLDER}/{EPOCH_FILE.format(epoch=epoch)}", _event_file(scalars))


def log_range_test(run: RunFolder, rows: Iterable[dict]) -> None:
    """The range test's lr_finder.csv rows as one event file in <run>/tensorboard/lr-find/;
    a new sweep replaces the last one."""
    scalars = [(f"lr_find/{k}", v, int(r["step"])) for r in rows for k in LR_FIND_TAGS
               if (v := _number(r.get(k))) is not None]
    run.write_bytes(f"{LR_FIND_FOLDER}/{LR_FIND_FILE}", _event_file(scalars))


def read_scalars(data: bytes) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in an event file's bytes (a TFRecord stream of Event
    protos; each record is a length, its CRC, the data and its CRC)."""
    from tensorboardX.proto import event_pb2

    out, at = [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
        at += 12 + length + 4
        for v in event.summary.value:
            value = v.simple_value if v.HasField("simple_value") else v.tensor.float_val[0]
            out.append((v.tag, event.step, value))
    return out


def read_run(run: RunFolder, folder: str = FOLDER) -> list[tuple[str, int, float]]:
    """Every scalar in the event files directly under <run>/<folder>, in file-name order."""
    infos = run.fs.get_file_info(pafs.FileSelector(f"{run.root}/{folder}",
                                                   allow_not_found=True))
    names = sorted(i.base_name for i in infos if "tfevents" in i.base_name and i.is_file)
    return [s for n in names for s in read_scalars(run.read_bytes(f"{folder}/{n}"))]
