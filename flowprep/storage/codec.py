"""Flow fields and RGB frames as JPEG bytes, as the paper stores them.

Each flow component (dx, dy) is linearly rescaled to [0, 255], rounded and stored as a grey JPEG;
decoding rescales back to float32 pixels. Two ways to rescale:

* a fixed bound B (``bound=20``): values are clipped to [-B, B] and mapped with 0 px exactly on grey
  level 128 (``q = 128 + round(d · 127 / B)``, so q ∈ [1, 255]); still background decodes to exactly
  0 instead of the +B/255 bias of the usual [-B, B] → [0, 255] map. Step: B/127 px.
* ``bound="adaptive"``: each component of each field is mapped from its own [min, max] to [0, 255]
  and min/max are kept in the record (the paper's "linearly rescaled"). Nothing is clipped.

The second mode is a plain linear range (level 0 → lo, level 255 → hi); ``flowprep import`` uses it
for other tools' flow JPEGs, stored byte for byte, with lo/hi set from their bound and zero level
(:func:`linear_range`).

A flow record is a 28-byte header followed by the two JPEG streams::

    b"FL" | version u8 (1) | mode u8 (0 fixed, 1 adaptive)
    | x_lo f32 | x_hi f32 | y_lo f32 | y_hi f32 | len_x u32 | len_y u32 | jpeg_x | jpeg_y

(little endian). For the fixed mode lo = -B and hi = B.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from flowprep.storage.jpeg import JpegError, decode_strict

HEADER = struct.Struct("<2sBBffffII")
MAGIC = b"FL"
VERSION = 1
FIXED, ADAPTIVE = 0, 1
LINEAR = ADAPTIVE  # levels 0..255 spread linearly over [lo, hi]: per field (adaptive) or store-wide (imported)


class RecordError(ValueError):
    """A stored record that does not decode."""


def parse_bound(text: str | float | int) -> float | str:
    """``"adaptive"`` or a positive bound in pixels, from a CLI or metadata value."""
    if isinstance(text, str) and text.strip().lower() == "adaptive":
        return "adaptive"
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"bound must be a number of pixels or 'adaptive', got {text!r}") from None
    if not value > 0:
        raise ValueError(f"bound must be > 0 pixels, got {value}")
    return value


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _unjpeg(data: bytes | memoryview, flags: int) -> np.ndarray:
    """Decode strictly: damaged JPEG data is a RecordError even where libjpeg makes a picture of it."""
    try:
        return decode_strict(data, flags)
    except JpegError as exc:
        raise RecordError(f"corrupt JPEG: {exc}") from None


def _quantise_fixed(component: np.ndarray, bound: float) -> np.ndarray:
    q = np.rint(component * (127.0 / bound)) + 128.0
    return np.clip(q, 1, 255).astype(np.uint8)


def _quantise_adaptive(component: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(component.min()), float(component.max())
    if hi - lo < 1e-6:
        return np.zeros(component.shape, np.uint8), lo, lo
    q = np.rint((component - lo) * (255.0 / (hi - lo)))
    return np.clip(q, 0, 255).astype(np.uint8), lo, hi


def encode_flow(flow: np.ndarray, bound: float | str, quality: int) -> bytes:
    """One flow field (H×W×2 float32 pixels) as a record: header + JPEG(dx) + JPEG(dy)."""
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be H×W×2, got {flow.shape}")
    if bound == "adaptive":
        qx, x_lo, x_hi = _quantise_adaptive(flow[..., 0])
        qy, y_lo, y_hi = _quantise_adaptive(flow[..., 1])
        mode = ADAPTIVE
    else:
        b = float(bound)
        qx, qy = _quantise_fixed(flow[..., 0], b), _quantise_fixed(flow[..., 1], b)
        x_lo = y_lo = -b
        x_hi = y_hi = b
        mode = FIXED
    jx, jy = _jpeg(qx, quality), _jpeg(qy, quality)
    return HEADER.pack(MAGIC, VERSION, mode, x_lo, x_hi, y_lo, y_hi, len(jx), len(jy)) + jx + jy


def level_affine(mode: int, lo: float, hi: float) -> tuple[float, float]:
    """(a, b) with pixels = a·level + b for one component (level 128 gives exactly 0 in the fixed mode)."""
    if mode == FIXED:
        a = hi / 127.0
        return a, -128.0 * a
    return (hi - lo) / 255.0, lo


def level_values(a: float, b: float) -> np.ndarray:
    """The 256 float32 pixel values of the grey levels under d = a·level + b (a look-up table)."""
    return (a * np.arange(256, dtype=np.float64) + b).astype(np.float32)


def linear_range(bound: float, zero_level: float) -> tuple[float, float]:
    """(lo, hi) in pixels of levels 0 and 255 for a tool that maps ±``bound`` pixels onto [0, 255] with
    0 px at grey level ``zero_level``: d = (level − zero_level) · 2·bound/255. 127.5 is the map of
    TSN's dense_flow and denseflow (round(255·(d + B)/2B)); 127 that of mmcv's quantize_flow."""
    step = 2.0 * float(bound) / 255.0
    return -zero_level * step, (255.0 - zero_level) * step


def pack_flow_jpegs(jpeg_x: bytes, jpeg_y: bytes, lo: float, hi: float,
                    y_range: tuple[float, float] | None = None) -> bytes:
    """A flow record around two existing grey JPEGs (the bytes are kept exactly), in the linear mode:
    level 0 of dx means ``lo`` pixels, 255 ``hi``; dy the same, or ``y_range`` where it differs."""
    y_lo, y_hi = (lo, hi) if y_range is None else y_range
    return HEADER.pack(MAGIC, VERSION, LINEAR, lo, hi, y_lo, y_hi, len(jpeg_x), len(jpeg_y)) + jpeg_x + jpeg_y


def unpack_flow_record(record: bytes | memoryview) -> tuple[int, tuple[float, float], tuple[float, float],
                                                            memoryview, memoryview]:
    """(mode, (x_lo, x_hi), (y_lo, y_hi), jpeg_x, jpeg_y) of a flow record, without decoding."""
    if len(record) < HEADER.size:
        raise RecordError("flow record shorter than its header")
    magic, version, mode, x_lo, x_hi, y_lo, y_hi, nx, ny = HEADER.unpack_from(record)
    if magic != MAGIC or version != VERSION or mode not in (FIXED, ADAPTIVE):
        raise RecordError("not a flow record (bad magic, version or mode)")
    if HEADER.size + nx + ny != len(record):
        raise RecordError(f"flow record is {len(record)} bytes, header says {HEADER.size + nx + ny}")
    data = memoryview(record)
    return mode, (x_lo, x_hi), (y_lo, y_hi), data[HEADER.size:HEADER.size + nx], data[HEADER.size + nx:]


def checked_rgb(record: bytes | memoryview) -> bytes | memoryview:
    """The RGB record itself once its JPEG data decodes strictly, checked at 1/8 scale (every entropy-coded
    bit is read, little else: 60 % of a full decode); RecordError otherwise. For readers that hand the
    bytes on undecoded (decoding on a GPU, ``data.decode: device``)."""
    _unjpeg(record, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return record


def checked_flow(record: bytes | memoryview) -> bytes | memoryview:
    """The flow record itself once its two JPEGs decode strictly (see :func:`checked_rgb`)."""
    _, _, _, jpeg_x, jpeg_y = unpack_flow_record(record)
    _unjpeg(jpeg_x, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    _unjpeg(jpeg_y, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return record


def flow_levels(record: bytes | memoryview) -> tuple[np.ndarray, np.ndarray, tuple[float, float], tuple[float, float]]:
    """dx and dy as decoded grey levels (uint8 H×W each) and, per component, (a, b) with pixels = a·level + b.

    For callers that crop or rescale before converting to float (trainer/inputs.py): they convert only the
    pixels they keep. In the fixed mode the levels are clamped to [1, 255] (JPEG can return 0), so the
    affine map alone gives the clipped value, and the mean of a field is a·mean(levels) + b. A 3-channel
    JPEG (some tools write grey flow that way) is read as its luma, which is the grey value.
    """
    mode, (x_lo, x_hi), (y_lo, y_hi), jpeg_x, jpeg_y = unpack_flow_record(record)
    qx = _unjpeg(jpeg_x, cv2.IMREAD_GRAYSCALE)
    qy = _unjpeg(jpeg_y, cv2.IMREAD_GRAYSCALE)
    if qx.shape != qy.shape:
        raise RecordError(f"dx is {qx.shape}, dy is {qy.shape}")
    if mode == FIXED:
        cv2.max(qx, 1, dst=qx)
        cv2.max(qy, 1, dst=qy)
    return qx, qy, level_affine(mode, x_lo, x_hi), level_affine(mode, y_lo, y_hi)


def decode_flow_components(record: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dy) as float32 H×W arrays in pixels."""
    qx, qy, ax, ay = flow_levels(record)
    return cv2.LUT(qx, level_values(*ax)), cv2.LUT(qy, level_values(*ay))


def decode_flow(record: bytes | memoryview) -> np.ndarray:
    """A flow record back to float32 H×W×2 pixels."""
    dx, dy = decode_flow_components(record)
    return np.stack([dx, dy], axis=-1)


def encode_rgb(frame_bgr: np.ndarray, quality: int) -> bytes:
    """A BGR uint8 frame (OpenCV's order) as JPEG bytes."""
    return _jpeg(frame_bgr, quality)


def decode_rgb_bgr(record: bytes | memoryview) -> np.ndarray:
    """JPEG bytes back to a BGR uint8 H×W×3 frame (OpenCV's order)."""
    return _unjpeg(record, cv2.IMREAD_COLOR)


def decode_rgb(record: bytes | memoryview) -> np.ndarray:
    """JPEG bytes back to an RGB uint8 H×W×3 frame."""
    return cv2.cvtColor(decode_rgb_bgr(record), cv2.COLOR_BGR2RGB)
