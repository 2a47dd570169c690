"""What the ``flowprep`` commands share: one-line errors, sizes, the --bound option."""

from __future__ import annotations

import re
import sys

import click

from flowprep.codec import parse_bound


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
