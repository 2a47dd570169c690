"""`python -m trainer` and the `trainer` command (see :mod:`flowprep.entry`)."""

from flowprep.entry import run_quietly


def run() -> None:
    run_quietly("trainer.cli")


if __name__ == "__main__":
    run()
