"""``flowprep import``: frames and flow already extracted by another tool, as files, into a store.

The JPEG bytes are stored as they are (no second loss): an RGB file becomes an RGB record, a pair of
dx/dy files a flow record whose header gives the other tool's mapping of [0, 255] to pixels
(:func:`flowprep.storage.codec.linear_range`). Reader threads read and check each video's files (reading
files releases the GIL; there is nothing to decode); this process is the store's one writer and
commits whole videos, several to a transaction (never part of one), so a killed run resumes where it
stopped, as ``extract`` does.

A video of N RGB frames has N − 1 flow fields. Another count, or a gap in the numbering, a missing dx
or dy, a file that is not a whole JPEG, or frames of different sizes make the video a failure with
the reason; N fields for N frames (tools that repeat the last field) drop the last one and say so
in the video's metadata.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from flowprep.errors import SettingError, UserError
from flowprep.layouts import ROLES, Layout, VideoFolders, find_video_folders, scan_folder
from flowprep.run import Failure, RunReport, begin_run, library_versions, record_failure
from flowprep.storage.atomic import write_json_atomic
from flowprep.storage.codec import linear_range, pack_flow_jpegs
from flowprep.storage.jpeg import JpegError, JpegInfo, decode_strict, jpeg_info
from flowprep.storage.meta import FlowInfo, VideoMeta
from flowprep.storage.settings import ImportSettings
from flowprep.storage.shard import id_problem, key_length_problem, record_key
from flowprep.storage.store import FAILURES_FILE, ShardWriter

# a 3-channel flow file is read as its luma; it must be grey (the same value in each channel) for that
# to be the flow component. Levels of chroma noise a JPEG of a grey image keeps, at most:
_GREY_TOLERANCE = 3.0
# Videos read are committed together, in one transaction, up to this much or this long: a commit
# flushes to disk (3 ms here, more on network disks), more than a small video takes to read.
_BATCH_BYTES = 64 << 20
_BATCH_SECONDS = 1.0


class FrameError(UserError):
    """One video's files cannot be imported; the message names the file and the problem."""


@dataclass
class ImportedVideo:
    """One video's records (key, value) and metadata, ready to commit."""

    video: str
    records: list[tuple[bytes, bytes]]
    meta: VideoMeta


def _numbered(folder: str, role: str, layout: Layout, what: str, scans: dict[str, dict]) -> list[str]:
    """The file names of one numbered series, in order; FrameError on a gap or another first number.
    ``scans``: folders listed already (RGB, dx and dy often share one)."""
    prefix = layout.prefixes[ROLES.index(role)]
    first = layout.first_of(role)
    if folder not in scans:
        try:
            scans[folder] = scan_folder(folder)
        except OSError as exc:
            raise FrameError(f"{folder}: cannot list this folder ({exc.strerror or exc})") from None
    files = scans[folder].get(prefix, {})
    if not files:
        raise FrameError(f"{folder}: no {what} files ({prefix}{'0' * layout.digits}N.jpg)")
    numbers = sorted(files)
    if numbers[0] != first:
        raise FrameError(f"{folder}: {what} files start at {files[numbers[0]]}; the {layout.name} layout "
                         f"numbers them from {first} ({layout.file_name(role, 0)})"
                         + (" - another --layout?" if numbers[0] in (0, 1) else ""))
    if numbers[-1] - numbers[0] + 1 != len(numbers):
        have = set(numbers)
        gap = next(n for n in range(numbers[0], numbers[-1]) if n not in have)
        raise FrameError(f"{folder}: {what} numbering has a gap: {len(numbers)} files up to "
                         f"{files[numbers[-1]]}, number {gap} is missing")
    return [files[n] for n in numbers]


