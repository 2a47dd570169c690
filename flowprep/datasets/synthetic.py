"""The built-in dataset: small real AVI videos whose classes need one stream or the other.

Two kinds of classes, as the paper's argument for two streams:

* motion-only classes (``MoveUp``, ``MoveDown``, ``MoveSideways``, ``Oscillate``, ``Rotate``, ``Still``,
  ``Expand``, ``Contract``): every clip shows an object drawn from ONE shared appearance distribution
  (a textured ellipse of random shape, texture and muted colour); only the motion tells the classes
  apart. Start positions, angles and sizes are drawn so that a single frame has the same distribution
  in, e.g., ``MoveUp`` and ``MoveDown`` or ``Expand`` and ``Contract``.
* appearance-only classes (``RedDisc``, ``BlueSquare``, ``GreenTriangle``, ``YellowStar``,
  ``PurpleCross``, ``CyanRing``): a class-specific shape and colour, moving with a motion drawn from
  the same pool for every class; only the appearance tells them apart.

Every clip has its own textured, coloured background, random object size, placement and speed,
sensor noise and a little camera shake. Every class is unchanged by a horizontal flip, as real
actions are, because training and testing flip their inputs: left and right moves form one class
(``MoveSideways``), and so do both directions of rotation. Output is the UCF-101 layout:
``videos/<Class>/v_<Class>_gGG_cCC.avi`` (Xvid, MPEG-4 part 2, as UCF-101), and ``splits/`` with
``classInd.txt``, ``trainlist01.txt`` and ``testlist01.txt`` (test: the first quarter of the groups,
as UCF-101's split 1 holds out groups 1-7), plus ``classes.json`` saying which class is of which
kind. Deterministic for a given seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from flowprep.algorithms.pairs import texture
from flowprep.errors import SettingError

MOTIONS = ("MoveUp", "MoveDown", "MoveSideways", "Oscillate", "Rotate", "Still", "Expand", "Contract")
APPEARANCES = {  # class → (shape, hue in OpenCV's 0-179)
    "RedDisc": ("disc", 0),
    "BlueSquare": ("square", 115),
    "GreenTriangle": ("triangle", 60),
    "YellowStar": ("star", 28),
    "PurpleCross": ("cross", 140),
    "CyanRing": ("ring", 90),
}


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of the built-in dataset. ``width``/``height`` in pixels, ``frames`` per clip."""

    motion_classes: int = 8
    appearance_classes: int = 4
    clips_per_class: int = 16
    clips_per_group: int = 2
    frames: int = 24
    width: int = 170
    height: int = 128
    fps: float = 25.0
    noise: float = 3.0  # grey levels, standard deviation of the sensor noise
    shake: float = 0.6  # pixels, standard deviation of the per-frame camera shake
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.motion_classes <= len(MOTIONS):
            raise SettingError("motion_classes", f"must be 0..{len(MOTIONS)}", self.motion_classes)
        if not 0 <= self.appearance_classes <= len(APPEARANCES):
            raise SettingError("appearance_classes", f"must be 0..{len(APPEARANCES)}", self.appearance_classes)
        if self.motion_classes + self.appearance_classes < 2:
            raise SettingError("motion_classes", "+ appearance_classes must be >= 2 (classes of the dataset)",
                               self.motion_classes + self.appearance_classes)
        if self.clips_per_class < 2 * self.clips_per_group:
            raise SettingError("clips_per_class", "must cover at least two groups (one for test, one for training)",
                               self.clips_per_class)
        if self.frames < 2:
            raise SettingError("frames", "must be >= 2", self.frames)
        if min(self.width, self.height) < 48:
            raise SettingError("width", "and height must be >= 48 pixels", f"{self.width}x{self.height}")

    def classes(self) -> dict[str, str]:
        """Class name → "motion" or "appearance", in label order."""
        kinds = {name: "motion" for name in MOTIONS[: self.motion_classes]}
        kinds.update({name: "appearance" for name in list(APPEARANCES)[: self.appearance_classes]})
        return kinds


