"""``flowprep upgrade``: give a store written by flowprep 0.1 the index and binary checksums of 0.2.

Stores of 0.1 open and verify as they are, but opening them parses every video's metadata (at
Kinetics scale: minutes and gigabytes in every training process). The upgrade adds, under the
store's lock, each video's index entry and checksum entry (:mod:`flowprep.storage.index`); the
records and metadata are left as they are. A video stored without checksums gets them from its
records as they are now, each decoded first (strictly) so that damage is not blessed with a
checksum; one that does not decode is left as it is and named. Rerunning it is safe: indexed
videos are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from flowprep.storage.checksum import record_crcs
from flowprep.storage.codec import RecordError, decode_flow_components, decode_rgb
from flowprep.storage.meta import VideoMeta
from flowprep.storage.shard import EmptyShardError, StoreError, open_env, record_key
from flowprep.storage.store import ShardWriter


@dataclass
class UpgradeReport:
    indexed: int = 0  # videos given entries
    computed: int = 0  # of them, videos whose checksums were computed from their records
    failed: dict[str, str] = field(default_factory=dict)  # video → why it was left as it was


def upgrade_store(root: str | os.PathLike, on_video: Callable[[int], None] | None = None) -> UpgradeReport:
    """Add the missing index and checksum entries of every shard of ``root``; ``on_video(1)`` per video."""
    report = UpgradeReport()
    with ShardWriter(root, what="flowprep upgrade") as writer:
        for shard in sorted(writer.root.glob("shard-*.lmdb")):
            def checksums_of(meta: VideoMeta, shard=shard):
                crcs = _checked_crcs(shard, meta)
                report.computed += 1
                return crcs

            def done(video: str, problem: str | None) -> None:
                if problem is None:
                    report.indexed += 1
                else:
                    report.failed[video] = problem
                if on_video is not None:
                    on_video(1)

            try:
                writer.add_index_entries(shard, checksums_of=checksums_of, on_video=done)
            except EmptyShardError:
                continue
    return report


def _checked_crcs(shard, meta: VideoMeta) -> dict:
    """The CRC-32s of a video's records as they are now, after decoding each one strictly; StoreError
    naming the first record that is missing or does not decode."""
    env, dbs = open_env(shard, write=True)
    records = []
    counts = {"rgb": meta.num_frames if meta.has("rgb") else 0, "flow": meta.num_flows if meta.has("flow") else 0,
              "back": meta.num_backward}
    with env.begin(db=dbs[b"data"]) as txn:
        for kind, count in counts.items():
            for t in range(count):
                key = record_key(meta.video, kind, t)
                value = txn.get(key)
                if value is None:
                    raise StoreError(f"{meta.video}: no {kind} record {t}")
                try:
                    decode_rgb(value) if kind == "rgb" else decode_flow_components(value)
                except RecordError as exc:
                    raise StoreError(f"{meta.video}: {kind} record {t} does not decode ({exc})") from None
                records.append((key, value))
    return record_crcs(records)
