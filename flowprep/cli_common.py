"""What the ``flowprep`` commands share: one-line errors, sizes, the --bound option, the progress
bar and summary of a run that stores videos (extract, import)."""

from __future__ import annotations

import re
import sys
from contextlib import ExitStack

import click

from flowprep.codec import parse_bound
from flowprep.extract import ExtractReport


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?i?b?)?\s*", text.lower())
    if not match:
        raise click.BadParameter(f"{text!r} is not a size such as 8GB or 512MB")
    unit = (match.group(2) or "b").rstrip("b").rstrip("i")
    return int(float(match.group(1)) * 1024 ** " kmgt".index(unit or " "))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def bound_value(ctx: click.Context, param: click.Parameter, value: str) -> float | str:
    try:
        return parse_bound(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def videos_bar(stack: ExitStack, todo: int):
    """A progress bar over ``todo`` videos on stderr (position, ETA and a status text), closed with ``stack``."""
    return stack.enter_context(click.progressbar(length=todo, label="videos", file=sys.stderr, show_pos=True,
                                                 show_eta=True, item_show_func=lambda text: text))


def rate_text(report: ExtractReport, unit: str, digits: int) -> str:
    rate = report.pairs / report.seconds if report.seconds else 0.0
    return f"{rate:.{digits}f} {unit}/s"


def echo_run_report(report: ExtractReport, unit: str, digits: int, notes_shown: int = 20) -> None:
    """Notes, the summary line and every failure of an extract or import run, on stderr. ``unit``:
    what a flow record is called ("pairs", "fields")."""
    for note in report.notes[:notes_shown]:
        click.echo(f"note: {note}", err=True)
    if len(report.notes) > notes_shown:
        click.echo(f"note: ... and {len(report.notes) - notes_shown} more (each video's metadata keeps its notes)",
                   err=True)
    click.echo(f"stored {report.stored} videos ({report.pairs} flow {unit}, {human_bytes(report.bytes)}) in "
               f"{report.seconds:.1f} s, {rate_text(report, unit, digits)}; skipped {report.skipped} already "
               f"complete; failed {len(report.failures)}", err=True)
    for failure in report.failures:
        click.echo(f"  failed: {failure.path}: {failure.reason}", err=True)
