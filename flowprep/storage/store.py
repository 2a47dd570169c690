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

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import lmdb
import numpy as np

from flowprep.storage.checksum import checksum_problem, parse_checksums, record_checksums
from flowprep.storage.codec import RecordError, decode_flow, decode_rgb
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
        metas = [_meta_bytes(meta, records) for _, records, meta in videos]
        while True:
            try:
                with env.begin(write=True) as txn:
                    for (video, records, _), meta_value in zip(videos, metas, strict=True):
                        for key, value in records:
                            txn.put(key, value, db=dbs[b"data"])
                        txn.put(video.encode(), meta_value, db=dbs[b"meta"])
                break
            except lmdb.MapFullError:
                grown = max(2 * env.info()["map_size"], self._used_bytes(env) + 2 * payload + (64 << 20))
                env.set_mapsize(grown)
            except lmdb.Error as exc:
                close_env(self.shard_path)  # a failed commit can leave the handle unusable
                self._raise_write_error(exc, payload)
        self.complete.update(video for video, _, _ in videos)

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
        self._where: dict[str, int] | None = None
        self.empty_shards: list[Path] = []
        self.unreadable: dict[Path, str] = {}  # shard → why (only kept, not raised, with strict=False)
        self._checksums: dict[str, dict[str, np.ndarray] | None] = {}

    def _env(self, shard: int) -> tuple[lmdb.Environment, dict[bytes, object]]:
        return open_env(self.shards[shard], readahead=self.readahead)

    def shard_indices(self) -> list[int]:
        """Indices of the shards that hold committed data (empty ones are skipped)."""
        self._index()
        skip = set(self.empty_shards) | set(self.unreadable)
        return [i for i, shard in enumerate(self.shards) if shard not in skip]

    def _index(self) -> dict[str, int]:
        if self._where is None:
            where: dict[str, int] = {}
            empty, unreadable = [], {}
            for i, shard in enumerate(self.shards):
                try:
                    env, dbs = self._env(i)
                    with lmdb_errors(shard), env.begin(db=dbs[b"meta"]) as txn:
                        keys = list(txn.cursor().iternext(values=False))
                except EmptyShardError:
                    empty.append(shard)
                    continue
                except StoreError as exc:
                    if self.strict:
                        raise
                    unreadable[shard] = str(exc)
                    continue
                for key in keys:
                    where[key.decode()] = i
            self._where, self.empty_shards, self.unreadable = where, empty, unreadable
        return self._where

    def _shard_of(self, video: str) -> int:
        try:
            return self._index()[video]
        except KeyError:
            raise KeyError(f"video {video!r} is not in {self.root}") from None

    def videos_of_shard(self, shard: int) -> list[str]:
        return sorted(v for v, i in self._index().items() if i == shard)

    def videos(self) -> list[str]:
        """Ids of all complete videos, sorted."""
        return sorted(self._index())

    def __len__(self) -> int:
        return len(self._index())

    def __contains__(self, video: object) -> bool:
        return video in self._index()

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
        env, dbs = self._env(shard)
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
        """The video's record checksums by kind (None: stored without checksums); cached per process."""
        if video not in self._checksums:
            self._checksums[video] = parse_checksums(self.video_meta(video).crc32)
        return self._checksums[video]

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


def _meta_bytes(meta: VideoMeta | dict, records: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The stored JSON of a video's metadata with its records' checksums."""
    if isinstance(meta, VideoMeta):
        return dataclasses.replace(meta, crc32=record_checksums(records)).to_json()
    return json.dumps({**meta, "crc32": record_checksums(records)}, sort_keys=True).encode()


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
