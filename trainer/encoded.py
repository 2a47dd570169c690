"""Inputs decoded on the training device (``data.decode: device``).

On the CPU path a DataLoader worker decodes a temporal input's 20 JPEGs (about 80 % of its cost,
bench/loader.py) and hands over 8-bit crops. Here the worker only reads the records (one LMDB
transaction, no decoding) and draws the crop, flip and jitter; it hands over the JPEG bytes and
a plan (:class:`EncodedInput`). The training process decodes the whole batch's JPEGs in one call of
torchvision's ``decode_jpeg`` on its device (nvJPEG on a GPU) and applies the plan with tensor ops:
the same affine-per-channel steps as :class:`trainer.planes.LevelPlanes` — dequantisation, each
field's mean subtracted (from its decoded levels), enlarging a frame smaller than the crop, crops,
mirroring with dx negated, normalisation. The result equals the CPU path's to within the decoders'
rounding (both are libjpeg-turbo on a CPU: identical; an enlarged frame: 1 level).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flowprep.storage.codec import FIXED, level_affine, unpack_flow_record
from flowprep.storage.jpeg import jpeg_info
from flowprep.storage.shard import CorruptRecordError


@dataclass
class EncodedInput:
    """One sample's JPEG records and what to cut from them; channel c of a crop at (top, left) is
    ``scale[c] · level + offset[c]`` where ``offset`` is taken from the plane's mean level instead
    with ``mean_subtraction`` (offset = −scale · mean)."""

    jpegs: list[bytes]  # one RGB frame (3 planes), or the grey dx and dy of each field
    colour: bool
    size: tuple[int, int]  # (height, width) of the decoded planes, pixels
    scale: np.ndarray  # per channel: level → input units, before normalisation
    offset: np.ndarray
    low: np.ndarray  # per channel: lowest level (1 for fixed-bound flow: JPEG may return 0)
    mean_subtraction: bool
    mirror_sign: np.ndarray  # −1 where a mirror negates the channel (flow dx)
    enlarge: tuple[int, int] | None  # (height, width) to resize the planes to, pixels
    gain: float  # values grow with an enlarged flow field
    crop: int
    crops: list[tuple[int, int, bool]]  # (top, left, flip) in the (enlarged) planes
    norm_scale: np.ndarray  # per channel: the normalisation x → norm_scale · x + norm_offset
    norm_offset: np.ndarray
    where: str = ""  # video and records, named when the device cannot decode them

    @property
    def shape(self) -> tuple[int, int]:
        return self.enlarge or self.size


class EncodedBatch(list):
    """The samples of one batch, decoded together by :func:`decode_inputs`."""


def enlarged_size(size: tuple[int, int], crop: int) -> tuple[tuple[int, int] | None, float]:
    """((height, width) or None, factor): the planes' size once the smaller side is at least ``crop``,
    as :meth:`trainer.planes.LevelPlanes.enlarged` computes it."""
    h, w = size
    if min(h, w) >= crop:
        return None, 1.0
    factor = crop / min(h, w)
    return (max(crop, round(h * factor)), max(crop, round(w * factor))), factor


def flow_plan(records: Sequence[bytes], mean_subtraction: bool, crop: int) -> EncodedInput:
    """The plan of a flow volume from its L records in channel order (crops filled in by the caller)."""
    jpegs, scale, offset, low = [], [], [], []
    for record in records:
        mode, x_range, y_range, jx, jy = unpack_flow_record(record)
        for jpeg, (lo, hi) in ((jx, x_range), (jy, y_range)):
            a, b = level_affine(mode, lo, hi)
            jpegs.append(bytes(jpeg))
            scale.append(a)
            offset.append(b)
            low.append(1 if mode == FIXED else 0)
    info = jpeg_info(jpegs[0])
    enlarge, factor = enlarged_size((info.height, info.width), crop)
    channels = len(jpegs)
    return EncodedInput(jpegs, False, (info.height, info.width), np.array(scale), np.array(offset), np.array(low),
                        mean_subtraction, np.tile(np.array([-1.0, 1.0]), channels // 2), enlarge, factor, crop, [],
                        np.ones(channels), np.zeros(channels))


def rgb_plan(record: bytes, crop: int) -> EncodedInput:
    """The plan of one RGB frame (values in [0, 1] before normalisation)."""
    info = jpeg_info(record)
    enlarge, _ = enlarged_size((info.height, info.width), crop)
    return EncodedInput([bytes(record)], True, (info.height, info.width), np.full(3, 1 / 255), np.zeros(3),
                        np.zeros(3), False, np.ones(3), enlarge, 1.0, crop, [], np.ones(3), np.zeros(3))


def _decode_all(batch: Sequence[EncodedInput], device: torch.device) -> list[torch.Tensor]:
    """Every sample's planes as a C×H×W uint8 tensor on ``device``: one decode_jpeg call per kind."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[list[torch.Tensor]] = [[] for _ in batch]
    for colour, mode in ((False, ImageReadMode.GRAY), (True, ImageReadMode.RGB)):
        owners = [i for i, s in enumerate(batch) if s.colour == colour for _ in s.jpegs]
        if not owners:
            continue
        data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for s in batch if s.colour == colour
                for j in s.jpegs]
        try:
            images = decode_jpeg(data, mode=mode, device=device)
        except RuntimeError as exc:
            raise _undecodable(batch, colour, mode, device, exc) from None
        for owner, image in zip(owners, images, strict=True):
            out[owner].append(image)
    return [torch.cat(planes) for planes in out]


