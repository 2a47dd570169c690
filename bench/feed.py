"""Does the loader feed the train step? Compute limit, loader rate per decode path, and trainer fit.

Usage: python bench/feed.py [--store DIR] [--batch N] [--workers 1 2] [--steps 20] [--width 1.0]
                            [--streams temporal spatial]

For each stream at the paper's input (224² crops, L = 10; the store's frames 340×256):
(a) compute: train steps/s (SGD, forward + backward) of CNN-M-2048 with inputs already on the device
    (bf16 autocast + channels_last on CUDA), in samples/s;
(b) loader: training inputs/s delivered to the device by a DataLoader with N workers, for each decode
    path: ``cpu`` (workers decode, hand over 8-bit crops) and ``device`` (workers hand over JPEG bytes,
    the device decodes the batch in one call); counted once the float batch is on the device;
(c) ``trainer fit``'s own samples/s (median over its log windows after the first) on the same store;
and the ratio loader/compute: ≥ 1 means the loader keeps up. Batch 256 on a GPU, 8 on a CPU.

Without ``--store`` a store is made once from the real clips in ../shared/data/videos (DIS flow,
short side 256), with a split file naming every clip for both training and test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from flowprep.extract import run_extract
from flowprep.storage.settings import ExtractSettings
from flowprep.storage.store import FlowStore
from trainer.config import load_config
from trainer.encoded import collate
from trainer.fit import fit
from trainer.inputs import InputSpec, to_device
from trainer.metrics import read_rows
from trainer.models import build_model
from trainer.volumes import VideoEntry

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_store(root: Path) -> Path:
    """The real clips' store and a UCF-101-format split (each clip its own class) under ``root``."""
    videos = sorted(p for p in (SHARED / "videos").rglob("*") if p.suffix in (".avi", ".mp4"))
    if not videos:
        raise SystemExit(f"{SHARED / 'videos'}: no clips; give --store")
    clips = root / "clips"
    for i, video in enumerate(videos):
        (clips / f"C{i}").mkdir(parents=True, exist_ok=True)
        link = clips / f"C{i}" / f"v_C{i}_g01_c01{video.suffix}"
        if not link.exists():
            link.symlink_to(video)
    store = root / "store"
    if not store.is_dir():
        run_extract(clips, store, ExtractSettings(algo="dis", short_side=256), workers=os.cpu_count() or 1)
    splits = root / "splits"
    splits.mkdir(exist_ok=True)
    (splits / "classInd.txt").write_text("".join(f"{i + 1} C{i}\n" for i in range(len(videos))))
    lines = "".join(f"C{i}/v_C{i}_g01_c01.avi {i + 1}\n" for i in range(len(videos)))
    for name in ("trainlist01.txt", "testlist01.txt"):
        (splits / name).write_text(lines)
    return root


def entries(store: FlowStore) -> list[VideoEntry]:
    return [VideoEntry.of(meta.video, meta, 0) for meta in store.iter_video_meta()]


def compute_rate(stream: str, batch: int, width: float, steps: int, device: torch.device) -> float:
    """Training samples/s with the inputs already on the device."""
    model = build_model(stream, 10, {"ucf101": 101}, width, 0.9, 224).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = to_device(torch.randn(batch, 3 if stream == "spatial" else 20, 224, 224), device)
    y = torch.randint(0, 101, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(x)["ucf101"].float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


class Inputs(torch.utils.data.Dataset):
    def __init__(self, spec: InputSpec, store: FlowStore, videos: list[VideoEntry]):
        self.spec, self.store, self.videos = spec, store, videos

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, i: int):
        return self.spec.training_input(self.store, self.videos[i % len(self.videos)], i, packed=True), 0


def loader_rate(spec: InputSpec, store: FlowStore, videos: list[VideoEntry], batch: int, workers: int,
                batches: int, device: torch.device) -> float:
    """Training inputs/s as float batches on ``device``."""
    loader = torch.utils.data.DataLoader(Inputs(spec, store, videos), batch_size=batch, num_workers=workers,
                                         collate_fn=collate, pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if workers else None)
    it = iter(loader)
    for _ in range(2):  # workers started, caches warm
        to_device(next(it)[0], device)
    start = time.perf_counter()
    for _ in range(batches):
        x = to_device(next(it)[0], device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    del x
    return batches * batch / (time.perf_counter() - start)


def fit_rate(root: Path, stream: str, decode: str, batch: int, width: float, workers: int, steps: int,
             work: Path) -> float:
    """``trainer fit``'s samples/s: the median of its log windows after the first."""
    run = work / f"fit-{stream}-{decode}"
    cfg = {"run": {"dir": str(run), "device": "auto"},
           "data": {"datasets": [{"name": "clips", "store": str(root / "store"), "splits": str(root / "splits"),
                                  "split_format": "ucf101"}],
                    "stream": stream, "flow_stack": 10, "crop": 224, "workers": workers, "decode": decode},
           "model": {"width": width},
           "optim": {"batch_size": batch, "lr": 1e-4, "schedule": "custom", "iterations": steps,
                     "milestones": [steps]},  # a low LR: a speed run must not diverge at batch 8
           "train": {"log_every": max(1, steps // 5), "val_every": 0, "val_videos": 1, "checkpoint_every": 10**6}}
    path = work / f"fit-{stream}-{decode}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    fit(load_config(path))
    rates = [float(r["samples_per_s"]) for r in read_rows(run / "metrics.csv") if r["kind"] == "train"]
    return statistics.median(rates[1:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None, help="A folder made by this script (store/, splits/).")
    parser.add_argument("--batch", type=int, default=None, help="[default: 256 on a GPU, 8 on a CPU]")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=None, help="Train steps per figure [default: 30 GPU, 4 CPU].")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--streams", nargs="+", default=["temporal", "spatial"])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    batch = args.batch or (256 if cuda else 8)
    steps = args.steps or (30 if cuda else 4)
    work = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    root = args.store or make_store(Path(tempfile.gettempdir()) / "bench-feed-store")
    store = FlowStore(root / "store")
    videos = entries(store)
    name = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"# {name}, torch {torch.__version__}; batch {batch}, 224x224, L = 10, CNN-M-2048 width {args.width}; "
          f"store {root / 'store'} ({len(videos)} videos)")
    print("| stream | figure | decode | workers | samples/s | loader / compute |")
    print("|---|---|---|---|---|---|")
    for stream in args.streams:
        compute = compute_rate(stream, batch, args.width, steps, device)
        print(f"| {stream} | (a) compute limit | - | - | {compute:.1f} | 1.00 |")
        for decode in ("cpu", "device"):
            spec = InputSpec(stream, 10, "optical_flow", False, True, 224, True, 0.1, (0.485, 0.456, 0.406),
                             (0.229, 0.224, 0.225), 0.05, decode)
            for workers in args.workers:
                rate = loader_rate(spec, store, videos, batch, workers, max(3, steps), device)
                print(f"| {stream} | (b) loader | {decode} | {workers} | {rate:.1f} | {rate / compute:.2f} |")
        for decode in ("cpu", "device"):
            workers = max(args.workers)
            rate = fit_rate(root, stream, decode, batch, args.width, workers, max(10, 3 * steps), work)
            print(f"| {stream} | (c) trainer fit | {decode} | {workers} | {rate:.1f} | {rate / compute:.2f} |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
