"""Store costs as the number of videos N grows (Kinetics: 240k / 650k videos), before and after the index.

Usage: python bench/scale.py [--sizes 1000,10000,50000] [--frames 300] [--work DIR] [--baseline 319f293]


Builds, per N, two stores of N videos with real-sized metadata (the metadata of a real extract, with
``--frames`` RGB frames and flow fields a video; the records themselves are 16 bytes), 4,000 videos
a shard (as 8 GB shards of ~2 MB videos): one as
flowprep 0.1 wrote them (a pinned copy of its writer: checksums as hex in the metadata, no index),
read by flowprep 0.1's own code (a ``git worktree`` of ``--baseline``), and one written and read by
this checkout. Each measure runs in a fresh process and prints one line; the end is a table with a
linear extrapolation to 240k and 650k videos
(from the two largest sizes).

Measures: ``list`` (open the store and list its ids) warm and cold (every shard evicted from the page
cache with posix_fadvise first; bytes read cold = pages of the shards resident afterwards, from
mincore), ``open_datasets`` (what ``trainer fit`` does before its first iteration: time and memory
it keeps), ``worker`` (memory a DataLoader worker gains reading one record of each of 10k distinct
videos), ``info`` and ``verify --no-decode`` (time and peak memory).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "tests" / "fixtures" / "store-v1" / "flow"  # a real extract's metadata and settings
CLASSES = 400  # Kinetics-400
VIDEOS_PER_SHARD = 4000  # 8 GB shards of ~2 MB videos (UCF-101 extracted: 27 GB / 13,320 videos)
MEASURES = ("list-warm", "list-cold", "open_datasets-cold", "worker-cold", "info", "verify")


# ---------------------------------------------------------------------------------------------
# Building the stores


def _template_meta() -> dict:
    import lmdb

    env = lmdb.open(str(TEMPLATE / "shard-00000.lmdb"), readonly=True, lock=False, max_dbs=4)
    with env.begin() as txn:
        key, value = next(iter(txn.cursor(db=env.open_db(b"meta", txn=txn, create=False))))
    env.close()
    return json.loads(value)


def video_records(video: str, frames: int) -> list[tuple[bytes, bytes]]:
    payload = video.encode()[-16:].ljust(16, b".")
    return ([(f"{video}/rgb/{t:06d}".encode(), payload) for t in range(frames)]
            + [(f"{video}/flow/{t:06d}".encode(), payload) for t in range(frames - 1)])


def video_meta(template: dict, video: str, frames: int) -> dict:
    return {**template, "video": video, "num_frames": frames, "num_flows": frames - 1,
            "source": f"/data/kinetics/videos/{video}.mp4", "header_frames": frames}


def write_old_store(root: Path, n: int, frames: int) -> None:
    """flowprep 0.1's writer, pinned: records, then metadata with a ``crc32`` hex table, one transaction
    per batch of videos, 8 GB shards (none is reached here)."""
    import zlib

    import lmdb

    root.mkdir(parents=True)
    template = {k: v for k, v in _template_meta().items() if k != "crc32"}
    env = None
    for start in range(0, n, 200):
        if start % VIDEOS_PER_SHARD == 0:
            if env is not None:
                env.close()
            env = lmdb.open(str(root / f"shard-{start // VIDEOS_PER_SHARD:05d}.lmdb"), map_size=64 << 30, max_dbs=4,
                            subdir=True, readahead=False)
            meta_db, data_db = env.open_db(b"meta"), env.open_db(b"data")
        with env.begin(write=True) as txn:
            for i in range(start, min(n, start + 200)):
                video = f"class_{i % CLASSES:03d}/video_{i:07d}"
                records = video_records(video, frames)
                crcs: dict[str, list[int]] = {}
                for key, value in records:
                    txn.put(key, value, db=data_db)
                    crcs.setdefault(key.decode().rsplit("/", 2)[1], []).append(zlib.crc32(value))
                meta = video_meta(template, video, frames)
                meta["crc32"] = {kind: b"".join(c.to_bytes(4, "big") for c in values).hex()
                                 for kind, values in sorted(crcs.items())}
                txn.put(video.encode(), json.dumps(meta, sort_keys=True).encode(), db=meta_db)
    env.close()


def write_new_store(root: Path, n: int, frames: int) -> None:
    """This checkout's writer (index and binary checksums)."""
    from flowprep.storage.store import ShardWriter

    template = {k: v for k, v in _template_meta().items() if k != "crc32"}
    # ~VIDEOS_PER_SHARD videos a shard (~120 bytes a 16-byte record in LMDB), as 8 GB shards of real videos
    with ShardWriter(root, shard_bytes=VIDEOS_PER_SHARD * 2 * frames * 120, what="bench/scale.py") as writer:
        for start in range(0, n, 200):
            batch = []
            for i in range(start, min(n, start + 200)):
                video = f"class_{i % CLASSES:03d}/video_{i:07d}"
                batch.append((video, video_records(video, frames), video_meta(template, video, frames)))
            writer.put_videos(batch)


