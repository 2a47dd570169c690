"""LMDB shards of a store: one process-wide handle per shard, opened safely.

A shard's ``data.mdb`` is memory-mapped, so any page it lacks (a file cut short by an interrupted
copy) would end the process with SIGBUS on first touch: every shard's size is checked against its
header before anything is read. LMDB failures (damaged header or pages) become one-line
:class:`StoreError` naming the shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

from flowprep.errors import UserError
from flowprep.storage.lock import lock_holder

SHARD_GLOB = "shard-*.lmdb"
DATABASES = (b"meta", b"data", b"index", b"crc")  # see flowprep.storage.store and .index
_MAX_DBS = 4
MAX_KEY_BYTES = 511
_INITIAL_MAP = 256 << 20


class StoreError(UserError):
    """A store folder that cannot be used; the message names the path and the problem."""


class CorruptRecordError(StoreError):
    """A stored record whose checksum does not match or that does not decode; names video and record."""


class MissingRecordError(StoreError, IndexError):
    """A record asked for that the store does not hold (an index past the video's count)."""


class EmptyShardError(StoreError):
    """A shard in which no transaction was ever committed (its writer was killed during the first)."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.lmdb"


def id_problem(video: str) -> str | None:
    """Why ``video`` cannot be a video id (None: it can). Ids become paths (``flowprep export`` writes
    OUT/<id>/...): they must be relative, '/'-separated names with no empty, '.' or '..' part, no
    backslash and no NUL, so that no id reaches outside the folder it is written into."""
    if not video:
        return "an empty id"
    if "\0" in video or "\\" in video:
        return "a NUL or backslash in the id"
    if video.startswith("/"):
        return "an absolute path"
    if any(part in ("", ".", "..") for part in video.split("/")):
        return "an empty, '.' or '..' part"
    return None


def key_length_problem(video: str) -> str | None:
    """Why ``video``'s record keys would not fit LMDB's key size (None: they fit)."""
    if len(record_key(video, "flow", 0)) > MAX_KEY_BYTES:
        return f"too long for an LMDB key ({MAX_KEY_BYTES} bytes)"
    return None


def record_key(video: str, kind: str, t: int) -> bytes:
    """The data key of record t of ``kind`` ("rgb", "flow" or "back") of ``video``."""
    return f"{video}/{kind}/{t:06d}".encode()


def split_key(key: bytes) -> tuple[str, str, int]:
    """(video, kind, t) of a data key."""
    video, kind, t = key.decode().rsplit("/", 2)
    return video, kind, int(t)


def no_space_message(path: Path) -> str:
    return f"no space left on device writing {path}"


@contextmanager
def lmdb_errors(shard: Path, video: str | None = None) -> Iterator[None]:
    """LMDB failures (damaged pages, a damaged header) as one StoreError naming the shard (and video)."""
    try:
        yield
    except lmdb.Error as exc:
        raise StoreError(damage_message(shard, exc, video)) from None


def damage_message(shard: Path, exc: Exception, video: str | None = None, what: str = "damaged LMDB shard") -> str:
    """What an LMDB failure reading ``shard`` means: the store is being written by another process
    (its lock is held: what looks like damage is a write in progress), or the shard is damaged."""
    holder = lock_holder(shard.parent)
    if holder is not None:
        return (f"{shard.parent}: being written by {holder}; read or verify it when that run has ended "
                f"({type(exc).__name__})")
    where = f"{shard}" + (f" (video {video})" if video else "")
    return (f"{where}: {what} ({type(exc).__name__}: {exc}); "
            "restore it from a copy or extract its videos again")


def _check_file_size(env: lmdb.Environment, path: Path) -> None:
    """Refuse a data.mdb shorter than its header says (an interrupted copy): mapping it would end the
    process with SIGBUS ("Bus error") at the first page past the end."""
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = os.path.getsize(os.path.join(path, "data.mdb"))
    if have < need:
        env.close()
        raise StoreError(f"{path}: truncated LMDB shard: data.mdb is {have} bytes, its header says {need} "
                         "(an interrupted copy?); copy it again")


# lmdb refuses to open one environment twice in a process, and a handle must not be used across
# fork(): every shard is opened through this per-process cache, which reopens after a fork and
# swaps a read-only handle for a writable one when a writer asks.
_ENVS: dict[str, tuple[int, str, lmdb.Environment, dict[bytes, object]]] = {}  # pid, mode, env, dbs
_REAL_PATHS: dict[str, str] = {}  # realpath() costs ~30 µs, once per record read without this


def open_env(path: Path, write: bool = False, readahead: bool = True) -> tuple[lmdb.Environment, dict[bytes, object]]:
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
        with lmdb_errors(path):
            env = lmdb.open(key, map_size=_INITIAL_MAP, max_dbs=_MAX_DBS, subdir=True, readahead=False)
            _check_file_size(env, path)
            dbs = {name: env.open_db(name) for name in DATABASES}
    else:
        if not os.path.isfile(os.path.join(key, "data.mdb")):
            raise StoreError(f"{path}: not an LMDB shard (no data.mdb)")
        try:
            env = lmdb.open(key, readonly=True, lock=False, max_dbs=_MAX_DBS, subdir=True,
                            readahead=readahead, meminit=False)
        except lmdb.Error as exc:
            raise StoreError(damage_message(path, exc, what="cannot open LMDB shard")) from None
        _check_file_size(env, path)
        try:
            dbs = {name: env.open_db(name, create=False) for name in (b"meta", b"data")}
            for name in (b"index", b"crc"):  # absent from shards written before flowprep 0.2
                try:
                    dbs[name] = env.open_db(name, create=False)
                except lmdb.NotFoundError:
                    pass
        except lmdb.NotFoundError:
            env.close()
            raise EmptyShardError(f"{path}: no video was ever committed to this shard") from None
        except lmdb.Error as exc:
            env.close()
            raise StoreError(damage_message(path, exc)) from None
    _ENVS[key] = (os.getpid(), mode, env, dbs)
    return env, dbs


def close_env(path: Path) -> None:
    cached = _ENVS.pop(os.path.realpath(path), None)
    if cached is not None:
        cached[2].close()
