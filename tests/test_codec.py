"""The [0,255] + JPEG flow encoding and the RGB JPEG records."""

from __future__ import annotations

import numpy as np
import pytest

from flowprep.algorithms.middlebury import end_point_error
from flowprep.algorithms.pairs import moving_object
from flowprep.algorithms.registry import create_flow
from flowprep.storage.codec import (
    HEADER,
    RecordError,
    decode_flow,
    decode_rgb,
    encode_flow,
    encode_rgb,
    parse_bound,
)


def test_zero_flow_decodes_to_exactly_zero() -> None:
    flow = np.zeros((64, 80, 2), np.float32)
    decoded = decode_flow(encode_flow(flow, 20.0, 90))
    assert decoded.dtype == np.float32 and decoded.shape == flow.shape
    assert np.abs(decoded).max() == 0.0


def test_values_are_rounded_to_the_nearest_level_not_truncated() -> None:
    step = 20.0 / 127
    # 0.6 and 0.4 of a step: rounding gives 1 and 0 steps, truncation would give 0 and 0
    flow = np.zeros((64, 64, 2), np.float32)
    flow[..., 0] = 0.6 * step
    flow[..., 1] = -0.6 * step
    decoded = decode_flow(encode_flow(flow, 20.0, 100))
    assert np.allclose(decoded[..., 0], step, atol=1e-5)
    assert np.allclose(decoded[..., 1], -step, atol=1e-5)


def test_fixed_bound_clips_and_keeps_sign() -> None:
    flow = np.zeros((32, 32, 2), np.float32)
    flow[:, :16, 0] = 35.0
    flow[:, 16:, 0] = -35.0
    decoded = decode_flow(encode_flow(flow, 20.0, 100))
    assert np.allclose(decoded[4:-4, 2:12, 0], 20.0, atol=0.2)
    assert np.allclose(decoded[4:-4, 20:30, 0], -20.0, atol=0.2)
    assert np.abs(decoded).max() <= 20.0


def test_adaptive_bound_keeps_range_and_does_not_clip() -> None:
    rng = np.random.default_rng(0)
    flow = np.stack([np.full((40, 40), 0.0), np.zeros((40, 40))], -1).astype(np.float32)
    flow[10:30, 10:30, 0] = 33.0
    flow[..., 1] = rng.uniform(-3, -1, (40, 40))
    record = encode_flow(flow, "adaptive", 100)
    _, _, mode, x_lo, x_hi, y_lo, y_hi, _, _ = HEADER.unpack_from(record)
    assert mode == 1 and (x_lo, x_hi) == (0.0, 33.0)
    assert y_lo == pytest.approx(flow[..., 1].min()) and y_hi == pytest.approx(flow[..., 1].max())
    decoded = decode_flow(record)
    assert decoded[20, 20, 0] == pytest.approx(33.0, abs=0.2)
    assert np.abs(decoded - flow).mean() < 0.05


def test_constant_field_in_adaptive_mode() -> None:
    flow = np.full((16, 16, 2), 2.5, np.float32)
    assert np.allclose(decode_flow(encode_flow(flow, "adaptive", 90)), 2.5)


def test_round_trip_adds_little_error_to_real_flow() -> None:
    first, second, _ = moving_object()
    flow = create_flow("dis")(first, second)
    for bound, limit in ((20.0, 0.12), ("adaptive", 0.05)):
        decoded = decode_flow(encode_flow(flow, bound, 90))
        assert end_point_error(decoded, flow) < limit, bound
    assert len(encode_flow(flow, 20.0, 90)) < flow.nbytes / 20


def test_rgb_round_trip_returns_rgb_order() -> None:
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    rgb = decode_rgb(encode_rgb(bgr, 95))
    assert rgb.shape == (48, 64, 3)
    assert rgb[..., 2].mean() > 190 and rgb[..., 0].mean() < 10


def test_corrupt_records_raise_record_error() -> None:
    record = encode_flow(np.zeros((16, 16, 2), np.float32), 20.0, 90)
    with pytest.raises(RecordError):
        decode_flow(record[:10])
    with pytest.raises(RecordError):
        decode_flow(record[:-5])
    with pytest.raises(RecordError):
        decode_flow(b"XX" + record[2:])
    with pytest.raises(RecordError):
        decode_rgb(b"not a jpeg")


@pytest.mark.parametrize("text,expected", [("20", 20.0), ("adaptive", "adaptive"), ("7.5", 7.5)])
def test_parse_bound(text: str, expected: object) -> None:
    assert parse_bound(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "twenty"])
def test_parse_bound_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bound"):
        parse_bound(text)
