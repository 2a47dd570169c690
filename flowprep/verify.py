"""Summaries and integrity checks of a store (``flowprep info`` and ``flowprep verify``)."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from flowprep.storage.checksum import checksum_problem, parse_checksums
from flowprep.storage.codec import RecordError, decode_flow_components, decode_rgb
from flowprep.storage.index import IndexEntry, IndexFormatError, unpack_checksums
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


def _shard_problems(store: FlowStore) -> list[str]:
    """Shards that cannot be read, or hold no commit, one line each."""
    store.shard_indices()
    problems = list(store.unreadable.values())
    for shard in store.empty_shards:
        problems.append(f"{shard}: no video was ever committed to this shard (a run killed during its first "
                        "commit?); run the same extract again")
    return problems


def _shard_metas(store: FlowStore, shard: int, problems: list[str]) -> Iterator[tuple[str, VideoMeta | None]]:
    """(video, metadata) of every video of one shard, in one walk; a damaged entry is (video, None) and
    a line in ``problems``, and a shard that cannot be walked one line."""
    try:
        for key, value in store.iter_meta_raw(shard):
            try:
                yield key.decode(errors="replace"), store.parse_meta(shard, key, value)
            except StoreError as exc:
                problems.append(str(exc))
                yield key.decode(errors="replace"), None
    except StoreError as exc:
        problems.append(str(exc))


def refuse_while_written(root: Path) -> None:
    """StoreError where a run (extract, import) holds the store's lock: a store read while it is written
    shows half-written videos and LMDB errors that are not damage."""
    holder = lock_holder(root)
    if holder is not None:
        raise StoreError(f"{root}: being written by {holder}; read or verify it when that run has ended")


def summarize(store: FlowStore) -> StoreSummary:
    """Totals of the store, from one walk of each shard's metadata: memory does not grow with the number
    of videos."""
    s = StoreSummary(shards=len(store.shards))
    try:
        s.failures = store.failures()
    except StoreError as exc:
        s.problems.append(str(exc))
    s.disk_bytes = sum(f.stat().st_size for shard in store.shards for f in shard.iterdir() if f.is_file())
    s.problems += _shard_problems(store)
    for shard in store.shard_indices():
        for _, meta in _shard_metas(store, shard, s.problems):
            if meta is not None:
                _add_to_summary(s, meta)
    return s


def _add_to_summary(s: StoreSummary, meta: VideoMeta) -> None:
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


def _expected_counts(meta: VideoMeta) -> dict[str, int]:
    return {"rgb": meta.num_frames, "flow": meta.num_flows, "back": meta.num_backward}


@dataclass
class Verification:
    problems: list[str] = field(default_factory=list)  # each makes the store unsound (exit status 1)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a fault
    videos: int = 0
    records: int = 0


@dataclass
class ShardCheck:
    """What the check of one shard found (returned by a worker process)."""

    shard: int
    problems: list[str] = field(default_factory=list)
    videos: int = 0
    records: int = 0
    unchecked: int = 0  # videos stored without checksums
    unchecked_example: str = ""


def verify(store: FlowStore, decode: bool = True, on_record: Callable[[int], None] | None = None,
           workers: int = 1) -> Verification:
    """Problems found in the store, one line each (none: the store is sound), and notes.

    Checks, for every video: N RGB frames and N−1 flow fields (and N−1 backward fields when stored;
    an imported RGB-only or flow-only video has the one stream) as its metadata says, numbered 0..n−1
    without gaps; its index and checksum entries agree with its metadata; every record's CRC-32;
    every record decodes (``decode``) to the frame size in the metadata; the metadata agrees with
    ``flowprep.json``; no record belongs to a video without metadata. Shards or metadata that cannot
    be read are problems naming shard and video, and the check goes on with the rest.

    Shard by shard: memory is bounded by the largest shard, not the store. ``workers`` > 1 checks
    that many shards at once, each in its own process (decoding is the cost: ~0.8 s a 300-frame video
    on one core); ``on_record`` is called with the number of records checked since its last call.
    """
    refuse_while_written(store.root)
    result = Verification()
    try:
        store.failures()
    except StoreError as exc:
        result.problems.append(str(exc))
    settings = _checked_settings(store, result)
    result.problems += _shard_problems(store)
    shards = store.shard_indices()
    if workers > 1 and len(shards) > 1:
        checks = _check_in_processes(store.root, shards, decode, settings, workers, on_record)
    else:
        checks = (check_shard(store, i, decode, settings, on_record) for i in shards)
    unchecked, example = 0, ""
    for check in checks:
        result.problems += check.problems
        result.videos += check.videos
        result.records += check.records
        unchecked += check.unchecked
        example = example or check.unchecked_example
    if settings is None and result.videos and not (store.root / SETTINGS_FILE).exists():
        result.problems.append(f"{store.root / SETTINGS_FILE} is missing: the store's settings are not recorded "
                               "(the next `flowprep extract` into it rebuilds the file from the videos' metadata)")
    if unchecked:
        result.notes.append(f"{unchecked} of {result.videos} videos have no checksums (stored before flowprep "
                            f"kept them, e.g. {example}): damage to their bytes cannot be detected")
    return result


def _checked_settings(store: FlowStore, result: Verification) -> dict | None:
    """The store's settings (None: missing, or damaged: then a problem)."""
    try:
        settings = store.settings()
        if settings:
            describe_settings(settings, store.root)
    except StoreError as exc:
        result.problems.append(str(exc))
        return None
    return settings or None


