"""Inputs as decoded 8-bit planes, cut and converted only where needed.

JPEG records decode to uint8 levels, and every step up to the network input is affine per channel
(dequantisation, mean subtraction, mirroring's sign change, normalisation): crops are cut from the
planes and only the crop is converted (:class:`LevelPlanes`), and DataLoader workers hand over the
crop still as levels (:class:`PackedInput`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch

from flowprep.storage.codec import decode_rgb_bgr, flow_levels
from flowprep.storage.store import FlowStore, decode_records
from trainer.volumes import VideoEntry, field_indices, read_fields


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