def _colourise(grey: np.ndarray, hue: int, saturation: int) -> np.ndarray:
    hsv = np.empty(grey.shape + (3,), np.uint8)
    hsv[..., 0] = hue
    hsv[..., 1] = saturation
    hsv[..., 2] = grey
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 size×size mask in [0, 1] of a shape centred in the square, about size/2 across."""
    mask = np.zeros((size, size), np.uint8)
    c, r = size // 2, size // 4
    if shape == "ellipse":
        axes = (int(r * rng.uniform(1.0, 1.3)), int(r * rng.uniform(0.65, 0.95)))
        cv2.ellipse(mask, (c, c), axes, 0, 0, 360, 255, -1, cv2.LINE_AA)
    elif shape == "disc":
        cv2.circle(mask, (c, c), r, 255, -1, cv2.LINE_AA)
    elif shape == "ring":
        cv2.circle(mask, (c, c), r, 255, -1, cv2.LINE_AA)
        cv2.circle(mask, (c, c), r // 2, 0, -1, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(mask, (c - r * 9 // 10, c - r * 9 // 10), (c + r * 9 // 10, c + r * 9 // 10), 255, -1)
    elif shape == "triangle":
        pts = [(c + r * math.cos(a), c + r * math.sin(a)) for a in np.radians([-90, 30, 150])]
        cv2.fillPoly(mask, [np.array(pts, np.int32)], 255, cv2.LINE_AA)
    elif shape == "star":
        pts = [(c + (r if i % 2 == 0 else r * 0.45) * math.cos(a), c + (r if i % 2 == 0 else r * 0.45) * math.sin(a))
               for i, a in enumerate(np.radians(np.arange(-90, 270, 36)))]
        cv2.fillPoly(mask, [np.array(pts, np.int32)], 255, cv2.LINE_AA)
    elif shape == "cross":
        w = r // 3
        cv2.rectangle(mask, (c - r, c - w), (c + r, c + w), 255, -1)
        cv2.rectangle(mask, (c - w, c - r), (c + w, c + r), 255, -1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask.astype(np.float32) / 255.0


def _trajectory(motion: str, cfg: SynthConfig, radius: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame centre (T×2, pixels), angle (T, degrees) and scale (T) of the object."""
    t = np.arange(cfg.frames, dtype=np.float64)
    span = cfg.frames - 1
    lo = np.array([radius + 2, radius + 2])
    hi = np.array([cfg.width - radius - 2, cfg.height - radius - 2])
    angle0 = rng.uniform(0, 360)
    angles = np.full(cfg.frames, angle0)
    scales = np.full(cfg.frames, rng.uniform(0.7, 1.6))  # sizes overlap those of Expand/Contract
    if motion.startswith("Move"):
        sideways = rng.choice([(-1, 0), (1, 0)])
        direction = {"MoveUp": (0, -1), "MoveDown": (0, 1), "MoveSideways": tuple(sideways)}[motion]
        axis = 0 if direction[1] == 0 else 1
        room = hi[axis] - lo[axis]
        speed = min(rng.uniform(1.5, 3.0), 0.9 * room / max(span, 1))  # pixels per frame
        velocity = np.array(direction, np.float64) * speed
        start_lo = np.where(velocity < 0, lo - velocity * span, lo)
        start_hi = np.where(velocity > 0, hi - velocity * span, hi)
        start = rng.uniform(start_lo, start_hi)
        centres = start[None, :] + velocity[None, :] * t[:, None]
    elif motion == "Oscillate":
        axis = int(rng.integers(2))
        amplitude, period = rng.uniform(5.0, 10.0), rng.uniform(6.0, 10.0)  # pixels, frames
        centre = rng.uniform(lo, hi)
        centres = np.repeat(centre[None, :], cfg.frames, axis=0)
        centres[:, axis] += amplitude * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    else:
        centres = np.repeat(rng.uniform(lo, hi)[None, :], cfg.frames, axis=0)
        if motion == "Rotate":
            angles = angle0 + rng.choice([-1.0, 1.0]) * rng.uniform(8.0, 14.0) * t  # degrees per frame
        elif motion in ("Expand", "Contract"):
            # the object grows (or shrinks) by a factor of 2.5-3.5 over the clip, whatever its length
            rate = rng.uniform(2.5, 3.5) ** ((t if motion == "Expand" else span - t) / max(span, 1))
            scales = rng.uniform(0.45, 0.6) * rate
    return centres, angles, scales


