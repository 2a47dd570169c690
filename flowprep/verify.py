"""Summaries and integrity checks of a store (``flowprep info`` and ``flowprep verify``)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flowprep.storage.checksum import checksum_problem, parse_checksums
from flowprep.storage.codec import RecordError, decode_flow_components, decode_rgb
from flowprep.storage.lock import lock_holder
from flowprep.storage.meta import VideoMeta
from flowprep.storage.settings import describe_settings, video_mismatches
from flowprep.storage.shard import StoreError, id_problem, record_key, split_key
from flowprep.storage.store import KINDS, SETTINGS_FILE, FlowStore


@dataclass
class StoreSummary:
    videos: int = 0
    frames: int = 0
    flow_fields: int = 0
    backward_fields: int = 0
    rgb_bytes: int = 0
    flow_bytes: int = 0
    float32_flow_bytes: int = 0
    disk_bytes: int = 0
    shards: int = 0
    algorithms: Counter = field(default_factory=Counter)
    failures: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # shards or metadata that cannot be read

    @property
    def compression_ratio(self) -> float:
        """float32 size of the flow fields (H·W·2·4 bytes each) over their stored JPEG size."""
        return self.float32_flow_bytes / self.flow_bytes if self.flow_bytes else 0.0


def _readable_metas(store: FlowStore, problems: list[str]) -> list[VideoMeta]:
    """Every video's metadata that can be read; what cannot goes into ``problems`` (shard and video)."""
    metas = []
    store.videos()
    problems += store.unreadable.values()
    for shard in store.empty_shards:
        problems.append(f"{shard}: no video was ever committed to this shard (a run killed during its first "
                        "commit?); run the same extract again")
    for i in store.shard_indices():
        try:
            for key, value in store.iter_meta_raw(i):
                try:
                    metas.append(store.parse_meta(i, key, value))
                except StoreError as exc:
                    problems.append(str(exc))
        except StoreError as exc:
            problems.append(str(exc))
    return metas


def refuse_while_written(root: Path) -> None:
    """StoreError where a run (extract, import) holds the store's lock: a store read while it is written
    shows half-written videos and LMDB errors that are not damage."""
    holder = lock_holder(root)
    if holder is not None:
        raise StoreError(f"{root}: being written by {holder}; read or verify it when that run has ended")


def summarize(store: FlowStore) -> StoreSummary:
    s = StoreSummary(shards=len(store.shards))
    try:
        s.failures = store.failures()
    except StoreError as exc:
        s.problems.append(str(exc))
    s.disk_bytes = sum(f.stat().st_size for shard in store.shards for f in shard.iterdir() if f.is_file())
    for meta in _readable_metas(store, s.problems):
        fields = meta.num_flows + meta.num_backward
        s.videos += 1
        s.frames += meta.num_frames
        s.flow_fields += meta.num_flows
        s.backward_fields += meta.num_backward
        s.rgb_bytes += meta.rgb_bytes
        s.flow_bytes += meta.flow_bytes
        s.float32_flow_bytes += fields * meta.height * meta.width * 2 * 4
        flow = meta.flow
        s.algorithms[f"{flow.algo} ({flow.implementation})" if flow else "unknown"] += 1
    return s


def _expected_counts(meta: VideoMeta) -> dict[str, int]:
    return {"rgb": meta.num_frames, "flow": meta.num_flows, "back": meta.num_backward}


@dataclass
class Verification:
    problems: list[str] = field(default_factory=list)  # each makes the store unsound (exit status 1)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a fault


def verify(store: FlowStore, decode: bool = True, on_record: Callable[[int], None] | None = None) -> Verification:
    """Problems found in the store, one line each (none: the store is sound), and notes.

    Checks, for every video: N RGB frames and N−1 flow fields (and N−1 backward fields when stored;
    an imported RGB-only or flow-only video has the one stream)
    as its metadata says, numbered 0..n−1 without gaps; every record's CRC-32 against its metadata;
    every record decodes (``decode``) to the frame size in the metadata; the metadata agrees with
    ``flowprep.json``; no record belongs to a video without metadata. Shards or metadata that cannot
    be read are problems naming shard and video, and the check goes on with the rest.
    """
    refuse_while_written(store.root)
    result = Verification()
    problems = result.problems
    try:
        store.failures()
    except StoreError as exc:
        problems.append(str(exc))
    metas = _readable_metas(store, problems)
    _check_settings(store, metas, result)
    for video in store.videos():
        problem = id_problem(video)
        if problem:
            problems.append(f"{video!r}: not a safe video id ({problem}); `flowprep export` refuses this store")
    unchecked = sorted(m.video for m in metas if m.crc32 is None)
    if unchecked:
        result.notes.append(f"{len(unchecked)} of {len(metas)} videos have no checksums (stored before "
                            f"flowprep kept them, e.g. {unchecked[0]}): damage to their bytes cannot be detected")
    for shard_index in store.shard_indices():
        shard = store.shards[shard_index]
        seen: dict[str, dict[str, list[int]]] = defaultdict(lambda: {k: [] for k in KINDS})
        shard_videos = set(store.videos_of_shard(shard_index))
        shard_metas = {m.video: m for m in metas if m.video in shard_videos}
        checksums = {v: parse_checksums(m.crc32) for v, m in shard_metas.items()}
        last_key = None
        try:
            for key, value in store.iter_records(shard_index):
                last_key = key
                _check_record(key, value, shard, shard_metas, checksums, seen, decode, problems)
                if on_record is not None:
                    on_record(1)
        except StoreError as exc:
            after = f" (after record {last_key.decode(errors='replace')})" if last_key else ""
            problems.append(f"{exc}{after}; the rest of the shard is read record by record")
            _check_by_key(store, shard_index, shard_metas, checksums, seen, decode, problems, on_record)
        for video in sorted(set(seen) - shard_videos):
            counts = ", ".join(f"{len(v)} {k}" for k, v in seen[video].items() if v)
            problems.append(f"{video}: {counts} records but no metadata (half-written video)")
        for video, meta in sorted(shard_metas.items()):
            problems += _count_problems(video, meta, seen[video])
    return result


