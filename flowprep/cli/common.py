"""What the ``flowprep`` commands share: one-line errors, sizes, the --bound option, the progress
bar and summary of a run that stores videos (extract, import)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from contextlib import ExitStack

import click

from flowprep.errors import SettingError, UserError
from flowprep.run import RunReport
from flowprep.storage.codec import parse_bound


def flag_of(setting: str) -> str:
    """The command-line flag of a setting as the library names it (``flow_params.alpha`` → ``--param
    alpha``, ``rgb_quality`` → ``--rgb-quality``)."""
    if setting.startswith("flow_params"):
        key = setting.partition(".")[2]
        return f"--param {key}" if key else "--param"
    return "--" + setting.replace("_", "-")


def error_line(exc: BaseException) -> str:
    """The one line shown for a user error; a setting is named by its flag."""
    if not isinstance(exc, SettingError):
        return str(exc)
    if exc.setting.startswith("flow_params"):  # --param KEY=VALUE: problem
        return f"{flag_of(exc.setting)}{'' if exc.value is None else f'={exc.value}'}: {exc.problem}"
    return f"{flag_of(exc.setting)} {exc.problem}" + ("" if exc.value is None else f", got {exc.value!r}")


def fail(message: str | BaseException, code: int = 2) -> None:
    """Print ``error: MESSAGE`` (an exception: :func:`error_line`) on stderr and exit with ``code``."""
    text = error_line(message) if isinstance(message, BaseException) else message
    click.echo(f"error: {text}", err=True)
    sys.exit(code)


def parse_size(text: str) -> int:
    """Bytes of a size such as 8GB, 512 MB, 1.5GiB or 4096 (K, M, G, T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?i?b?)?\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
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


def run_with_bar(run: Callable[[Callable, Callable], RunReport], describe: Callable[[int, int], str], unit: str,
                 digits: int) -> RunReport:
    """Call ``run(on_start, on_progress)`` of a run that stores videos (extract, import) with a videos bar:
    ``describe(todo, skipped)`` is printed when it starts; then its notes, summary and failures.
    ``unit``: what a flow record is called ("pairs", "fields")."""
    with ExitStack() as stack:
        bar = None

        def on_start(todo: int, skipped: int) -> None:
            nonlocal bar
            click.echo(describe(todo, skipped), err=True)
            bar = videos_bar(stack, todo)

        def on_progress(done: int, report: RunReport) -> None:
            bar.update(1, f"{rate_text(report, unit, digits)}, {len(report.failures)} failed")

        try:
            report = run(on_start, on_progress)
        except UserError as exc:
            fail(exc)
    echo_run_report(report, unit, digits)
    return report


def exit_for(report: RunReport) -> None:
    """Exit 130 (with the resume hint) after Ctrl-C, 1 if a video failed; return otherwise."""
    if report.interrupted:
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    if report.failures:
        sys.exit(1)


def rate_text(report: RunReport, unit: str, digits: int) -> str:
    rate = report.pairs / report.seconds if report.seconds else 0.0
    return f"{rate:.{digits}f} {unit}/s"


def echo_run_report(report: RunReport, unit: str, digits: int, notes_shown: int = 20) -> None:
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
