"""The flowprep command as a user runs it: real videos in, real LMDB out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import lmdb
import pytest
from conftest import copy, truncated_copy, write_video

from flowprep.storage.shard import close_env, record_key
from flowprep.storage.store import FlowStore

FAST = ["--short-side", "0", "--workers", "2"]


def flowprep(*args: object, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "flowprep", *map(str, args)],
                            capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_extract_info_verify_show(video_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = flowprep("extract", video_dir, out, *FAST, "--bidirectional", check=True)
    assert "stored 3 videos" in result.stderr
    store = FlowStore(out)
    assert store.videos() == ["clip_a", "clip_c", "walk/clip_b"]
    meta = store.meta("clip_a")
    assert (meta["num_frames"], meta["num_flows"], meta["num_backward"]) == (10, 9, 9)
    assert (meta["width"], meta["height"]) == (160, 120)
    assert meta["flow"]["algo"] == "brox"
    assert meta["flow"]["implementation"] == "cpu-pyramid-variational-refinement"
    assert meta["flow"]["params"]["alpha"] > 0
    assert meta["bound"] == 20.0 and meta["quality"] == 90
    assert {"opencv", "numpy", "lmdb", "flowprep"} <= set(meta["versions"])
    # the square moves +2 px/frame in x over a still background; backward flow points back
    flow, back = store.flow("clip_a", 3), store.flow("clip_a", 3, backward=True)
    assert flow[55, 75, 0] == pytest.approx(2.0, abs=0.5) and abs(flow[5, 5, 0]) < 0.3
    assert back[57, 77, 0] == pytest.approx(-2.0, abs=0.5)
    store.close()

    info = flowprep("info", out, check=True).stdout
    assert "videos      3" in info and "smaller than float32" in info and "failures    0" in info
    verify = flowprep("verify", out, check=True).stdout
    assert "ok: 3 videos" in verify

    png = tmp_path / "fig.png"
    flowprep("show", out, "walk/clip_b", "--frame", "2", "-o", png, check=True)
    picture = cv2.imread(str(png))
    assert picture is not None and picture.shape[1] > 4 * 160
    assert flowprep("show", out, "clip_b", "--frame", "1", "-o", png).returncode == 0  # by file name
    bad = flowprep("show", out, "clip_a", "--frame", "9", "-o", png)
    assert bad.returncode != 0 and "out of range" in bad.stderr and "Traceback" not in bad.stderr


def test_bad_files_are_failures_and_the_run_goes_on(video_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "mixed"
    src.mkdir()
    copy(video_dir / "clip_a.avi", src / "good.avi")
    (src / "empty.avi").write_bytes(b"")
    (src / "notes.avi").write_text("not a video\n" * 50)
    truncated_copy(write_video(tmp_path / "long.avi", frames=30, fourcc="XVID"), src / "cut.avi")
    out = tmp_path / "out"
    result = flowprep("extract", src, out, *FAST)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for name, reason in [("empty.avi", "empty file"), ("notes.avi", "not a video"), ("cut.avi", "truncated")]:
        failed = [ln for ln in result.stderr.splitlines() if ln.strip().startswith("failed:")]
        line = next(ln for ln in failed if name in ln)
        assert reason in line
    assert FlowStore(out).videos() == ["good"]
    failures = json.loads((out / "failures.json").read_text())
    assert sorted(failures) == ["cut", "empty", "notes"]
    assert "failures    3" in flowprep("info", out).stdout
    # fixing a file and re-running clears its failure
    copy(video_dir / "clip_c.mp4", src / "empty.avi")
    flowprep("extract", src, out, *FAST)
    assert sorted(json.loads((out / "failures.json").read_text())) == ["cut", "notes"]


def test_rerun_skips_complete_videos_and_settings_must_match(video_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flowprep("extract", video_dir, out, *FAST, "--algo", "dis", check=True)
    again = flowprep("extract", video_dir, out, *FAST, "--algo", "dis", check=True)
    assert "stored 0 videos" in again.stderr and "skipped 3" in again.stderr
    other = flowprep("extract", video_dir, out, *FAST, "--algo", "dis", "--bound", "adaptive")
    assert other.returncode == 2 and "bound=20.0" in other.stderr and "Traceback" not in other.stderr


def test_list_file_source_and_adaptive_bound(video_dir: Path, tmp_path: Path) -> None:
    listing = video_dir / "list.txt"
    listing.write_text("# two of the three\r\nclip_a.avi 1\r\nwalk/clip_b.avi 2\r\n\r\n")
    out = tmp_path / "out"
    flowprep("extract", listing, out, *FAST, "--algo", "farneback", "--bound", "adaptive", check=True)
    store = FlowStore(out)
    assert store.videos() == ["clip_a", "walk/clip_b"]
    assert store.meta("clip_a")["bound"] == "adaptive"
    assert store.meta("clip_a")["flow"]["implementation"] == "opencv-farneback"


@pytest.mark.parametrize("args,message", [
    (["extract", "missing-folder", "out"], "no such file or folder"),
    (["extract", ".", "out", "--bound", "-1"], "bound must be > 0"),
    (["extract", ".", "out", "--gpus", "1"], "--gpus needs a GPU"),
    (["info", "missing-store"], "no such folder"),
    (["verify", "."], "no flowprep shards"),
])
def test_user_mistakes_get_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "flowprep", *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_verify_catches_a_missing_flow_field(video_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flowprep("extract", video_dir, out, *FAST, "--algo", "dis", check=True)
    shard = out / "shard-00000.lmdb"
    env = lmdb.open(str(shard), max_dbs=4)
    with env.begin(write=True) as txn:
        assert txn.delete(record_key("clip_a", "flow", 8), db=env.open_db(b"data", txn=txn))
    env.close()
    close_env(shard)
    result = flowprep("verify", out)
    assert result.returncode == 1
    assert "clip_a: 8 flow records, metadata says 9 (missing flow 8)" in result.stdout


def test_kill_minus_9_then_resume_stores_every_video_once(tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(8):
        write_video(src / f"v{i}.avi", frames=40, seed=i)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "flowprep", "extract", src, out, *FAST]
    data = out / "shard-00000.lmdb" / "data.mdb"
    for _ in range(2):
        proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        start_size = data.stat().st_size if data.exists() else 0
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if data.exists() and data.stat().st_size > start_size + 200_000:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the writer and its workers, mid-run
        proc.wait()
    partial = FlowStore(out)
    stored_before = len(partial)
    partial.close()
    assert 0 < stored_before < 8
    result = flowprep("extract", src, out, *FAST, check=True)
    assert f"skipped {stored_before}" in result.stderr
    assert "ok: 8 videos" in flowprep("verify", out, check=True).stdout
    assert "videos      8" in flowprep("info", out, check=True).stdout


def test_every_real_clip_extracts_verifies_and_shows(shared_data: Path, tmp_path: Path) -> None:
    """UCF-101 and HMDB-51 AVIs (MPEG-4 part 2) and Kinetics MP4s (H.264), default settings."""
    out = tmp_path / "real"
    clips = sorted(p for p in (shared_data / "videos").rglob("*") if p.suffix in (".avi", ".mp4"))
    result = flowprep("extract", shared_data / "videos", out, "--workers", "2", check=True)
    assert f"stored {len(clips)} videos" in result.stderr
    assert f"ok: {len(clips)} videos" in flowprep("verify", out, check=True).stdout
    store = FlowStore(out)
    for clip in clips:
        video = clip.relative_to(shared_data / "videos").with_suffix("").as_posix()
        meta = store.meta(video)
        assert meta["height"] == 256 and meta["num_flows"] == meta["num_frames"] - 1
        png = tmp_path / f"{clip.stem}.png"
        flowprep("show", out, video, "--frame", meta["num_flows"] - 1, "-o", png, check=True)
        assert cv2.imread(str(png)) is not None
    assert store.meta("ucf101/v_ApplyEyeMakeup_g01_c01")["num_frames"] == 164
    assert store.meta("kinetics/arm_wrestling")["num_frames"] == 280
