"""Checkpoints: what ``trainer fit`` writes and ``test`` and ``predict`` read.

On disk a checkpoint is a plain dict of state dicts, tensors and plain values (so ``torch.load`` with
``weights_only=True`` reads it), written atomically. In code it is a :class:`Checkpoint`; each
dataset's :class:`StoreFlow` says how its store's records were made, so ``trainer predict`` makes a
new clip's inputs the same way."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from flowprep.errors import UserError
from flowprep.storage.atomic import atomic_write, partial_files
from flowprep.storage.meta import VideoMeta

CHECKPOINT = "checkpoint.pt"


class CheckpointError(UserError):
    """A checkpoint file that cannot be read; one line naming it."""


CHECKSUM = "sha256"  # the key of the contents' checksum in a checkpoint


def contents_digest(obj: object) -> str:
    """SHA-256 of a checkpoint's contents: every tensor's dtype, shape and bytes and every plain value,
    walked in a fixed order (dict keys sorted). torch.load does not notice a flipped bit inside a tensor;
    this does."""
    digest = hashlib.sha256()

    def walk(value: object) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                walk(value[key])
        elif isinstance(value, list | tuple):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                walk(item)
        else:
            digest.update(f"V{value!r}".encode())

    walk(obj)
    return digest.hexdigest()


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` with torch.save atomically (:func:`flowprep.storage.atomic.atomic_write`): a reader
    (or a resumed run) sees the old checkpoint or the new one, never half of one. The checksum of the
    contents goes with them (:func:`load` checks it). A write that fails (a full disk) is one
    CheckpointError; the old checkpoint stays."""
    obj = {**obj, CHECKSUM: contents_digest({k: v for k, v in obj.items() if k != CHECKSUM})}
    try:
        with atomic_write(path) as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as exc:
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC or \
            shutil.disk_usage(Path(path).parent).free < (64 << 20)
        why = "no space left on device" if full else next(
            (line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:160]
        raise CheckpointError(f"{path}: cannot write the checkpoint ({why}); the previous one is kept") from None


def remove_partial(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files of ``path`` left by killed writers (call with the run folder's lock held:
    no other writer can be running). Returns what was removed."""
    removed = partial_files(path)
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def torch_load_problem(exc: Exception) -> str:
    """torch.load's failure in a few words: its messages run to many lines of advice (set
    weights_only=False, which must not be done with a file one did not make)."""
    text = str(exc)
    if "Weights only load failed" in text:
        return "not a PyTorch file of tensors and plain values"
    first = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first.split(". ")[0].strip()[:160]


def load(path: str | os.PathLike) -> dict:
    """A checkpoint written by :func:`save_atomic` (tensors and plain Python values only).
    A file that is not one raises CheckpointError in one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # noqa: BLE001 - random bytes make torch.load raise nearly anything (IndexError, KeyError)
        raise CheckpointError(f"{path}: not a readable checkpoint, damaged or truncated ({torch_load_problem(exc)})"
                              ) from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path}: not a trainer checkpoint (no model state and step)")
    stored = state.pop(CHECKSUM, None)  # checkpoints of earlier versions have none
    if stored is not None and stored != contents_digest(state):
        raise CheckpointError(f"{path}: damaged checkpoint (its contents do not match their SHA-256 checksum); "
                              "restore it from a copy or train again")
    return state


def state_dict_problem(exc: Exception) -> str:
    """The telling line of a load_state_dict error (the first size mismatch or missing key)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if line.startswith(("size mismatch", "Missing key", "Unexpected key"))),
                  lines[-1] if lines else type(exc).__name__)
    return detail[:300]


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