def check_shard(store: FlowStore, shard_index: int, decode: bool, settings: dict | None,
                on_record: Callable[[int], None] | None = None) -> ShardCheck:
    """The checks of :func:`verify` on one shard."""
    check = ShardCheck(shard_index)
    problems = check.problems
    metas: dict[str, VideoMeta] = {}
    shard_videos: set[str] = set()
    for video, meta in _shard_metas(store, shard_index, problems):
        shard_videos.add(video)
        if meta is None:
            continue
        check.videos += 1
        metas[video] = meta
        problem = id_problem(video)
        if problem:
            problems.append(f"{video!r}: not a safe video id ({problem}); `flowprep export` refuses this store")
        mismatches = video_mismatches(meta, settings) if settings else []
        if mismatches:
            problems.append(f"{video}: made with {', '.join(mismatches)} (values in parentheses: {SETTINGS_FILE})")
    checksums = _shard_checksums(store, shard_index, metas, problems)
    for video in sorted(set(metas) - set(checksums)):
        check.unchecked += 1
        check.unchecked_example = check.unchecked_example or video
    shard = store.shards[shard_index]
    tally = RecordTally(metas, shard_videos, problems)
    last_key = None

    def counted(n: int) -> None:
        check.records += n
        if on_record is not None:
            on_record(n)

    walked = 0
    try:
        for key, value in store.iter_records(shard_index):
            last_key = key
            _check_record(key, value, shard, metas, checksums, tally, decode, problems)
            walked += 1
            if walked == 1024:  # progress in steps: a call a record costs as much as the check
                counted(walked)
                walked = 0
        counted(walked)
    except StoreError as exc:
        counted(walked)
        after = f" (after record {last_key.decode(errors='replace')})" if last_key else ""
        problems.append(f"{exc}{after}; the rest of the shard is read record by record")
        tally.walking = False
        _check_by_key(store, shard_index, metas, checksums, tally, decode, problems, counted)
    tally.close()
    return check


class RecordTally:
    """Which records of each video a walk of a shard has seen, and the count check of each video.

    The walk is in key order, and every key of video v starts with ``v/``: once a key does not, v is
    complete, so it is checked and forgotten then. Memory holds the videos being walked (a stack:
    an id may be a folder of other ids), not the shard's ~600 record numbers a video."""

    def __init__(self, metas: dict[str, VideoMeta], shard_videos: set[str], problems: list[str]):
        self.metas, self.shard_videos, self.problems = metas, shard_videos, problems
        self.seen: dict[str, dict[str, list[int]]] = {}
        self.open: list[tuple[str, bytes]] = []  # (video, its key prefix), outermost first
        self.finished: set[str] = set()
        self.walking = True  # False: records read by key, in no particular order

    def add(self, key: bytes, video: str, kind: str, t: int) -> None:
        if self.open and self.open[-1][0] == video:  # the video being walked: most records
            self.seen[video][kind].append(t)
            return
        if self.walking:
            while self.open and not key.startswith(self.open[-1][1]):
                self._finish(self.open.pop()[0])
            if not self.open or self.open[-1][0] != video:
                self.open.append((video, f"{video}/".encode()))
        self.seen.setdefault(video, {k: [] for k in KINDS})[kind].append(t)

    def _finish(self, video: str) -> None:
        seen = self.seen.pop(video, None) or {k: [] for k in KINDS}
        self.finished.add(video)
        if video not in self.shard_videos:
            counts = ", ".join(f"{len(v)} {k}" for k, v in seen.items() if v)
            self.problems.append(f"{video}: {counts} records but no metadata (half-written video)")
        elif video in self.metas:
            self.problems.extend(_count_problems(video, self.metas[video], seen))

    def close(self) -> None:
        """Check every video not checked yet (those still open, and those without any record)."""
        while self.open:
            self._finish(self.open.pop()[0])
        for video in sorted(set(self.seen) | (set(self.metas) - self.finished)):
            self._finish(video)