def write_split(folder: Path, n: int) -> None:
    """UCF-101-format split files over the store's ids: every 10th video a test video."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classInd.txt").write_text("".join(f"{c + 1} class_{c:03d}\n" for c in range(CLASSES)))
    train, test = [], []
    for i in range(n):
        line = f"class_{i % CLASSES:03d}/video_{i:07d}.mp4"
        (test if i % 10 == 0 else train).append(line if i % 10 == 0 else f"{line} {i % CLASSES + 1}")
    (folder / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (folder / "testlist01.txt").write_text("\n".join(test) + "\n")


def build(work: Path, n: int, frames: int) -> dict[str, Path]:
    stores = {}
    for fmt, writer in (("0.1", write_old_store), ("new", write_new_store)):
        root = work / f"n{n}-f{frames}-{fmt}"
        if not (root / "done").exists():
            subprocess.run(["rm", "-rf", str(root)], check=True)
            started = time.perf_counter()
            writer(root / "flow", n, frames)
            (root / "flow" / "flowprep.json").write_bytes((TEMPLATE / "flowprep.json").read_bytes())
            write_split(root / "splits", n)
            (root / "done").write_text("")
            print(f"  built {root.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        stores[fmt] = root
    return stores


# ---------------------------------------------------------------------------------------------
# Page cache: evict, and count what was read


def evict(root: Path) -> None:
    os.sync()
    for path in root.rglob("*.mdb"):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def resident_bytes(root: Path) -> int:
    """Bytes of the store's data.mdb files in the page cache (mincore over a fresh mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    total = 0
    for path in root.rglob("data.mdb"):
        size = path.stat().st_size
        if not size:
            continue
        fd = os.open(path, os.O_RDONLY)
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vector = ctypes.create_string_buffer(pages)
        if libc.mincore(ctypes.c_void_p(address), size, vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        total += sum(b & 1 for b in vector.raw) * mmap.PAGESIZE
        libc.munmap(ctypes.c_void_p(address), size)
        os.close(fd)
    return total


def store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("data.mdb"))


# ---------------------------------------------------------------------------------------------
# One measure, in its own process (PYTHONPATH: the code under test)


