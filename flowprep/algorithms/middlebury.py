"""Scoring flow against ground truth: end-point error and Middlebury ``.flo`` files."""

from __future__ import annotations

import numpy as np


def end_point_error(flow: np.ndarray, truth: np.ndarray) -> float:
    """Mean Euclidean distance in pixels between two flow fields; ground truth ≥ 1e9 is unknown."""
    known = np.all(np.abs(truth) < 1e9, axis=-1)
    return float(np.linalg.norm(flow - truth, axis=-1)[known].mean())


def read_flo(path: str) -> np.ndarray:
    """Read a Middlebury ``.flo`` file as float32 H×W×2."""
    with open(path, "rb") as f:
        magic = np.fromfile(f, np.float32, 1)
        if magic.size != 1 or magic[0] != 202021.25:
            raise ValueError(f"{path}: not a Middlebury .flo file")
        w, h = (int(v) for v in np.fromfile(f, np.int32, 2))
        data = np.fromfile(f, np.float32, w * h * 2)
    if data.size != w * h * 2:
        raise ValueError(f"{path}: truncated .flo file")
    return data.reshape(h, w, 2)
