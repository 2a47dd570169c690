"""Which grey level means 0 px in another tool's flow JPEGs: the README's figures for flowprep import.

Usage: python bench/zero_level.py [FOLDER]   (default ../shared/data/flow-jpeg-reference)

For each x_/y_/flow_x_/flow_y_ JPEG: mean level and the share of pixels at 126, 127, 128 and 129. A
field with almost no motion spreads around the writer's zero: evenly over 127 and 128 (mean 127.5)
for round(255·(d + B)/2B), mostly on 128 for 128 + d·127/B, on 127 and 126 for mmcv's floor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flow-jpeg-reference"


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER
    files = sorted(p for p in folder.glob("*.jpg") if p.name.startswith(("x_", "y_", "flow_x_", "flow_y_")))
    if not files:
        raise SystemExit(f"{folder}: no flow JPEGs (x_00001.jpg, flow_x_00001.jpg, ...)")
    print(f"# {folder}")
    print("| file | mean level | std | at 126 | at 127 | at 128 | at 129 |")
    print("|---|---|---|---|---|---|---|")
    for path in files:
        levels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        share = np.bincount(levels.ravel(), minlength=256) / levels.size
        print(f"| {path.name} | {levels.mean():.3f} | {levels.std():.2f} | "
              + " | ".join(f"{100 * share[v]:.1f}%" for v in (126, 127, 128, 129)) + " |")


if __name__ == "__main__":
    main()
