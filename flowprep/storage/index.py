"""A shard's index and binary checksums: what opening, listing and training need, without the metadata.

Two named databases of each shard, written in the same transaction as the video's records and
metadata (so they cannot disagree with them):

* ``index``: key = video id, value = :data:`ENTRY` (28 bytes): format version, streams held (bit 0
  RGB, bit 1 flow), then as little-endian uint32 the numbers of RGB frames, forward and backward
  flow fields, the stored width and height in pixels, and the CRC-32 of the video id and the bytes
  before it (a flipped bit in a count is found, not trained on). Fixed-size and small, so the walk
  that lists a store reads ~50 entries a 4 KB page instead of every video's JSON metadata.
* ``crc``: key = video id, value = three little-endian uint32 counts (RGB, forward, backward
  records) then the big-endian CRC-32 of each record of those kinds, in that order: 4 bytes a
  record instead of the 8 hex characters the metadata held before (85 % of its size).

Videos stored before these existed have neither entry: their counts come from their metadata and
their checksums from its ``crc32`` hex table (:mod:`flowprep.storage.checksum`). A shard can hold
both kinds of video (an older store resumed by a newer flowprep); ``flowprep upgrade`` adds the
entries of the older ones.
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

ENTRY = struct.Struct("<BBxxIIIIII")
ENTRY_VERSION = 1
_RGB, _FLOW = 1, 2
_COUNTS = struct.Struct("<III")
CHECKSUM_KINDS = ("rgb", "flow", "back")


class IndexFormatError(ValueError):
    """An index or checksum entry that is not what flowprep writes (damaged or another format)."""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What the index holds of one video: its numbers of records, streams and frame size (pixels)."""

    num_frames: int
    num_flows: int
    num_backward: int
    width: int
    height: int
    streams: tuple[str, ...] = ("rgb", "flow")

    def has(self, stream: str) -> bool:
        return stream in self.streams

    @classmethod
    def of(cls, meta) -> IndexEntry:
        """The entry a video's metadata (a :class:`flowprep.storage.meta.VideoMeta`) says it should have."""
        return cls(meta.num_frames, meta.num_flows, meta.num_backward, meta.width, meta.height, meta.streams)

    def pack(self, video: str) -> bytes:
        """The stored entry of ``video``."""
        flags = (_RGB if "rgb" in self.streams else 0) | (_FLOW if "flow" in self.streams else 0)
        fields = (ENTRY_VERSION, flags, self.num_frames, self.num_flows, self.num_backward, self.width, self.height)
        head = ENTRY.pack(*fields, 0)[:-4]
        return head + struct.pack("<I", zlib.crc32(head, zlib.crc32(video.encode())))

    @classmethod
    def unpack(cls, video: str, value: bytes | memoryview) -> IndexEntry:
        """The entry of ``video`` from its stored bytes; IndexFormatError if they are damaged."""
        if len(value) != ENTRY.size:
            raise IndexFormatError(f"index entry of {len(value)} bytes, not {ENTRY.size}")
        version, flags, frames, flows, backward, width, height, crc = ENTRY.unpack(value)
        if zlib.crc32(bytes(value[:-4]), zlib.crc32(video.encode())) != crc:
            raise IndexFormatError("index entry fails its CRC-32")
        if version != ENTRY_VERSION or flags & ~(_RGB | _FLOW):
            raise IndexFormatError(f"index entry of format {version} (flags {flags:#x}); this flowprep reads "
                                   f"format {ENTRY_VERSION}")
        streams = tuple(s for s, bit in (("rgb", _RGB), ("flow", _FLOW)) if flags & bit)
        return cls(frames, flows, backward, width, height, streams)


def pack_checksums(crcs: dict[str, np.ndarray]) -> bytes:
    """The ``crc`` value of a video from its per-kind uint32 checksums
    (:func:`flowprep.storage.checksum.record_crcs`)."""
    arrays = [crcs.get(kind, np.zeros(0, np.uint32)) for kind in CHECKSUM_KINDS]
    return _COUNTS.pack(*(len(a) for a in arrays)) + b"".join(a.astype(">u4").tobytes() for a in arrays)


def unpack_checksums(value: bytes | memoryview) -> dict[str, np.ndarray]:
    """Per kind, the uint32 checksums of a ``crc`` value (kinds without records are left out), in native
    byte order (indexing a big-endian array costs twice as much, once a record read)."""
    data = bytes(value)
    if len(data) < _COUNTS.size:
        raise IndexFormatError(f"checksum entry of {len(data)} bytes")
    counts = _COUNTS.unpack_from(data)
    if len(data) != _COUNTS.size + 4 * sum(counts):
        raise IndexFormatError(f"checksum entry of {len(data)} bytes for {sum(counts)} records")
    out, offset = {}, _COUNTS.size
    for kind, count in zip(CHECKSUM_KINDS, counts, strict=True):
        if count:
            out[kind] = np.frombuffer(data, ">u4", count, offset).astype(np.uint32)
        offset += 4 * count
    return out


class ChecksumCache:
    """Least-recently-used cache of videos' checksums, bounded in bytes: a DataLoader worker that reads
    650,000 distinct videos keeps at most ``max_bytes`` of them (default 16 MB, ~5,000 videos of 300
    frames), not all of them."""

    def __init__(self, max_bytes: int = 16 << 20):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[dict[str, np.ndarray] | None, int]] = OrderedDict()

    def get(self, video: str) -> tuple[bool, dict[str, np.ndarray] | None]:
        """(found, checksums) of ``video``; a hit becomes the most recently used."""
        item = self._items.get(video)
        if item is None:
            return False, None
        self._items.move_to_end(video)
        return True, item[0]

    def put(self, video: str, checksums: dict[str, np.ndarray] | None) -> None:
        size = 200 + len(video) + sum(a.nbytes + 100 for a in (checksums or {}).values())
        old = self._items.pop(video, None)
        if old is not None:
            self.bytes -= old[1]
        self._items[video] = (checksums, size)
        self.bytes += size
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped

    def __len__(self) -> int:
        return len(self._items)
