"""Bytes per flow field, compression ratio vs float32 and EPE added by the [0,255] + JPEG round trip.

Usage: python bench/storage.py [--videos DIR] [--pairs-per-clip 24] [--algo brox]

Computes flow (default brox, frames scaled to a 256 px short side) on pairs spread over each real
clip in ../shared/data/videos, encodes every field with each bound and JPEG quality, and prints a
table. The paper's figure: UCF-101 flow 1.5 TB as float → 27 GB as JPEG, 55x.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from flowprep.algorithms.middlebury import end_point_error
from flowprep.algorithms.registry import ALGORITHMS, create_flow
from flowprep.storage.codec import decode_flow, encode_flow
from flowprep.video import read_frames

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
SETTINGS = [(20.0, 75), (20.0, 90), (20.0, 95), ("adaptive", 75), ("adaptive", 90), ("adaptive", 95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=VIDEOS)
    parser.add_argument("--pairs-per-clip", type=int, default=24)
    parser.add_argument("--algo", choices=ALGORITHMS, default="brox")
    args = parser.parse_args()
    clips = sorted(p for p in args.videos.rglob("*") if p.suffix in (".avi", ".mp4"))
    if not clips:
        raise SystemExit(f"{args.videos}: no clips")
    method = create_flow(args.algo)
    flows = []
    for clip in clips:
        _, frames = read_frames(clip)
        grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
        for t in np.linspace(0, len(grey) - 2, args.pairs_per_clip).round().astype(int):
            flows.append(method(grey[t], grey[t + 1]))
    magnitudes = np.concatenate([np.abs(f).ravel() for f in flows])
    print(f"# {len(flows)} {args.algo} fields from {len(clips)} clips ({args.videos}), "
          f"{flows[0].shape[1]}x{flows[0].shape[0]} and similar; "
          f"{100 * (magnitudes > 20).mean():.3f}% of components beyond ±20 px")
    print("| bound | JPEG quality | bytes/field | ratio vs float32 | EPE added (px) | of which clipping (px) "
          "| 95th pct. field EPE (px) |")
    print("|---|---|---|---|---|---|---|")
    for bound, quality in SETTINGS:
        sizes, errors, codec_errors, raw = [], [], [], 0
        for flow in flows:
            record = encode_flow(flow, bound, quality)
            decoded = decode_flow(record)
            clipped = np.clip(flow, -bound, bound) if bound != "adaptive" else flow
            sizes.append(len(record))
            errors.append(end_point_error(decoded, flow))
            codec_errors.append(end_point_error(decoded, clipped))
            raw += flow.nbytes
        print(f"| {bound} | {quality} | {np.mean(sizes):.0f} | {raw / sum(sizes):.0f}x | "
              f"{np.mean(errors):.4f} | {np.mean(errors) - np.mean(codec_errors):.4f} | "
              f"{np.percentile(errors, 95):.3f} |")


if __name__ == "__main__":
    main()
