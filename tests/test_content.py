"""`flowprep verify --content` (issue 21, item 4): stored flow must explain the stored frames; a store
broken in each known way is caught, good ones pass, a still video gives no verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from flowprep.algorithms.pairs import texture
from flowprep.content import check_store, check_video
from flowprep.extract import run_extract
from flowprep.storage.codec import decode_flow, encode_flow
from flowprep.storage.settings import ExtractSettings
from flowprep.storage.shard import record_key
from flowprep.storage.store import FlowStore, ShardWriter

REPO = Path(__file__).resolve().parents[1]


def write_jerky_video(path: Path, frames: int = 14, size: tuple[int, int] = (160, 120), seed: int = 0,
                      still: bool = False) -> Path:
    """A textured square moving by a different step each frame (so that one frame of pairing matters)
    over a still textured background."""
    width, height = size
    rng = np.random.default_rng(seed)
    background = cv2.cvtColor(texture(height, width, seed), cv2.COLOR_GRAY2BGR)
    patch = cv2.applyColorMap(texture(height // 3, width // 3, seed + 1), cv2.COLORMAP_JET)
    ph, pw = patch.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, size)
    x, y = width * 0.35, height * 0.35
    for _ in range(frames):
        frame = background.copy()
        frame[int(y):int(y) + ph, int(x):int(x) + pw] = patch
        writer.write(frame)
        if not still:
            x = float(np.clip(x + rng.choice([-4, -3, 3, 4]), 8, width - pw - 8))
            y = float(np.clip(y + rng.choice([-2, -1, 1, 2]), 8, height - ph - 8))
    writer.release()
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("content")
    (root / "videos").mkdir()
    for seed in range(2):
        write_jerky_video(root / "videos" / f"jerky{seed}.avi", seed=seed)
    write_jerky_video(root / "videos" / "still.avi", still=True, seed=5)
    run_extract(root / "videos", root / "flow", ExtractSettings(algo="dis", short_side=0), workers=1)
    return root / "flow"


def broken(source: Path, out: Path, change) -> Path:
    """``source`` written again with each video's list of flow fields changed by ``change``."""
    store = FlowStore(source)
    with ShardWriter(out) as writer:
        for video in store.videos():
            meta = store.video_meta(video)
            flows = [decode_flow(r) for r in store.records(video, "flow", range(meta.num_flows))]
            records = [(record_key(video, "rgb", t), bytes(r))
                       for t, r in enumerate(store.records(video, "rgb", range(meta.num_frames)))]
            records += [(record_key(video, "flow", t), encode_flow(f, 40.0, 95)) for t, f in enumerate(change(flows))]
            writer.put_video(video, records, meta)
    return out


def test_good_flow_passes_and_a_still_video_gives_no_verdict(good: Path) -> None:
    results = {r.video: r for r in check_store(FlowStore(good))}
    assert results["jerky0"].verdict == results["jerky1"].verdict == "ok", results
    assert results["still"].verdict == "still" and not results["still"].problem
    assert results["jerky0"].residuals["stored"] < 0.5  # of zero flow's difference


@pytest.mark.parametrize("name, change, verdict", [
    ("early", lambda f: [f[max(t - 1, 0)] for t in range(len(f))], "earlier"),
    ("late", lambda f: [f[min(t + 1, len(f) - 1)] for t in range(len(f))], "later"),
    ("swapped", lambda f: [x[..., ::-1].copy() for x in f], "swapped"),
    ("flipped", lambda f: [-x for x in f], "flipped"),
    ("double", lambda f: [2 * x for x in f], "halved"),
    ("half", lambda f: [x / 2 for x in f], "doubled"),
    ("offset", lambda f: [x + np.array([1.5, -1.0], np.float32) for x in f], "offset"),
    ("noise", lambda f: [np.random.default_rng(t).normal(0, 3, x.shape).astype(np.float32)
                         for t, x in enumerate(f)], "explains-nothing"),
])
def test_each_kind_of_broken_store_is_caught(good: Path, tmp_path: Path, name: str, change, verdict: str) -> None:
    store = FlowStore(broken(good, tmp_path / name, change))
    for video in ("jerky0", "jerky1"):
        result = check_video(store, video)
        assert result.verdict == verdict and result.problem, (video, result)
    assert check_video(store, "still").verdict == "still"