def render_clip(kind: str, name: str, cfg: SynthConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """BGR uint8 frames of one clip of class ``name`` (``kind`` "motion" or "appearance")."""
    h, w = cfg.height, cfg.width
    background = _colourise(texture(h, w, int(rng.integers(1 << 30))), int(rng.integers(0, 180)),
                            int(rng.integers(40, 140)))
    size = int(min(h, w) * rng.uniform(0.55, 0.75)) | 1  # object square; the shape is ~size/2 across
    grain = texture(size, size, int(rng.integers(1 << 30)))
    if kind == "motion":
        mask = _shape_mask("ellipse", size, rng)
        patch = _colourise(np.clip(grain.astype(np.int32) * 3 // 5 + 90, 0, 255).astype(np.uint8),
                           int(rng.integers(0, 180)), int(rng.integers(30, 90)))
        motion = name
    else:
        shape, hue = APPEARANCES[name]
        mask = _shape_mask(shape, size, rng)
        patch = _colourise(np.clip(grain.astype(np.int32) // 2 + 110, 0, 255).astype(np.uint8), hue, 230)
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    centres, angles, scales = _trajectory(motion, cfg, size / 4 * 1.3, rng)
    shake = rng.normal(0, cfg.shake, (cfg.frames, 2))
    frames = []
    for t in range(cfg.frames):
        m = cv2.getRotationMatrix2D((size / 2, size / 2), angles[t], scales[t])
        m[:, 2] += centres[t] - size / 2
        obj = cv2.warpAffine(patch, m, (w, h), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
        frame = background * (1 - alpha) + obj * alpha
        camera = np.array([[1.0, 0, shake[t, 0]], [0, 1.0, shake[t, 1]]])
        frame = cv2.warpAffine(frame.astype(np.float32), camera, (w, h), borderMode=cv2.BORDER_REFLECT)
        frame += rng.normal(0, cfg.noise, frame.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def clip_name(class_name: str, clip: int, cfg: SynthConfig) -> tuple[str, int]:
    """("<Class>/v_<Class>_gGG_cCC", group) of clip index ``clip`` (0-based)."""
    group, index = divmod(clip, cfg.clips_per_group)
    return f"{class_name}/v_{class_name}_g{group + 1:02d}_c{index + 1:02d}", group + 1


def write_dataset(out: str | Path, cfg: SynthConfig = SynthConfig(),
                  on_clip: Callable[[], None] | None = None) -> dict:
    """Write the dataset under ``out`` (``videos/``, ``splits/``, ``classes.json``); returns a summary."""
    out = Path(out)
    classes = cfg.classes()
    groups = math.ceil(cfg.clips_per_class / cfg.clips_per_group)
    test_groups = max(1, groups // 4)
    train_lines, test_lines = [], []
    for label, (name, kind) in enumerate(classes.items()):
        (out / "videos" / name).mkdir(parents=True, exist_ok=True)
        for clip in range(cfg.clips_per_class):
            rng = np.random.default_rng([cfg.seed, label, clip])
            video, group = clip_name(name, clip, cfg)
            path = out / "videos" / f"{video}.avi"
            tmp = path.with_name(f".{path.name}.tmp.avi")
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"XVID"), cfg.fps, (cfg.width, cfg.height))
            if not writer.isOpened():
                raise RuntimeError(f"{tmp}: OpenCV cannot write Xvid AVI files here")
            for frame in render_clip(kind, name, cfg, rng):
                writer.write(frame)
            writer.release()
            tmp.replace(path)
            if group <= test_groups:
                test_lines.append(f"{video}.avi")
            else:
                train_lines.append(f"{video}.avi {label + 1}")
            if on_clip is not None:
                on_clip()
    splits = out / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    (splits / "trainlist01.txt").write_text("".join(f"{line}\n" for line in train_lines))
    (splits / "testlist01.txt").write_text("".join(f"{line}\n" for line in test_lines))
    summary = {"classes": classes, "train": len(train_lines), "test": len(test_lines), "config": asdict(cfg)}
    (out / "classes.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
