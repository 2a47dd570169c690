"""Shared fixtures: small real video files written with OpenCV, and the real-data folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from flowprep.algorithms.pairs import texture
from flowprep.datasets.synthetic import SynthConfig, write_dataset
from flowprep.extract import run_extract
from flowprep.storage.settings import ExtractSettings

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


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class built-in dataset (6 clips of 8 frames a class) extracted with DIS."""
    root = tmp_path_factory.mktemp("tiny")
    for name, seed in (("a", 0), ("b", 1)):
        write_dataset(root / name, SynthConfig(motion_classes=2, appearance_classes=2, clips_per_class=6,
                                               clips_per_group=1, frames=8, width=96, height=72, seed=seed))
        run_extract(root / name / "videos", root / name / "flow", ExtractSettings(algo="dis", short_side=0),
                    workers=2)
    return root


def to_pre_index_format(shard: Path, checksums: bool = True) -> None:
    """Rewrite a shard as flowprep 0.1 wrote it (tests of old stores): no ``index`` and ``crc`` databases,
    the checksums (``checksums``) as the ``crc32`` hex table of each video's metadata, or none at all."""
    import json

    import lmdb

    from flowprep.storage.index import unpack_checksums
    from flowprep.storage.shard import close_env

    close_env(shard)
    env = lmdb.open(str(shard), max_dbs=4)
    with env.begin(write=True) as txn:
        meta_db, crc_db, index_db = (env.open_db(name, txn=txn) for name in (b"meta", b"crc", b"index"))
        for video, value in list(txn.cursor(db=meta_db)):
            meta = {k: v for k, v in json.loads(value).items() if k != "crc32"}
            crc = txn.get(video, db=crc_db)
            if checksums and crc is not None:
                meta["crc32"] = {k: a.astype(">u4").tobytes().hex() for k, a in unpack_checksums(crc).items()}
            txn.put(video, json.dumps(meta, sort_keys=True).encode(), db=meta_db)
        txn.drop(crc_db, delete=True)
        txn.drop(index_db, delete=True)
    env.close()


def rewrite_checksums(shard: Path, video: str) -> None:
    """Store the checksums of ``video``'s records as they are now (damage made where a store was made, so
    its checksums match)."""
    import lmdb

    from flowprep.storage.checksum import record_crcs
    from flowprep.storage.index import pack_checksums
    from flowprep.storage.shard import close_env

    close_env(shard)
    env = lmdb.open(str(shard), max_dbs=4)
    with env.begin(write=True) as txn:
        data, crc = env.open_db(b"data", txn=txn), env.open_db(b"crc", txn=txn)
        cursor = txn.cursor(db=data)
        prefix = f"{video}/".encode()
        records = []
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                if key.count(b"/") == video.count("/") + 2:
                    records.append((key, value))
        txn.put(video.encode(), pack_checksums(record_crcs(records)), db=crc)
    env.close()


def write_config(tiny: Path, tmp_path: Path, stream: str = "temporal", iterations: int = 12,
                 datasets: tuple[str, ...] = ("a",), **sections: dict) -> Path:
    cfg = {
        "run": {"dir": str(tmp_path / "run"), "seed": 0, "device": "cpu"},
        "data": {"datasets": [{"name": n, "store": str(tiny / n / "flow"), "splits": str(tiny / n / "splits"),
                               "split_format": "ucf101"} for n in datasets],
                 "stream": stream, "flow_stack": 4, "crop": 64, "workers": 1},
        "model": {"width": 0.125, "dropout": 0.5},
        "optim": {"batch_size": 8, "lr": 0.01, "schedule": "custom", "iterations": iterations,
                  "milestones": [iterations // 2]},
        "train": {"log_every": 2, "val_every": 0, "checkpoint_every": 4},
    }
    for section, values in sections.items():
        cfg[section].update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
