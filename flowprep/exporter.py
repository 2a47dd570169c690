"""``flowprep export``: a store written back as another tool's files (for tools that read only files).

RGB records are JPEG files already and are written byte for byte. A flow record's two JPEGs are
written byte for byte where their levels already mean what the target tool reads (bound and zero
level: an imported store exported with its own settings gives back the imported files exactly);
otherwise, as for stores made by ``flowprep extract`` (0 px at level 128, step bound/127), each
component's levels are mapped onto the target's and encoded again, and the report counts them.

Each video is written into a staging folder and renamed into place, so a video's folder is complete
or absent; a killed run resumes where it stopped. Backward flow is not exported (no layout has it).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from flowprep.layouts import LAYOUTS, Layout
from flowprep.storage.atomic import write_json_atomic
from flowprep.storage.codec import LINEAR, RecordError, flow_levels, level_values, linear_range, unpack_flow_record
from flowprep.storage.index import IndexEntry
from flowprep.storage.lock import FolderBusyError, FolderLock
from flowprep.storage.shard import StoreError, id_problem
from flowprep.storage.store import FlowStore, read_json

EXPORT_FILE = ".flowprep-export.json"
_STAGING = ".flowprep-export-tmp"


@dataclass
class ExportReport:
    total: int = 0
    exported: int = 0
    skipped: int = 0
    files: int = 0
    bytes: int = 0
    reencoded: int = 0  # flow fields whose levels were mapped onto the target's and encoded again
    seconds: float = 0.0


def default_mapping(store: FlowStore, layout: Layout) -> tuple[float, float]:
    """(bound, zero level) to export with: the imported files' own (they come back byte for byte),
    else the store's bound and the zero level of the layout's tool."""
    settings = store.settings()
    if "imported" in settings:
        return float(settings["imported"]["bound"]), float(settings["imported"]["zero_level"])
    bound = settings.get("bound", 20.0)
    return (float(bound) if bound != "adaptive" else layout.bound), layout.zero_level


def _folders(out: Path, layout: Layout, video: str, streams: tuple[str, ...]) -> dict[str, Path]:
    """Final folder of each role (rgb, x, y) of one video, for the streams it has."""
    roles = (["rgb"] if "rgb" in streams else []) + (["x", "y"] if "flow" in streams else [])
    if layout.uv:
        where = {"rgb": out / "rgb" / video, "x": out / "u" / video, "y": out / "v" / video}
        return {role: where[role] for role in roles}
    return dict.fromkeys(roles, out / video)


def _target_levels(record: memoryview, lo: float, hi: float, quality: int) -> tuple[bytes, bytes, bool]:
    """dx and dy JPEGs whose levels mean pixels as level 0 → lo, 255 → hi; True if encoded again."""
    mode, x_range, y_range, jx, jy = unpack_flow_record(record)
    if mode == LINEAR and all(abs(a - b) < 1e-4 for a, b in zip(x_range + y_range, (lo, hi, lo, hi), strict=True)):
        return bytes(jx), bytes(jy), False
    try:
        qx, qy, x_affine, y_affine = flow_levels(record)  # fixed-bound levels clamped as every reader does
    except RecordError as exc:
        raise StoreError(f"a flow record does not decode ({exc})") from None
    out = []
    for levels, affine in ((qx, x_affine), (qy, y_affine)):
        lut = np.clip(np.rint((level_values(*affine) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", cv2.LUT(levels, lut), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise StoreError("JPEG encoding of a flow field failed")
        out.append(buf.tobytes())
    return out[0], out[1], True


def _write_video(store: FlowStore, video: str, meta: IndexEntry, layout: Layout, staging: Path, lo: float, hi: float,
                 quality: int, report: ExportReport) -> dict[str, Path]:
    """Write one video's files under ``staging``, one folder per final folder; {role: staged folder}."""
    streams = meta.streams
    staged = {role: staging / (role if layout.uv else "all") for role in _folders(staging, layout, video, streams)}
    for folder in set(staged.values()):
        folder.mkdir(parents=True, exist_ok=True)
    if "rgb" in streams:
        first = _first_frame(layout, meta)
        for t, data in enumerate(store.records(video, "rgb", range(first, meta.num_frames))):
            (staged["rgb"] / layout.file_name("rgb", t)).write_bytes(data)
            report.files += 1
            report.bytes += len(data)
    if "flow" in streams:
        for t, record in enumerate(store.records(video, "flow", range(meta.num_flows))):
            jx, jy, again = _target_levels(memoryview(record), lo, hi, quality)
            (staged["x"] / layout.file_name("x", t)).write_bytes(jx)
            (staged["y"] / layout.file_name("y", t)).write_bytes(jy)
            report.files += 2
            report.bytes += len(jx) + len(jy)
            report.reencoded += again
    return staged


def _first_frame(layout: Layout, meta: IndexEntry) -> int:
    """The first stored frame written: 1 where the layout's field k ends at frame k (TSN's dense_flow
    never writes the frame its first field starts at), so that ``img_k`` is where ``flow_x_k`` ends."""
    return 1 if layout.flow_ends_at_frame and meta.has("flow") and meta.has("rgb") else 0


def _claim_folder(out: Path, settings: dict) -> None:
    """Record this export's options in OUT, which must be empty or an earlier export with the same ones."""
    previous = read_json(out / EXPORT_FILE, "export record")
    if previous and previous != settings:
        keys = [*settings, *(k for k in previous if k not in settings)]  # an option set in one run only too
        diff = ", ".join(f"{k}={previous.get(k)!r} ({settings.get(k)!r})" for k in keys
                         if previous.get(k) != settings.get(k))
        raise StoreError(f"{out} holds an export with other options: {diff} (this run's in parentheses); "
                         "use the same options or another folder")
    if not previous and any(p.name not in (".lock", _STAGING) for p in out.iterdir()):
        raise StoreError(f"{out}: not empty and not an export of flowprep; export into a new folder")
    write_json_atomic(out / EXPORT_FILE, settings)


