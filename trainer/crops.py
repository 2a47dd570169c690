"""Crops, flips and colour jitter of float C×H×W inputs (the trajectory-stacking path, and tests'
reference computations); inputs built from 8-bit planes cut the same regions in
:class:`trainer.planes.LevelPlanes` and :mod:`trainer.encoded`."""

from __future__ import annotations

import cv2
import numpy as np

# Krizhevsky et al.'s colour jitter: eigenvalues and eigenvectors of the RGB covariance of ImageNet.
_PCA_VALUES = np.array([0.2175, 0.0188, 0.0045], np.float32)
_PCA_VECTORS = np.array([[-0.5675, 0.7192, 0.4009],
                         [-0.5808, -0.0045, -0.8140],
                         [-0.5836, -0.6948, 0.4203]], np.float32)


def flip_horizontal(array: np.ndarray, is_flow: bool) -> np.ndarray:
    """Mirror a C×H×W input; for a flow volume also negate every dx channel (0, 2, 4, ...)."""
    out = array[:, :, ::-1].copy()
    if is_flow:
        out[0::2] *= -1
    return out


def fit_to_crop(array: np.ndarray, crop: int, is_flow: bool) -> np.ndarray:
    """Enlarge an input whose smaller side is below ``crop`` (flow values scale with it)."""
    h, w = array.shape[1:]
    if min(h, w) >= crop:
        return array
    scale = crop / min(h, w)
    size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
    out = np.stack([cv2.resize(channel, size, interpolation=cv2.INTER_LINEAR) for channel in array])
    return out * np.float32(scale) if is_flow else out


def random_crop(array: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    h, w = array.shape[1:]
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    return array[:, top:top + crop, left:left + crop]


def centre_crop(array: np.ndarray, crop: int) -> np.ndarray:
    h, w = array.shape[1:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return array[:, top:top + crop, left:left + crop]


def crop_positions(shape: tuple[int, int], crop: int) -> list[tuple[int, int]]:
    """(top, left) of the four corners and the centre (the test protocol's 5 crops)."""
    h, w = shape
    return [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), ((h - crop) // 2, (w - crop) // 2)]


def corner_crops(array: np.ndarray, crop: int) -> list[np.ndarray]:
    """The four corners and the centre (the test protocol's 5 crops)."""
    return [array[:, top:top + crop, left:left + crop] for top, left in crop_positions(array.shape[1:], crop)]


def jitter_shift(sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A random multiple of the RGB principal components (Krizhevsky et al.'s colour jitter), per channel."""
    alpha = rng.normal(0, sigma, 3).astype(np.float32)
    return _PCA_VECTORS @ (alpha * _PCA_VALUES)


def ten_crops(array: np.ndarray, crop: int, is_flow: bool) -> list[np.ndarray]:
    """Four corners and centre, then the same five mirrored (flow: dx channels negated)."""
    crops = corner_crops(array, crop)
    return crops + [flip_horizontal(c, is_flow) for c in crops]
