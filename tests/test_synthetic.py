"""The built-in dataset: layout, determinism, and the two streams being complementary on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from flowprep.datasets.splits import match_videos, read_split
from flowprep.datasets.synthetic import SynthConfig, write_dataset
from flowprep.extract import run_extract
from flowprep.storage.settings import ExtractSettings
from flowprep.storage.store import FlowStore
from flowprep.video import read_frames

SMALL = SynthConfig(clips_per_class=12, clips_per_group=1, frames=10)
MOTION_PAIRS = [("MoveUp", "MoveDown"), ("MoveSideways", "Oscillate"), ("Rotate", "Still"), ("Expand", "Contract")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FlowStore]:
    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(root, SMALL)
    report = run_extract(root / "videos", root / "flow", ExtractSettings(short_side=0), workers=2)
    assert report.stored == 144 and not report.failures
    return root, FlowStore(root / "flow")


def test_layout_and_splits(dataset: tuple[Path, FlowStore]) -> None:
    root, store = dataset
    classes = json.loads((root / "classes.json").read_text())["classes"]
    assert list(classes)[:2] == ["MoveUp", "MoveDown"] and classes["RedDisc"] == "appearance"
    assert sum(kind == "motion" for kind in classes.values()) == 8 and len(classes) == 12
    split = read_split("ucf101", root / "splits", 1)
    assert split.classes == list(classes)
    assert (len(split.train), len(split.test)) == (12 * 9, 12 * 3)
    assert not match_videos(split, store.videos()).missing
    assert (root / "videos" / "Expand" / "v_Expand_g01_c01.avi").is_file()
    info, frames = read_frames(root / "videos" / "MoveUp" / "v_MoveUp_g05_c01.avi", short_side=0)
    assert frames.shape == (10, 128, 170, 3) and info.fps == 25.0
    cap = cv2.VideoCapture(str(root / "videos" / "MoveUp" / "v_MoveUp_g05_c01.avi"))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    assert fourcc.upper() in ("XVID", "FMP4", "MP4V", "DIVX")


def test_same_seed_same_clips(tmp_path: Path) -> None:
    cfg = SynthConfig(motion_classes=2, appearance_classes=1, clips_per_class=4, frames=4)
    write_dataset(tmp_path / "a", cfg)
    write_dataset(tmp_path / "b", cfg)
    write_dataset(tmp_path / "c", SynthConfig(motion_classes=2, appearance_classes=1, clips_per_class=4,
                                               frames=4, seed=1))
    clip = "MoveDown/v_MoveDown_g02_c01.avi"
    a, b, c = (read_frames(tmp_path / x / "videos" / clip)[1] for x in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (tmp_path / "a/splits/trainlist01.txt").read_text() == (tmp_path / "b/splits/trainlist01.txt").read_text()


def _samples(store: FlowStore, videos, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, labels = [], []
    for entry in videos:
        for t in range(store.meta(entry.video)["num_flows"]):
            if stream == "rgb":
                x = store.rgb(entry.video, t).astype(np.float32) / 255.0 - 0.5
            else:
                x = store.flow(entry.video, t) / 4.0
            x = cv2.resize(x, (x.shape[1] // 3, x.shape[0] // 3), interpolation=cv2.INTER_AREA)
            inputs.append(torch.from_numpy(x).permute(2, 0, 1))
            labels.append(entry.label)
    return torch.stack(inputs), torch.tensor(labels)


def _accuracy_by_class(store: FlowStore, root: Path, stream: str, classes: list[str]) -> dict:
    """Train a small ConvNet on single RGB frames or single flow fields of ``classes`` (a third of
    the size); return its test accuracy overall and, for each motion pair, between the two."""
    torch.manual_seed(0)
    split = read_split("ucf101", root / "splits", 1)
    keep = {split.classes.index(c): i for i, c in enumerate(classes)}
    pick = [type(v)(v.video, keep[v.label], v.class_name) for v in split.train if v.label in keep]
    x_train, y_train = _samples(store, pick, stream)
    pick = [type(v)(v.video, keep[v.label], v.class_name) for v in split.test if v.label in keep]
    x_test, y_test = _samples(store, pick, stream)
    channels = x_train.shape[1]
    net = nn.Sequential(
        nn.Conv2d(channels, 32, 5, stride=2, padding=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, len(classes)),
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(len(x_train), (64,), generator=gen)
        net.train()
        loss = nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        logits = net(x_test)
    result = {"overall": (logits.argmax(1) == y_test).float().mean().item()}
    for a, b in MOTION_PAIRS:
        if a in classes and b in classes:
            ia, ib = classes.index(a), classes.index(b)
            rows = (y_test == ia) | (y_test == ib)
            pred = torch.where(logits[rows, ia] > logits[rows, ib], ia, ib)
            result[f"{a}/{b}"] = (pred == y_test[rows]).float().mean().item()
    return result


def test_rgb_cannot_and_flow_can_separate_motion_only_classes(dataset: tuple[Path, FlowStore]) -> None:
    root, store = dataset
    motion = [c for c, k in json.loads((root / "classes.json").read_text())["classes"].items() if k == "motion"]
    rgb = _accuracy_by_class(store, root, "rgb", motion)
    flow = _accuracy_by_class(store, root, "flow", motion)
    print("motion-only classes, RGB:", rgb, "flow:", flow)
    assert rgb["overall"] < 0.3  # chance: 0.125; only 3 test clips a class, so no per-pair bound
    assert flow["overall"] > 0.7
    for pair in (f"{a}/{b}" for a, b in MOTION_PAIRS):
        assert flow[pair] > 0.75, f"flow fails to separate {pair}: {flow[pair]:.2f}"


def test_rgb_can_and_flow_cannot_separate_appearance_only_classes(dataset: tuple[Path, FlowStore]) -> None:
    root, store = dataset
    kinds = json.loads((root / "classes.json").read_text())["classes"]
    appearance = [c for c, k in kinds.items() if k == "appearance"]
    rgb = _accuracy_by_class(store, root, "rgb", appearance)
    flow = _accuracy_by_class(store, root, "flow", appearance)
    print("appearance-only classes, RGB:", rgb, "flow:", flow)
    assert rgb["overall"] > 0.9
    assert flow["overall"] < 0.5  # chance: 0.25


def test_synth_command(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "flowprep", "synth", tmp_path / "s", "--motion-classes", "2",
                             "--appearance-classes", "2", "--clips-per-class", "4", "--frames", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 16 clips of 4 classes" in result.stdout
    assert len(list((tmp_path / "s" / "videos").rglob("*.avi"))) == 16
