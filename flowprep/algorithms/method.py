"""A configured flow method: the one interface every implementation returns.

Every method takes two grey frames (uint8, H×W, same size) and returns the displacement of each
pixel of the first frame as float32 H×W×2, in pixels: ``[..., 0]`` is dx (to the right),
``[..., 1]`` is dy (down), so ``first(y, x) ≈ second(y + dy, x + dx)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from flowprep.errors import UserError


class FlowError(UserError):
    """A flow method cannot run here (for example CUDA asked for but missing)."""


@dataclass
class FlowMethod:
    """A configured flow algorithm: call it with two grey frames.

    ``implementation`` names the code that ran (e.g. ``opencv-cuda-brox``, an id of
    :mod:`flowprep.algorithms.registry`) and ``params`` its settings; both go into each video's
    metadata so a store says how its flow was made.
    """

    name: str
    implementation: str
    params: dict
    compute: Callable[[np.ndarray, np.ndarray], np.ndarray] = field(repr=False)
    # solves N pairs of one size at once (N×H×W uint8 each → N×H×W×2); None: pair by pair
    compute_batch: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    max_batch: int = 1  # pairs per compute_batch call (halved after an out-of-memory error)

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if prev.shape != nxt.shape or prev.ndim != 2:
            raise ValueError(f"need two grey frames of one size, got {prev.shape} and {nxt.shape}")
        flow = self.compute(prev, nxt)
        return np.ascontiguousarray(flow, dtype=np.float32)

    def many(self, firsts: list[np.ndarray], seconds: list[np.ndarray]) -> list[np.ndarray]:
        """Flow of every pair (firsts[i] → seconds[i]), in batches of up to ``max_batch`` where the
        method solves batches; a GPU out-of-memory error halves the batch and retries it."""
        if self.compute_batch is None:
            return [self(a, b) for a, b in zip(firsts, seconds, strict=True)]
        out: list[np.ndarray] = []
        start = 0
        while start < len(firsts):
            size = min(self.max_batch, len(firsts) - start)
            try:
                flows = self.compute_batch(np.stack(firsts[start:start + size]), np.stack(seconds[start:start + size]))
            except Exception as exc:
                if size == 1 or not _is_gpu_oom(exc):
                    raise
                self.max_batch = max(1, size // 2)
                _release_gpu_memory()
                continue
            out += [np.ascontiguousarray(f, dtype=np.float32) for f in flows]
            start += size
        return out


def _is_gpu_oom(exc: Exception) -> bool:
    """A CUDA out-of-memory error of torch (only batched torch methods raise one: torch is loaded then;
    the check must not import torch, which costs every `flowprep` command 1.5 s)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _release_gpu_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
