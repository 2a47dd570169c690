"""Checkpoints: plain dicts of state dicts, written atomically (temporary file, then rename)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` with torch.save to a temporary file beside ``path``, fsync it, then rename:
    a reader (or a resumed run) sees the old checkpoint or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | os.PathLike) -> dict:
    """A checkpoint written by :func:`save_atomic` (tensors and plain Python values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)
