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
  Flow values are the records of :mod:`flowprep.codec`.

A clip of N frames has N RGB frames and N − 1 flow fields. Every record of a video and then its
metadata are written in one transaction: a video is in the store completely or not at all, and a
video id present in ``meta`` is a finished video.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import lmdb
import numpy as np

from flowprep.codec import decode_flow, decode_rgb

SHARD_GLOB = "shard-*.lmdb"
SETTINGS_FILE = "flowprep.json"
FAILURES_FILE = "failures.json"
KINDS = ("rgb", "flow", "back")
MAX_KEY_BYTES = 511
_MAX_DBS = 4
_INITIAL_MAP = 256 << 20


class StoreError(Exception):
    """A store folder that cannot be used; the message names the path and the problem."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.lmdb"


def record_key(video: str, kind: str, t: int) -> bytes:
    """The data key of record t of ``kind`` ("rgb", "flow" or "back") of ``video``."""
    return f"{video}/{kind}/{t:06d}".encode()


def split_key(key: bytes) -> tuple[str, str, int]:
    """(video, kind, t) of a data key."""
    video, kind, t = key.decode().rsplit("/", 2)
    return video, kind, int(t)


def write_json_atomic(path: Path, obj: object) -> None:
    """Write JSON to a temporary file, then rename it over ``path`` (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# lmdb refuses to open one environment twice in a process, and a handle must not be used across
# fork(): every shard is opened through this per-process cache, which reopens after a fork and
# swaps a read-only handle for a writable one when a writer asks.
_ENVS: dict[str, tuple[int, str, lmdb.Environment, dict[bytes, object]]] = {}  # pid, mode, env, dbs
_REAL_PATHS: dict[str, str] = {}  # realpath() costs ~30 µs, once per record read without this


def _open_env(path: Path, write: bool = False, readahead: bool = True) -> tuple[lmdb.Environment, dict[bytes, object]]:
    """The process's handle of one shard. ``readahead`` (readers): let the kernel read around a page
    fault. On for runs of consecutive records of one video (the L fields of a temporal input, stored
    next to each other): one I/O instead of a 4 KB fault per page, half the cold read time of a
    temporal input in bench/loader.py. Off for single records (an RGB frame), where reading around
    fetches pages nobody asked for."""
    key = _REAL_PATHS.get(str(path))
    if key is None:
        key = _REAL_PATHS[str(path)] = os.path.realpath(path)
    mode = "write" if write else "readahead" if readahead else "random"
    cached = _ENVS.get(key)
    if cached is not None:
        pid, cached_mode, env, dbs = cached
        if pid == os.getpid() and (cached_mode == mode or (cached_mode == "write" and not write)):
            return env, dbs
        env.close()
        del _ENVS[key]
    if write:
        env = lmdb.open(key, map_size=_INITIAL_MAP, max_dbs=_MAX_DBS, subdir=True, readahead=False)
        dbs = {name: env.open_db(name) for name in (b"meta", b"data")}
    else:
        if not os.path.isfile(os.path.join(key, "data.mdb")):
            raise StoreError(f"{path}: not an LMDB shard (no data.mdb)")
        try:
            env = lmdb.open(key, readonly=True, lock=False, max_dbs=_MAX_DBS, subdir=True,
                            readahead=readahead, meminit=False)
            dbs = {name: env.open_db(name, create=False) for name in (b"meta", b"data")}
        except lmdb.Error as exc:
            raise StoreError(f"{path}: cannot open LMDB shard: {exc}") from None
    _ENVS[key] = (os.getpid(), mode, env, dbs)
    return env, dbs


def close_env(path: Path) -> None:
    cached = _ENVS.pop(os.path.realpath(path), None)
    if cached is not None:
        cached[2].close()


class ShardWriter:
    """The one writer of a store folder: appends whole videos to bounded LMDB shards.

    Holds an exclusive lock on ``OUT/.lock`` so two extraction runs cannot write one store. A shard
    is closed for new videos once it holds ``shard_bytes``; the LMDB map grows whenever a
    transaction fills it, so no ``MapFullError`` reaches the caller.
    """

    def __init__(self, root: str | os.PathLike, shard_bytes: int = 8 << 30):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = int(shard_bytes)
        self._lock = open(self.root / ".lock", "w")  # noqa: SIM115 - held for the writer's lifetime
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(f"{self.root}: another flowprep process is writing to this folder") from None
        shards = sorted(self.root.glob(SHARD_GLOB))
        self._index = int(shards[-1].name[6:11]) if shards else 0
        self.complete: set[str] = set()
        for shard in shards:
            env, dbs = _open_env(shard, write=True)
            with env.begin(db=dbs[b"meta"]) as txn:
                self.complete.update(k.decode() for k in txn.cursor().iternext(values=False))
            if shard.name != shard_name(self._index):
                close_env(shard)

    @property
    def shard_path(self) -> Path:
        return self.root / shard_name(self._index)

    def _used_bytes(self, env: lmdb.Environment) -> int:
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]

    def put_video(self, video: str, records: Sequence[tuple[bytes, bytes]], meta: dict) -> None:
        """Commit all ``records`` of ``video`` and then its metadata in one transaction."""
        payload = sum(len(k) + len(v) for k, v in records)
        env, dbs = _open_env(self.shard_path, write=True)
        with env.begin() as txn:
            holds_videos = txn.stat(dbs[b"meta"])["entries"] > 0
        if holds_videos and self._used_bytes(env) + payload > self.shard_bytes:
            close_env(self.shard_path)
            self._index += 1
            env, dbs = _open_env(self.shard_path, write=True)
        meta_value = json.dumps(meta, sort_keys=True).encode()
        while True:
            try:
                with env.begin(write=True) as txn:
                    for key, value in records:
                        txn.put(key, value, db=dbs[b"data"])
                    txn.put(video.encode(), meta_value, db=dbs[b"meta"])
                break
            except lmdb.MapFullError:
                grown = max(2 * env.info()["map_size"], self._used_bytes(env) + 2 * payload + (64 << 20))
                env.set_mapsize(grown)
        self.complete.add(video)

    def close(self) -> None:
        for shard in self.root.glob(SHARD_GLOB):
            close_env(shard)
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

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

    >>> store = FlowStore("out/ucf101")
    >>> video = store.videos()[0]
    >>> store.rgb(video, 0).shape, store.flow(video, 0).shape   # (H, W, 3) uint8, (H, W, 2) float32
    """

    def __init__(self, root: str | os.PathLike, readahead: bool = True):
        self.root, self.readahead = Path(root), readahead
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: no such folder")
        self.shards = sorted(self.root.glob(SHARD_GLOB))
        if not self.shards:
            raise StoreError(f"{self.root}: no flowprep shards ({SHARD_GLOB}) in this folder")
        self._where: dict[str, int] | None = None

    def _env(self, shard: int) -> tuple[lmdb.Environment, dict[bytes, object]]:
        return _open_env(self.shards[shard], readahead=self.readahead)

    def _index(self) -> dict[str, int]:
        if self._where is None:
            where: dict[str, int] = {}
            for i in range(len(self.shards)):
                env, dbs = self._env(i)
                with env.begin(db=dbs[b"meta"]) as txn:
                    for key in txn.cursor().iternext(values=False):
                        where[key.decode()] = i
            self._where = where
        return self._where

    def _shard_of(self, video: str) -> int:
        try:
            return self._index()[video]
        except KeyError:
            raise KeyError(f"video {video!r} is not in {self.root}") from None

    def videos(self) -> list[str]:
        """Ids of all complete videos, sorted."""
        return sorted(self._index())

    def __len__(self) -> int:
        return len(self._index())

    def __contains__(self, video: object) -> bool:
        return video in self._index()

    def meta(self, video: str) -> dict:
        env, dbs = self._env(self._shard_of(video))
        with env.begin(db=dbs[b"meta"], buffers=True) as txn:
            return json.loads(bytes(txn.get(video.encode())))

    def iter_meta(self, shard: int | None = None) -> Iterator[dict]:
        """Metadata of every video (of one shard, or of all), in one pass without per-video look-ups."""
        for i in range(len(self.shards)) if shard is None else [shard]:
            env, dbs = self._env(i)
            with env.begin(db=dbs[b"meta"]) as txn:
                for value in txn.cursor().iternext(keys=False):
                    yield json.loads(value)

    def settings(self) -> dict:
        """The store-wide settings written by ``flowprep extract`` ({} if the file is missing)."""
        path = self.root / SETTINGS_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def failures(self) -> dict[str, dict]:
        """Videos whose extraction failed, by id: {"path": ..., "reason": ...}."""
        return read_failures(self.root)

    def records(self, video: str, kind: str, ts: Iterable[int]) -> list[bytes]:
        """Raw stored bytes of several records of one video, read in one transaction."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        env, dbs = self._env(self._shard_of(video))
        out = []
        with env.begin(db=dbs[b"data"]) as txn:
            for t in ts:
                value = txn.get(record_key(video, kind, t))
                if value is None:
                    raise IndexError(f"{video}: no {kind} record {t}")
                out.append(value)
        return out

    def rgb(self, video: str, t: int) -> np.ndarray:
        """Frame t (0-based) as RGB uint8 H×W×3."""
        return decode_rgb(self.records(video, "rgb", [t])[0])

    def flow(self, video: str, t: int, backward: bool = False) -> np.ndarray:
        """Flow field t as float32 H×W×2 pixels: forward from frame t to t+1, or (``backward``)
        from frame t+1 back to frame t."""
        return decode_flow(self.records(video, "back" if backward else "flow", [t])[0])

    def flows(self, video: str, ts: Sequence[int], backward: bool = False) -> list[np.ndarray]:
        """Several flow fields of one video, read in one transaction (e.g. the L fields of a stack)."""
        return [decode_flow(r) for r in self.records(video, "back" if backward else "flow", ts)]

    def iter_records(self, shard: int) -> Iterator[tuple[bytes, memoryview]]:
        """(key, value) of every data record of one shard, in key order. A value is a view into the
        map, valid until the next item: copy it to keep it."""
        env, dbs = self._env(shard)
        with env.begin(db=dbs[b"data"], buffers=True) as txn:
            for key, value in txn.cursor():
                yield bytes(key), value

    def num_records(self) -> int:
        """Number of data records (RGB frames and flow fields) in all shards."""
        total = 0
        for i in range(len(self.shards)):
            env, dbs = self._env(i)
            with env.begin() as txn:
                total += txn.stat(dbs[b"data"])["entries"]
        return total

    def close(self) -> None:
        for shard in self.shards:
            close_env(shard)


def read_failures(root: str | os.PathLike) -> dict[str, dict]:
    path = Path(root) / FAILURES_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())
