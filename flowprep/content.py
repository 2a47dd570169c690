"""Does the stored flow explain the stored frames? (``flowprep verify --content``)

A store can be consistent with itself and still wrong: flow paired with the wrong frames (an import
that read another tool's numbering wrongly), x and y swapped, the sign flipped (backward flow stored
as forward), the wrong bound or zero level (every field too small or too large by a factor, or off
by a constant), or flow of another video. None of that shows in counts or checksums; it shows when
the flow is used for what it means: field t, the flow from frame t to t+1, warps frame t+1 back onto
frame t.

For a few fields t of a video, both frames are made grey, shrunk to at most 160 pixels wide (the
flow with them) and blurred a little; frame t+1 is warped back by the field (bilinear) and compared
with frame t: the mean absolute difference in grey levels over the pixels the warp keeps inside the
frame. The same is done for the other readings of the field (each a *hypothesis*): zero flow; the
field paired one frame earlier (frames t−1, t) or later (t+1, t+2); x and y swapped; the sign flipped;
the field halved or doubled (a bound off by 2×); the field plus a constant of 1 or 2 pixels in x
and y (a zero level off). Each reading's difference is taken relative to zero flow's on the frame
pair it uses, and pairs whose frames barely change are left out (every reading fits them equally;
a video with no other pair gives no verdict). The stored reading must explain the frames better
than zero flow by a clear margin, and no other reading may explain them clearly better; otherwise
the verdict names the reading that does. Steady motion fits the neighbouring pairings as well as
the right one: then the pairing is not confirmed, and nothing is reported against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from flowprep.storage.codec import decode_flow, decode_rgb
from flowprep.storage.shard import StoreError
from flowprep.storage.store import FlowStore, decode_records

WIDTH = 160  # pixels: the check's frames are shrunk to this width at most
FIELDS = 8  # moving frame pairs checked per video, spread over it (of up to 4× as many candidates)
STILL = 1.0  # grey levels: a frame pair that differs by less (mean, after blurring) is not used
GAIN = 0.15  # the stored reading must leave at most 1 − GAIN of zero flow's difference
MARGIN = 0.12  # another reading must leave at most 1 − MARGIN of the stored one's to be the verdict
OFFSETS = [(dx, dy) for dx in (-2, -1, 0, 1, 2) for dy in (-2, -1, 0, 1, 2) if (dx, dy) != (0, 0)]  # pixels

# hypothesis → (what the verdict says, the frame pair it uses relative to t, how it changes the field)
HYPOTHESES: dict[str, tuple[str, int, Callable[[np.ndarray], np.ndarray] | None]] = {
    "stored": ("ok", 0, lambda f: f),
    "earlier": ("pairing off by one: field t is the flow from frame t−1 to t", -1, lambda f: f),
    "later": ("pairing off by one: field t is the flow from frame t+1 to t+2", 1, lambda f: f),
    "swapped": ("x and y swapped", 0, lambda f: f[..., ::-1]),
    "flipped": ("sign flipped (backward flow stored as forward)", 0, lambda f: -f),
    "halved": ("flow too large by about 2× (bound or scale wrong)", 0, lambda f: f / 2),
    "doubled": ("flow too small by about 2× (bound or scale wrong)", 0, lambda f: f * 2),
    "offset": ("flow off by a constant of 1-2 pixels (zero level wrong)", 0, None),  # best of OFFSETS
}


@dataclass
class ContentResult:
    """The check of one video: ``verdict`` is "ok", a hypothesis name, "explains-nothing", "unreadable" (a
    damaged record), "still" (no verdict) or "short" (too few frames); ``residuals``: per hypothesis,
    the difference it leaves relative to zero flow's."""

    video: str
    verdict: str
    message: str
    residuals: dict[str, float] = field(default_factory=dict)
    fields: list[int] = field(default_factory=list)

    @property
    def problem(self) -> bool:
        return self.verdict not in ("ok", "still", "short")


def _grey(rgb: np.ndarray, scale: float) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(grey, (0, 0), 1.0)


def _small_flow(flow: np.ndarray, shape: tuple[int, int], scale: float) -> np.ndarray:
    if scale >= 1:
        return flow
    return cv2.resize(flow, (shape[1], shape[0]), interpolation=cv2.INTER_AREA) * scale


