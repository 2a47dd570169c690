"""Decoding videos into frames with OpenCV's FFmpeg back end.

Reads whatever that FFmpeg decodes (UCF-101/HMDB-51 AVI with MPEG-4 part 2 or Xvid, MP4 with
H.264, ...). Frames come out as BGR uint8 rescaled so that the smaller side has ``short_side``
pixels, as the paper rescales its videos before computing flow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from flowprep.errors import UserError

# FFmpeg's and OpenCV's own messages about damaged streams would bury our one-line reports (the
# reader reports damage itself); users can still set either variable to see them.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv",
                    ".3gp", ".ogv")


class VideoError(UserError):
    """A file that cannot be used as a video; the message says why, in one line."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video, before decoding.

    ``header_frames`` is the container's frame count, which may be off by one or two (HMDB-51 AVIs
    announce one frame more than they hold) or an estimate; decoding gives the real count.
    """

    path: str
    width: int
    height: int
    fps: float
    header_frames: int


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after scaling so the smaller side is ``short_side`` pixels (0 keeps the size)."""
    if short_side <= 0:
        return width, height
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging when shrinking, bilinear when growing."""
    h, w = frame.shape[:2]
    if (w, h) == size:
        return frame
    shrinking = size[0] * size[1] < w * h
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


class VideoReader:
    """Frames of one video file, decoded one at a time (the whole clip is never held decoded).

    Opening checks that the file exists, is not empty and is a video OpenCV can decode; iterating
    yields BGR uint8 frames of ``size``. After iteration ``frames_read`` is the decoded count and
    :meth:`check_complete` raises :class:`VideoError` when the stream stopped well short of what the
    container announced (a truncated download or copy).
    """

    def __init__(self, path: str | os.PathLike, short_side: int = 256):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise VideoError("file not found")
        if os.path.isdir(self.path):
            raise VideoError("is a folder, not a video file")
        if os.path.getsize(self.path) == 0:
            raise VideoError("empty file (0 bytes)")
        cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise VideoError("not a video OpenCV/FFmpeg can open (unknown format or damaged header)")
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width <= 0 or height <= 0:
            cap.release()
            raise VideoError("no video stream (frame size is 0)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        header_frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        self.info = VideoInfo(self.path, width, height, fps, header_frames)
        self.size = scaled_size(width, height, short_side)
        self.frames_read = 0
        self.last_ms = 0.0  # presentation time of the last decoded frame, milliseconds
        self._cap = cap

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            while True:
                ok, frame = self._cap.read()
                if not ok or frame is None:
                    break
                if frame.ndim == 2:
                    frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
                self.frames_read += 1
                self.last_ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
                yield resize_frame(frame, self.size)
        finally:
            self._cap.release()

    def reached_end(self) -> bool:
        """Whether the last decoded frame lies at the end of the stream's duration (within 2 frames or
        2 %). Matroska/WebM hold no frame count: OpenCV announces duration × nominal fps, which a
        variable-frame-rate clip never reaches, though its last frame is at the end."""
        fps = self.info.fps
        if fps <= 0 or self.last_ms <= 0:
            return False
        duration_ms = self.info.header_frames / fps * 1000.0
        end_ms = self.last_ms + 1000.0 / fps
        return duration_ms - end_ms <= max(2 * 1000.0 / fps, 0.02 * duration_ms)

    def check_complete(self) -> None:
        """Raise VideoError if decoding ended early: no frame at all, or far fewer than announced and a
        last frame well before the end of the stream's duration (a truncated download or copy).

        A shortfall of up to 2 frames or 2% is accepted: containers often count one frame too many.
        """
        if self.frames_read == 0:
            raise VideoError("no frame could be decoded")
        expected = self.info.header_frames
        if expected and expected - self.frames_read > max(2, 0.02 * expected) and not self.reached_end():
            raise VideoError(
                f"truncated or damaged: the container announces {expected} frames, "
                f"only {self.frames_read} decode"
            )


def read_frames(path: str | os.PathLike, short_side: int = 256) -> tuple[VideoInfo, np.ndarray]:
    """Decode a whole clip into an N×H×W×3 BGR uint8 array (for tools and tests; extraction streams)."""
    reader = VideoReader(path, short_side)
    frames = list(reader)
    reader.check_complete()
    return reader.info, np.stack(frames)
