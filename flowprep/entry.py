"""The console entry points of ``flowprep`` and ``trainer``.

The imports behind either command (OpenCV, torch) take a second or more; a Ctrl-C during them, or
anywhere the command does not handle it itself, ends the command quietly with exit status 130
instead of a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import sys
from importlib import import_module


def run_quietly(cli_module: str) -> None:
    """Import ``cli_module`` and call its click group ``main``."""
    try:
        import_module(cli_module).main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
