"""A stored video's metadata: one dataclass, written as JSON in the shard's ``meta`` database.

The JSON is what stores have always held (same keys, same bytes): :meth:`VideoMeta.to_dict` leaves
out the keys of imported videos for extracted ones, and :meth:`VideoMeta.from_dict` reads every store
written so far (keys added later have defaults: ``streams`` is ("rgb", "flow") where absent, ``crc32``
None before checksums were kept). Keys it does not know are kept and written back unchanged.
A value of the wrong type is a :class:`MetadataError` naming the video and key, not a traceback later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from flowprep.storage.shard import StoreError


class MetadataError(StoreError):
    """A video's metadata that is not what flowprep writes (damaged, or made by something else)."""


@dataclass(frozen=True)
class FlowInfo:
    """How a video's flow was made: the algorithm, the implementation that ran (an id of
    :mod:`flowprep.algorithms.registry`, or "imported from LAYOUT files") and its parameters."""

    algo: str
    implementation: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"algo": self.algo, "implementation": self.implementation, "params": self.params}


_IMPORT_KEYS = ("imported", "import_notes", "streams")


@dataclass
class VideoMeta:
    """One stored video. Counts are records: ``num_frames`` RGB frames, ``num_flows`` forward and
    ``num_backward`` backward flow fields. ``width``/``height``: pixels of the stored frames;
    ``source_*``: of the decoded video (``header_frames``: the container's frame count, ``fps``).
    ``bound``: pixels (or "adaptive"); ``quality``/``rgb_quality``: JPEG quality 1-100 (None: imported
    files, unknown). ``rgb_bytes``/``flow_bytes``: stored bytes. ``source``: the video file, or for an
    imported video its folders by kind. ``imported``: the import's settings (None: extracted);
    ``streams``: what the video has; ``crc32``: per kind, the records' CRC-32s as hex
    (:mod:`flowprep.storage.checksum`), None for videos stored before checksums."""

    video: str
    num_frames: int
    num_flows: int
    num_backward: int = 0
    width: int = 0
    height: int = 0
    source: str | dict | None = None
    source_width: int | None = None
    source_height: int | None = None
    header_frames: int | None = None
    fps: float | None = None
    flow: FlowInfo | None = None
    bound: float | str | None = None
    quality: int | None = None
    rgb_quality: int | None = None
    short_side: int | None = None
    rgb_bytes: int = 0
    flow_bytes: int = 0
    versions: dict = field(default_factory=dict)
    created: str | None = None
    imported: dict | None = None
    streams: tuple[str, ...] = ("rgb", "flow")
    import_notes: list[str] = field(default_factory=list)
    crc32: dict[str, str] | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they are

    @property
    def is_imported(self) -> bool:
        return self.imported is not None

    def has(self, stream: str) -> bool:
        """Whether the video has ``stream`` ("rgb" or "flow"); extracted videos always have both."""
        return stream in self.streams

    def __getitem__(self, key: str) -> object:
        """The stored JSON's value of ``key`` (code written when metadata was a plain dict reads on)."""
        return self.to_dict()[key]

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "crc32")}
        out["flow"] = self.flow.to_dict() if self.flow is not None else None
        if self.is_imported:
            out["streams"] = list(self.streams)
        else:
            for key in _IMPORT_KEYS:
                del out[key]
        if self.crc32 is not None:
            out["crc32"] = self.crc32
        return {**self.extra, **out}

    def to_json(self) -> bytes:
        """The bytes stored in the ``meta`` database."""
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: dict) -> VideoMeta:
        """The metadata of ``data`` (as stored); MetadataError for a missing count or a wrong type."""
        if not isinstance(data, dict):
            raise MetadataError("not a JSON object")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("video", "num_frames", "num_flows"):
            if key not in values:
                raise MetadataError(f"no {key!r}")
        if not isinstance(values["video"], str):
            raise MetadataError("'video' is not a string")
        for key in ("num_frames", "num_flows", "num_backward", "width", "height", "rgb_bytes", "flow_bytes"):
            value = values.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MetadataError(f"{key!r} is {value!r}, not a count")
        flow = values.get("flow")
        if flow is not None:
            if not isinstance(flow, dict) or not isinstance(flow.get("algo"), str) \
                    or not isinstance(flow.get("implementation"), str) or not isinstance(flow.get("params", {}), dict):
                raise MetadataError("'flow' is not {algo, implementation, params}")
            values["flow"] = FlowInfo(flow["algo"], flow["implementation"], flow.get("params", {}))
        streams = values.get("streams", ("rgb", "flow"))
        if not isinstance(streams, list | tuple) or not set(streams) <= {"rgb", "flow"}:
            raise MetadataError(f"'streams' is {streams!r}")
        values["streams"] = tuple(streams)
        for key, kind in (("imported", dict), ("crc32", dict), ("versions", dict), ("import_notes", list)):
            if values.get(key) is not None and not isinstance(values[key], kind):
                raise MetadataError(f"{key!r} is not a {kind.__name__}")
        if values.get("import_notes") is None:
            values.pop("import_notes", None)
        if values.get("versions") is None:
            values.pop("versions", None)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})