def heap_bytes() -> int:
    """Anonymous resident memory of this process (the heap; pages of the store's mapped files, which the
    kernel can drop at any time, are not counted)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakHeap:
    """The largest :func:`heap_bytes` seen while it runs (sampled every 5 ms by a thread)."""

    def __enter__(self) -> PeakHeap:
        import threading

        self.peak, self._stop = heap_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, heap_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, heap_bytes())


def measure(what: str, root: Path) -> dict:
    """One measure of the store at ``root`` by the code on PYTHONPATH: seconds, heap memory it keeps
    (MB), its peak heap (MB), over what the imports already hold."""
    import gc

    from flowprep.storage.store import FlowStore
    from flowprep.verify import summarize, verify
    from trainer.config import load_config
    from trainer.data import open_datasets

    flow = root / "flow"
    config = root / "config.yaml"
    config.write_text(json.dumps({
        "run": {"dir": str(root / "run"), "device": "cpu"},
        "data": {"datasets": [{"name": "k", "store": str(flow), "splits": str(root / "splits"),
                               "split_format": "ucf101"}], "stream": "temporal"}}))
    cfg = load_config(config)
    worker = what.startswith("worker")
    store = FlowStore(flow, readahead=False)
    videos = store.videos()[:10_000] if worker else []
    if worker:  # the worker's reads start cold; its listing came from the parent
        store.close()  # pages mapped by this process would stay in the page cache
        evict(root)
    gc.collect()
    before = heap_bytes()
    started = time.perf_counter()
    with PeakHeap() as peak:
        if what.startswith("list"):
            kept = FlowStore(flow, readahead=True)
            count = len(kept.videos())
        elif what.startswith("open_datasets"):
            kept = open_datasets(cfg)
            count = len(kept[0].train) + len(kept[0].test)
        elif what.startswith("worker"):  # one record of each of 10k videos, as a DataLoader worker reads them
            for video in videos:
                store.records(video, "rgb", [0])
            count = len(videos)
        elif what == "info":
            count = summarize(FlowStore(flow, strict=False)).videos
        elif what == "verify":
            result = verify(FlowStore(flow, strict=False), decode=False)
            assert not result.problems, result.problems[:3]
            count = len(store.videos())
        else:
            raise SystemExit(f"unknown measure {what!r}")
        seconds = time.perf_counter() - started
    gc.collect()
    return {"seconds": seconds, "kept_mb": (heap_bytes() - before) / 2**20, "peak_mb": (peak.peak - before) / 2**20,
            "count": count}


def run_measure(what: str, root: Path, code: Path) -> dict:
    if what.endswith("-cold"):
        evict(root)
    env = {**os.environ, "PYTHONPATH": str(code)}
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", what, "--store", str(root)],
                            capture_output=True, text=True, env=env, cwd=code)
    if result.returncode:
        raise SystemExit(f"{what} on {root} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if what == "list-cold":
        out["read_bytes"] = resident_bytes(root)
    return out


# ---------------------------------------------------------------------------------------------
# The table


def baseline_tree(work: Path, commit: str) -> Path:
    tree = work / f"code-{commit}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)
    return tree


def extrapolate(sizes: list[int], values: list[float], n: int) -> float:
    """The line through the two largest sizes, at ``n`` (a cost linear in N keeps its slope; a bounded
    one, such as a cache that is full, stays flat; fixed costs of small stores do not count)."""
    (n0, v0), (n1, v1) = sorted(zip(sizes, values, strict=True))[-2:]
    return v1 + (v1 - v0) / (n1 - n0) * (n - n1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/flowprep-scale"))
    parser.add_argument("--baseline", default="319f293", help="commit of flowprep 0.1 (before the index)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.store)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    codes = {"0.1": baseline_tree(args.work, args.baseline), "new": REPO}
    rows: dict[tuple[str, str], list[dict]] = {}
    for n in sizes:
        stores = build(args.work, n, args.frames)
        for fmt, root in stores.items():
            for what in MEASURES:
                out = run_measure(what, root, codes[fmt])
                out["store_bytes"] = store_bytes(root)
                rows.setdefault((fmt, what), []).append(out)
                cold = (f", read {out['read_bytes'] / 2**20:.1f} MB of {out['store_bytes'] / 2**20:.0f} MB"
                        if "read_bytes" in out else "")
                print(f"N={n:>7} {fmt:>4} {what:<14} {out['seconds']:8.2f} s  kept {out['kept_mb']:7.1f} MB  "
                      f"peak {out['peak_mb']:7.1f} MB{cold}", flush=True)
    print(f"\n| measure | code | {' | '.join(f'N={n:,}' for n in sizes)} | 240k (extrapolated) | 650k (extrapolated) |")
    print(f"|---|---|{'---|' * len(sizes)}---|---|")
    for (fmt, what), outs in rows.items():
        for key, unit in (("seconds", "s"), ("kept_mb", "MB kept"), ("peak_mb", "MB peak"), ("read_bytes", "MB read")):
            if key not in outs[0] or (key == "kept_mb" and what in ("info", "verify")) or \
                    (key == "peak_mb" and what not in ("info", "verify")):
                continue
            scale = 2**20 if key == "read_bytes" else 1
            values = [o[key] / scale for o in outs]
            if what.startswith("worker"):  # 10k videos read at every N: not a cost of N
                far = ["(reads 10k videos at any N)", ""]
            elif len(sizes) > 1:
                far = [extrapolate(sizes, values, n) for n in (240_000, 650_000)]
            else:
                far = ["", ""]
            cells = " | ".join(f"{v:,.2f}" for v in values)
            print(f"| {what} ({unit}) | {fmt} | {cells} | "
                  + " | ".join(f"{v:,.1f}" if isinstance(v, float) else v for v in far) + " |")


if __name__ == "__main__":
    main()