def _placed(out: Path, layout: Layout, video: str, meta: IndexEntry) -> dict[Path, list[str]]:
    """Each final folder of one video and its files there, in the order they are moved in (a folder
    may hold other videos' folders too: ids A and A/B)."""
    counts = {"rgb": meta.num_frames - _first_frame(layout, meta), "x": meta.num_flows, "y": meta.num_flows}
    placed: dict[Path, list[str]] = {}
    for role, folder in _folders(out, layout, video, meta.streams).items():
        placed.setdefault(folder, []).extend(layout.file_name(role, t) for t in range(counts[role]))
    return placed


def _check_inside(out: Path, placed: dict[Path, list[str]], video: str) -> None:
    """Refuse to write or delete anywhere but inside OUT (a link inside OUT that leads out included)."""
    root = os.path.realpath(out) + os.sep
    for folder in placed:
        if not os.path.realpath(folder).startswith(root):
            raise StoreError(f"{folder}: outside {out}; refusing to export video {video!r} there")


def _to_do(out: Path, layout: Layout, metas: dict[str, IndexEntry], report: ExportReport) -> list[str]:
    """The videos not exported yet (``report.skipped`` counts the others): a video is exported when the
    last of its files is in each of its folders. The files of a video whose export a killed run left
    half done are removed (its own files only: another video's folder inside its folder stays)."""
    todo = []
    for video, meta in metas.items():
        placed = _placed(out, layout, video, meta)
        _check_inside(out, placed, video)
        if all(names and (folder / names[-1]).is_file() for folder, names in placed.items()):
            report.skipped += 1
            continue
        for folder, names in placed.items():
            for name in names:
                (folder / name).unlink(missing_ok=True)
        todo.append(video)
    return todo


def _move_into_place(staged: dict[str, Path], out: Path, layout: Layout, video: str, meta: IndexEntry) -> None:
    """Rename each staged folder to its final folder; where the final folder exists already (it holds
    another video's folder: ids A and A/B), move the files one by one, the last one last."""
    placed = _placed(out, layout, video, meta)
    for role, final in _folders(out, layout, video, meta.streams).items():
        source = staged[role]
        if not source.is_dir():
            continue  # several roles share one folder: moved with the first
        final.parent.mkdir(parents=True, exist_ok=True)
        if not final.exists():
            os.replace(source, final)
            continue
        for name in placed[final]:
            if (source / name).exists():
                os.replace(source / name, final / name)


def run_export(store_path: str | os.PathLike, out: str | os.PathLike, layout: Layout, bound: float | None = None,
               zero_level: float | None = None, quality: int = 95, videos: list[str] | None = None,
               on_start: Callable[[int, int], None] | None = None,
               on_progress: Callable[[int, ExportReport], None] | None = None) -> ExportReport:
    """Write the store's videos (all, or ``videos``) into OUT as ``layout``'s files. OUT must be empty or a
    previous export of the same store with the same options (it then resumes)."""
    store = FlowStore(store_path)
    default_bound, default_zero = default_mapping(store, layout)
    bound = default_bound if bound is None else bound
    zero_level = default_zero if zero_level is None else zero_level
    lo, hi = linear_range(bound, zero_level)
    wanted = sorted(store.videos()) if videos is None else videos
    for video in wanted:
        if video not in store:
            raise StoreError(f"video {video!r} is not in {store.root}")
        problem = id_problem(video)
        if problem:
            raise StoreError(f"{store.root}: video id {video!r} is not a safe path ({problem}); not exporting "
                             "this store (`flowprep verify` lists such ids)")
    out = Path(out)
    settings = {"store": str(Path(store_path).resolve()), "layout": layout.name, "bound": bound,
                "zero_level": zero_level, "quality": quality}
    if layout.digits != LAYOUTS[layout.name].digits:  # recorded only when chosen: older exports resume
        settings["digits"] = layout.digits
    try:
        lock = FolderLock(out, "flowprep export", remove=True)  # OUT is another tool's tree: leave no .lock
    except FolderBusyError as exc:
        raise StoreError(str(exc)) from None
    except OSError as exc:
        raise StoreError(f"{out}: cannot create the export folder ({exc.strerror or exc})") from None
    report = ExportReport(total=len(wanted))
    start = time.perf_counter()
    with lock:
        _claim_folder(out, settings)
        staging_root = out / _STAGING
        shutil.rmtree(staging_root, ignore_errors=True)
        metas = {video: store.entry(video) for video in wanted}  # counts and streams: 28 bytes each
        todo = _to_do(out, layout, metas, report)
        if on_start is not None:
            on_start(len(todo), report.skipped)
        for done, video in enumerate(todo, start=1):
            staging = staging_root / str(done)
            try:
                staged = _write_video(store, video, metas[video], layout, staging, lo, hi, quality, report)
                _move_into_place(staged, out, layout, video, metas[video])
            except OSError as exc:
                shutil.rmtree(staging_root, ignore_errors=True)
                what = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
                raise StoreError(f"{exc.filename or out}: {what} exporting {video}; {report.exported} videos are "
                                 "exported, run the same command again to resume") from None
            shutil.rmtree(staging, ignore_errors=True)
            report.exported += 1
            report.seconds = time.perf_counter() - start
            if on_progress is not None:
                on_progress(done, report)
        shutil.rmtree(staging_root, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    return report
