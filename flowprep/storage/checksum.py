"""CRC-32 checksums of a video's records.

Kept beside the records rather than in them so record bytes stay exactly what was encoded (and what
an import brings in). Stores write them packed in each shard's ``crc`` database
(:mod:`flowprep.storage.index`); stores written before that keep them in each video's metadata as
``"crc32": {kind: hex}``: per kind ("rgb", "flow", "back"), the big-endian CRC-32 of records 0, 1, …
one after the other, 8 hex digits a record (a 300-frame clip: ~5 KB of metadata), still read.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from flowprep.storage.shard import split_key


def record_crcs(records: Sequence[tuple[bytes, bytes]]) -> dict[str, np.ndarray]:
    """Per kind, the uint32 CRC-32 of a video's records 0, 1, … (a ValueError if a kind has a gap)."""
    by_kind: dict[str, dict[int, int]] = {}
    for key, value in records:
        _, kind, t = split_key(key)
        by_kind.setdefault(kind, {})[t] = zlib.crc32(value)
    out = {}
    for kind, crcs in sorted(by_kind.items()):
        if sorted(crcs) != list(range(len(crcs))):
            raise ValueError(f"{kind} records are not numbered 0..{len(crcs) - 1}")
        out[kind] = np.array([crcs[t] for t in range(len(crcs))], np.uint32)
    return out


def parse_checksums(table: dict[str, str] | None) -> dict[str, np.ndarray] | None:
    """Per kind, the uint32 checksums of a video's records from its metadata's ``crc32`` table; None for
    a video stored without them."""
    if table is None:
        return None
    return {kind: np.frombuffer(bytes.fromhex(text), ">u4").astype(np.uint32) for kind, text in table.items()}


def checksum_problem(checksums: dict[str, np.ndarray] | None, kind: str, t: int, value: bytes | memoryview
                     ) -> str | None:
    """Why record t of ``kind`` does not match its checksum (None: it does, or there is none)."""
    if checksums is None:
        return None
    table = checksums.get(kind)
    if table is None or t >= len(table):
        return "no checksum for this record in the metadata"
    actual = zlib.crc32(value)
    if actual != int(table[t]):
        return f"CRC-32 mismatch (stored {int(table[t]):08x}, read {actual:08x}): damaged on disk or in a copy"
    return None
