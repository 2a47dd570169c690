"""Temporal input volumes I_τ (section 3.1): which flow fields, and how they are stacked.

The volume of 2L channels is built from L flow fields: channel 2k (0-based) holds dx and 2k+1 holds
dy of field k, i.e. the paper's channels 2k−1 and 2k (1-based) hold d^x and d^y of d_{τ+k−1}. Fields are

* optical flow stacking (eq. 1): the fields sampled at the same pixel;
* trajectory stacking (eq. 2): the fields sampled bilinearly along p_1 = (u, v),
  p_k = p_{k−1} + d_{τ+k−2}(p_{k−1});
* bi-directional: L/2 forward fields d_τ … d_{τ+L/2−1}, then L/2 backward fields going back from τ
  (frame τ → τ−1, then τ−1 → τ−2, …), each half traced from frame τ for trajectories.

With mean subtraction each field's mean displacement is subtracted first. τ is drawn so every field
exists; a clip with fewer fields than needed repeats its last (or first) field. Records are read
through :func:`flowprep.storage.store.decode_records`: a damaged one is a ``CorruptRecordError``
naming video and record.
"""

from __future__ import annotations

import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from flowprep.storage.codec import decode_flow_components
from flowprep.storage.index import IndexEntry
from flowprep.storage.meta import VideoMeta
from flowprep.storage.store import FlowStore, decode_records


@dataclass(slots=True)
class VideoEntry:
    """A video of a split, as inputs need it: id, class label and its numbers of records."""

    video: str
    label: int
    num_frames: int
    num_flows: int
    num_backward: int

    @classmethod
    def of(cls, video: str, counts: VideoMeta | IndexEntry, label: int) -> VideoEntry:
        """The entry of ``video`` from its index entry (or its metadata: anything with the counts)."""
        return cls(video, label, counts.num_frames, counts.num_flows, counts.num_backward)


class VideoEntries(Sequence[VideoEntry]):
    """The videos of a split as arrays: ids (the store's own strings) and int32 label and counts,
    ~30 bytes a video where a list of :class:`VideoEntry` objects costs ~200 (Kinetics: 650k videos in
    every training process and DataLoader worker). Items are built when asked for."""

    def __init__(self, videos: Sequence[str] = (), columns: np.ndarray | None = None):
        self.videos = list(videos)
        self.columns = np.zeros((0, 4), np.int32) if columns is None else columns  # label, frames, flows, back
        if len(self.columns) != len(self.videos):
            raise ValueError("one row of columns per video")

    @classmethod
    def build(cls, items: Iterable[tuple[str, int, VideoMeta | IndexEntry]]) -> VideoEntries:
        """From (video, label, counts) triples."""
        videos, values = [], array.array("i")
        for video, label, counts in items:
            videos.append(video)
            values.extend((label, counts.num_frames, counts.num_flows, counts.num_backward))
        return cls(videos, np.frombuffer(values, np.int32).reshape(-1, 4).copy())

    @property
    def labels(self) -> np.ndarray:
        return self.columns[:, 0]

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return VideoEntries(self.videos[index], self.columns[index])
        label, frames, flows, backward = self.columns[index].tolist()
        return VideoEntry(self.videos[index], label, frames, flows, backward)


def field_indices(tau: int, num_flows: int, length: int, bidirectional: bool) -> list[tuple[str, int]]:
    """(kind, t) of the fields of I_τ in channel order; kind is "flow" (forward) or "back"."""
    last = max(0, num_flows - 1)
    if not bidirectional:
        return [("flow", min(tau + k, last)) for k in range(length)]
    half = length // 2
    forward = [("flow", min(tau + k, last)) for k in range(half)]
    backward = [("back", min(max(tau - 1 - k, 0), last)) for k in range(half)]
    return forward + backward


def tau_range(num_flows: int, length: int, bidirectional: bool) -> tuple[int, int]:
    """Inclusive range of τ for which every field of I_τ exists (a single τ = 0 for short clips).

    Forward fields d_τ … d_{τ+L−1} need τ ≤ num_flows − L. Bi-directional volumes need L/2 backward
    fields before τ (τ ≥ L/2) and L/2 forward fields from τ (τ ≤ num_flows − L/2).
    """
    if bidirectional:
        half = length // 2
        lo, hi = half, num_flows - half
    else:
        lo, hi = 0, num_flows - length
    if hi < lo:
        mid = min(max(num_flows // 2, 0), max(num_flows - 1, 0))
        return mid, mid
    return lo, hi


def _sample(component: np.ndarray, points_x: np.ndarray, points_y: np.ndarray) -> np.ndarray:
    return cv2.remap(component, points_x, points_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


Field = tuple[np.ndarray, np.ndarray]  # (dx, dy): float32 H×W pixels


def stack_fields(fields: Sequence[Field], stacking: str = "optical_flow", mean_subtraction: bool = True,
                 restart_at: int | None = None) -> np.ndarray:
    """2L×H×W volume (channel 2k: dx, 2k+1: dy of field k) from L fields. ``restart_at``: index
    where trajectories start again from frame τ (the backward half of a bi-directional volume)."""
    h, w = fields[0][0].shape
    volume = np.empty((2 * len(fields), h, w), np.float32)
    if stacking == "optical_flow":
        for k, (dx, dy) in enumerate(fields):
            volume[2 * k], volume[2 * k + 1] = dx, dy
    else:
        grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float32)
        px, py = grid_x, grid_y
        for k, (dx, dy) in enumerate(fields):
            if k == restart_at:
                px, py = grid_x, grid_y
            volume[2 * k] = _sample(dx, px, py)
            volume[2 * k + 1] = _sample(dy, px, py)
            px, py = px + volume[2 * k], py + volume[2 * k + 1]
    if mean_subtraction:
        # each field's own mean (sampling a field minus a constant gives the samples minus that constant)
        means = np.array([[dx.mean(), dy.mean()] for dx, dy in fields], np.float32).reshape(-1)
        volume -= means[:, None, None]
    return volume


def read_fields(store: FlowStore, video: str, indices: Sequence[tuple[str, int]],
                decode: Callable = decode_flow_components) -> list:
    """The given (kind, t) flow records decoded by ``decode`` (default: float (dx, dy)), in order; one
    read transaction per kind, each distinct record decoded once."""
    out: dict[tuple[str, int], object] = {}
    for kind in ("flow", "back"):
        ts = sorted({t for k, t in indices if k == kind})
        if ts:
            for t, value in zip(ts, decode_records(store, video, kind, ts, decode), strict=True):
                out[(kind, t)] = value
    return [out[i] for i in indices]


def flow_volume(store: FlowStore, entry: VideoEntry, tau: int, length: int, stacking: str,
                bidirectional: bool, mean_subtraction: bool) -> np.ndarray:
    """The temporal input I_τ of one video: 2L×H×W float32 pixels."""
    fields = read_fields(store, entry.video, field_indices(tau, entry.num_flows, length, bidirectional))
    return stack_fields(fields, stacking, mean_subtraction, restart_at=length // 2 if bidirectional else None)
