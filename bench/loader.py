"""Input loading speed: our LMDB shards against one JPEG file per field (the layout other tools write).

Usage: python bench/loader.py [--store data/flow/synthetic] [--samples 512] [--workers 1,2] [--crop 112]
                              [--repeat 3] [--cold [--drop-caches]]

Reads random training inputs — spatial (one RGB frame) and temporal (L = 10 stacked flow fields) —
through a DataLoader, from the store and from the same JPEG bytes written as files
(``img_00001.jpg``, ``x_00001.jpg``, ``y_00001.jpg`` in one folder per video, as in
../shared/data/flow-jpeg-reference), with the same decoder (OpenCV) and the same input code.
Prints samples/s (the median of ``--repeat`` runs); no pass/fail. Inputs are counted when they are
float32 batches in the training process (packed 8-bit batches expanded there, as ``trainer fit`` does).
``--cold``: both copies are evicted from the page cache before every run and each run reads one input
from each of (up to ``--samples``) different videos, so no input finds another's pages cached.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flowprep.storage.codec import HEADER
from flowprep.storage.shard import close_env
from flowprep.storage.store import FlowStore
from trainer.inputs import InputSpec, as_input
from trainer.planes import PackedInput
from trainer.volumes import VideoEntry

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
        from flowprep.storage.codec import decode_rgb

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


DROP_ALL = False  # --drop-caches


def evict(paths) -> None:
    """Drop the files' pages from the page cache (posix_fadvise DONTNEED), for cold-cache figures.
    Pages mapped by a process are not dropped, so this process's LMDB maps are closed first. File
    metadata (dentries, inodes) stays cached; with --drop-caches (root) every cache is dropped."""
    for path in paths:
        if Path(path).name == "data.mdb":
            close_env(Path(path).parent)
    os.sync()  # dirty pages (the per-file copy was just written) are not dropped
    if DROP_ALL:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rate(source, entries, spec, samples: int, workers: int, packed: bool = True, evict_first=()) -> float:
    """Float32 training batches per second in the main process (packed batches expanded there)."""
    loader = torch.utils.data.DataLoader(Inputs(source, entries, spec, samples, packed), batch_size=32,
                                         num_workers=workers, shuffle=True)
    if evict_first:
        evict(evict_first)
    start = time.perf_counter()
    for batch in loader:
        as_input(batch, torch.device("cpu"))
    return samples / (time.perf_counter() - start)


def read_and_build_us(source, entries, spec, count: int = 300, evict_paths=()) -> tuple[float, float]:
    """Mean µs per input, in this process: reading its records' bytes, and the whole input (read, decode,
    crop, pack). ``evict_paths``: evicted before each
    of the two passes (then use count <= len(entries): one input per video)."""
    picks = [(entries[i % len(entries)], i) for i in range(count)]
    kind, length = ("rgb", 1) if spec.stream == "spatial" else ("flow", spec.flow_stack)
    if evict_paths:
        evict(evict_paths)
    start = time.perf_counter()
    for entry, i in picks:
        first = i % max(1, entry.num_flows - length + 1)
        source.records(entry.video, kind, range(first, first + length))
    read = time.perf_counter() - start
    if evict_paths:
        evict(evict_paths)
    start = time.perf_counter()
    for entry, i in picks:
        spec.training_input(source, entry, seed=i, packed=True)
    return 1e6 * read / count, 1e6 * (time.perf_counter() - start) / count


class _Constant(torch.utils.data.Dataset):
    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, samples: int):
        self.tensor, self.samples = torch.zeros(shape, dtype=dtype), samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tensor.clone()


def transfer_rate(shape: tuple[int, ...], dtype: torch.dtype, workers: int, samples: int = 2048) -> float:
    """Inputs/s a DataLoader delivers when building an input costs nothing: the worker → training
    process transfer alone (shared memory), for float32 inputs against packed uint8 ones."""
    loader = torch.utils.data.DataLoader(_Constant(shape, dtype, samples), batch_size=32, num_workers=workers)
    for _ in loader:
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("TWOSTREAM_DATA", REPO / "data"))
                        / "flow" / "synthetic")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is printed")
    parser.add_argument("--cold", action="store_true",
                        help="evict both copies from the page cache before each run; one input per video")
    parser.add_argument("--drop-caches", action="store_true",
                        help="with --cold: drop every cache, file metadata included (root only)")
    args = parser.parse_args()
    if args.drop_caches:
        if os.geteuid() != 0:
            raise SystemExit("--drop-caches needs root (it writes /proc/sys/vm/drop_caches)")
        global DROP_ALL
        DROP_ALL = args.cold = True
    if not args.cold:
        print("# transfer alone: inputs/s through a DataLoader whose inputs cost nothing to build")
        print("| input | DataLoader workers | float32 inputs/s | uint8 inputs/s |")
        print("|---|---|---|---|")
        for workers in (int(w) for w in args.workers.split(",")):
            shape = (20, args.crop, args.crop)
            print(f"| temporal L=10, {args.crop}² | {workers} | {transfer_rate(shape, torch.float32, workers):.0f} | "
                  f"{transfer_rate(shape, torch.uint8, workers):.0f} |", flush=True)
        print()
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
        cache = ("every cache dropped before each run" if args.drop_caches else
                 "evicted from the page cache before each run" if args.cold else "page cache warm for both")
        samples = min(args.samples, len(entries)) if args.cold else args.samples
        print(f"# {len(videos)} videos from {args.store}; per-file copy: {count} JPEG files; crop {args.crop}; "
              f"{samples} samples per run, median of {args.repeat} runs ({cache})")
        file_paths = [str(p) for p in Path(tmp).rglob("*.jpg")]
        store_paths = [str(p) for p in args.store.glob("shard-*.lmdb/data.mdb")]
        print("| input | DataLoader workers | LMDB samples/s | files samples/s | LMDB / files |")
        print("|---|---|---|---|---|")
        for name, spec in specs.items():
            for workers in (int(w) for w in args.workers.split(",")):
                figures = {}
                reader = FlowStore(args.store, readahead=spec.stream == "temporal")  # as trainer/data.py opens it
                for label, source, paths in (("lmdb", reader, store_paths), ("files", files, file_paths)):
                    if not args.cold:
                        rate(source, entries, spec, 64, workers)  # warm the page cache
                    runs = [rate(source, entries, spec, samples, workers, evict_first=paths if args.cold else ())
                            for _ in range(args.repeat)]
                    figures[label] = float(np.median(runs))
                lmdb_rate, file_rate = figures["lmdb"], figures["files"]
                print(f"| {name} | {workers} | {lmdb_rate:.0f} | {file_rate:.0f} | {lmdb_rate / file_rate:.2f}x |",
                      flush=True)
        state = ("dropped (file metadata too) before each pass, one input per video" if args.drop_caches else
                 "evicted before each pass, one input per video" if args.cold else "warm")
        print(f"\nOne process, no DataLoader, page cache {state}: µs per input to read its bytes, and to build")
        print("it whole (read, decode, crop, pack); median of the runs.\n")
        print("| input | LMDB read µs | files read µs | LMDB whole µs | files whole µs | LMDB / files |")
        print("|---|---|---|---|---|---|")
        count = len(entries) if args.cold else 300
        for name, spec in specs.items():
            reader = FlowStore(args.store, readahead=spec.stream == "temporal")
            runs = [[*read_and_build_us(reader, entries, spec, count, store_paths if args.cold else ()),
                     *read_and_build_us(files, entries, spec, count, file_paths if args.cold else ())]
                    for _ in range(args.repeat)]
            lmdb_read, lmdb_whole, file_read, file_whole = np.median(np.array(runs), axis=0)
            print(f"| {name} | {lmdb_read:.0f} | {file_read:.0f} | {lmdb_whole:.0f} | {file_whole:.0f} | "
                  f"{file_whole / lmdb_whole:.2f}x |", flush=True)

if __name__ == "__main__":
    main()
