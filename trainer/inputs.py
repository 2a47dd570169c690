"""ConvNet inputs built from flowprep records: what one input is (:class:`InputSpec`), and the three
ways it is built, one class each behind one interface.

Spatial input: one RGB frame. Temporal input: the volume I_τ of 2L channels built from L flow
fields (section 3.1, :mod:`trainer.volumes`). Augmentation (section 5): a random crop of
``crop``×``crop`` pixels from the whole frame, a random horizontal flip (for flow: mirror and negate
every dx channel), PCA colour jitter on RGB. Testing: the four corners and the centre, and the same
mirrored; validation: the centre crop of the middle frame.

The three builders share the draws (τ, crop, flip, jitter: the same for the same seed) and differ
in what a worker hands over:

* :class:`FloatInputs`: float C×H×W inputs (trajectory stacking, which samples float fields along
  trajectories);
* :class:`LevelInputs`: crops cut from the decoded 8-bit planes, handed over still as levels
  (:class:`trainer.planes.PackedInput`, 4× fewer bytes), expanded on the device;
* :class:`EncodedInputs` (``data.decode: device``): the JPEG records and a plan, decoded on the
  device (:mod:`trainer.encoded`).

:func:`to_device` is the one place where a loader batch becomes the network's input on its device
(expanded or decoded, channels_last on CUDA). Datasets and sampling: :mod:`trainer.data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from flowprep.storage.codec import checked_flow, checked_rgb
from flowprep.storage.store import FlowStore, decode_records
from trainer.config import DataConfig
from trainer.crops import crop_positions, fit_to_crop, flip_horizontal, jitter_shift
from trainer.encoded import EncodedBatch, EncodedInput, decode_inputs, flow_plan, rgb_plan
from trainer.planes import LevelPlanes, PackedInput, flow_level_planes, rgb_level_planes
from trainer.volumes import VideoEntry, field_indices, flow_volume, read_fields, tau_range

Crop = tuple[int, int, bool]  # (top, left, mirrored) in pixels of the whole (enlarged) frame
Built = torch.Tensor | PackedInput | EncodedInput


class InputBuilder(Protocol):
    """How one kind of input is built: ``load`` the whole frame at τ (anything with ``shape`` (H, W)),
    then ``cut`` crops from it, normalised (``shift``: an RGB colour-jitter shift). ``single``: one crop,
    returned without a batch dimension. ``packed``: as levels or still encoded where the kind allows."""

    def load(self, store: FlowStore, entry: VideoEntry, tau: int) -> object: ...

    def cut(self, source: object, crops: list[Crop], shift: np.ndarray | None, packed: bool, single: bool
            ) -> Built: ...


class _FloatFrame:
    """A whole float C×H×W input with the (H, W) ``shape`` the builders' sources have."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape = array.shape[1:]


@dataclass(frozen=True)
class FloatInputs:
    """Float inputs (trajectory stacking): the whole volume in pixels, cropped, mirrored, normalised."""

    spec: InputSpec

    def load(self, store: FlowStore, entry: VideoEntry, tau: int) -> _FloatFrame:
        return _FloatFrame(self.spec.raw(store, entry, tau))

    def cut(self, source: _FloatFrame, crops: list[Crop], shift: np.ndarray | None, packed: bool, single: bool
            ) -> torch.Tensor:
        c = self.spec.crop
        out = []
        for top, left, flip in crops:
            region = source.array[:, top:top + c, left:left + c]
            out.append(self.spec.normalise(flip_horizontal(region, True) if flip else region))
        return out[0] if single else torch.stack(out)


@dataclass(frozen=True)
class LevelInputs:
    """Inputs cut from 8-bit planes (:class:`trainer.planes.LevelPlanes`); ``packed``: still as levels."""

    spec: InputSpec

    def load(self, store: FlowStore, entry: VideoEntry, tau: int) -> LevelPlanes:
        return self.spec.levels(store, entry, tau)

    def cut(self, source: LevelPlanes, crops: list[Crop], shift: np.ndarray | None, packed: bool, single: bool
            ) -> torch.Tensor | PackedInput:
        c = self.spec.crop
        scale, offset = self.spec.normalisation(shift)
        parts = [source.crop(top, left, c, c, flip, scale, offset) for top, left, flip in crops]
        out = parts[0] if single else PackedInput(*(torch.stack(p) for p in zip(*parts, strict=True)))
        return out if packed else out.expand()