def test_verify_content_command(good: Path, tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "flowprep", "verify", good, "--content"], capture_output=True,
                        text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "content: 2 videos ok, 1 without a verdict (still), 0 wrong" in ok.stdout
    bad = broken(good, tmp_path / "swapped", lambda f: [x[..., ::-1].copy() for x in f])
    result = subprocess.run([sys.executable, "-m", "flowprep", "verify", bad, "--content"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 1
    assert "problem: jerky0: content: x and y swapped" in result.stdout


def test_real_clip_passes_and_its_broken_copies_are_caught(shared_data: Path, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "arm_wrestling.mp4").symlink_to(shared_data / "videos" / "kinetics" / "arm_wrestling.mp4")
    run_extract(videos, tmp_path / "flow", ExtractSettings(algo="dis", short_side=128), workers=1)
    assert check_video(FlowStore(tmp_path / "flow"), "arm_wrestling").verdict == "ok"
    for name, change, verdict in (("late", lambda f: [f[min(t + 1, len(f) - 1)] for t in range(len(f))], "later"),
                                  ("flipped", lambda f: [-x for x in f], "flipped")):
        store = FlowStore(broken(tmp_path / "flow", tmp_path / name, change))
        assert check_video(store, "arm_wrestling").verdict == verdict


def test_the_reference_samples_flow_does_not_explain_its_frames(shared_data: Path, tmp_path: Path) -> None:
    """Measured, not assumed: the 5 x_/y_ fields of ../shared/data/flow-jpeg-reference explain none of
    the pairs of its 10 frames (nor, checked by hand, any pair of the whole clip they come from):
    the content check says so instead of passing it."""
    result = subprocess.run([sys.executable, "-m", "flowprep", "import", shared_data / "flow-jpeg-reference",
                             tmp_path / "ref", "--trim-rgb"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert check_video(FlowStore(tmp_path / "ref"), "flow-jpeg-reference").verdict == "explains-nothing"


def test_a_tsn_dense_flow_tree_imports_paired_right(tmp_path: Path) -> None:
    """A tree written as TSN's dense_flow writes it (frame 0 never written; flow_x_k from frame k−1 to
    img_k) imports with field t from stored frame t to t+1: the content check confirms it; the same files
    read with the pairing of the other layouts (field k starting at img_k) are one frame early."""
    from test_import import write_frames_and_flow

    from flowprep.layouts import LAYOUTS

    clip = write_jerky_video(tmp_path / "jerky.avi", frames=16, seed=3)
    folder = tmp_path / "tsn" / "c" / "jerky"
    write_frames_and_flow(clip, LAYOUTS["tsn"], folder, folder, folder)
    result = subprocess.run([sys.executable, "-m", "flowprep", "import", tmp_path / "tsn", tmp_path / "store"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "content check of 1 sampled videos: 1 ok, 0 wrong" in result.stderr
    store = FlowStore(tmp_path / "store")
    assert store.entry("c/jerky").num_frames == 15 and store.entry("c/jerky").num_flows == 14
    assert check_video(store, "c/jerky").verdict == "ok"

    misread = tmp_path / "misread" / "c" / "jerky"  # the same files, renamed to a layout that starts fields at img_k
    misread.mkdir(parents=True)
    for path in folder.iterdir():
        (misread / path.name.replace("flow_x_", "x_").replace("flow_y_", "y_")).write_bytes(path.read_bytes())
    result = subprocess.run([sys.executable, "-m", "flowprep", "import", tmp_path / "misread", tmp_path / "wrong",
                             "--layout", "mmaction"], capture_output=True, text=True, cwd=REPO)
    assert "warning: c/jerky: pairing off by one: field t is the flow from frame t−1 to t" in result.stderr
