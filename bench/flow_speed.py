"""Frame pairs per second of every flow backend, at 320×240 and 340×256, for several batch sizes.

Usage: python bench/flow_speed.py [--batches 1,8,32,128] [--cpu-batches 1,8] [--seconds 3] [--threads N]

Backends: brox on the CPU (VariationalRefinement pyramid), the PyTorch brox on the CPU and on every
CUDA GPU torch sees, OpenCV's CUDA brox where OpenCV has CUDA, tvl1, farneback, dis. Batch sizes
apply to the batched PyTorch brox; the others solve one pair at a time (batch 1). Prints a table;
no pass/fail.
"""

from __future__ import annotations

import argparse
import platform
import time

import cv2
import numpy as np

from flowprep.algorithms.devices import has_opencv_cuda_brox, torch_cuda_devices
from flowprep.algorithms.pairs import translation
from flowprep.algorithms.registry import create_flow

SIZES = ((320, 240), (340, 256))


def pairs_per_second(method, size: tuple[int, int], batch: int, seconds: float) -> float:
    w, h = size
    firsts, seconds_ = [], []
    for i in range(batch):
        a, b, _ = translation(h, w, dx=3.0 + 0.1 * i, dy=-1.0, seed=i)
        firsts.append(a)
        seconds_.append(b)
    method.max_batch = batch
    method.many(firsts[:1], seconds_[:1])  # warm-up (allocations, kernels)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        method.many(firsts, seconds_)
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32,128", help="batch sizes of the PyTorch brox on a GPU")
    parser.add_argument("--cpu-batches", default="1,8", help="batch sizes of the PyTorch brox on the CPU")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=0, help="OpenCV/torch threads (0: library default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        cv2.setNumThreads(args.threads)
        torch.set_num_threads(args.threads)
    runs = [("brox", "cpu", [1]), ("brox", "torch-cpu", [int(b) for b in args.cpu_batches.split(",")])]
    for gpu in range(torch_cuda_devices()):
        runs.append(("brox", f"cuda:{gpu}", [int(b) for b in args.batches.split(",")]))
    if has_opencv_cuda_brox():
        runs.append(("brox", "opencv-cuda", [1]))
    runs += [("tvl1", "auto", [1]), ("farneback", "auto", [1]), ("dis", "auto", [1])]
    print(f"# {platform.machine()} {platform.processor()}, OpenCV {cv2.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| backend | implementation | device | batch | 320x240 pairs/s | 340x256 pairs/s |")
    print("|---|---|---|---|---|---|")
    for algo, device, batches in runs:
        if device.startswith("cuda:"):
            method = create_flow(algo, device="cuda", gpu=int(device[5:]))
        elif device == "opencv-cuda":
            method = create_flow(algo, device="cuda")
        else:
            method = create_flow(algo, device=device)
        for batch in batches:
            rates = [pairs_per_second(method, size, batch, args.seconds) for size in SIZES]
            where = method.params.get("device", "cpu")
            print(f"| {algo} | {method.implementation} | {where} | {batch} | "
                  + " | ".join(f"{r:.1f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