def _shard_checksums(store: FlowStore, shard_index: int, metas: dict[str, VideoMeta], problems: list[str]
                     ) -> dict[str, dict]:
    """The checksums of the shard's videos (videos without any are left out), and problems where the
    index and checksum entries disagree with the metadata: an entry for a video without metadata,
    counts, streams or frame size that differ, a missing or malformed checksum entry."""
    shard = store.shards[shard_index]
    entries = store.index_entries(shard_index, problems)
    for video in sorted(set(entries) - set(metas)):
        problems.append(f"{shard}: index entry of video {video!r} but no metadata (damaged shard)")
    stored = {video: value for video, value in store.checksum_entries(shard_index) if video in entries}
    checksums: dict[str, dict | None] = {}
    for video, meta in metas.items():
        entry = entries.get(video)
        if entry is None:  # stored before the index: checksums in its metadata, if any
            if meta.crc32 is not None:
                checksums[video] = parse_checksums(meta.crc32)
            continue
        said = IndexEntry.of(meta)
        if entry != said:
            problems.append(f"{video}: index entry {entry} disagrees with its metadata {said} (damaged shard)")
        checksums[video] = None  # a problem once, not once a record
        if video not in stored:
            problems.append(f"{shard}: video {video!r} has no checksum entry (damaged shard)")
            continue
        try:
            checksums[video] = unpack_checksums(stored[video])
        except IndexFormatError as exc:
            problems.append(f"{shard}: checksum entry of video {video!r} is damaged ({exc})")
    return checksums


def _check_in_processes(root: Path, shards: list[int], decode: bool, settings: dict | None, workers: int,
                        on_record: Callable[[int], None] | None) -> Iterator[ShardCheck]:
    """:func:`check_shard` of each shard in ``workers`` processes; results in shard order. Progress comes
    back through one shared counter (records checked), polled here for ``on_record``."""
    context = multiprocessing.get_context("spawn")  # no LMDB handle or lock crosses a fork
    counter = context.Value("q", 0)
    results: dict[int, ShardCheck] = {}
    reported = 0
    with ProcessPoolExecutor(min(workers, len(shards)), mp_context=context, initializer=_init_worker,
                             initargs=(counter,)) as pool:
        pending = {pool.submit(_check_shard_task, str(root), i, decode, settings) for i in shards}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                for future in done:
                    check = future.result()
                    results[check.shard] = check
                if on_record is not None:
                    now = counter.value
                    on_record(now - reported)
                    reported = now
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    for i in shards:
        yield results[i]


_COUNTER = None
_STORES: dict[str, FlowStore] = {}


def _init_worker(counter) -> None:
    global _COUNTER
    _COUNTER = counter


def _check_shard_task(root: str, shard_index: int, decode: bool, settings: dict | None) -> ShardCheck:
    store = _STORES.get(root)
    if store is None:
        store = _STORES[root] = FlowStore(root, strict=False)
    pending = 0

    def on_record(n: int) -> None:
        nonlocal pending
        pending += n
        if pending >= 256:
            with _COUNTER.get_lock():
                _COUNTER.value += pending
            pending = 0

    check = check_shard(store, shard_index, decode, settings, on_record)
    with _COUNTER.get_lock():
        _COUNTER.value += pending
    return check


def _check_by_key(store: FlowStore, shard_index: int, metas: dict[str, VideoMeta], checksums: dict,
                  tally: RecordTally, decode: bool, problems: list[str],
                  on_record: Callable[[int], None] | None) -> None:
    """Read the records a walk of the shard did not reach (it stopped at a damaged page) one key at a
    time, so one damaged page costs the records on it, not the rest of the shard. A video whose
    records cannot be read is one problem."""
    shard = store.shards[shard_index]
    for video, meta in sorted(metas.items()):
        if video in tally.finished:
            continue
        seen = tally.seen.get(video, {k: [] for k in KINDS})
        try:
            for kind, count in _expected_counts(meta).items():
                for t in sorted(set(range(count)) - set(seen[kind])):
                    key = record_key(video, kind, t)
                    value = store.raw_record(shard_index, key)
                    if value is not None:
                        _check_record(key, value, shard, metas, checksums, tally, decode, problems)
                        if on_record is not None:
                            on_record(1)
        except StoreError as exc:
            problems.append(f"{video}: records cannot be read ({exc})")


def _check_record(key: bytes, value: memoryview, shard, metas: dict, checksums: dict, tally: RecordTally,
                  decode: bool, problems: list[str]) -> None:
    try:
        video, kind, t = split_key(key)
    except ValueError:
        kind = None
    if kind not in KINDS:
        problems.append(f"{shard.name}: unknown record key {key!r}")
        return
    tally.add(key, video, kind, t)
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
