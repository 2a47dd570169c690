"""Training metrics: rows appended to ``metrics.csv`` and a PNG of the curves."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from flowprep.storage.atomic import atomic_write

FIELDS = ("iteration", "kind", "dataset", "lr", "loss", "accuracy", "samples_per_s", "seconds")


def append_row(path: str | os.PathLike, **row: object) -> None:
    """Append one row (kind "train" or "val") to the CSV, writing the header on a new file."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in FIELDS})


def drop_rows_after(path: str | os.PathLike, iteration: int) -> int:
    """Remove the rows of iterations after ``iteration`` (a resumed run redoes them); the file is
    rewritten then renamed. Returns how many were removed."""
    path = Path(path)
    if not path.exists():
        return 0
    rows = read_rows(path)
    keep = [r for r in rows if not r.get("iteration", "").isdigit() or int(r["iteration"]) <= iteration]
    if len(keep) == len(rows):
        return 0
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in FIELDS} for r in keep)
    return len(rows) - len(keep)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics file (undecodable bytes replaced, NULs dropped: a damaged file still reads)."""
    with open(path, newline="", errors="replace") as f:
        text = f.read().replace("\0", "")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _points(rows: list[dict], kind: str, key: str) -> list[tuple[int, float]]:
    """(iteration, value) of the rows of ``kind``; rows that do not parse (a line damaged by hand or by a
    full disk) are left out of the picture, not fatal."""
    points = []
    for row in rows:
        if row.get("kind") != kind:
            continue
        try:
            points.append((int(row.get("iteration") or ""), float(row.get(key) or "")))
        except ValueError:
            continue
    return points


def plot_curves(csv_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> None:
    """Training loss and validation accuracy against iterations, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(csv_path)
    train = _points(rows, "train", "loss")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="train loss")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title("training loss")
    for dataset in sorted({r.get("dataset") or "" for r in rows if r.get("kind") == "val"}):
        val = [(i, 100 * v) for i, v in _points([r for r in rows if r.get("dataset") == dataset], "val", "accuracy")]
        if val:
            ax_acc.plot(*zip(*val, strict=True), marker="o", label=dataset)
    ax_acc.set_xlabel("iteration")
    ax_acc.set_ylabel("top-1 accuracy (%)")
    ax_acc.set_title("validation (centre crop, middle frame)")
    ax_acc.set_ylim(0, 100)
    if ax_acc.lines:
        ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
