"""Live progress of one training epoch on rank 0: a tqdm bar on a terminal, plain lines elsewhere.

A tqdm bar redraws itself with carriage returns. Where stdout is not a terminal (a Ray worker,
whose output reaches the driver and `ray job logs -f` line by line; CI; nohup) those redraws
arrive as one `\\r`-joined line at the end of the epoch, so a 20-minute CPU epoch shows nothing for
20 minutes. There, `EpochProgress` prints a short flushed line every `RAYCIFAR_PROGRESS_SECONDS`
(default 30) seconds and one at the end of the epoch:

    [raycifar] epoch 3/24  45% (40/87 batches)  312 img/s  loss 1.234  acc 0.567  eta 52s

img/s counts every rank (rank 0's rate times the world size: every rank sees as many images in
about the same time), like `images_per_second` in metrics.csv; loss and acc are rank 0's running
means over the epoch so far. Plain Python and tqdm, no Ray.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional, TextIO, Union

from tqdm import tqdm

from .config import RaycifarError

ENV = "RAYCIFAR_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def interval_seconds(value: Union[str, float, None] = None) -> float:
    """Seconds between plain progress lines: `value`, else $RAYCIFAR_PROGRESS_SECONDS, else 30.
    0 prints a line after every batch."""
    if value is None or value == "":
        value = os.environ.get(ENV, "") or DEFAULT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also catches NaN
        raise RaycifarError(f"{ENV}={value!r} is not a number of seconds >= 0; set it to e.g. 30 "
                            "(0: a progress line after every batch) or unset it")
    return seconds


def format_seconds(s: float) -> str:
    """52s, 3m05s, 1h02m: short enough for a log line."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class EpochProgress:
    """Progress of one epoch on `stream` (stdout by default): tqdm if it is a terminal, plain
    lines every `interval` seconds (and at `close`) if not; nothing when `enabled` is False."""

    def __init__(self, total: Optional[int], *, epoch: int, epochs: Optional[int] = None,
                 enabled: bool = True, interval: Optional[float] = None, world: int = 1,
                 stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.total, self.world, self.clock = total, world, clock
        self.stream = stream if stream is not None else sys.stdout
        self.label = f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"
        self.interval = interval_seconds(interval)
        isatty = getattr(self.stream, "isatty", None)
        self.bar: Optional[tqdm] = None
        self.plain = False
        if enabled and callable(isatty) and isatty():
            self.bar = tqdm(total=total, file=self.stream, dynamic_ncols=True, leave=True,
                            desc=f"epoch {epoch}")
        else:
            self.plain = enabled
        self.start = self.last = clock()
        self.done = self.images = 0
        self.loss = self.accuracy = 0.0
        self.figures_at = 0  # batches done when the figures were last read
        self.printed_at = -1  # batches done when the last plain line was printed

    def update(self, batch: int, images: int, loss: Optional[float] = None,
               accuracy: Optional[float] = None, last_loss: Optional[float] = None) -> None:
        """After a batch: `batch` batches and `images` images done on this rank and, when the
        training loop has read them from the device (engine.train_epoch does every few dozen
        steps, and whenever `due()`), the running mean loss and accuracy so far and the loss of
        the last batch (the tqdm postfix shows it). Without them the last figures stand."""
        self.done, self.images = batch, images
        if self.bar is not None:
            self.bar.update(1)
        if loss is not None:
            self.figures(batch, loss, accuracy, last_loss)
        if self.plain and self.due():
            self._line()

    def figures(self, batch: int, loss: float, accuracy: float, last_loss: float) -> None:
        """The running figures as read after `batch` batches (shown from now on)."""
        self.loss, self.accuracy, self.figures_at = loss, accuracy, batch
        if self.bar is not None:
            self.bar.set_postfix_str(f"Loss={last_loss:.4f} Batch_id={batch - 1} "
                                     f"Accuracy={100 * accuracy:.2f}", refresh=False)

    def due(self) -> bool:
        """Whether the next update prints a plain line, so its figures should be fresh."""
        return self.plain and self.clock() - self.last >= self.interval

    def line(self) -> str:
        """The plain progress line for where the epoch is now."""
        elapsed = self.clock() - self.start
        parts = [f"[raycifar] {self.label}"]
        if self.total:
            parts.append(f"{100 * self.done / self.total:3.0f}% ({self.done}/{self.total} "
                         "batches)")
        else:
            parts.append(f"{self.done} batches")
        rate = self.images * self.world / elapsed if elapsed > 0 else 0.0
        parts += [f"{rate:.0f} img/s", f"loss {self.loss:.4f}", f"acc {self.accuracy:.4f}"]
        if self.total and self.done:
            left = elapsed / self.done * (self.total - self.done)
            parts.append(f"eta {format_seconds(left)}" if left > 0 else
                         f"took {format_seconds(elapsed)}")
        return "  ".join(parts)

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last, self.printed_at = self.clock(), self.done

    def close(self) -> None:
        """End of the epoch: close the bar, or print the final plain line (once)."""
        if self.bar is not None:
            self.bar.close()
        elif self.plain and self.printed_at != self.done:
            self._line()
