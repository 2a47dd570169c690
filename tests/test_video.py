"""Decoding real video files written by OpenCV, and the errors for files that are not videos."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import truncated_copy, write_video

from flowprep.video import VideoError, VideoReader, read_frames, scaled_size


@pytest.mark.parametrize("fourcc,suffix", [("MJPG", ".avi"), ("XVID", ".avi"), ("mp4v", ".mp4")])
def test_reads_every_frame_and_scales_short_side(tmp_path: Path, fourcc: str, suffix: str) -> None:
    path = write_video(tmp_path / f"clip{suffix}", frames=11, size=(160, 120), fourcc=fourcc)
    info, frames = read_frames(path, short_side=256)
    assert frames.shape == (11, 256, 341, 3)
    assert (info.width, info.height, info.header_frames) == (160, 120, 11)
    assert info.fps == pytest.approx(25.0)


def test_short_side_zero_keeps_size_and_portrait_scales_width(tmp_path: Path) -> None:
    path = write_video(tmp_path / "tall.avi", frames=4, size=(120, 160))
    assert read_frames(path, short_side=0)[1].shape == (4, 160, 120, 3)
    assert read_frames(path, short_side=60)[1].shape == (4, 80, 60, 3)


def test_scaled_size() -> None:
    assert scaled_size(320, 240, 256) == (341, 256)
    assert scaled_size(454, 256, 256) == (454, 256)
    assert scaled_size(240, 320, 256) == (256, 341)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.avi").write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        VideoReader(tmp_path / "empty.avi")


def test_text_file_renamed_avi(tmp_path: Path) -> None:
    (tmp_path / "notes.avi").write_text("these are my notes, not a video\n" * 20)
    with pytest.raises(VideoError, match="not a video"):
        VideoReader(tmp_path / "notes.avi")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="not found"):
        VideoReader(tmp_path / "nope.avi")


@pytest.mark.parametrize("fourcc,suffix", [("MJPG", ".avi"), ("XVID", ".avi"), ("mp4v", ".mp4")])
def test_truncated_file(tmp_path: Path, fourcc: str, suffix: str) -> None:
    good = write_video(tmp_path / f"good{suffix}", frames=20, fourcc=fourcc)
    cut = truncated_copy(good, tmp_path / f"cut{suffix}")
    with pytest.raises(VideoError, match="truncated|not a video"):
        read_frames(cut)


def test_real_clips_decode(shared_data: Path) -> None:
    expected = {"v_ApplyEyeMakeup_g01_c01.avi": (164, 341, 256), "abseiling.mp4": (250, 454, 256),
                "April_09_brush_hair_u_nm_np1_ba_goo_0.avi": (408, 341, 256)}
    for path in sorted((shared_data / "videos").rglob("*")):
        if path.name in expected:
            reader = VideoReader(path)
            frames = sum(1 for _ in reader)
            reader.check_complete()
            assert (frames, *reader.size) == expected[path.name], path.name


def write_vfr(path: Path, durations_ms: list[int], codec: str) -> Path:
    """A variable-frame-rate clip written with PyAV: frame i lasts durations_ms[i]."""
    import fractions

    av = pytest.importorskip("av")
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.time_base = fractions.Fraction(1, 1000)
        pts = 0
        for i, duration in enumerate(durations_ms):
            image = np.zeros((64, 96, 3), np.uint8)
            image[:, (3 * i) % 96] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
            out.mux(stream.encode(frame))
            pts += duration
        out.mux(stream.encode())
    return path


@pytest.mark.parametrize("suffix,codec", [(".mkv", "libx264"), (".webm", "libvpx-vp9"), (".mp4", "libx264")])
def test_variable_frame_rate_clips_are_not_truncated(tmp_path: Path, suffix: str, codec: str) -> None:
    """Matroska has no frame count: OpenCV announces duration × nominal fps (here 100 for 50 frames)."""
    durations = [33] * 20 + [200] * 10 + [33] * 20
    path = write_vfr(tmp_path / f"vfr{suffix}", durations, codec)
    info, frames = read_frames(path, short_side=0)
    assert len(frames) == 50
    cut = truncated_copy(path, tmp_path / f"cut{suffix}", 0.8)  # still a truncated clip, frames or not
    with pytest.raises(VideoError, match="truncated" if suffix != ".mp4" else "can open"):  # MP4: index at the end
        read_frames(cut, short_side=0)
