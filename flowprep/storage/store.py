"""LMDB shards of JPEG-compressed RGB frames and flow fields, and their reader.

Layout of an output folder ``OUT``::

    OUT/flowprep.json          settings every video in OUT was extracted with
    OUT/failures.json          videos that failed, with the reason (rewritten as failures come and go)
    OUT/shard-00000.lmdb/      LMDB environment (data.mdb, lock.mdb), bounded size; then 00001, ...

Each shard holds two named databases:

* ``meta``: key = video id (UTF-8, e.g. ``ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01``), value = JSON
  metadata (frame and field counts, size, fps, flow algorithm, implementation and parameters, bound,
  JPEG qualities, library versions).
* ``data``: key = ``{video}/rgb/{t:06d}`` for frame t (0 ≤ t < num_frames, JPEG, 3 channels),
  ``{video}/flow/{t:06d}`` for the forward flow from frame t to t+1 (0 ≤ t < num_frames − 1) and,
  with ``--bidirectional``, ``{video}/back/{t:06d}`` for the backward flow from frame t+1 to frame t.
  Flow values are the records of :mod:`flowprep.storage.codec`.

A clip of N frames has N RGB frames and N − 1 flow fields. Every record of a video and then its
metadata are written in one transaction: a video is in the store completely or not at all, and a
video id present in ``meta`` is a finished video.

Checksums: a video's metadata holds the CRC-32 of each of its records, ``"crc32": {kind: hex}`` with
the big-endian 32-bit checksums of records 0, 1, … of that kind one after the other (8 hex digits a
record), so the record bytes stay exactly what was encoded. Reading a record checks it; a mismatch
is a :class:`CorruptRecordError` naming video and record. Stores written before checksums read as
before, unchecked (``flowprep verify`` says so).
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import itertools
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import lmdb
import numpy as np

from flowprep.storage.checksum import checksum_problem, parse_checksums, record_crcs
from flowprep.storage.codec import RecordError, decode_flow, decode_rgb
from flowprep.storage.index import ChecksumCache, IndexEntry, IndexFormatError, pack_checksums, unpack_checksums
from flowprep.storage.lock import FolderBusyError, FolderLock
from flowprep.storage.meta import MetadataError, VideoMeta
from flowprep.storage.shard import (
    SHARD_GLOB,
    CorruptRecordError,
    EmptyShardError,
    MissingRecordError,
    StoreError,
    close_env,
    id_problem,
    lmdb_errors,
    no_space_message,
    open_env,
    record_key,
    shard_name,
)

SETTINGS_FILE = "flowprep.json"
FAILURES_FILE = "failures.json"
KINDS = ("rgb", "flow", "back")
log = logging.getLogger("flowprep")


class ShardWriter:
    """The one writer of a store folder: appends whole videos to bounded LMDB shards.

    Holds the store's lock (:class:`flowprep.storage.lock.FolderLock` on ``OUT/.lock``) so two runs cannot write
    one store. A shard is closed for new videos once it holds ``shard_bytes``; the LMDB map grows
    whenever a transaction fills it, so no ``MapFullError`` reaches the caller. Each video's metadata
    gets the CRC-32 of every record (see the module docstring).
    """

    def __init__(self, root: str | os.PathLike, shard_bytes: int = 8 << 30, what: str = "flowprep process"):
        self.root = Path(root)
        self.shard_bytes = int(shard_bytes)
        try:
            self._lock = FolderLock(self.root, what)
        except FolderBusyError as exc:
            raise StoreError(str(exc)) from None
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot create the store folder: {exc.strerror or exc}") from None
        try:
            shards = sorted(self.root.glob(SHARD_GLOB))
            self._index = int(shards[-1].name[6:11]) if shards else 0
            self.complete: set[str] = set()
            for shard in shards:
                env, dbs = open_env(shard, write=True)
                with lmdb_errors(shard), env.begin(db=dbs[b"meta"]) as txn:
                    self.complete.update(k.decode() for k in txn.cursor().iternext(values=False))
                if shard.name != shard_name(self._index):
                    close_env(shard)
        except BaseException:
            self.close()
            raise

    @property
    def shard_path(self) -> Path:
        return self.root / shard_name(self._index)

    def _used_bytes(self, env: lmdb.Environment) -> int:
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]

    def put_video(self, video: str, records: Sequence[tuple[bytes, bytes]], meta: VideoMeta | dict) -> None:
        """Commit all ``records`` of ``video`` and then its metadata (with the records' checksums) in one
        transaction. A write that fails (a full disk) raises StoreError; nothing of the video is kept."""
        self.put_videos([(video, records, meta)])

    def put_videos(self, videos: Sequence[tuple[str, Sequence[tuple[bytes, bytes]], VideoMeta | dict]]) -> None:
        """Commit several whole videos (id, records, metadata) in one transaction: all of them or none.
        For many small videos (``flowprep import``), where a commit's flush to disk costs more than
        writing a video. Metadata is a :class:`VideoMeta`, or a plain dict stored as it is."""
        if not videos:
            return
        for video, _, _ in videos:
            problem = id_problem(video)
            if problem:
                raise StoreError(f"video id {video!r}: {problem}; ids are paths inside the store's folder")
        payload = sum(len(k) + len(v) for _, records, _ in videos for k, v in records)
        env, dbs = open_env(self.shard_path, write=True)
        with env.begin() as txn:
            holds_videos = txn.stat(dbs[b"meta"])["entries"] > 0
        if holds_videos and self._used_bytes(env) + payload > self.shard_bytes:
            close_env(self.shard_path)
            self._index += 1
            env, dbs = open_env(self.shard_path, write=True)
        entries = [video_entries(video, records, meta) for video, records, meta in videos]

        def write(txn: lmdb.Transaction) -> None:
            for (video, records, _), (meta_json, index, crc) in zip(videos, entries, strict=True):
                for key, value in records:
                    txn.put(key, value, db=dbs[b"data"])
                txn.put(video.encode(), index, db=dbs[b"index"])
                txn.put(video.encode(), crc, db=dbs[b"crc"])
                txn.put(video.encode(), meta_json, db=dbs[b"meta"])

        self._commit(self.shard_path, payload, write)
        self.complete.update(video for video, _, _ in videos)

    def _commit(self, shard: Path, payload: int, write: Callable[[lmdb.Transaction], None]) -> None:
        """Run ``write`` in one write transaction of ``shard``, growing the map when it fills (``payload``:
        about how many bytes it writes); a failed write is a StoreError and leaves nothing."""
        env, _ = open_env(shard, write=True)
        while True:
            try:
                with env.begin(write=True) as txn:
                    write(txn)
                return
            except lmdb.MapFullError:
                grown = max(2 * env.info()["map_size"], self._used_bytes(env) + 2 * payload + (64 << 20))
                env.set_mapsize(grown)
            except lmdb.Error as exc:
                close_env(shard)  # a failed commit can leave the handle unusable
                self._raise_write_error(exc, payload)

    def add_index_entries(self, shard: Path, batch: int = 1000,
                          checksums_of: Callable[[VideoMeta], dict[str, np.ndarray]] | None = None,
                          on_video: Callable[[str, str | None], None] | None = None) -> None:
        """Give the videos of ``shard`` stored before flowprep 0.2 their index and checksum entries
        (``flowprep upgrade``), ``batch`` videos a transaction. Checksums come from each video's
        metadata; for a video stored without any, from ``checksums_of(meta)`` (which checks the
        records as they are now; it raises StoreError to leave the video as it is). ``on_video(video,
        problem)`` is told of each video (problem None: done)."""
        env, dbs = open_env(shard, write=True)
        with lmdb_errors(shard), env.begin() as txn:
            indexed = {key for key in txn.cursor(dbs[b"index"]).iternext(values=False)}
            todo = [key for key in txn.cursor(dbs[b"meta"]).iternext(values=False) if key not in indexed]
        for start in range(0, len(todo), batch):
            entries = []
            with lmdb_errors(shard), env.begin(db=dbs[b"meta"]) as txn:
                metas = [(key, txn.get(key)) for key in todo[start:start + batch]]
            for key, value in metas:
                video = key.decode()
                try:
                    meta = parse_video_meta(shard, self.root, key, value)
                    crcs = parse_checksums(meta.crc32)
                    if crcs is None:
                        if checksums_of is None:
                            raise StoreError(f"{video}: no checksums to index")
                        crcs = checksums_of(meta)
                except StoreError as exc:
                    if on_video is not None:
                        on_video(video, str(exc))
                    continue
                entries.append((key, IndexEntry.of(meta).pack(video), pack_checksums(crcs)))

            def write(txn: lmdb.Transaction, entries: list = entries) -> None:
                for key, index, crc in entries:
                    txn.put(key, index, db=dbs[b"index"])
                    txn.put(key, crc, db=dbs[b"crc"])

            self._commit(shard, sum(len(k) + len(i) + len(c) for k, i, c in entries), write)
            if on_video is not None:
                for key, _, _ in entries:
                    on_video(key.decode(), None)

    def metas(self) -> Iterator[VideoMeta]:
        """Metadata of every stored video (for rebuilding a lost ``flowprep.json``)."""
        for shard in sorted(self.root.glob(SHARD_GLOB)):
            env, dbs = open_env(shard, write=True)
            with lmdb_errors(shard), env.begin(db=dbs[b"meta"]) as txn:
                for key, value in txn.cursor():
                    yield parse_video_meta(shard, self.root, key, value)

    def _raise_write_error(self, exc: lmdb.Error, payload: int) -> None:
        stored = f"{len(self.complete)} videos are stored"
        # LMDB reports a full disk as ENOSPC or, from its page writes, as EIO: look at the disk itself
        if "No space" in str(exc) or shutil.disk_usage(self.root).free < payload + (16 << 20):
            raise StoreError(f"{no_space_message(self.shard_path)}; {stored}, free space and run the same "
                             "command again") from None
        raise StoreError(f"{self.shard_path}: writing failed ({type(exc).__name__}: {exc}); {stored}, "
                         "run the same command again to resume") from None

    def close(self) -> None:
        for shard in self.root.glob(SHARD_GLOB):
            close_env(shard)
        self._lock.release()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FlowStore:
    """Read access to a flowprep output folder: videos, metadata, decoded RGB frames and flows.

    Safe in DataLoader worker processes: the object holds no LMDB handle (it pickles as plain data);
    shards are opened lazily, once per process (``readonly=True, lock=False``), and reopened after
    a fork. ``readahead=False`` for readers of single records (RGB frames) rather than runs of
    consecutive ones (flow stacks). Do not read a store while ``flowprep extract`` is still writing to it.

    Every record read is checked against its video's CRC-32 (:class:`CorruptRecordError` names it);
    a damaged shard or metadata entry is a :class:`StoreError` naming shard and video. A shard in which
    no video was ever committed reads as empty (``empty_shards``).

    >>> store = FlowStore("out/ucf101")
    >>> video = store.videos()[0]
    >>> store.rgb(video, 0).shape, store.flow(video, 0).shape   # (H, W, 3) uint8, (H, W, 2) float32
    """

    def __init__(self, root: str | os.PathLike, readahead: bool = True, strict: bool = True):
        self.root, self.readahead, self.strict = Path(root), readahead, strict
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: no such folder")
        self.shards = sorted(self.root.glob(SHARD_GLOB))
        if not self.shards and not (self.root / SETTINGS_FILE).exists():
            raise StoreError(f"{self.root}: no flowprep shards ({SHARD_GLOB}) in this folder")
        self._ids: list[str] | None = None  # sorted; row i of _rows is video _ids[i]
        self._rows = np.zeros((0, len(_COLUMNS)), np.int32)  # 28 bytes a video
        self._ints: dict[int, int] = {}  # one int object per distinct count, not one per video
        self._scanned = False
        self.empty_shards: list[Path] = []
        self.unreadable: dict[Path, str] = {}  # shard → why (only kept, not raised, with strict=False)
        self.unindexed = 0  # videos without index entries (stored before flowprep 0.2)
        self._checksums = ChecksumCache()

    def _env(self, shard: int) -> tuple[lmdb.Environment, dict[bytes, object]]:
        return open_env(self.shards[shard], readahead=self.readahead)

    def _walk_env(self, shard: int) -> tuple[lmdb.Environment, dict[bytes, object]]:
        """A shard's handle for walks of its index and metadata: without read-ahead, whose window around
        each page (scattered through the file by copy-on-write) would pull in the records between."""
        return open_env(self.shards[shard], readahead=False)

    def _scan(self) -> None:
        """Open every shard once: which hold no commit (``empty_shards``) or cannot be read."""
        if self._scanned:
            return
        empty, unreadable = [], {}
        for i, shard in enumerate(self.shards):
            try:
                self._walk_env(i)
            except EmptyShardError:
                empty.append(shard)
            except StoreError as exc:
                if self.strict:
                    raise
                unreadable[shard] = str(exc)
        self.empty_shards, self.unreadable, self._scanned = empty, unreadable, True

    def shard_indices(self) -> list[int]:
        """Indices of the shards that hold committed data (empty ones are skipped)."""
        self._scan()
        skip = set(self.empty_shards) | set(self.unreadable)
        return [i for i, shard in enumerate(self.shards) if shard not in skip]

    def _index(self) -> list[str]:
        """Every video's id, sorted, and in ``_rows`` its shard, counts and streams, from the shards'
        ``index`` databases (28 bytes a video, read without read-ahead); videos stored before the
        index existed from their metadata. ~110 bytes a video in memory: no dict, no object a video
        but its id (a look-up is a binary search of the sorted ids)."""
        if self._ids is None:
            ids: list[str] = []
            rows = array.array("i")  # _COLUMNS per video: no object a video while the index is built
            unindexed = 0
            for i in self.shard_indices():
                try:
                    unindexed += self._index_shard(i, ids, rows)
                except StoreError as exc:
                    if self.strict:
                        raise
                    self.unreadable[self.shards[i]] = str(exc)
            if unindexed:
                log.info("%s: %d of %d videos were stored before flowprep 0.2 and have no index entry: opening "
                         "reads their metadata; `flowprep upgrade %s` adds the entries", self.root, unindexed,
                         len(ids), self.root)
            table = np.frombuffer(rows, np.int32).reshape(-1, len(_COLUMNS)) if ids else self._rows
            if all(a < b for a, b in zip(ids, itertools.islice(ids, 1, None), strict=False)):
                self._rows, self._ids = table.copy(), ids  # shards of consecutive ids: sorted already
            else:
                order = np.argsort(np.array(ids, dtype=object), kind="stable")
                self._rows = np.ascontiguousarray(table[order])
                self._ids = [ids[i] for i in order.tolist()]
            self.unindexed = unindexed
        return self._ids

    def _index_shard(self, shard: int, ids: list[str], rows: array.array) -> int:
        """Add one shard's videos to ``ids``/``rows``; the number of them without an index entry."""
        path = self.shards[shard]
        env, dbs = self._walk_env(shard)
        with lmdb_errors(path), env.begin() as txn:
            videos = txn.stat(dbs[b"meta"])["entries"]
            indexed: set[bytes] = set()
            if b"index" in dbs:
                for key, value in txn.cursor(dbs[b"index"]):
                    video = key.decode()
                    try:
                        entry = IndexEntry.unpack(video, value)
                    except IndexFormatError as exc:
                        raise StoreError(f"{path}: index entry of video {video!r} is damaged ({exc}); run "
                                         f"`flowprep verify {self.root}`") from None
                    ids.append(video)
                    rows.extend(_row(shard, entry, indexed=True))
                    if len(indexed) < videos:
                        indexed.add(key)
            if len(indexed) == videos:
                return 0
            unindexed = 0
            for key, value in txn.cursor(dbs[b"meta"]):
                if key not in indexed:
                    try:
                        meta = parse_video_meta(path, self.root, key, value)
                    except StoreError:
                        if self.strict:
                            raise
                        continue  # info and verify report it
                    ids.append(key.decode())
                    rows.extend(_row(shard, IndexEntry.of(meta), indexed=False))
                    unindexed += 1
            return unindexed

    def _shard_of_row(self, video: str) -> int:
        """The row of ``video`` in ``_rows`` (KeyError: not in the store)."""
        ids = self._index()
        row = bisect.bisect_left(ids, video)
        if row == len(ids) or ids[row] != video:
            raise KeyError(f"video {video!r} is not in {self.root}")
        return row

    def _shard_of(self, video: str) -> int:
        row = self._shard_of_row(video)
        return int(self._rows[row, 0])

    def videos_of_shard(self, shard: int) -> list[str]:
        """Ids of the videos of one shard, sorted (a walk of that shard alone)."""
        env, dbs = self._walk_env(shard)
        with lmdb_errors(self.shards[shard]), env.begin(db=dbs[b"meta"]) as txn:
            return sorted(key.decode() for key in txn.cursor().iternext(values=False))

    def checksum_entries(self, shard: int) -> Iterator[tuple[str, bytes]]:
        """(video, stored checksum entry) of every video of one shard with one, in one walk (for checks)."""
        env, dbs = self._walk_env(shard)
        if b"crc" not in dbs:
            return
        with lmdb_errors(self.shards[shard]), env.begin(db=dbs[b"crc"]) as txn:
            for key, value in txn.cursor():
                yield key.decode(errors="replace"), value

    def index_entries(self, shard: int, problems: list[str]) -> dict[str, IndexEntry]:
        """The index entries of one shard by video (for checks); a malformed one is a line in ``problems``."""
        env, dbs = self._walk_env(shard)
        out = {}
        if b"index" not in dbs:
            return out
        with lmdb_errors(self.shards[shard]), env.begin(db=dbs[b"index"]) as txn:
            for key, value in txn.cursor():
                try:
                    out[key.decode(errors="replace")] = IndexEntry.unpack(key.decode(errors="replace"), value)
                except IndexFormatError as exc:
                    problems.append(f"{self.shards[shard]}: index entry of video {key.decode(errors='replace')!r} "
                                    f"is damaged ({exc})")
        return out

    def count_unindexed(self) -> int:
        """How many videos have no index entry (stored before flowprep 0.2), from the shards' counts."""
        total = 0
        for i in self.shard_indices():
            env, dbs = self._walk_env(i)
            with lmdb_errors(self.shards[i]), env.begin() as txn:
                indexed = txn.stat(dbs[b"index"])["entries"] if b"index" in dbs else 0
                total += txn.stat(dbs[b"meta"])["entries"] - indexed
        return total

    def count_without(self, stream: str) -> tuple[int, str | None]:
        """(how many videos lack ``stream`` ("rgb" or "flow"), the first of them by id) from the index."""
        bit = {"rgb": 1, "flow": 2}[stream]
        ids = self._index()
        rows = np.flatnonzero((self._rows[:, 1] & bit) == 0)
        return len(rows), (ids[rows[0]] if len(rows) else None)

    def videos(self) -> list[str]:
        """Ids of all complete videos, sorted."""
        return list(self._index())

    def entry(self, video: str) -> IndexEntry:
        """What the index holds of ``video`` (counts, streams, frame size), without its metadata."""
        row = self._shard_of_row(video)
        values = [self._ints.setdefault(v, v) for v in self._rows[row].tolist()]
        streams = _STREAMS[values[1] & 3]
        return IndexEntry(*values[2:], streams)

    def __len__(self) -> int:
        return len(self._index())

    def __contains__(self, video: object) -> bool:
        try:
            self._shard_of_row(video)  # type: ignore[arg-type]
        except (KeyError, TypeError):
            return False
        return True

    def parse_meta(self, shard: int, key: bytes, value: bytes | memoryview) -> VideoMeta:
        """The metadata of one ``meta`` entry; a damaged one is a StoreError naming shard and video."""
        return parse_video_meta(self.shards[shard], self.root, key, value)

    def video_meta(self, video: str) -> VideoMeta:
        """The metadata of ``video``."""
        shard = self._shard_of(video)
        env, dbs = self._env(shard)
        with lmdb_errors(self.shards[shard], video), env.begin(db=dbs[b"meta"], buffers=True) as txn:
            return self.parse_meta(shard, video.encode(), txn.get(video.encode()))

    def meta(self, video: str) -> dict:
        """The metadata of ``video`` as stored (a dict of the JSON; :meth:`video_meta` types it)."""
        return self.video_meta(video).to_dict()

    def iter_meta_raw(self, shard: int) -> Iterator[tuple[bytes, bytes]]:
        """(video id, metadata JSON bytes) of every video of one shard, unparsed (for checks)."""
        if self.shards[shard] in self.empty_shards or shard not in self.shard_indices():
            return
        env, dbs = self._walk_env(shard)
        with lmdb_errors(self.shards[shard]), env.begin(db=dbs[b"meta"]) as txn:
            yield from txn.cursor()

    def iter_video_meta(self, shard: int | None = None) -> Iterator[VideoMeta]:
        """Metadata of every video (of one shard, or of all), in one pass without per-video look-ups."""
        for i in self.shard_indices() if shard is None else [shard]:
            for key, value in self.iter_meta_raw(i):
                yield self.parse_meta(i, key, value)

    def iter_meta(self, shard: int | None = None) -> Iterator[dict]:
        """:meth:`iter_video_meta` as stored (dicts of the JSON)."""
        for meta in self.iter_video_meta(shard):
            yield meta.to_dict()

    def settings(self) -> dict:
        """The store-wide settings written by ``flowprep extract`` ({} if the file is missing)."""
        return read_json(self.root / SETTINGS_FILE, "settings file")

    def failures(self) -> dict[str, dict]:
        """Videos whose extraction failed, by id: {"path": ..., "reason": ...}."""
        return read_failures(self.root)

    def checksums(self, video: str) -> dict[str, np.ndarray] | None:
        """The video's record checksums by kind (None: stored without checksums), kept in a cache of
        bounded size (:class:`flowprep.storage.index.ChecksumCache`)."""
        found, checksums = self._checksums.get(video)
        if not found:
            row = self._shard_of_row(video)
            row = self._rows[row]
            checksums = self.read_checksums(int(row[0]), video, indexed=bool(row[1] & _INDEXED))
            self._checksums.put(video, checksums)
        return checksums

    def read_checksums(self, shard: int, video: str, indexed: bool) -> dict[str, np.ndarray] | None:
        """The checksums of ``video`` as stored, uncached: the shard's ``crc`` entry for a video with an
        index entry (missing or malformed: a StoreError), else its metadata's hex table (or None)."""
        if not indexed:
            return parse_checksums(self.video_meta(video).crc32)
        env, dbs = self._env(shard)
        with lmdb_errors(self.shards[shard], video), env.begin(buffers=True) as txn:
            value = txn.get(video.encode(), db=dbs[b"crc"]) if b"crc" in dbs else None
            if value is None:
                raise StoreError(f"{self.shards[shard]}: video {video!r} has no checksum entry (damaged "
                                 f"shard); run `flowprep verify {self.root}`")
            try:
                return unpack_checksums(value)
            except IndexFormatError as exc:
                raise StoreError(f"{self.shards[shard]}: checksum entry of video {video!r} is damaged ({exc}); "
                                 f"run `flowprep verify {self.root}`") from None

    def records(self, video: str, kind: str, ts: Iterable[int]) -> list[bytes]:
        """Raw stored bytes of several records of one video, read in one transaction and checked against
        their checksums (CorruptRecordError names a damaged one)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        shard = self._shard_of(video)
        checksums = self.checksums(video)
        env, dbs = self._env(shard)
        out = []
        with lmdb_errors(self.shards[shard], video), env.begin(db=dbs[b"data"]) as txn:
            for t in ts:
                value = txn.get(record_key(video, kind, t))
                if value is None:
                    raise MissingRecordError(f"{video}: no {kind} record {t}")
                problem = checksum_problem(checksums, kind, t, value)
                if problem:
                    raise CorruptRecordError(f"{video}: {kind} record {t} in {self.shards[shard]}: {problem}")
                out.append(value)
        return out

    def raw_record(self, shard: int, key: bytes) -> bytes | None:
        """One data record of a shard by key, unchecked (None: no such key); for checks that read around a
        damaged page."""
        env, dbs = self._env(shard)
        with lmdb_errors(self.shards[shard]), env.begin(db=dbs[b"data"]) as txn:
            return txn.get(key)

    def rgb(self, video: str, t: int) -> np.ndarray:
        """Frame t (0-based) as RGB uint8 H×W×3."""
        return decode_records(self, video, "rgb", [t], decode_rgb)[0]

    def flow(self, video: str, t: int, backward: bool = False) -> np.ndarray:
        """Flow field t as float32 H×W×2 pixels: forward from frame t to t+1, or (``backward``)
        from frame t+1 back to frame t."""
        return self.flows(video, [t], backward)[0]

    def flows(self, video: str, ts: Sequence[int], backward: bool = False) -> list[np.ndarray]:
        """Several flow fields of one video, read in one transaction (e.g. the L fields of a stack)."""
        return decode_records(self, video, "back" if backward else "flow", ts, decode_flow)

    def iter_records(self, shard: int) -> Iterator[tuple[bytes, memoryview]]:
        """(key, value) of every data record of one shard, in key order. A value is a view into the
        map, valid until the next item: copy it to keep it."""
        if shard not in self.shard_indices():
            return
        env, dbs = self._env(shard)
        with lmdb_errors(self.shards[shard]), env.begin(db=dbs[b"data"], buffers=True) as txn:
            for key, value in txn.cursor():
                yield bytes(key), value

    def num_records(self) -> int:
        """Number of data records (RGB frames and flow fields) in all shards."""
        total = 0
        for i in self.shard_indices():
            env, dbs = self._env(i)
            with lmdb_errors(self.shards[i]), env.begin() as txn:
                total += txn.stat(dbs[b"data"])["entries"]
        return total

    def close(self) -> None:
        for shard in self.shards:
            close_env(shard)


def decode_records(store, video: str, kind: str, ts: Sequence[int], decode: Callable) -> list:
    """Records t of ``kind`` of ``video`` read from ``store`` (a FlowStore or anything with its
    ``records``) and decoded by ``decode``; a record that does not decode is a CorruptRecordError
    naming it."""
    out = []
    for t, record in zip(ts, store.records(video, kind, ts), strict=True):
        try:
            out.append(decode(record))
        except RecordError as exc:
            raise CorruptRecordError(f"{video}: {kind} record {t} in {store.root} does not decode ({exc})") from None
    return out


_COLUMNS = ("shard", "flags", "num_frames", "num_flows", "num_backward", "width", "height")
_INDEXED = 4  # flags: bit 0 RGB, bit 1 flow, bit 2 the video has index and checksum entries
_STREAMS = {0: (), 1: ("rgb",), 2: ("flow",), 3: ("rgb", "flow")}


def _row(shard: int, entry: IndexEntry, indexed: bool) -> tuple[int, ...]:
    flags = (1 if entry.has("rgb") else 0) | (2 if entry.has("flow") else 0) | (_INDEXED if indexed else 0)
    return (shard, flags, entry.num_frames, entry.num_flows, entry.num_backward, entry.width, entry.height)


def video_entries(video: str, records: Sequence[tuple[bytes, bytes]], meta: VideoMeta | dict
                  ) -> tuple[bytes, bytes, bytes]:
    """A video's stored metadata JSON, index entry and checksum entry. The metadata is a
    :class:`VideoMeta`, or a plain dict stored as it is (without a ``crc32`` table: the checksums go in
    the ``crc`` database); a dict without valid counts is a StoreError."""
    crcs = record_crcs(records)
    if isinstance(meta, VideoMeta):
        typed, meta_json = meta, dataclasses.replace(meta, crc32=None).to_json()
    else:
        try:
            typed = VideoMeta.from_dict(meta)
        except MetadataError as exc:
            raise StoreError(f"video {video!r}: metadata to store is not valid ({exc})") from None
        meta_json = json.dumps({k: v for k, v in meta.items() if k != "crc32"}, sort_keys=True).encode()
    entry = IndexEntry.of(typed)
    return meta_json, entry.pack(video), pack_checksums(crcs)


def parse_video_meta(shard: Path, root: Path, key: bytes, value: bytes | memoryview | None) -> VideoMeta:
    """One ``meta`` entry of ``shard`` as :class:`VideoMeta`; damaged: a StoreError naming shard and video."""
    try:
        return VideoMeta.from_dict(json.loads(bytes(value)))
    except (ValueError, TypeError, MetadataError) as exc:
        raise StoreError(f"{shard}: metadata of video {key.decode(errors='replace')!r} is "
                         f"damaged ({exc}); run `flowprep verify {root}`") from None


def read_json(path: Path, what: str) -> dict:
    """A store's JSON file, a JSON object ({} if it is missing); a damaged one (not JSON, not UTF-8, or JSON
    of another shape) is a StoreError naming it."""
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise StoreError(f"{path}: damaged {what} ({exc})") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{path}: damaged {what} (a JSON {type(obj).__name__}, not an object)")
    return obj


def read_failures(root: str | os.PathLike) -> dict[str, dict]:
    """Failed videos by id: {"path": ..., "reason": ...} (``OUT/failures.json``)."""
    path = Path(root) / FAILURES_FILE
    failures = read_json(path, "failure list")
    for video, entry in failures.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("path", "reason")):
            raise StoreError(f"{path}: damaged failure list (the entry of {video!r} is not {{path, reason}}); "
                             "delete it: the next run lists its failures again")
    return failures