def _undecodable(batch: Sequence[EncodedInput], colour: bool, mode: object, device: torch.device,
                 exc: RuntimeError) -> CorruptRecordError:
    """The error naming the sample whose JPEGs the device's decoder refuses (found by decoding each alone)."""
    from torchvision.io import decode_jpeg

    for sample in batch:
        if sample.colour != colour:
            continue
        try:
            decode_jpeg([torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in sample.jpegs], mode=mode,
                        device=device)
        except RuntimeError as own:
            exc = own
            break
    else:
        sample = None
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    where = sample.where if sample is not None and sample.where else "a sample of the batch"
    return CorruptRecordError(f"{where}: a JPEG does not decode on {device} ({first[:200]})")


def _regions(planes: torch.Tensor, sample: EncodedInput) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The sample's crop regions (uint8 views, or float where the frame was enlarged, unflipped) and the
    mean level of each plane (float64, before enlarging, as the CPU path takes it)."""
    if sample.low.any():
        low = torch.as_tensor(sample.low, dtype=torch.uint8, device=planes.device)
        planes = torch.maximum(planes, low[:, None, None])
    # an int32 sum is exact (≤ 255·H·W) and a quarter of the time of a float64 one
    mean = planes.sum(dim=(1, 2), dtype=torch.int32).to(torch.float64) / (planes.shape[1] * planes.shape[2])
    if sample.enlarge is not None:
        planes = F.interpolate(planes[None].to(torch.float32), size=sample.enlarge, mode="bilinear",
                               align_corners=False)[0].round_().clamp_(0, 255)
    c = sample.crop
    return [planes[:, top:top + c, left:left + c] for top, left, _ in sample.crops], mean


def decode_inputs(batch: Sequence[EncodedInput], device: torch.device) -> torch.Tensor:
    """All crops of all samples, in order, as float32 N×C×crop×crop on ``device``.

    Per sample only views are taken; the conversion x = scale · level + offset of every crop (mirror,
    mean subtraction and normalisation folded into scale and offset) runs as one batched operation."""
    planes = _decode_all(batch, device)
    regions, means = [], []
    for p, sample in zip(planes, batch, strict=True):
        crops, mean = _regions(p, sample)
        regions += crops
        means += [mean] * len(crops)
    owner = np.array([i for i, s in enumerate(batch) for _ in s.crops])
    flips = np.array([flip for s in batch for _, _, flip in s.crops], bool)

    def per_crop(values: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(np.stack(values)[owner], dtype=torch.float64, device=device)

    scale = per_crop([s.scale * s.gain for s in batch])
    fixed_offset = per_crop([s.offset * s.gain for s in batch])
    subtract = per_crop([np.full(len(s.scale), float(s.mean_subtraction)) for s in batch])
    offset = subtract * (-scale * torch.stack(means)) + (1 - subtract) * fixed_offset
    sign = torch.where(torch.as_tensor(flips, device=device)[:, None], per_crop([s.mirror_sign for s in batch]), 1.0)
    gain = per_crop([s.norm_scale for s in batch]) * sign
    s_all = (scale * gain).to(torch.float32)[:, :, None, None]
    o_all = (offset * gain + per_crop([s.norm_offset for s in batch])).to(torch.float32)[:, :, None, None]
    levels = torch.stack([r.to(torch.float32) for r in regions]) if any(s.enlarge for s in batch) \
        else torch.stack(regions)
    if flips.any():
        index = torch.as_tensor(np.flatnonzero(flips), device=device)
        levels[index] = levels[index].flip(-1)
    return levels.to(torch.float32).mul_(s_all).add_(o_all)


def collate(batch: list) -> object:
    """The DataLoader's collate function: encoded samples stay a list (an :class:`EncodedBatch`), the
    rest is stacked as torch does."""
    first = batch[0]
    if isinstance(first, EncodedInput):
        return EncodedBatch(batch)
    if isinstance(first, tuple) and isinstance(first[0], EncodedInput):
        inputs = EncodedBatch(item[0] for item in batch)
        rest = torch.utils.data.default_collate([item[1:] for item in batch])
        return (inputs, *rest)
    return torch.utils.data.default_collate(batch)
