"""Summaries and integrity checks of a store (``flowprep info`` and ``flowprep verify``)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from flowprep.codec import RecordError, decode_flow_components, decode_rgb
from flowprep.store import KINDS, FlowStore, split_key


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

    @property
    def compression_ratio(self) -> float:
        """float32 size of the flow fields (H·W·2·4 bytes each) over their stored JPEG size."""
        return self.float32_flow_bytes / self.flow_bytes if self.flow_bytes else 0.0


def summarize(store: FlowStore) -> StoreSummary:
    s = StoreSummary(shards=len(store.shards), failures=store.failures())
    s.disk_bytes = sum(f.stat().st_size for shard in store.shards for f in shard.iterdir() if f.is_file())
    for meta in store.iter_meta():
        fields = meta["num_flows"] + meta["num_backward"]
        s.videos += 1
        s.frames += meta["num_frames"]
        s.flow_fields += meta["num_flows"]
        s.backward_fields += meta["num_backward"]
        s.rgb_bytes += meta["rgb_bytes"]
        s.flow_bytes += meta["flow_bytes"]
        s.float32_flow_bytes += fields * meta["height"] * meta["width"] * 2 * 4
        flow = meta["flow"]
        s.algorithms[f"{flow['algo']} ({flow['implementation']})"] += 1
    return s


def _expected_counts(meta: dict) -> dict[str, int]:
    return {"rgb": meta["num_frames"], "flow": meta["num_flows"], "back": meta["num_backward"]}


def verify(store: FlowStore, decode: bool = True,
           on_record: Callable[[int], None] | None = None) -> list[str]:
    """Problems found in the store, one line each (empty list: the store is sound).

    Checks, for every video: N RGB frames and N−1 flow fields (and N−1 backward fields when stored)
    as its metadata says, numbered 0..n−1 without gaps; every record decodes (``decode``) to the
    frame size in the metadata; no record belongs to a video without metadata.
    """
    problems: list[str] = []
    for shard_index, shard in enumerate(store.shards):
        seen: dict[str, dict[str, list[int]]] = defaultdict(lambda: {k: [] for k in KINDS})
        metas = {m["video"]: m for m in store.iter_meta(shard_index)}
        for key, value in store.iter_records(shard_index):
            try:
                video, kind, t = split_key(key)
            except ValueError:
                kind = None
            if kind not in KINDS:
                problems.append(f"{shard.name}: unknown record key {key!r}")
                continue
            seen[video][kind].append(t)
            meta = metas.get(video)
            if decode and meta is not None:
                try:
                    if kind == "rgb":
                        shape = decode_rgb(value).shape[:2]
                    else:
                        shape = decode_flow_components(value)[0].shape
                except RecordError as exc:
                    problems.append(f"{video}: {kind} record {t} does not decode: {exc}")
                else:
                    if shape != (meta["height"], meta["width"]):
                        problems.append(f"{video}: {kind} record {t} is {shape[1]}x{shape[0]}, "
                                        f"metadata says {meta['width']}x{meta['height']}")
            if on_record is not None:
                on_record(1)
        for video in sorted(set(seen) - set(metas)):
            counts = ", ".join(f"{len(v)} {k}" for k, v in seen[video].items() if v)
            problems.append(f"{video}: {counts} records but no metadata (half-written video)")
        for video, meta in sorted(metas.items()):
            if meta["num_flows"] != meta["num_frames"] - 1:
                problems.append(f"{video}: metadata says {meta['num_frames']} frames but "
                                f"{meta['num_flows']} flow fields (expected {meta['num_frames'] - 1})")
            for kind, expected in _expected_counts(meta).items():
                have = sorted(seen[video][kind])
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
