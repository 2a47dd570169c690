"""Log lines of ``flowprep`` and ``trainer`` on stderr (Python ``logging``; loggers "flowprep" and
"trainer"), kept apart from a progress bar being drawn on the same terminal."""

from __future__ import annotations

import logging
import sys

bar_on_terminal: list[bool] = [False]  # a progress bar is drawn on the terminal's last line now


class StderrHandler(logging.Handler):
    """Messages as they are, one a line; below a progress bar that is being drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "\n" if bar_on_terminal[0] else ""
        print(prefix + self.format(record), file=sys.stderr, flush=True)


def log_to_stderr(name: str) -> logging.Logger:
    """Send logger ``name``'s INFO lines to stderr (the command lines call this; a library user keeps
    logging's own configuration). Returns the logger."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        logger.addHandler(StderrHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
