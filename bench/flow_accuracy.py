"""EPE (pixels) and time per pair of every flow algorithm on Middlebury and synthetic pairs.

Usage: python bench/flow_accuracy.py [--algo brox --algo tvl1 ...] [--param alpha=3 ...] [--threads 1]

Middlebury pairs are read from ../shared/data/flow-gt (skipped where missing). Prints a table;
no pass/fail.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from flowprep.algorithms.devices import torch_cuda_devices
from flowprep.algorithms.middlebury import end_point_error, read_flo
from flowprep.algorithms.pairs import SYNTHETIC_PAIRS, interior
from flowprep.algorithms.registry import ALGORITHMS, create_flow

FLOW_GT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flow-gt"


def load_pairs() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """name → (first, second, truth, border pixels ignored)."""
    pairs = {}
    for name in ("RubberWhale", "Grove3", "Urban2"):
        folder = FLOW_GT / name
        if (folder / "flow10.flo").exists():
            pairs[name] = (cv2.imread(str(folder / "frame10.png"), cv2.IMREAD_GRAYSCALE),
                           cv2.imread(str(folder / "frame11.png"), cv2.IMREAD_GRAYSCALE),
                           read_flo(str(folder / "flow10.flo")), 0)
    for name, make in SYNTHETIC_PAIRS.items():
        pairs[f"syn:{name}"] = (*make(256, 340), 16)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", action="append", choices=ALGORITHMS)
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE for every algorithm")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1: one core)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    params = {k: float(v) for k, v in (p.split("=", 1) for p in args.param)}
    pairs = load_pairs()
    print(f"# {platform.processor() or platform.machine()}, OpenCV {cv2.__version__}, "
          f"{args.threads} thread(s); EPE in pixels, time in seconds per pair")
    print("| algorithm | " + " | ".join(pairs) + " | mean s/pair |")
    print("|---" * (len(pairs) + 2) + "|")
    runs = [(algo, "auto") for algo in args.algo or list(ALGORITHMS)]
    if "brox" in (args.algo or ALGORITHMS):
        runs.insert(1, ("brox", "torch-cpu"))
        runs += [("brox", "cuda")] if torch_cuda_devices() else []
    for algo, device in runs:
        method = create_flow(algo, params if params else None, device=device)
        errors, seconds = [], []
        for first, second, truth, border in pairs.values():
            start = time.perf_counter()
            flow = method(first, second)
            seconds.append(time.perf_counter() - start)
            if border:
                flow, truth = interior(flow, border), interior(truth, border)
            errors.append(end_point_error(flow, truth))
        label = f"{algo} ({method.implementation}, {method.params.get('device', 'cpu')})"
        print(f"| {label} | " + " | ".join(f"{e:.3f}" for e in errors) + f" | {np.mean(seconds):.3f} |")


if __name__ == "__main__":
    main()
