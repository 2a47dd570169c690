"""flowprep import speed (flow fields/s) and the store's size against the tree of files it came from.

Usage: python bench/import.py [--videos 100] [--frames 60] [--workers 0 1 2 4] [--tree DIR] [--cold]

Writes a tree in the mmaction2 rawframes layout (img_/x_/y_00001.jpg, 340x256, as their UCF-101
recipe) from a real UCF-101 clip: its frames, and DIS flow written as other tools write it
(round(255·(d + 20)/40), JPEG). The same clip's files fill every video folder under another name.
The tree is read once to warm the page cache (``--cold``: the page cache is dropped before each run
instead, which needs root), then imported into a fresh store for each number of reader threads (0:
read in the writing thread). "read only" is the readers' own rate (files read and checked, nothing
written): what is left of the time goes to LMDB writes and the flush to disk at each commit. Two
copies of the same bytes for comparison: every file appended to one file and flushed (as tar does),
and a copy of the tree (cp -r, then sync).
Each run is made twice: with the strict check of every file's JPEG data (the default: each file
decoded at 1/8 scale, damaged data that still decodes refused) and with ``--no-data-check`` (headers
only, as before issue 26).
Goal (issue 12): at least 5,000 flow fields/s on one core with a warm cache (headers only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from flowprep.importer import import_video, run_import
from flowprep.layouts import LAYOUTS, find_video_folders
from flowprep.storage.settings import ImportSettings

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIP = SHARED / "videos" / "ucf101" / "v_ApplyEyeMakeup_g01_c01.avi"


def write_tree(root: Path, videos: int, frames: int, clip: Path) -> None:
    capture = cv2.VideoCapture(str(clip))
    images = []
    while len(images) < frames:
        ok, frame = capture.read()
        if not ok:
            break
        images.append(cv2.resize(frame, (340, 256), interpolation=cv2.INTER_AREA))
    if len(images) < 2:
        raise SystemExit(f"{clip}: no frames (give another clip with --clip)")
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    files: dict[str, bytes] = {}
    for t, image in enumerate(images):
        files[f"img_{t + 1:05d}.jpg"] = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    grey = [cv2.cvtColor(i, cv2.COLOR_BGR2GRAY) for i in images]
    for t in range(len(images) - 1):
        flow = dis.calc(grey[t], grey[t + 1], None)
        for c, name in enumerate("xy"):
            levels = np.clip(np.rint(255 * (flow[..., c] + 20) / 40), 0, 255).astype(np.uint8)
            files[f"{name}_{t + 1:05d}.jpg"] = cv2.imencode(".jpg", levels, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    for v in range(videos):
        folder = root / f"Class{v % 5}" / f"v_Class{v % 5}_g{v:02d}_c01"
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)


def tree_size(root: Path) -> tuple[int, int, int]:
    """(files, bytes, bytes the files take on disk: whole blocks)."""
    files = size = disk = 0
    for folder, _, names in os.walk(root):
        for name in names:
            st = os.stat(os.path.join(folder, name))
            files, size, disk = files + 1, size + st.st_size, disk + st.st_blocks * 512
    return files, size, disk


def _concatenate(tree: Path, target: Path) -> None:
    with open(target, "wb") as out:
        for folder, _, names in os.walk(tree):
            for name in sorted(names):
                out.write(Path(folder, name).read_bytes())
        out.flush()
        os.fsync(out.fileno())


def _copy_tree(tree: Path, target: Path) -> None:
    shutil.copytree(tree, target)
    os.sync()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--cold", action="store_true", help="Drop the page cache before each run (root).")
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--tree", type=Path, default=None, help="Keep the tree here (default: a temporary folder).")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-import-"))
    tree = args.tree or work / "tree"
    try:
        if not tree.is_dir():
            write_tree(tree, args.videos, args.frames, args.clip)
        files, size, disk = tree_size(tree)
        for folder, _, names in os.walk(tree):  # warm the page cache
            for name in names:
                Path(folder, name).read_bytes()
        layout = LAYOUTS["mmaction"]
        streams, videos = find_video_folders(tree, layout)
        settings = ImportSettings("mmaction", streams=streams)
        start = time.perf_counter()
        fields = sum(import_video(v, settings, layout, check_data=False).meta["num_flows"] for v in videos)
        read_rate = fields / (time.perf_counter() - start)
        print(f"# tree: {len(videos)} videos, {files} files, {size / 2**20:.1f} MiB in files, "
              f"{disk / 2**20:.1f} MiB on disk (whole blocks); cpu {os.cpu_count()} cores; "
              f"{'cold' if args.cold else 'warm'} page cache; read only (one thread, warm): {read_rate:.0f} fields/s")
        print("| JPEG data | readers | videos/s | flow fields/s | files/s | MB/s | store MiB | store vs files "
              "(bytes) |")
        print("|---|---|---|---|---|---|---|---|")
        for check_data in (True, False):
            for workers in args.workers:
                out = work / f"store-{workers}"
                if args.cold:
                    os.sync()
                    Path("/proc/sys/vm/drop_caches").write_text("3\n")
                start = time.perf_counter()
                report = run_import(tree, out, layout, settings, readers=workers, videos=videos,
                                    check_data=check_data)
                seconds = time.perf_counter() - start
                store_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
                print(f"| {'checked (default)' if check_data else 'headers only'} | {workers} | "
                      f"{report.stored / seconds:.0f} | {report.pairs / seconds:.0f} | {files / seconds:.0f} | "
                      f"{size / seconds / 1e6:.0f} | {store_bytes / 2**20:.1f} | {store_bytes / size:.3f}x |")
                shutil.rmtree(out)
        for name, copy in (("baseline: all files into one file + fsync", _concatenate),
                           ("baseline: copy of the tree + sync", _copy_tree)):
            target = work / "copy"
            start = time.perf_counter()
            copy(tree, target)
            seconds = time.perf_counter() - start
            print(f"| {name} | | {len(videos) / seconds:.0f} | {fields / seconds:.0f} | {files / seconds:.0f} | "
                  f"{size / seconds / 1e6:.0f} | | |")
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
