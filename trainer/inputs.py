"""ConvNet inputs built from flowprep records: volumes, crops, flips, normalisation, packing.

Spatial input: one RGB frame. Temporal input: the volume I_τ of 2L channels built from L flow
fields (section 3.1): channel 2k (0-based) holds dx and 2k+1 holds dy of field k, i.e. the paper's
channels 2k−1 and 2k (1-based) hold d^x and d^y of d_{τ+k−1}. Fields are

* optical flow stacking (eq. 1): the fields sampled at the same pixel;
* trajectory stacking (eq. 2): the fields sampled bilinearly along p_1 = (u, v),
  p_k = p_{k−1} + d_{τ+k−2}(p_{k−1});
* bi-directional: L/2 forward fields d_τ … d_{τ+L/2−1}, then L/2 backward fields going back from τ
  (frame τ → τ−1, then τ−1 → τ−2, …), each half traced from frame τ for trajectories.

With mean subtraction each field's mean displacement is subtracted first. τ is drawn so every field
exists; a clip with fewer fields than needed repeats its last (or first) field.

Augmentation (section 5): a random crop of ``crop``×``crop`` pixels from the whole frame, a random
horizontal flip (for flow: mirror and negate every dx channel), PCA colour jitter on RGB.

Records are read through :func:`flowprep.store.decode_records`: a damaged one is a
``CorruptRecordError`` naming video and record. Datasets and sampling: :mod:`trainer.data`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch

from flowprep.codec import decode_flow_components, decode_rgb_bgr, flow_levels
from flowprep.store import FlowStore, decode_records
from trainer.config import DataConfig
from trainer.crops import (  # noqa: F401 - corner_crops, fit_to_crop: part of this module's interface
    centre_crop,
    corner_crops,
    crop_positions,
    fit_to_crop,
    flip_horizontal,
    jitter_shift,
    random_crop,
    ten_crops,
)
from trainer.encoded import EncodedBatch, EncodedInput, decode_inputs, flow_plan, rgb_plan


@dataclass
class VideoEntry:
    video: str
    label: int
    num_frames: int
    num_flows: int
    num_backward: int


# ---------------------------------------------------------------------------------------------
# Temporal input volumes


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


class PackedInput(NamedTuple):
    """Inputs still as 8-bit levels: the float input is ``levels · scale + offset`` per channel.

    A DataLoader worker hands these to the training process instead of float32 inputs: 4× fewer bytes
    through shared memory (the transfer alone caps float32 112×112×20 inputs at ~1,100/s per worker on
    the development machine, uint8 ones at ~3,600/s: bench/loader.py, bench/RESULTS.md) and to the GPU;
    :func:`as_input` expands them there.
    Shapes: levels uint8 [N×]C×H×W, scale and offset float32 [N×]C.
    """

    levels: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor

    def expand(self) -> torch.Tensor:
        return self.levels.to(torch.float32).mul_(self.scale[..., None, None]).add_(self.offset[..., None, None])


def as_input(batch: torch.Tensor | PackedInput | EncodedBatch, device: torch.device) -> torch.Tensor:
    """A loader batch as float32 N×C×H×W on ``device`` (packed levels are moved first, then expanded;
    encoded ones decoded there)."""
    if isinstance(batch, EncodedBatch):
        return decode_inputs(batch, device)
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return PackedInput(*(t.to(device, non_blocking=True) for t in batch)).expand()


@dataclass
class LevelPlanes:
    """An input still as decoded 8-bit planes: channel c is ``scale[c] · planes[c] + offset[c]``.

    JPEG records decode to uint8 levels, and every step up to the network input is affine per channel
    (dequantisation, mean subtraction, mirroring's sign change, normalisation). So crops are cut and
    mirrored on the 8-bit planes and only the crop is converted, once — where converting, stacking,
    mean-subtracting, cropping, mirroring and scaling whole float frames took six passes over float
    copies (bench/loader.py). ``scale``/``offset`` give the input's own units: flow pixels
    (mean-subtracted when asked) or RGB in [0, 1]. ``mirror_sign`` is −1 for the channels a horizontal
    mirror negates (flow dx), else 1.
    """

    planes: list[np.ndarray]
    scale: np.ndarray
    offset: np.ndarray
    mirror_sign: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.planes[0].shape

    def enlarged(self, crop: int, is_flow: bool) -> LevelPlanes:
        """Planes resized so the smaller side is at least ``crop`` (flow values grow with the frame)."""
        h, w = self.shape
        if min(h, w) >= crop:
            return self
        factor = crop / min(h, w)
        size = (max(crop, round(w * factor)), max(crop, round(h * factor)))
        planes = [cv2.resize(p, size, interpolation=cv2.INTER_LINEAR) for p in self.planes]
        gain = factor if is_flow else 1.0
        return LevelPlanes(planes, self.scale * gain, self.offset * gain, self.mirror_sign)

    def crop(self, top: int, left: int, height: int, width: int, flip: bool = False,
             scale: np.ndarray | float = 1.0, offset: np.ndarray | float = 0.0) -> PackedInput:
        """The region at (top, left), mirrored if ``flip``, normalised as ``scale · x + offset`` per channel
        (``scale``, ``offset``: scalars or one value per channel), still as levels."""
        gain = np.broadcast_to(np.asarray(scale, np.float64), self.scale.shape)
        if flip:
            gain = gain * self.mirror_sign
        levels = np.empty((len(self.planes), height, width), np.uint8)
        for c, plane in enumerate(self.planes):
            view = plane[top:top + height, left:left + width]
            if flip:
                cv2.flip(view, 1, dst=levels[c])
            else:
                levels[c] = view
        return PackedInput(torch.from_numpy(levels), torch.from_numpy((self.scale * gain).astype(np.float32)),
                           torch.from_numpy((self.offset * gain + offset).astype(np.float32)))

    def convert(self, top: int, left: int, height: int, width: int, flip: bool = False,
                scale: np.ndarray | float = 1.0, offset: np.ndarray | float = 0.0) -> np.ndarray:
        """:meth:`crop` expanded to C×height×width float32."""
        return self.crop(top, left, height, width, flip, scale, offset).expand().numpy()

    def full(self) -> np.ndarray:
        return self.convert(0, 0, *self.shape)


def flow_level_planes(store: FlowStore, entry: VideoEntry, tau: int, length: int, bidirectional: bool,
                      mean_subtraction: bool) -> LevelPlanes:
    """The optical-flow-stacked I_τ (eq. 1) as 8-bit planes; each field's mean vector comes from its
    levels (mean = a·mean(level) + b), so no float field is made."""
    fields = read_fields(store, entry.video, field_indices(tau, entry.num_flows, length, bidirectional), flow_levels)
    planes, scale, offset = [], [], []
    for qx, qy, (ax, bx), (ay, by) in fields:
        for q, a, b in ((qx, ax, bx), (qy, ay, by)):
            planes.append(q)
            scale.append(a)
            offset.append(-a * cv2.mean(q)[0] if mean_subtraction else b)
    sign = np.tile(np.array([-1.0, 1.0]), len(fields))
    return LevelPlanes(planes, np.array(scale), np.array(offset), sign)


def rgb_level_planes(store: FlowStore, entry: VideoEntry, t: int) -> LevelPlanes:
    """Frame t as R, G, B 8-bit planes with values in [0, 1]."""
    blue, green, red = cv2.split(decode_records(store, entry.video, "rgb", [t], decode_rgb_bgr)[0])
    return LevelPlanes([red, green, blue], np.full(3, 1 / 255), np.zeros(3), np.ones(3))


@dataclass(frozen=True)
class InputSpec:
    """Everything needed to build one input, picklable for DataLoader workers."""

    stream: str
    flow_stack: int
    stacking: str
    bidirectional: bool
    mean_subtraction: bool
    crop: int
    flip: bool
    rgb_jitter: float
    rgb_mean: tuple[float, float, float]
    rgb_std: tuple[float, float, float]
    flow_scale: float
    decode: str = "cpu"  # cpu: workers decode; device: workers hand over JPEG bytes (trainer.encoded)

    @classmethod
    def from_config(cls, data: DataConfig, device_type: str = "cpu") -> InputSpec:
        """The spec of ``data``; ``data.decode: auto`` decodes on the device where it is a GPU."""
        decode = data.decode
        if decode == "auto":
            decode = "device" if device_type == "cuda" and (data.stream == "spatial"
                                                          or data.stacking == "optical_flow") else "cpu"
        return cls(data.stream, data.flow_stack, data.stacking, data.bidirectional, data.mean_subtraction,
                   data.crop, data.flip, data.rgb_jitter, tuple(data.rgb_mean), tuple(data.rgb_std),
                   data.flow_scale, decode)

    @property
    def channels(self) -> int:
        return 3 if self.stream == "spatial" else 2 * self.flow_stack

    @property
    def from_levels(self) -> bool:
        """Whether inputs are cut from 8-bit planes (all but trajectory stacking, which samples float
        fields along trajectories)."""
        return self.stream == "spatial" or self.stacking == "optical_flow"

    def levels(self, store: FlowStore, entry: VideoEntry, tau: int) -> LevelPlanes:
        """The input at τ as 8-bit planes, enlarged when a side is below the crop (needs :attr:`from_levels`)."""
        if self.stream == "spatial":
            planes = rgb_level_planes(store, entry, tau)
        else:
            planes = flow_level_planes(store, entry, tau, self.flow_stack, self.bidirectional, self.mean_subtraction)
        return planes.enlarged(self.crop, self.stream == "temporal")

    def plan(self, store: FlowStore, entry: VideoEntry, tau: int) -> EncodedInput:
        """The input at τ as JPEG records and a plan, crops not yet chosen (``decode: device``)."""
        if self.stream == "spatial":
            return rgb_plan(store.records(entry.video, "rgb", [tau])[0], self.crop)
        indices = field_indices(tau, entry.num_flows, self.flow_stack, self.bidirectional)
        records = read_fields(store, entry.video, indices, decode=lambda record: record)
        return flow_plan(records, self.mean_subtraction, self.crop)

    def _planned(self, plan: EncodedInput, crops: list[tuple[int, int, bool]], shift: np.ndarray | None,
                 packed: bool) -> torch.Tensor | EncodedInput:
        scale, offset = self.normalisation(shift)
        plan.crops = crops
        plan.norm_scale = np.broadcast_to(np.asarray(scale, np.float64), plan.scale.shape).copy()
        plan.norm_offset = np.broadcast_to(np.asarray(offset, np.float64), plan.scale.shape).copy()
        return plan if packed else decode_inputs([plan], torch.device("cpu"))

    def raw(self, store: FlowStore, entry: VideoEntry, tau: int) -> np.ndarray:
        """The whole-frame C×H×W input at τ before cropping: RGB in [0, 1] or the flow volume in pixels,
        enlarged when a side is below the crop."""
        if self.from_levels:
            return self.levels(store, entry, tau).full()
        array = flow_volume(store, entry, tau, self.flow_stack, self.stacking, self.bidirectional,
                            self.mean_subtraction)
        return fit_to_crop(array, self.crop, True)

    def normalisation(self, shift: np.ndarray | None = None) -> tuple[np.ndarray | float, np.ndarray | float]:
        """(scale, offset) of the normalisation x → scale·x + offset; ``shift``: an RGB colour-jitter shift."""
        if self.stream == "spatial":
            std = np.array(self.rgb_std, np.float64)
            mean = np.array(self.rgb_mean, np.float64) - (0 if shift is None else shift)
            return 1 / std, -mean / std
        return self.flow_scale, 0.0

    def normalise(self, array: np.ndarray) -> torch.Tensor:
        scale, offset = self.normalisation()
        if self.stream == "spatial":
            array = array * np.asarray(scale, np.float32)[:, None, None] + np.asarray(offset, np.float32)[:, None, None]
        else:
            array = array * np.float32(scale)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def tau_range(self, entry: VideoEntry) -> tuple[int, int]:
        if self.stream == "spatial":
            return 0, entry.num_frames - 1
        return tau_range(entry.num_flows, self.flow_stack, self.bidirectional)

    def training_input(self, store: FlowStore, entry: VideoEntry, seed: int,
                       packed: bool = False) -> torch.Tensor | PackedInput | EncodedInput:
        """A random crop at a random τ, randomly mirrored, RGB colour-jittered; the same for the same seed.
        ``packed``: as 8-bit levels where the input allows (:class:`PackedInput`), or with ``decode:
        device`` still encoded (:class:`EncodedInput`)."""
        rng = np.random.default_rng(seed)
        lo, hi = self.tau_range(entry)
        tau = int(rng.integers(lo, hi + 1))
        if not self.from_levels:
            array = random_crop(self.raw(store, entry, tau), self.crop, rng)
            if self.flip and rng.random() < 0.5:
                array = flip_horizontal(array, True)
            return self.normalise(array)
        source = self.plan(store, entry, tau) if self.decode == "device" else self.levels(store, entry, tau)
        h, w = source.shape
        top, left = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
        flip = self.flip and rng.random() < 0.5
        shift = None
        if self.stream == "spatial" and self.rgb_jitter > 0:
            shift = jitter_shift(self.rgb_jitter, rng)
        if self.decode == "device":
            return self._planned(source, [(top, left, flip)], shift, packed)
        out = source.crop(top, left, self.crop, self.crop, flip, *self.normalisation(shift))
        return out if packed else out.expand()

    def test_crops(self, store: FlowStore, entry: VideoEntry, tau: int,
                   packed: bool = False) -> torch.Tensor | PackedInput | EncodedInput:
        """The test protocol's 10 inputs of frame τ: the four corners and the centre, then the same five
        mirrored; 10×C×crop×crop (``packed``: as 8-bit levels where the input allows)."""
        if not self.from_levels:
            return torch.stack([self.normalise(c) for c in ten_crops(self.raw(store, entry, tau), self.crop, True)])
        if self.decode == "device":
            plan = self.plan(store, entry, tau)
            crops = [(top, left, flip) for flip in (False, True) for top, left in crop_positions(plan.shape, self.crop)]
            return self._planned(plan, crops, None, packed)
        levels, (scale, offset) = self.levels(store, entry, tau), self.normalisation()
        crops = [levels.crop(top, left, self.crop, self.crop, flip, scale, offset)
                 for flip in (False, True) for top, left in crop_positions(levels.shape, self.crop)]
        out = PackedInput(*(torch.stack(parts) for parts in zip(*crops, strict=True)))
        return out if packed else out.expand()

    def centre_input(self, store: FlowStore, entry: VideoEntry, packed: bool = False
                     ) -> torch.Tensor | EncodedInput:
        lo, hi = self.tau_range(entry)
        tau = (lo + hi) // 2
        if not self.from_levels:
            return self.normalise(centre_crop(self.raw(store, entry, tau), self.crop))
        if self.decode == "device":
            plan = self.plan(store, entry, tau)
            top, left = crop_positions(plan.shape, self.crop)[4]
            return self._planned(plan, [(top, left, False)], None, packed)
        levels = self.levels(store, entry, tau)
        top, left = crop_positions(levels.shape, self.crop)[4]
        return levels.crop(top, left, self.crop, self.crop, False, *self.normalisation()).expand()
