"""LMDB shards: whole-video transactions, map growth, shard bounds and the reader in worker processes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import flowprep.storage.shard as shard_module
from flowprep.storage.codec import encode_flow, encode_rgb
from flowprep.storage.shard import StoreError, record_key
from flowprep.storage.store import FlowStore, ShardWriter


def make_video(video: str, frames: int = 5, height: int = 32, width: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    records = []
    for t in range(frames):
        rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        records.append((record_key(video, "rgb", t), encode_rgb(rgb, 90)))
    for t in range(frames - 1):
        flow = np.full((height, width, 2), (t, -t), np.float32)
        records.append((record_key(video, "flow", t), encode_flow(flow, 20.0, 95)))
    meta = {"video": video, "num_frames": frames, "num_flows": frames - 1, "num_backward": 0,
            "height": height, "width": width}
    return records, meta


def test_write_and_read_back(tmp_path: Path) -> None:
    with ShardWriter(tmp_path) as writer:
        for i, name in enumerate(["b/two", "a/one"]):
            writer.put_video(name, *make_video(name, seed=i))
    store = FlowStore(tmp_path)
    assert store.videos() == ["a/one", "b/two"]
    assert store.meta("a/one")["num_frames"] == 5
    assert store.rgb("a/one", 4).shape == (32, 40, 3)
    flow = store.flow("b/two", 3)
    assert flow.shape == (32, 40, 2) and flow.dtype == np.float32
    assert np.allclose(flow[..., 0], 3, atol=0.1) and np.allclose(flow[..., 1], -3, atol=0.1)
    assert [f[0, 0, 0] for f in store.flows("b/two", [0, 1, 2])] == pytest.approx([0, 1, 2], abs=0.1)
    with pytest.raises(IndexError, match="no flow record 4"):
        store.flow("a/one", 4)
    with pytest.raises(KeyError, match="not in"):
        store.meta("c/three")


def test_map_grows_instead_of_map_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_module, "_INITIAL_MAP", 64 * 1024)
    with ShardWriter(tmp_path) as writer:
        for i in range(4):
            writer.put_video(f"v{i}", *make_video(f"v{i}", frames=20, height=96, width=128, seed=i))
    store = FlowStore(tmp_path)
    assert len(store) == 4 and len(store.shards) == 1
    assert store.rgb("v3", 19).shape == (96, 128, 3)


def test_shards_are_bounded_and_a_video_is_never_split(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, shard_bytes=200 * 1024) as writer:
        for i in range(6):
            writer.put_video(f"v{i}", *make_video(f"v{i}", frames=10, height=96, width=128, seed=i))
    shards = sorted(p.name for p in tmp_path.glob("shard-*.lmdb"))
    assert len(shards) > 1 and shards[0] == "shard-00000.lmdb"
    store = FlowStore(tmp_path)
    assert store.videos() == [f"v{i}" for i in range(6)]
    for i, shard in enumerate(store.shards):
        videos = {m["video"] for m in store.iter_meta(i)}
        keys = {key.decode().split("/")[0] for key, _ in store.iter_records(i)}
        assert keys == videos, shard


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    records, meta = make_video("v")
    records.append((record_key("v" * 600, "rgb", 0), b"a key over 511 bytes makes LMDB refuse the put"))
    with ShardWriter(tmp_path) as writer, pytest.raises(StoreError, match="writing failed.*run the same command"):
        writer.put_video("v", records, meta)
    store = FlowStore(tmp_path)
    assert len(store) == 0 and store.num_records() == 0


def test_second_writer_is_refused(tmp_path: Path) -> None:
    with ShardWriter(tmp_path), pytest.raises(StoreError, match="in use by another flowprep process"):
        ShardWriter(tmp_path)


def test_reader_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such folder"):
        FlowStore(tmp_path / "missing")
    with pytest.raises(StoreError, match="no flowprep shards"):
        FlowStore(tmp_path)


class FramesDataset(torch.utils.data.Dataset):
    def __init__(self, store: FlowStore):
        self.store = store
        self.items = [(v, t) for v in store.videos() for t in range(store.meta(v)["num_flows"])]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        video, t = self.items[i]
        return torch.from_numpy(self.store.flow(video, t)[0, 0].copy())


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_reader_in_dataloader_workers(tmp_path: Path, context: str) -> None:
    with ShardWriter(tmp_path) as writer:
        for i in range(3):
            writer.put_video(f"v{i}", *make_video(f"v{i}", seed=i))
    store = FlowStore(tmp_path)
    store.rgb("v0", 0)  # the parent has the shard open before the workers start
    pickle.loads(pickle.dumps(store)).flow("v1", 1)
    loader = torch.utils.data.DataLoader(FramesDataset(store), batch_size=4, num_workers=2,
                                         multiprocessing_context=context)
    values = torch.cat(list(loader))
    assert values.shape == (12, 2)
    assert values[:, 0].tolist() == pytest.approx([0, 1, 2, 3] * 3, abs=0.1)


def test_the_readme_import_of_the_store_still_works() -> None:
    from flowprep.storage.shard import CorruptRecordError, StoreError
    from flowprep.storage.store import FlowStore
    from flowprep.storage.store import FlowStore as defined

    assert FlowStore is defined and issubclass(CorruptRecordError, StoreError)
