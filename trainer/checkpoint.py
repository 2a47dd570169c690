"""Checkpoints: what ``trainer fit`` writes and ``test`` and ``predict`` read.

On disk a checkpoint is a plain dict of state dicts, tensors and plain values (so ``torch.load`` with
``weights_only=True`` reads it), written atomically. In code it is a :class:`Checkpoint`; each
dataset's :class:`StoreFlow` says how its store's records were made, so ``trainer predict`` makes a
new clip's inputs the same way."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from flowprep.errors import UserError
from flowprep.storage.atomic import atomic_write, partial_files
from flowprep.storage.meta import VideoMeta

CHECKPOINT = "checkpoint.pt"


class CheckpointError(UserError):
    """A checkpoint file that cannot be read; one line naming it."""


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` with torch.save atomically (:func:`flowprep.storage.atomic.atomic_write`): a reader
    (or a resumed run) sees the old checkpoint or the new one, never half of one."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def remove_partial(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files of ``path`` left by killed writers (call with the run folder's lock held:
    no other writer can be running). Returns what was removed."""
    removed = partial_files(path)
    for tmp in removed:
        tmp.unlink(missing_ok=True)
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


@dataclass(frozen=True)
class StoreFlow:
    """How a dataset's store made its records: ``flow`` = {algo, implementation, params} as in its
    videos' metadata, ``bound`` (pixels or "adaptive"), JPEG qualities (None: imported files) and the
    frames' smaller side in pixels."""

    flow: dict = field(default_factory=dict)
    bound: float | str = 20.0
    quality: int | None = 90
    rgb_quality: int | None = 90
    short_side: int | None = 256

    @classmethod
    def of(cls, meta: VideoMeta) -> StoreFlow:
        return cls(meta.flow.to_dict() if meta.flow else {}, meta.bound, meta.quality, meta.rgb_quality,
                   meta.short_side)

    @classmethod
    def from_dict(cls, data: dict) -> StoreFlow:
        return cls(data.get("flow", {}), data.get("bound", 20.0), data.get("quality"), data.get("rgb_quality"),
                   data.get("short_side", 256))


@dataclass
class Checkpoint:
    """One training run's state at ``step`` of ``total`` iterations: weights, optimizer, the LR
    ``milestones``, the config (as a dict), the global torch RNG state, the class names of each
    dataset's head, the stream, how each dataset's records were made, and the last validation
    accuracies per dataset."""

    model: dict
    optimizer: dict
    step: int
    total: int
    milestones: list[int]
    config: dict
    classes: dict[str, list[str]]
    stream: str
    flow: dict[str, StoreFlow] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    torch_rng: torch.Tensor | None = None

    def to_state(self) -> dict:
        state = {name: getattr(self, name) for name in self.__dataclass_fields__}
        state["flow"] = {name: asdict(flow) for name, flow in self.flow.items()}
        return state

    @classmethod
    def from_state(cls, state: dict, path: str | os.PathLike) -> Checkpoint:
        """The checkpoint of a loaded state; CheckpointError naming what is missing."""
        missing = [key for key in ("model", "step", "config", "classes", "stream") if key not in state]
        if missing:
            raise CheckpointError(f"{path}: not a complete trainer checkpoint (no {', '.join(missing)})")
        return cls(state["model"], state.get("optimizer", {}), int(state["step"]), int(state.get("total", 0)),
                   list(state.get("milestones", [])), state["config"], state["classes"], state["stream"],
                   {name: StoreFlow.from_dict(flow) for name, flow in state.get("flow", {}).items()},
                   dict(state.get("val", {})), state.get("torch_rng"))


def read(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at ``path`` (see :func:`load`), typed."""
    return Checkpoint.from_state(load(path), path)


def save(checkpoint: Checkpoint, path: str | os.PathLike) -> None:
    save_atomic(checkpoint.to_state(), path)