def read_regular_file(path: str) -> bytes:
    """The bytes of a file, through os.read: a third of the time of open().read() for files of a
    few KB, which is most of the work of an import."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the reader
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
                else "a socket" if stat.S_ISSOCK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a file"
            raise OSError(0, f"not a regular file ({kind})")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def _read(folder: str, name: str, check_data: bool, flow: bool) -> tuple[bytes, JpegInfo]:
    """A file's bytes and JPEG header; ``check_data``: its data checked too (:func:`_check_data`). A
    3-channel flow file is always decoded: it must be grey."""
    path = f"{folder}/{name}"
    try:
        data = read_regular_file(path)
    except OSError as exc:
        raise FrameError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        info = jpeg_info(data)
    except JpegError as exc:
        raise FrameError(f"{path}: {exc}") from None
    if check_data or (flow and info.channels == 3):
        _check_data(path, data, flow and info.channels == 3)
    return data, info


def _check_data(path: str, data: bytes, grey_as_colour: bool) -> None:
    """Decode at 1/8 scale, strictly: every bit of the entropy-coded data is read (so damage that still
    decodes is found, :func:`flowprep.storage.jpeg.decode_strict`) but no inverse DCT is done, 60 % of a
    full decode. ``grey_as_colour``: a 3-channel flow file, which must hold the same value in each
    channel (grey saved as colour)."""
    try:
        image = decode_strict(data, cv2.IMREAD_REDUCED_COLOR_8 if grey_as_colour else cv2.IMREAD_REDUCED_GRAYSCALE_8)
    except JpegError as exc:
        raise FrameError(f"{path}: {exc}") from None
    if not grey_as_colour:
        return
    spread = float(np.abs(image.astype(np.int16) - image.mean(axis=2, keepdims=True)).mean())
    if spread > _GREY_TOLERANCE:
        raise FrameError(f"{path}: a colour image (channels differ by {spread:.1f} levels on average); a flow "
                         "file must hold one component, grey or the same in all three channels")


def _counts(num_rgb: int, num_flow: int, trim_rgb: bool, where: str) -> tuple[int, int, list[str]]:
    """(RGB frames, flow fields) to keep and notes, from the numbers of files; FrameError if they cannot pair."""
    if num_rgb == 0 or num_flow == 0:
        return num_rgb, num_flow, []
    if num_flow == num_rgb - 1:
        return num_rgb, num_flow, []
    if num_flow == num_rgb:
        return num_rgb, num_flow - 1, [f"{num_flow} flow fields for {num_rgb} frames: the last field (a repeat "
                                       "the other tool writes) was dropped"]
    if num_flow < num_rgb - 1 and trim_rgb:
        return num_flow + 1, num_flow, [f"{num_rgb} frames for {num_flow} flow fields: frames after "
                                        f"{num_flow + 1} dropped (--trim-rgb)"]
    if num_flow > num_rgb:
        raise FrameError(f"{where}: {num_flow} flow fields but only {num_rgb} RGB frames (expected at most "
                         f"{num_rgb})")
    raise FrameError(f"{where}: {num_rgb} RGB frames but {num_flow} flow fields (expected {num_rgb - 1}); "
                     "--trim-rgb keeps only the frames the flow covers")


def _list_files(folders: VideoFolders, settings: ImportSettings, layout: Layout, trim_rgb: bool
                ) -> tuple[list[str], list[str], list[str], list[str]]:
    """RGB, dx and dy file names to import and notes (the counts reconciled)."""
    rgb_names: list[str] = []
    x_names: list[str] = []
    y_names: list[str] = []
    scans: dict[str, dict] = {}
    if "rgb" in settings.streams:
        if folders.rgb is None:
            raise FrameError(f"{folders.x}: flow files but no RGB frames for this video in the RGB tree")
        rgb_names = _numbered(folders.rgb, "rgb", layout, "RGB frame", scans)
    if "flow" in settings.streams:
        if folders.x is None or folders.y is None:
            what = "flow" if folders.x is None and folders.y is None else "dx" if folders.x is None else "dy"
            raise FrameError(f"{folders.rgb or folders.x or folders.y}: no {what} files for this video")
        x_names = _numbered(folders.x, "x", layout, "dx", scans)
        y_names = _numbered(folders.y, "y", layout, "dy", scans)
        if len(x_names) != len(y_names):
            longer, folder = (x_names, folders.y) if len(x_names) > len(y_names) else (y_names, folders.x)
            missing = longer[min(len(x_names), len(y_names))]
            raise FrameError(f"{folder}: {len(x_names)} dx and {len(y_names)} dy files; the pair of {missing} "
                             "is missing")
    shift_notes = []
    if layout.flow_ends_at_frame and x_names:  # field file k: from frame k−1 to img_k; file 1 starts unseen
        shift_notes = [f"{x_names[0]} and {y_names[0]} dropped: the {layout.name} layout's field k is the flow "
                       f"from frame k−1 to {layout.prefixes[0]}k, and the frame before "
                       f"{layout.file_name('rgb', 0)} is not in the tree"]
        x_names, y_names = x_names[1:], y_names[1:]
    num_rgb, num_flow, notes = _counts(len(rgb_names), len(x_names), trim_rgb, folders.rgb or folders.x or "")
    return rgb_names[:num_rgb], x_names[:num_flow], y_names[:num_flow], shift_notes + notes


def _field_ranges(path: str, fields: int) -> np.ndarray:
    """gpu_flow's .bin of one video: (min dx, max dx, min dy, max dy) in pixels per field, float32 as
    it writes them, a row a field (at least ``fields`` rows). Level q of a field file means
    min + q·(max − min)/255, as gpu_flow rounds. FrameError where the file cannot be the ranges."""
    try:
        data = read_regular_file(path)
    except OSError as exc:
        raise FrameError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) % 16 or len(data) // 16 < fields:
        raise FrameError(f"{path}: {len(data)} bytes, but {fields} fields need {16 * fields} (4 float32 a field: "
                         "gpu_flow's min and max of dx and dy)")
    ranges = np.frombuffer(data, "<f4").reshape(-1, 4)[:fields].astype(np.float64)
    if not np.isfinite(ranges).all() or (ranges[:, 1] < ranges[:, 0]).any() or (ranges[:, 3] < ranges[:, 2]).any():
        raise FrameError(f"{path}: not gpu_flow's field ranges (a max below its min, or not a number)")
    return ranges


def import_video(folders: VideoFolders, settings: ImportSettings, layout: Layout, trim_rgb: bool = False,
                 check_data: bool = True) -> ImportedVideo:
    """Read and check one video's files and build its records and metadata. Raises FrameError.
    ``trim_rgb``: keep only the RGB frames the flow covers where there are more; ``check_data``: decode
    every file strictly (:func:`_check_data`), not only read its header."""
    problem = id_problem(folders.video) or key_length_problem(folders.video)
    if problem:
        raise FrameError(f"id {folders.video!r}: {problem}")
    rgb_names, x_names, y_names, notes = _list_files(folders, settings, layout, trim_rgb)
    records: list[tuple[bytes, bytes]] = []
    size: tuple[int, int] | None = None
    size_of = ""

    def check_size(info: JpegInfo, path: str) -> None:
        nonlocal size, size_of
        if size is None:
            size, size_of = (info.width, info.height), path
        elif (info.width, info.height) != size:
            raise FrameError(f"{path}: {info.width}x{info.height}, but {size_of} is {size[0]}x{size[1]}")

    rgb_bytes = flow_bytes = 0
    for t, name in enumerate(rgb_names):
        data, info = _read(folders.rgb, name, check_data, flow=False)
        check_size(info, os.path.join(folders.rgb, name))
        records.append((record_key(folders.video, "rgb", t), data))
        rgb_bytes += len(data)
    lo, hi = linear_range(settings.bound, settings.zero_level)
    ranges = _field_ranges(folders.ranges, len(x_names)) if folders.ranges and x_names else None
    for t, (x_name, y_name) in enumerate(zip(x_names, y_names, strict=True)):
        jx, x_info = _read(folders.x, x_name, check_data, flow=True)
        jy, y_info = _read(folders.y, y_name, check_data, flow=True)
        check_size(x_info, os.path.join(folders.x, x_name))
        check_size(y_info, os.path.join(folders.y, y_name))
        x_range, y_range = ((lo, hi), (lo, hi)) if ranges is None else (tuple(ranges[t, :2]), tuple(ranges[t, 2:]))
        record = pack_flow_jpegs(jx, jy, *x_range, y_range=y_range)
        records.append((record_key(folders.video, "flow", t), record))
        flow_bytes += len(record)
    width, height = size
    meta = VideoMeta(
        video=folders.video,
        source={kind: os.path.abspath(path) for kind, path in
                (("rgb", folders.rgb), ("x", folders.x), ("y", folders.y),
                 ("ranges", folders.ranges if ranges is not None else None)) if path is not None},
        num_frames=len(rgb_names), num_flows=len(x_names), num_backward=0, width=width, height=height,
        source_width=width, source_height=height, header_frames=None, fps=None,
        flow=FlowInfo(settings.flow_algo, f"imported from {layout.name} files", {}), bound=settings.bound,
        quality=None, rgb_quality=None, short_side=min(width, height), rgb_bytes=rgb_bytes, flow_bytes=flow_bytes,
        versions=library_versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        imported=settings.to_dict()["imported"], streams=tuple(settings.streams), import_notes=notes)
    return ImportedVideo(folders.video, records, meta)


def _work(folders: VideoFolders, settings: ImportSettings, layout: Layout, trim_rgb: bool, check_data: bool
          ) -> ImportedVideo | Failure:
    where = folders.x or folders.rgb or folders.y or ""
    try:
        return import_video(folders, settings, layout, trim_rgb, check_data)
    except FrameError as exc:  # the failure names the video's folder; its reason, the file in it
        return Failure(folders.video, where, str(exc).removeprefix(f"{where}: ").replace(where + os.sep, ""))
    except Exception as exc:  # noqa: BLE001 - one bad video must not end a dataset-wide run
        return Failure(folders.video, where, f"{type(exc).__name__}: {exc}")


def _results(todo: list[VideoFolders], settings: ImportSettings, layout: Layout, readers: int, trim_rgb: bool,
             check_data: bool) -> Iterator[ImportedVideo | Failure | None]:
    """Imported videos in completion order, from ``readers`` threads, at most 2 per thread in memory
    (0: read in this thread); None where no video was read for a while."""
    if readers == 0:
        for folders in todo:
            yield _work(folders, settings, layout, trim_rgb, check_data)
        return
    with ThreadPoolExecutor(readers, thread_name_prefix="flowprep-import") as pool:
        pending: set[Future] = set()
        queue = iter(todo)
        try:
            while True:
                for folders in queue:
                    pending.add(pool.submit(_work, folders, settings, layout, trim_rgb, check_data))
                    if len(pending) >= 2 * readers:
                        break
                if not pending:
                    return
                done, pending = wait(pending, timeout=_BATCH_SECONDS, return_when=FIRST_COMPLETED)
                if not done:
                    yield None  # readers are slow (a stuck file, a slow disk): commit what is read
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()


ProgressCallback = Callable[[int, RunReport], None]


class _Committer:
    """Commits imported videos in batches (one transaction each) and keeps the report and the failure
    list up to date."""

    def __init__(self, writer: ShardWriter, out: Path, report: RunReport, failures: dict):
        self.writer, self.out, self.report, self.failures = writer, out, report, failures
        self.batch: list[ImportedVideo] = []
        self.last_commit = time.perf_counter()

    def add(self, result: ImportedVideo | Failure) -> None:
        if isinstance(result, Failure):
            record_failure(self.out, self.failures, self.report, result)
            return
        self.batch.append(result)
        # a transaction goes into one shard whole: at most a quarter of a shard, so that a shard ends
        # near --shard-size rather than a batch past it
        if (sum(v.meta.rgb_bytes + v.meta.flow_bytes for v in self.batch) >= min(_BATCH_BYTES,
                                                                                  self.writer.shard_bytes // 4)
                or time.perf_counter() - self.last_commit >= _BATCH_SECONDS):
            self.commit()

    def commit(self) -> None:
        self.last_commit = time.perf_counter()
        if not self.batch:
            return
        self.writer.put_videos([(v.video, v.records, v.meta) for v in self.batch])
        for v in self.batch:
            self.report.count_stored(v.meta)
            self.report.notes += [f"{v.video}: {n}" for n in v.meta.import_notes]
        cleared = [v.video for v in self.batch if self.failures.pop(v.video, None) is not None]
        if cleared:
            write_json_atomic(self.out / FAILURES_FILE, self.failures)
        self.batch.clear()


def run_import(source: str | os.PathLike, out: str | os.PathLike, layout: Layout, settings: ImportSettings,
               rgb_tree: str | os.PathLike | None = None, readers: int = 1, shard_bytes: int = 8 << 30,
               on_start: Callable[[int, int], None] | None = None,
               on_progress: ProgressCallback | None = None, videos: list[VideoFolders] | None = None,
               trim_rgb: bool = False, check_data: bool = True) -> RunReport:
    """Import every video of the tree(s) not yet complete in OUT (``report.pairs``: flow fields stored).

    ``settings.streams`` must be the streams to import (see :func:`flowprep.layouts.find_video_folders`);
    ``readers``: threads reading files (0: read in this thread). Failures are recorded in
    ``OUT/failures.json`` and the report, as by ``flowprep extract``. ``videos``: the trees' videos where
    the caller has listed them already; ``check_data``: decode every file strictly (damaged JPEG data that
    still decodes is a failure), not only read its header.
    """
    if readers < 0:
        raise SettingError("workers", "must be >= 1", readers)
    if videos is None:
        _, videos = find_video_folders(Path(source), layout, Path(rgb_tree) if rgb_tree else None, settings.streams)
    out = Path(out)
    report = RunReport(total=len(videos))
    start = time.perf_counter()
    with ShardWriter(out, shard_bytes=shard_bytes, what="flowprep import") as writer:
        failures = begin_run(writer, out, settings, [v.video for v in videos], report)
        todo = [v for v in videos if v.video not in writer.complete]
        if on_start is not None:
            on_start(len(todo), report.skipped)
        committer = _Committer(writer, out, report, failures)
        done = 0
        try:
            for result in _results(todo, settings, layout, readers, trim_rgb, check_data):
                if result is None:
                    committer.commit()
                    continue
                done += 1
                committer.add(result)
                report.seconds = time.perf_counter() - start
                if on_progress is not None:
                    on_progress(done, report)
        except KeyboardInterrupt:
            report.interrupted = True
        committer.commit()  # whole videos read before an interrupt are kept
        write_json_atomic(out / FAILURES_FILE, failures)
    report.failures.sort(key=lambda f: f.video)
    report.seconds = time.perf_counter() - start
    return report
