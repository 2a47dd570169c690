"""Shared fixtures: small real video files written with OpenCV, and the real-data folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from flowprep.pairs import texture

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_video(path: Path, frames: int = 12, size: tuple[int, int] = (160, 120), fourcc: str = "MJPG",
                fps: float = 25.0, speed: tuple[float, float] = (2.0, 1.0), seed: int = 0) -> Path:
    """Write a real video: a textured square moving ``speed`` px/frame over a textured background."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    background = cv2.cvtColor(texture(height, width, seed), cv2.COLOR_GRAY2BGR)
    patch = cv2.applyColorMap(texture(height // 3, width // 3, seed + 1), cv2.COLORMAP_JET)
    for t in range(frames):
        frame = background.copy()
        x = int(round(width * 0.2 + speed[0] * t))
        y = int(round(height * 0.3 + speed[1] * t))
        ph, pw = patch.shape[:2]
        frame[y:y + ph, x:x + pw] = patch[: max(0, height - y), : max(0, width - x)]
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def video_dir(tmp_path: Path) -> Path:
    """A folder of three small good videos (AVI MJPG, AVI XVID in a subfolder, MP4 mp4v)."""
    root = tmp_path / "videos"
    (root / "walk").mkdir(parents=True)
    write_video(root / "clip_a.avi", frames=10, fourcc="MJPG", seed=1)
    write_video(root / "walk" / "clip_b.avi", frames=8, fourcc="XVID", seed=2, speed=(-1.5, 0.5))
    write_video(root / "clip_c.mp4", frames=9, fourcc="mp4v", seed=3)
    return root


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (real-data fixtures) is not present")
    return SHARED_DATA


def truncated_copy(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
