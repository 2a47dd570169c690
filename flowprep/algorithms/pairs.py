"""Synthetic grey frame pairs with exactly known flow, for accuracy tests and benchmarks.

Each function returns ``(first, second, flow)``: uint8 H×W frames and the float32 H×W×2 flow of
every pixel of ``first`` in pixels (``first(p) = second(p + flow(p))``). Content that enters or
leaves the picture has no correspondence: score with :func:`interior` to drop a border.
"""

from __future__ import annotations

import cv2
import numpy as np


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A natural-looking random texture (uint8): blobs at several scales plus fine grain."""
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width), np.float32)
    for sigma, weight in ((12.0, 1.0), (4.0, 0.6), (1.2, 0.35)):
        noise = rng.standard_normal((height, width)).astype(np.float32)
        layer = cv2.GaussianBlur(noise, (0, 0), sigma)
        out += weight * layer / (layer.std() + 1e-6)
    out = (out - out.min()) / (out.max() - out.min() + 1e-6)
    return (out * 220 + 18).astype(np.uint8)


def translation(height: int = 240, width: int = 320, dx: float = 6.5, dy: float = -3.25,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole picture moves by (dx, dy) pixels."""
    return affine(height, width, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]), seed)


def rotation_zoom(height: int = 240, width: int = 320, degrees: float = 3.0, zoom: float = 1.04,
                  seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The picture turns by ``degrees`` and grows by ``zoom`` about its centre."""
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, zoom)
    return affine(height, width, matrix, seed)


def affine(height: int, width: int, matrix: np.ndarray, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Content at p in the first frame is at ``matrix @ [p, 1]`` in the second."""
    first = texture(height, width, seed)
    second = cv2.warpAffine(first, matrix, (width, height), flags=cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_REFLECT)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    moved_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    moved_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    flow = np.stack([moved_x - xs, moved_y - ys], axis=-1).astype(np.float32)
    return first, second, flow


def moving_object(height: int = 240, width: int = 320, dx: float = 5.0, dy: float = 2.5,
                  seed: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured disc moves by (dx, dy) pixels over a still textured background."""
    background = texture(height, width, seed)
    obj = texture(height, width, seed + 100)
    radius = min(height, width) // 5
    cx, cy = width * 0.45, height * 0.5
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    mask1 = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2
    mask2 = (xs - cx - dx) ** 2 + (ys - cy - dy) ** 2 <= radius ** 2
    shifted = cv2.warpAffine(obj, np.array([[1.0, 0, dx], [0, 1.0, dy]]), (width, height),
                             flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    first = np.where(mask1, obj, background).astype(np.uint8)
    second = np.where(mask2, shifted, background).astype(np.uint8)
    flow = np.zeros((height, width, 2), np.float32)
    flow[mask1] = (dx, dy)
    return first, second, flow


def interior(array: np.ndarray, border: int = 16) -> np.ndarray:
    """``array`` without a ``border``-pixel frame (where content leaves or enters the picture)."""
    return array[border:-border, border:-border]


SYNTHETIC_PAIRS = {
    "translation": translation,
    "rotation_zoom": rotation_zoom,
    "moving_object": moving_object,
}