@dataclass(frozen=True)
class EncodedInputs:
    """Inputs left as JPEG records with a plan (:class:`trainer.encoded.EncodedInput`), decoded on the
    device; not ``packed``: decoded here, on the CPU."""

    spec: InputSpec

    def load(self, store: FlowStore, entry: VideoEntry, tau: int) -> EncodedInput:
        spec = self.spec
        # checked strictly here (at 1/8 scale) so that no damaged JPEG data reaches the device's decoder,
        # which would decode some of it without a word
        if spec.stream == "spatial":
            plan = rgb_plan(decode_records(store, entry.video, "rgb", [tau], checked_rgb)[0], spec.crop)
            plan.where = f"{entry.video}: rgb record {tau} in {store.root}"
            return plan
        indices = field_indices(tau, entry.num_flows, spec.flow_stack, spec.bidirectional)
        records = read_fields(store, entry.video, indices, decode=checked_flow)
        plan = flow_plan(records, spec.mean_subtraction, spec.crop)
        plan.where = f"{entry.video}: flow records {', '.join(f'{k} {t}' for k, t in indices)} in {store.root}"
        return plan

    def cut(self, source: EncodedInput, crops: list[Crop], shift: np.ndarray | None, packed: bool, single: bool
            ) -> torch.Tensor | EncodedInput:
        scale, offset = self.spec.normalisation(shift)
        source.crops = crops
        source.norm_scale = np.broadcast_to(np.asarray(scale, np.float64), source.scale.shape).copy()
        source.norm_offset = np.broadcast_to(np.asarray(offset, np.float64), source.scale.shape).copy()
        return source if packed else decode_inputs([source], torch.device("cpu"))


@dataclass(frozen=True)
class InputSpec:
    """Everything needed to build one input, picklable for DataLoader workers. ``crop``: pixels;
    ``rgb_mean``/``rgb_std``: of RGB in [0, 1]; ``flow_scale``: flow pixels → network units."""

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

    @property
    def builder(self) -> InputBuilder:
        """The builder of this kind of input."""
        if not self.from_levels:
            return FloatInputs(self)
        return EncodedInputs(self) if self.decode == "device" else LevelInputs(self)

    def levels(self, store: FlowStore, entry: VideoEntry, tau: int) -> LevelPlanes:
        """The input at τ as 8-bit planes, enlarged when a side is below the crop (needs :attr:`from_levels`)."""
        if self.stream == "spatial":
            planes = rgb_level_planes(store, entry, tau)
        else:
            planes = flow_level_planes(store, entry, tau, self.flow_stack, self.bidirectional, self.mean_subtraction)
        return planes.enlarged(self.crop, self.stream == "temporal")

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

    def training_input(self, store: FlowStore, entry: VideoEntry, seed: int, packed: bool = False) -> Built:
        """A random crop at a random τ, randomly mirrored, RGB colour-jittered; the same for the same seed.
        ``packed``: as 8-bit levels where the input allows (:class:`PackedInput`), or with ``decode:
        device`` still encoded (:class:`EncodedInput`)."""
        rng = np.random.default_rng(seed)
        lo, hi = self.tau_range(entry)
        tau = int(rng.integers(lo, hi + 1))
        builder = self.builder
        source = builder.load(store, entry, tau)
        h, w = source.shape
        top, left = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
        flip = self.flip and rng.random() < 0.5
        shift = None
        if self.stream == "spatial" and self.rgb_jitter > 0:
            shift = jitter_shift(self.rgb_jitter, rng)
        return builder.cut(source, [(top, left, flip)], shift, packed, single=True)

    def test_crops(self, store: FlowStore, entry: VideoEntry, tau: int, packed: bool = False) -> Built:
        """The test protocol's 10 inputs of frame τ: the four corners and the centre, then the same five
        mirrored; 10×C×crop×crop (``packed``: as 8-bit levels where the input allows)."""
        builder = self.builder
        source = builder.load(store, entry, tau)
        crops = [(top, left, flip) for flip in (False, True) for top, left in crop_positions(source.shape, self.crop)]
        return builder.cut(source, crops, None, packed, single=False)

    def centre_input(self, store: FlowStore, entry: VideoEntry, packed: bool = False) -> Built:
        """The centre crop of the middle τ (validation)."""
        lo, hi = self.tau_range(entry)
        builder = self.builder
        source = builder.load(store, entry, (lo + hi) // 2)
        top, left = crop_positions(source.shape, self.crop)[4]
        return builder.cut(source, [(top, left, False)], None, packed, single=True)


def as_input(batch: torch.Tensor | PackedInput | EncodedBatch, device: torch.device) -> torch.Tensor:
    """A loader batch as float32 N×C×H×W on ``device`` (packed levels are moved first, then expanded;
    encoded ones decoded there)."""
    if isinstance(batch, EncodedBatch):
        return decode_inputs(batch, device)
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return PackedInput(*(t.to(device, non_blocking=True) for t in batch)).expand()


def to_device(batch: torch.Tensor | PackedInput | EncodedBatch, device: torch.device) -> torch.Tensor:
    """A loader batch as the network's input on ``device``: :func:`as_input`, in channels_last memory
    format on CUDA (the format the net is kept in there)."""
    x = as_input(batch, device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x