def difference(first: np.ndarray, second: np.ndarray, flow: np.ndarray | None) -> float:
    """Mean |second warped back by flow − first| (grey levels) over pixels whose source lies inside the
    frame, 4 pixels from its edges (flow None: zero flow); inf where fewer than a quarter of them do."""
    h, w = first.shape
    if flow is None:
        return float(np.abs(second - first)[4:-4, 4:-4].mean())
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
    warped = cv2.remap(second, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    inside[:4], inside[-4:], inside[:, :4], inside[:, -4:] = False, False, False, False
    if inside.sum() < 0.25 * h * w:
        return float("inf")
    return float(np.abs(warped - first)[inside].mean())


def check_video(store: FlowStore, video: str, fields: int = FIELDS) -> ContentResult:
    """The content check of one video of ``store`` (see the module docstring). ``residuals``: per
    hypothesis, its mean difference over zero flow's on the same frame pairs."""
    entry = store.entry(video)
    if not (entry.has("rgb") and entry.has("flow")) or entry.num_flows < 2:
        return ContentResult(video, "short", "too few frames and fields to check (needs 3 frames)")
    # candidates spread over the video, visited coarse to fine, until ``fields`` of them move
    candidates = sorted({int(t) for t in np.linspace(0, entry.num_flows - 1, min(4 * fields, entry.num_flows)).round()})
    ts = [candidates[i] for i in _coarse_to_fine(len(candidates))]
    scale = min(1.0, WIDTH / entry.width) if entry.width else 1.0
    greys: dict[int, np.ndarray] = {}

    def grey(t: int) -> np.ndarray:
        if t not in greys:
            greys[t] = _grey(decode_records(store, video, "rgb", [t], decode_rgb)[0], scale)
        return greys[t]

    zeros: dict[int, float] = {}  # zero flow's difference on pair (t, t+1): six readings share one pair

    def zero_difference(t: int) -> float:
        if t not in zeros:
            zeros[t] = difference(grey(t), grey(t + 1), None)
        return zeros[t]

    ratios: dict[str, list[float]] = {name: [] for name in HYPOTHESES}
    moving = []
    for t in ts:
        if len(moving) == fields:
            break
        flow = None
        for name, (_, shift, change) in HYPOTHESES.items():
            first = t + shift
            if not 0 <= first < entry.num_flows:
                continue
            zero = zero_difference(first)
            if zero < STILL:
                continue
            if flow is None:
                flow = _small_flow(decode_records(store, video, "flow", [t], decode_flow)[0], grey(t).shape, scale)
            if change is None:
                residual = min(difference(grey(first), grey(first + 1), flow + np.array((dx, dy), np.float32) * scale)
                               for dx, dy in OFFSETS)
            else:
                residual = difference(grey(first), grey(first + 1), change(flow))
            ratios[name].append(residual / zero)
            if name == "stored":
                moving.append(t)
    residuals = {name: float(np.mean(values)) for name, values in ratios.items() if values}
    return _verdict(video, residuals, sorted(moving))


def _coarse_to_fine(n: int) -> list[int]:
    """0..n−1 in an order that spreads any prefix over the range (bit-reversed strides)."""
    order, step = [], 1 << max(0, (n - 1).bit_length())
    seen = set()
    while step:
        for i in range(0, n, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
        step //= 2
    return order


def _verdict(video: str, residuals: dict[str, float], ts: list[int]) -> ContentResult:
    if "stored" not in residuals:
        return ContentResult(video, "still", "frames barely change: no verdict", residuals, ts)
    stored = residuals["stored"]
    others = {k: v for k, v in residuals.items() if k != "stored"}
    best = min(others, key=others.get, default=None)
    if best is not None and others[best] < stored * (1 - MARGIN) and others[best] < 1 - GAIN:
        return ContentResult(video, best, f"{HYPOTHESES[best][0]} (read so it leaves {others[best]:.0%} of zero "
                             f"flow's difference, as stored {stored:.0%})", residuals, ts)
    if stored > 1 - GAIN:
        return ContentResult(video, "explains-nothing", f"flow that explains nothing (it leaves {stored:.0%} of "
                             "zero flow's difference)", residuals, ts)
    return ContentResult(video, "ok", f"flow explains the frames (it leaves {stored:.0%} of zero flow's "
                         "difference)", residuals, ts)


def check_store(store: FlowStore, videos: Iterable[str] | None = None,
                on_video: Callable[[ContentResult], None] | None = None) -> list[ContentResult]:
    """The content check of ``videos`` (default: all) of ``store``."""
    out = []
    for video in store.videos() if videos is None else videos:
        try:
            result = check_video(store, video)
        except StoreError as exc:  # a damaged record: verify names it too
            result = ContentResult(video, "unreadable", f"not checked: {exc}")
        out.append(result)
        if on_video is not None:
            on_video(result)
    return out
