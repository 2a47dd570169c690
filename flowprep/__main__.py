"""`python -m flowprep` and the `flowprep` command (see :mod:`flowprep.entry`)."""

from flowprep.entry import run_quietly


def run() -> None:
    run_quietly("flowprep.cli.main")


if __name__ == "__main__":
    run()
