"""What ``trainer`` tells the user while it works: log lines (Python ``logging``, logger "trainer")
and the training progress bar (click's, as ``flowprep`` uses), both on stderr."""

from __future__ import annotations

import logging
import sys
import time

import click

from flowprep.logs import bar_on_terminal

log = logging.getLogger("trainer")


class Progress:
    """Iteration, loss, LR, samples/s and ETA: a click progress bar on a terminal, a log line every
    ``log_every`` iterations otherwise. ``enabled`` is False on all but the first process."""

    def __init__(self, total: int, log_every: int, enabled: bool):
        self.total, self.log_every, self.enabled = total, log_every, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.start, self.t0, self.bar = 0, time.perf_counter(), None

    def begin(self, start: int) -> None:
        """Training starts (again) at iteration ``start``."""
        self.start, self.t0 = start, time.perf_counter()
        if self.tty and start < self.total:
            self.bar = click.progressbar(length=self.total - start, label="iter", file=sys.stderr,
                                         show_eta=True, item_show_func=lambda text: text)
            self.bar.__enter__()
            bar_on_terminal[0] = True

    def update(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        text = f"{step}/{self.total}  loss {loss:.4f}  lr {lr:.1e}  {samples_per_s:.1f} samples/s"
        if self.bar is not None:
            self.bar.update(1, text)
            if step == self.total:
                self.close()
        elif step % self.log_every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / max(step - self.start, 1) * (self.total - step)
            log.info(f"iter {text}  ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
            bar_on_terminal[0] = False
