"""Input loading speed: our LMDB shards against one JPEG file per field (the layout other tools write).

Usage: python bench/loader.py [--store data/flow/synthetic] [--samples 512] [--workers 1,2]

Reads random training inputs — spatial (one RGB frame) and temporal (L = 10 stacked flow fields) —
through a DataLoader, from the store and from the same JPEG bytes written as files
(``img_00001.jpg``, ``x_00001.jpg``, ``y_00001.jpg`` in one folder per video, as in
../shared/data/flow-jpeg-reference), with the same decoder (OpenCV) and the same input code.
Prints samples/s; no pass/fail. Makes the built-in dataset's store first if it is missing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flowprep.codec import HEADER
from flowprep.store import FlowStore
from trainer.data import InputSpec, PackedInput, VideoEntry, as_input

REPO = Path(__file__).resolve().parents[1]


class FileStore:
    """The FlowStore reading interface over one-file-per-field folders (flow records rebuilt from the
    x_/y_ JPEG files, so decoding is identical)."""

    def __init__(self, root: Path, headers: dict[str, bytes]):
        self.root, self.headers = root, headers

    def records(self, video: str, kind: str, ts) -> list[bytes]:
        folder = self.root / video
        if kind == "rgb":
            return [(folder / f"img_{t + 1:05d}.jpg").read_bytes() for t in ts]
        out = []
        for t in ts:
            x = (folder / f"x_{t + 1:05d}.jpg").read_bytes()
            y = (folder / f"y_{t + 1:05d}.jpg").read_bytes()
            lo_hi = self.headers[video][4:20]
            out.append(self.headers[video][:4] + lo_hi + len(x).to_bytes(4, "little") + len(y).to_bytes(4, "little")
                       + x + y)
        return out

    def rgb(self, video: str, t: int) -> np.ndarray:
        from flowprep.codec import decode_rgb

        return decode_rgb((self.root / video / f"img_{t + 1:05d}.jpg").read_bytes())


def export_files(store: FlowStore, videos: list[str], root: Path) -> dict[str, bytes]:
    headers = {}
    for video in videos:
        meta = store.meta(video)
        folder = root / video
        folder.mkdir(parents=True, exist_ok=True)
        for t, record in enumerate(store.records(video, "rgb", range(meta["num_frames"]))):
            (folder / f"img_{t + 1:05d}.jpg").write_bytes(record)
        for t, record in enumerate(store.records(video, "flow", range(meta["num_flows"]))):
            _, _, _, _, _, _, _, nx, ny = HEADER.unpack_from(record)
            (folder / f"x_{t + 1:05d}.jpg").write_bytes(record[HEADER.size:HEADER.size + nx])
            (folder / f"y_{t + 1:05d}.jpg").write_bytes(record[HEADER.size + nx:])
            headers[video] = bytes(record[:HEADER.size])
    return headers


class Inputs(torch.utils.data.Dataset):
    def __init__(self, source, entries: list[VideoEntry], spec: InputSpec, samples: int, packed: bool):
        self.source, self.entries, self.spec, self.samples, self.packed = source, entries, spec, samples, packed

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> torch.Tensor | PackedInput:
        return self.spec.training_input(self.source, self.entries[i % len(self.entries)], seed=i,
                                        packed=self.packed)


def evict(paths) -> None:
    """Drop the files' pages from the page cache (posix_fadvise DONTNEED), for cold-cache figures."""
    os.sync()  # dirty pages (the per-file copy was just written) are not dropped
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rate(source, entries, spec, samples: int, workers: int, packed: bool = True) -> float:
    """Float32 training batches per second in the main process (packed batches expanded there)."""
    loader = torch.utils.data.DataLoader(Inputs(source, entries, spec, samples, packed), batch_size=32,
                                         num_workers=workers, shuffle=True)
    start = time.perf_counter()
    for batch in loader:
        as_input(batch, torch.device("cpu"))
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("TWOSTREAM_DATA", REPO / "data"))
                        / "flow" / "synthetic")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--cold", action="store_true",
                        help="evict both copies from the page cache before each measurement")
    args = parser.parse_args()
    if not args.store.is_dir():
        raise SystemExit(f"{args.store}: no store; make one with `make data flow` (the built-in dataset)")
    store = FlowStore(args.store)
    videos = store.videos()
    entries = [VideoEntry(v, 0, store.meta(v)["num_frames"], store.meta(v)["num_flows"], 0) for v in videos]
    specs = {
        "spatial": InputSpec("spatial", 1, "optical_flow", False, True, args.crop, True, 0.1,
                             (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.05),
        "temporal L=10": InputSpec("temporal", 10, "optical_flow", False, True, args.crop, True, 0.0,
                                   (0, 0, 0), (1, 1, 1), 0.05),
    }
    with tempfile.TemporaryDirectory(prefix="flowprep-files-", dir=args.store.parent) as tmp:
        files = FileStore(Path(tmp), export_files(store, videos, Path(tmp)))
        count = sum(1 for _ in Path(tmp).rglob("*.jpg"))
        cache = "evicted from the page cache before each run" if args.cold else "page cache warm for both"
        print(f"# {len(videos)} videos from {args.store}; per-file copy: {count} JPEG files; crop {args.crop}; "
              f"{args.samples} samples per measurement ({cache})")
        file_paths = [str(p) for p in Path(tmp).rglob("*.jpg")]
        store_paths = [str(p) for p in args.store.glob("shard-*.lmdb/data.mdb")]
        print("| input | DataLoader workers | LMDB samples/s | files samples/s | LMDB / files |")
        print("|---|---|---|---|---|")
        for name, spec in specs.items():
            for workers in (int(w) for w in args.workers.split(",")):
                if args.cold:
                    evict(store_paths)
                else:
                    rate(store, entries, spec, 64, workers)  # warm the page cache
                lmdb_rate = rate(store, entries, spec, args.samples, workers)
                if args.cold:
                    evict(file_paths)
                else:
                    rate(files, entries, spec, 64, workers)
                file_rate = rate(files, entries, spec, args.samples, workers)
                print(f"| {name} | {workers} | {lmdb_rate:.0f} | {file_rate:.0f} | {lmdb_rate / file_rate:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
