"""Writing a file so that readers see the old one or the new one, never half of one.

Every file the project rewrites in place (settings and failure lists, checkpoints, configs, metrics,
score files, Caffe models) goes through :func:`atomic_write`: a temporary file beside the target
(``.NAME.tmpPID``: same folder, so the rename is atomic; hidden; the writer's pid so two writers never
share one), flushed and fsynced, then renamed over the target. A failed write removes it; one a
killed writer left is found by :func:`partial_files`.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from flowprep.storage.shard import StoreError, no_space_message


def temporary_path(path: Path) -> Path:
    """This process's temporary file for ``path``."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_args: object) -> Iterator[IO]:
    """A file object to write ``path``'s new content to; on leaving the block without an error it is
    fsynced and renamed over ``path``, otherwise removed (and the error raised)."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def partial_files(path: str | os.PathLike) -> list[Path]:
    """Temporary files of ``path`` that other (killed) writers left; delete them only while holding
    the folder's lock, when no other writer can be running."""
    path = Path(path)
    return [tmp for tmp in path.parent.glob(f".{path.name}.tmp*") if tmp != temporary_path(path)]


def write_json_atomic(path: Path, obj: object) -> None:
    """Write JSON atomically (see :func:`atomic_write`). A failed write leaves no temporary file behind
    and raises StoreError naming the file."""
    try:
        with atomic_write(path, "w") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreError(no_space_message(path) + "; free space and run the same command again") from None
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
