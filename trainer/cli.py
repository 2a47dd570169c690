"""The ``trainer`` command: parses arguments and calls the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from flowprep.pipeline import PipelineError
from flowprep.splits import SplitError
from flowprep.store import StoreError
from trainer.config import ConfigError, load_config
from trainer.data import DataError
from trainer.fit import TrainError, fit
from trainer.models import WeightsError

USER_ERRORS = (ConfigError, DataError, TrainError, WeightsError, StoreError, SplitError, PipelineError)


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="twostream")
def main() -> None:
    """Train two-stream ConvNets (Simonyan & Zisserman 2014) from flowprep shards.

    \b
    trainer fit configs/temporal.yaml                 train the temporal stream
    trainer fit configs/synthetic-spatial.yaml --set optim.scale=0.5
    torchrun --nproc_per_node=2 -m trainer fit CONFIG  data-parallel training
    """


@main.command(name="fit")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config value (YAML syntax), e.g. --set optim.lr=0.001 (repeatable).")
@click.option("--resume", is_flag=True,
              help="Continue from the run folder's checkpoint (a fresh start if there is none).")
def fit_command(config: Path, overrides: tuple[str, ...], resume: bool) -> None:
    """Train the spatial or temporal ConvNet described by CONFIG.

    Writes to the config's run.dir: config.yaml, metrics.csv (training loss, LR and samples/s every
    train.log_every iterations, validation accuracy every train.val_every), checkpoint.pt (every
    train.checkpoint_every iterations and at the end, written atomically) and curves.png.
    """
    try:
        cfg = load_config(config, overrides)
        summary = fit(cfg, resume=resume)
    except USER_ERRORS as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted: run the same command with --resume to continue from the last checkpoint", 130)
    if int(os.environ.get("RANK", "0")) == 0:
        accuracy = ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in summary["val"].items())
        click.echo(f"done: {summary['iterations']} iterations; validation top-1 {accuracy}; "
                   f"checkpoint {summary['checkpoint']}")
