"""Score files (one stream's per-video softmax scores on one split's train or test videos) and the
accuracies computed from them."""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from flowprep.errors import UserError
from flowprep.storage.atomic import atomic_write


class EvaluationError(UserError):
    """Scores or checkpoints that cannot be evaluated together; one line."""


@dataclass
class Scores:
    """Per-video softmax scores of one stream on one split's train or test videos."""

    dataset: str
    split: int
    subset: str  # "test" or "train"
    stream: str
    videos: list[str]
    labels: np.ndarray  # int, index into classes
    classes: list[str]
    scores: np.ndarray  # videos × classes, float32
    checkpoint: str = ""

    def save(self, path: str | os.PathLike) -> None:
        meta = {"dataset": self.dataset, "split": self.split, "subset": self.subset, "stream": self.stream,
                "checkpoint": self.checkpoint}
        with atomic_write(path) as f:
            np.savez_compressed(f, videos=np.array(self.videos), labels=self.labels, classes=np.array(self.classes),
                                scores=self.scores, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scores:
        """A score file; EvaluationError in one line where it is not one, or is truncated or damaged (the
        zip's CRC-32s catch a flipped bit; the arrays must agree in size)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                scores = cls(meta["dataset"], int(meta["split"]), meta["subset"], meta["stream"],
                             [str(v) for v in f["videos"]], f["labels"].astype(np.int64),
                             [str(c) for c in f["classes"]], f["scores"].astype(np.float32), meta["checkpoint"])
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            detail = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:160]
            raise EvaluationError(f"{path}: not a scores file written by trainer test, or damaged ({detail})") from None
        n, c = len(scores.videos), len(scores.classes)
        if scores.scores.shape != (n, c) or scores.labels.shape != (n,) or (n and not 0 <= scores.labels.min()
                                                                             <= scores.labels.max() < c):
            raise EvaluationError(f"{path}: damaged scores file ({n} videos, {c} classes, scores "
                                  f"{scores.scores.shape}, labels {scores.labels.shape})")
        return scores


def scores_name(dataset: str, split: int, stream: str, subset: str) -> str:
    return f"scores-{dataset}-split{split}-{stream}-{subset}.npz"


def accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([label in row for row, label in zip(top, labels, strict=True)]))


def mean_class_accuracy(predictions: np.ndarray, labels: np.ndarray, classes: int) -> float:
    per_class = [np.mean(predictions[labels == c] == c) for c in range(classes) if np.any(labels == c)]
    return float(np.mean(per_class))


def confusion(predictions: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, classes: list[str], path: str | os.PathLike, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = max(5.0, min(24.0, 0.25 * n + 3))
    fig, ax = plt.subplots(figsize=(size, size))
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
