"""The ``trainer`` command (training arrives with the trainer issue)."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train and evaluate two-stream ConvNets from flowprep shards.

    No command is available yet: this package only reserves the entry point.
    """
