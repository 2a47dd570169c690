"""Pictures of stored flow: the paper's Figure 2 panels (frame, dx, dy) and a colour-coded field."""

from __future__ import annotations

import cv2
import numpy as np

from flowprep.errors import SettingError
from flowprep.storage.store import FlowStore


def flow_to_colour(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """RGB uint8 picture of a flow field: hue = direction, brightness = magnitude.

    ``max_magnitude`` (pixels) maps to full brightness; default: the field's own largest magnitude.
    """
    dx, dy = flow[..., 0], flow[..., 1]
    magnitude, angle = cv2.cartToPolar(dx.astype(np.float32), dy.astype(np.float32), angleInDegrees=True)
    top = max_magnitude if max_magnitude else float(magnitude.max())
    hsv = np.empty(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (angle / 2).astype(np.uint8)  # OpenCV hue is 0..179
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(magnitude / max(top, 1e-6) * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def component_to_grey(component: np.ndarray, bound: float) -> np.ndarray:
    """One flow component as the grey picture it is stored as: ±bound pixels → 0..255, 0 → 128."""
    return np.clip(128 + component * (127 / bound), 0, 255).astype(np.uint8)


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((24, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def figure(store: FlowStore, video: str, t: int) -> np.ndarray:
    """RGB picture: frame t, its dx and dy (grey: black −m, mid-grey 0, white +m pixels, m the largest
    component of the field) and the colour-coded flow t → t+1."""
    meta = store.video_meta(video)
    if not 0 <= t < meta.num_flows:
        raise SettingError("frame", f"is out of range ({video} has frames 0..{meta.num_frames - 1} and flow "
                           f"fields 0..{meta.num_flows - 1})", t)
    frame = store.rgb(video, t)
    flow = store.flow(video, t)
    # grey panels stretched to the field's largest component so small motion stays visible
    bound = max(float(np.abs(flow).max()), 0.5)
    dx = cv2.cvtColor(component_to_grey(flow[..., 0], bound), cv2.COLOR_GRAY2RGB)
    dy = cv2.cvtColor(component_to_grey(flow[..., 1], bound), cv2.COLOR_GRAY2RGB)
    magnitude = float(np.linalg.norm(flow, axis=-1).max())
    panels = [
        _label(frame, f"frame {t}"),
        _label(dx, f"dx (+-{bound:.1f} px)"),
        _label(dy, f"dy (+-{bound:.1f} px)"),
        _label(flow_to_colour(flow), f"flow (max {magnitude:.1f} px)"),
    ]
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    return np.hstack(row)
