"""trainer test / fuse / report / predict: the paper's test protocol and late fusion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_config

from flowprep.storage.store import FlowStore
from trainer.config import load_config
from trainer.crops import ten_crops
from trainer.evaluate import frame_positions, protocol_inputs
from trainer.fit import fit
from trainer.fusion import fuse_svm
from trainer.inputs import InputSpec
from trainer.scores import Scores
from trainer.volumes import VideoEntry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nets(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Spatial and temporal nets trained for a few iterations on the tiny dataset (in this process)."""
    out = {}
    for stream in ("spatial", "temporal"):
        folder = tmp_path_factory.mktemp(stream)
        cfg = load_config(write_config(tiny, folder, stream=stream, iterations=8))
        out[stream] = Path(fit(cfg)["checkpoint"])
    return out


def trainer(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


def test_test_positions_are_equally_spaced() -> None:
    assert frame_positions(0, 48) == list(range(0, 49, 2))
    assert len(frame_positions(3, 3)) == 25 and set(frame_positions(3, 3)) == {3}


def test_ten_crops_flip_negates_flow_x() -> None:
    volume = np.zeros((4, 10, 12), np.float32)
    volume[0], volume[1] = 2.0, -1.0  # dx, dy of field 0
    volume[2, :, :6] = 5.0  # dx of field 1 on the left half only
    crops = ten_crops(volume, 8, is_flow=True)
    assert len(crops) == 10 and all(c.shape == (4, 8, 8) for c in crops)
    assert np.all(crops[5][0] == -2.0) and np.all(crops[5][1] == -1.0)  # flipped: x negated, y kept
    assert np.array_equal(crops[5][2], -crops[0][2][:, ::-1])  # and mirrored
    rgb = np.random.default_rng(0).random((3, 10, 12)).astype(np.float32)
    assert np.array_equal(ten_crops(rgb, 8, is_flow=False)[9], ten_crops(rgb, 8, is_flow=False)[4][:, :, ::-1])


def test_protocol_gives_25_times_10_inputs(tiny: Path) -> None:
    store = FlowStore(tiny / "a" / "flow")
    video = store.videos()[0]
    meta = store.meta(video)
    entry = VideoEntry(video, 0, meta["num_frames"], meta["num_flows"], 0)
    spec = InputSpec("temporal", 4, "optical_flow", False, True, 64, True, 0.0, (0,) * 3, (1,) * 3, 1.0)
    inputs = protocol_inputs(spec, store, entry)
    assert inputs.shape == (250, 8, 64, 64) and inputs.dtype == torch.float32
    # crop 5 of every frame is crop 0 flipped with dx negated
    assert torch.allclose(inputs[5, 0], -inputs[0, 0].flip(-1)) and torch.allclose(inputs[5, 1], inputs[0, 1].flip(-1))


def test_svm_fusion_learns_which_stream_to_trust() -> None:
    """Class 0/1 are told apart by stream A only, 2/3 by stream B only: the SVM beats averaging."""
    rng = np.random.default_rng(0)

    def make(n: int, subset: str) -> list[Scores]:
        labels = rng.integers(0, 4, n)
        a = np.full((n, 4), 0.1, np.float32)
        b = np.full((n, 4), 0.1, np.float32)
        for i, y in enumerate(labels):
            a[i, y if y < 2 else 2 + rng.integers(2)] += 0.6
            b[i, y if y >= 2 else rng.integers(2)] += 0.6
        videos = [f"v{i}" for i in range(n)]
        return [Scores("d", 1, subset, s, videos, labels, list("abcd"), x / x.sum(1, keepdims=True))
                for s, x in (("spatial", a), ("temporal", b))]

    train, test = make(400, "train"), make(200, "test")
    average = np.mean([s.scores for s in test], axis=0).argmax(1)
    svm = fuse_svm(train, test).argmax(1)
    assert np.mean(svm == test[0].labels) > 0.95
    assert np.mean(svm == test[0].labels) > np.mean(average == test[0].labels) + 0.2


def test_test_fuse_report_commands(nets: dict[str, Path], tiny: Path, tmp_path: Path) -> None:
    for stream, checkpoint in nets.items():
        result = trainer("test", checkpoint, "--train-scores", "--frames", "5", "--workers", "1", "-o", tmp_path)
        assert result.returncode == 0, result.stderr
        assert "a split 1 test (4 videos): top-1" in result.stdout
        assert "a split 1 train (20 videos): top-1" in result.stdout
        assert (tmp_path / f"confusion-a-split1-{stream}.png").is_file()
    test_files = [tmp_path / f"scores-a-split1-{s}-test.npz" for s in ("spatial", "temporal")]
    scores = Scores.load(test_files[1])
    assert scores.scores.shape == (4, 4) and np.allclose(scores.scores.sum(1), 1, atol=1e-4)
    assert scores.classes[0] == "MoveUp" and len(scores.videos) == 4
    fused = trainer("fuse", *test_files, "--groups", tiny / "a" / "classes.json", "-o", tmp_path / "table.md")
    assert fused.returncode == 0, fused.stderr
    lines = fused.stdout.splitlines()
    assert lines[0] == "a split 1"
    assert "| method | top-1 | mean class accuracy | appearance classes | motion classes |" in lines
    assert [line.split("|")[1].strip() for line in lines[4:]] == [
        "spatial ConvNet", "temporal ConvNet", "fusion by averaging", "fusion by SVM"]
    assert (tmp_path / "table.md").read_text().startswith("a split 1")
    report = trainer("report", *test_files)
    assert report.returncode == 0 and "| fusion by SVM | " in report.stdout and "mean over splits" in report.stdout
    lonely = trainer("fuse", test_files[0], "--method", "svm")
    assert lonely.returncode == 0 and "fusion" not in lonely.stdout
    bad = trainer("fuse", tiny / "a" / "classes.json")
    assert bad.returncode == 2 and "not a scores file" in bad.stderr


def test_predict_every_real_clip(nets: dict[str, Path], shared_data: Path) -> None:
    clips = sorted(p for p in (shared_data / "videos").rglob("*") if p.suffix in (".avi", ".mp4"))
    for clip in clips:
        result = trainer("predict", clip, "--spatial", nets["spatial"], "--temporal", nets["temporal"], "--top", "4")
        assert result.returncode == 0, result.stderr
        ranked = [line for line in result.stdout.splitlines() if line[:2] in ("1.", "2.", "3.", "4.")]
        assert len(ranked) == 4 and "fused" in ranked[0] and "temporal" in ranked[0]
        assert "flow dis (opencv-dis, the training data's parameters)" in result.stdout


def test_predict_errors_are_one_line(nets: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "notes.avi").write_text("not a video")
    for args, message in [
        ((tmp_path / "missing.avi", "--spatial", nets["spatial"]), "file not found"),
        ((tmp_path / "notes.avi", "--spatial", nets["spatial"]), "not a video"),
        ((tmp_path / "notes.avi",), "give --spatial CKPT and/or --temporal CKPT"),
        ((tmp_path / "notes.avi", "--spatial", nets["temporal"]), "is a temporal net"),
    ]:
        result = trainer("predict", *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_svm_fusion_is_deterministic() -> None:
    """The same score files give the same fused table: liblinear shuffles with a seed of its own, which
    must not come from numpy's global random state (two `trainer report` runs gave 50.0 % and 52.1 %)."""
    def scores(subset: str, stream: str, n: int, seed: int) -> Scores:
        rng = np.random.default_rng(seed)
        return Scores("d", 1, subset, stream, [f"v{i}" for i in range(n)], rng.integers(0, 12, n),
                      [f"c{i}" for i in range(12)], rng.dirichlet(np.ones(12), n).astype(np.float32))

    train = [scores("train", "spatial", 144, 0), scores("train", "temporal", 144, 5)]
    test = [scores("test", "spatial", 48, 1), scores("test", "temporal", 48, 2)]
    np.random.seed(0)
    first = fuse_svm(train, test)
    np.random.seed(123)
    assert np.array_equal(fuse_svm(train, test), first)
