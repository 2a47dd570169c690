"""Checkpoints: plain dicts of state dicts, written atomically (temporary file, then rename)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"


class CheckpointError(Exception):
    """A checkpoint file that cannot be read; one line naming it."""


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` with torch.save to a temporary file beside ``path``, fsync it, then rename:
    a reader (or a resumed run) sees the old checkpoint or the new one, never half of one."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_partial(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files of ``path`` left by killed writers (call with the run folder's lock held:
    no other writer can be running). Returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        if tmp != _temporary(path):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def load(path: str | os.PathLike) -> dict:
    """A checkpoint written by :func:`save_atomic` (tensors and plain Python values only).
    A file that is not one raises CheckpointError in one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # noqa: BLE001 - random bytes make torch.load raise nearly anything (IndexError, KeyError)
        text = str(exc)
        if "Weights only load failed" in text:
            detail = "not a PyTorch file of tensors and plain values"
        else:
            first = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
            detail = first.split(". ")[0].strip()[:160]
        raise CheckpointError(f"{path}: not a readable checkpoint, damaged or truncated ({detail})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path}: not a trainer checkpoint (no model state and step)")
    return state