def _check_by_key(store: FlowStore, shard_index: int, metas: dict[str, VideoMeta], checksums: dict, seen: dict,
                  decode: bool, problems: list[str], on_record: Callable[[int], None] | None) -> None:
    """Read the records a walk of the shard did not reach (it stopped at a damaged page) one key at a
    time, so one damaged page costs the records on it, not the rest of the shard. A video whose
    records cannot be read is one problem."""
    shard = store.shards[shard_index]
    for video, meta in sorted(metas.items()):
        try:
            for kind, count in _expected_counts(meta).items():
                for t in sorted(set(range(count)) - set(seen[video][kind])):
                    key = record_key(video, kind, t)
                    value = store.raw_record(shard_index, key)
                    if value is not None:
                        _check_record(key, value, shard, metas, checksums, seen, decode, problems)
                        if on_record is not None:
                            on_record(1)
        except StoreError as exc:
            problems.append(f"{video}: records cannot be read ({exc})")


def _check_settings(store: FlowStore, metas: list[VideoMeta], result: Verification) -> None:
    try:
        settings = store.settings()
        if settings:
            describe_settings(settings, store.root)
    except StoreError as exc:
        result.problems.append(str(exc))
        return
    if not settings:
        if metas:
            result.problems.append(f"{store.root / SETTINGS_FILE} is missing: the store's settings are not "
                                   "recorded (the next `flowprep extract` into it rebuilds the file from the "
                                   "videos' metadata)")
        return
    for meta in metas:
        mismatches = video_mismatches(meta, settings)
        if mismatches:
            result.problems.append(f"{meta.video}: made with {', '.join(mismatches)} "
                                   f"(values in parentheses: {SETTINGS_FILE})")


def _check_record(key: bytes, value: memoryview, shard, metas: dict, checksums: dict, seen: dict,
                  decode: bool, problems: list[str]) -> None:
    try:
        video, kind, t = split_key(key)
    except ValueError:
        kind = None
    if kind not in KINDS:
        problems.append(f"{shard.name}: unknown record key {key!r}")
        return
    seen[video][kind].append(t)
    meta = metas.get(video)
    if meta is None:
        return
    problem = checksum_problem(checksums.get(video), kind, t, value)
    if problem:
        problems.append(f"{video}: {kind} record {t}: {problem}")
        return
    if decode:
        try:
            shape = decode_rgb(value).shape[:2] if kind == "rgb" else decode_flow_components(value)[0].shape
        except RecordError as exc:
            problems.append(f"{video}: {kind} record {t} does not decode: {exc}")
            return
        if shape != (meta.height, meta.width):
            problems.append(f"{video}: {kind} record {t} is {shape[1]}x{shape[0]}, "
                            f"metadata says {meta.width}x{meta.height}")


def _count_problems(video: str, meta: VideoMeta, seen: dict[str, list[int]]) -> list[str]:
    problems = []
    if meta.has("rgb") and meta.has("flow") and meta.num_flows != meta.num_frames - 1:
        problems.append(f"{video}: metadata says {meta.num_frames} frames but "
                        f"{meta.num_flows} flow fields (expected {meta.num_frames - 1})")
    for kind, expected in _expected_counts(meta).items():
        have = sorted(seen[kind])
        if have != list(range(expected)):
            missing = sorted(set(range(expected)) - set(have))
            extra = sorted(set(have) - set(range(expected)))
            detail = []
            if missing:
                detail.append(f"missing {kind} {_ranges(missing)}")
            if extra:
                detail.append(f"unexpected {kind} {_ranges(extra)}")
            problems.append(f"{video}: {len(have)} {kind} records, metadata says {expected}"
                            + (f" ({'; '.join(detail)})" if detail else ""))
    return problems


def _ranges(values: list[int], limit: int = 5) -> str:
    spans: list[str] = []
    start = prev = values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(spans[:limit]) + (", ..." if len(spans) > limit else "")
