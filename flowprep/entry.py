"""The console entry points of ``flowprep`` and ``trainer``.

The imports behind either command (OpenCV, torch) take a second or more; a Ctrl-C during them, or
anywhere the command does not handle it itself, ends the command quietly with exit status 130
instead of a KeyboardInterrupt traceback (or click's "Aborted!" and status 1): every command of both
tools ends the same way on Ctrl-C.
"""

from __future__ import annotations

import sys
from importlib import import_module

import click


def run_quietly(cli_module: str) -> None:
    """Import ``cli_module`` and call its click group ``main``."""
    try:
        main = import_module(cli_module).main
        code = main.main(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
