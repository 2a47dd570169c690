"""The store's index and binary checksums (issue 25): old stores open, train, verify and upgrade; new
stores list without their metadata; damage to the new entries is found; verify in processes."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from conftest import write_config
from test_store import make_video

from flowprep.storage.index import ENTRY, ChecksumCache, IndexEntry, unpack_checksums
from flowprep.storage.shard import close_env
from flowprep.storage.store import FlowStore, ShardWriter

REPO = Path(__file__).resolve().parents[1]
OLD_STORE = Path(__file__).parent / "fixtures" / "store-v1"  # written by flowprep 0.1 (commit 319f293)


def run(tool: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", tool, *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


def edit(shard: Path, change) -> None:
    """``change(txn, dbs)`` in one write transaction of ``shard`` (dbs by name)."""
    close_env(shard)
    env = lmdb.open(str(shard), max_dbs=4)
    with env.begin(write=True) as txn:
        change(txn, {name: env.open_db(name, txn=txn) for name in (b"meta", b"data", b"index", b"crc")})
    env.close()


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    shutil.copytree(OLD_STORE, tmp_path / "old")
    return tmp_path / "old"


def test_a_store_of_flowprep_0_1_opens_trains_verifies_and_upgrades(old_store: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    flow = old_store / "flow"
    caplog.set_level(logging.INFO, logger="flowprep")
    store = FlowStore(flow)
    videos = store.videos()
    assert len(videos) == 9 and store.unindexed == 9 and store.count_unindexed() == 9
    assert "have no index entry" in caplog.text and f"flowprep upgrade {flow}" in caplog.text
    meta = store.video_meta(videos[0])
    assert meta.crc32 is not None  # the hex table of 0.1
    entry = store.entry(videos[0])
    assert (entry.num_frames, entry.num_flows, entry.width, entry.height) == (6, 5, 64, 48)
    assert store.rgb(videos[0], 5).shape == (48, 64, 3) and store.flow(videos[0], 4).shape == (48, 64, 2)
    store.close()
    assert run("flowprep", "verify", flow).returncode == 0

    config = write_config(tmp_path, tmp_path, iterations=2, data={"crop": 48})
    text = config.read_text().replace(str(tmp_path / "a" / "flow"), str(flow))
    config.write_text(text.replace(str(tmp_path / "a" / "splits"), str(old_store / "splits")))
    fit = run("trainer", "fit", config)
    assert fit.returncode == 0, fit.stderr

    upgraded = run("flowprep", "upgrade", flow)
    assert upgraded.returncode == 0 and "9 videos indexed" in upgraded.stdout, upgraded.stdout + upgraded.stderr
    store = FlowStore(flow)
    assert store.videos() == videos and store.unindexed == 0
    assert store.entry(videos[0]) == entry
    assert list(store.checksums(videos[0])["rgb"]) == list(
        np.frombuffer(bytes.fromhex(meta.crc32["rgb"]), ">u4"))
    store.close()
    assert run("flowprep", "verify", flow).returncode == 0
    again = run("flowprep", "upgrade", flow)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_upgrade_computes_missing_checksums_but_not_over_damage(old_store: Path) -> None:
    from conftest import to_pre_index_format

    flow = old_store / "flow"
    shard = flow / "shard-00000.lmdb"
    to_pre_index_format(shard, checksums=False)
    videos = FlowStore(flow).videos()

    def damage(txn, dbs) -> None:  # a JPEG cut short: it no longer decodes
        key = f"{videos[1]}/rgb/000002".encode()
        txn.put(key, txn.get(key, db=dbs[b"data"])[:300], db=dbs[b"data"])

    edit(shard, damage)
    result = run("flowprep", "upgrade", flow)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "8 videos indexed (8 of them without checksums: computed from their records)" in result.stdout
    assert f"not indexed: {videos[1]}: rgb record 2 does not decode" in result.stdout
    store = FlowStore(flow)
    assert store.count_unindexed() == 1
    assert store.checksums(videos[0]) is not None and store.checksums(videos[1]) is None


def test_a_store_resumed_by_the_new_writer_holds_both_kinds(old_store: Path) -> None:
    flow = old_store / "flow"
    with ShardWriter(flow) as writer:
        writer.put_video("new/v", *make_video("new/v", frames=4, height=48, width=64))
    store = FlowStore(flow)
    assert len(store) == 10 and store.unindexed == 9
    assert store.entry("new/v").num_frames == 4 and store.rgb("new/v", 3).shape == (48, 64, 3)
    meta = json.loads(next(v for k, v in _meta_items(flow / "shard-00000.lmdb") if k == b"new/v"))
    assert "crc32" not in meta  # the new video's checksums are in the crc database
    result = run("flowprep", "verify", flow)
    # the one problem: the hand-made video's metadata does not say how its flow was made
    assert result.stdout.count("problem:") == 1 and "new/v: made with metadata lacks" in result.stdout


def _meta_items(shard: Path) -> list[tuple[bytes, bytes]]:
    close_env(shard)
    env = lmdb.open(str(shard), max_dbs=4, readonly=True, lock=False)
    with env.begin() as txn:
        items = list(txn.cursor(db=env.open_db(b"meta", txn=txn)))
    env.close()
    return items


@pytest.fixture
def new_store(tmp_path: Path) -> Path:
    out = tmp_path / "new"
    with ShardWriter(out, shard_bytes=40_000) as writer:
        for i in range(8):
            writer.put_video(f"c{i % 2}/v{i}", *make_video(f"c{i % 2}/v{i}", frames=6, seed=i))
    assert len(list(out.glob("shard-*.lmdb"))) >= 3
    return out


def test_listing_and_training_counts_never_read_the_metadata(new_store: Path) -> None:
    """Every video's metadata replaced by bytes that are not JSON: listing, counts, checksums and
    records still read (from the index and crc databases); only the metadata itself does not."""
    shards = sorted(new_store.glob("shard-*.lmdb"))
    for shard in shards:
        edit(shard, lambda txn, dbs: [txn.put(k, b"\xff not json", db=dbs[b"meta"])
                                      for k, _ in list(txn.cursor(db=dbs[b"meta"]))])
    store = FlowStore(new_store)
    assert store.videos() == sorted(f"c{i % 2}/v{i}" for i in range(8))
    assert store.entry("c1/v3") == IndexEntry(6, 5, 0, 40, 32, ("rgb", "flow"))
    assert store.count_without("rgb") == (0, None)
    assert store.rgb("c1/v3", 5).shape == (32, 40, 3) and store.flow("c1/v3", 4).shape == (32, 40, 2)
    with pytest.raises(Exception, match="metadata of video 'c1/v3' is damaged"):
        store.video_meta("c1/v3")


def test_damaged_index_and_checksum_entries_are_found(new_store: Path) -> None:
    shards = sorted(new_store.glob("shard-*.lmdb"))
    store = FlowStore(new_store)
    first, second = store.videos_of_shard(0)[0], store.videos_of_shard(1)[0]
    store.close()

    def damage(txn, dbs) -> None:
        entry = bytearray(txn.get(first.encode(), db=dbs[b"index"]))
        entry[4] ^= 1  # the number of frames
        txn.put(first.encode(), bytes(entry), db=dbs[b"index"])
        txn.put(b"ghost", IndexEntry(1, 0, 0, 1, 1).pack("ghost"), db=dbs[b"index"])

    edit(shards[0], damage)
    edit(shards[1], lambda txn, dbs: txn.delete(second.encode(), db=dbs[b"crc"]))
    result = run("flowprep", "verify", new_store, "--no-decode")
    assert result.returncode == 1
    assert f"index entry of video '{first}' is damaged (index entry fails its CRC-32)" in result.stdout
    assert f"video '{second}' has no checksum entry" in result.stdout
    assert "index entry of video 'ghost' but no metadata" in result.stdout
    with pytest.raises(Exception, match="index entry fails its CRC-32"):
        FlowStore(new_store).videos()
    # every byte of the entry is covered: a changed count with a recomputed CRC would be a new entry
    assert ENTRY.size == 28


def test_verify_in_processes_finds_what_one_process_finds(new_store: Path) -> None:
    store = FlowStore(new_store)
    video = store.videos_of_shard(1)[0]
    store.close()

    def damage(txn, dbs) -> None:
        key = f"{video}/flow/000001".encode()
        value = bytearray(txn.get(key, db=dbs[b"data"]))
        value[-100] ^= 0x20
        txn.put(key, bytes(value), db=dbs[b"data"])

    edit(sorted(new_store.glob("shard-*.lmdb"))[1], damage)
    one = run("flowprep", "verify", new_store)
    many = run("flowprep", "verify", new_store, "--workers", "3")
    assert one.returncode == many.returncode == 1
    assert one.stdout == many.stdout and f"problem: {video}: flow record 1: CRC-32 mismatch" in many.stdout
    zero = run("flowprep", "verify", new_store, "--workers", "0")
    assert zero.returncode == 2 and "--workers" in zero.stderr


def test_checksum_cache_is_bounded_in_bytes(new_store: Path) -> None:
    store = FlowStore(new_store)
    store._checksums = ChecksumCache(max_bytes=1500)
    for video in store.videos():
        store.rgb(video, 0)
    assert len(store._checksums) < 8 and store._checksums.bytes <= 1500
    assert store.rgb("c0/v0", 1).shape == (32, 40, 3)  # evicted, read again
    crc = unpack_checksums(_crc_value(new_store, "c0/v0"))
    assert sorted(crc) == ["flow", "rgb"] and len(crc["rgb"]) == 6 and len(crc["flow"]) == 5


def _crc_value(root: Path, video: str) -> bytes:
    store = FlowStore(root)
    shard = store.shards[store._shard_of(video)]
    close_env(shard)
    env = lmdb.open(str(shard), max_dbs=4, readonly=True, lock=False)
    with env.begin() as txn:
        value = txn.get(video.encode(), db=env.open_db(b"crc", txn=txn))
    env.close()
    return value
