"""Whole-dataset extraction: videos → RGB JPEGs + flow JPEGs → LMDB shards.

Worker processes decode a video, compute its flow and encode every record; the calling process is
the only writer and commits each video in one transaction, so a run killed at any moment leaves
only whole videos behind and the same command resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed

from flowprep.algorithms.registry import check_params, create_flow, resolve_implementation, try_params
from flowprep.errors import SettingError, UserError
from flowprep.run import Failure, RunReport, begin_run, library_versions, record_failure
from flowprep.storage.atomic import write_json_atomic
from flowprep.storage.codec import encode_flow, encode_rgb
from flowprep.storage.meta import FlowInfo, VideoMeta
from flowprep.storage.settings import ExtractSettings
from flowprep.storage.shard import id_problem, key_length_problem, record_key
from flowprep.storage.store import FAILURES_FILE, ShardWriter
from flowprep.video import VIDEO_EXTENSIONS, VideoError, VideoReader

LIST_EXTENSIONS = (".txt", ".lst", ".list")
RUN_DIR = ".flowprep-run"
# joblib's (loky's) resource tracker warns of "leaked semlock objects" when the writer was killed; the
# next run resumes and nothing leaked is ours: keep the tracker quiet in the worker processes
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"


class SourceError(UserError):
    """SOURCE cannot be turned into a list of videos; the message says which path and why."""


@dataclass(frozen=True)
class VideoSource:
    video: str  # id in the store: path relative to the source root, no extension, '/'-separated
    path: str


@dataclass
class ExtractedVideo:
    """One video's records (key, value) and metadata, ready to commit."""

    video: str
    records: list[tuple[bytes, bytes]]
    meta: VideoMeta


def _video_id(path: Path, root: Path) -> str:
    """The id of a video: its path under ``root`` without extension; a video outside ``root`` (a list
    naming ``../x.avi`` or an absolute path) is named by its file name alone, so that no id climbs out
    of the store's folder."""
    rel = Path(os.path.relpath(os.path.normpath(os.path.abspath(path)), os.path.abspath(root)))
    if rel.parts and rel.parts[0] == "..":
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


def find_videos(source: str | os.PathLike) -> list[VideoSource]:
    """The videos of SOURCE: a video file, a folder (searched recursively for video extensions) or
    a text file with one video path per line (relative to the list's folder; '#' starts a comment;
    anything after the path, such as a UCF-101 label, is ignored)."""
    src = Path(source)
    if not src.exists():
        raise SourceError(f"{src}: no such file or folder")
    if src.is_dir():
        root = src
        paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        if not paths:
            raise SourceError(f"{src}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in this folder")
    elif src.suffix.lower() in LIST_EXTENSIONS:
        root = src.parent
        paths = []
        for line in src.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            path = src.parent / line  # an absolute line stays absolute
            if not path.exists():
                path = src.parent / line.split()[0]
            paths.append(path)
        if not paths:
            raise SourceError(f"{src}: the list names no videos")
    elif src.suffix.lower() in (".yaml", ".yml"):
        raise SourceError(f"{src}: pipeline files are not supported yet; pass a folder or a list of videos")
    else:
        root = src.parent
        paths = [src]
    sources: dict[str, VideoSource] = {}
    for path in paths:
        video = _video_id(path, root)
        if video in sources:
            raise SourceError(f"{src}: {sources[video].path} and {path} would both be stored as {video!r}")
        sources[video] = VideoSource(video, str(path))
    return list(sources.values())


@dataclass(frozen=True)
class Compute:
    """Where and how flow is computed: not part of a store's settings (the metadata of each video
    records the implementation that ran). ``device``: see :func:`flowprep.algorithms.registry.create_flow`;
    ``max_batch``: frame pairs per call of a batched (PyTorch) implementation."""

    device: str = "auto"
    max_batch: int = 32


def extract_video(source: VideoSource, settings: ExtractSettings, gpu: int | None = None,
                  compute: Compute = Compute()) -> ExtractedVideo:
    """Decode one video and encode all its records (RGB JPEGs, forward and optional backward flow).

    Frame pairs are gathered into batches for implementations that solve many pairs at once.
    Raises VideoError for a file that is not a usable video.
    """
    problem = id_problem(source.video) or key_length_problem(source.video)
    if problem:
        raise VideoError(f"id {source.video!r}: {problem}")
    method = create_flow(settings.algo, settings.flow_params, gpu=gpu, device=compute.device,
                         max_batch=compute.max_batch)
    reader = VideoReader(source.path, settings.short_side)
    records: list[tuple[bytes, bytes]] = []
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (t, frame t, frame t+1), grey

    def flush() -> None:
        firsts, seconds = [a for _, a, _ in pending], [b for _, _, b in pending]
        directions = [("flow", firsts, seconds)] + ([("back", seconds, firsts)] if settings.bidirectional else [])
        for kind, a, b in directions:
            for (t, _, _), flow in zip(pending, method.many(a, b), strict=True):
                records.append((record_key(source.video, kind, t), encode_flow(flow, settings.bound, settings.quality)))
        pending.clear()

    prev_grey = None
    for t, frame in enumerate(reader):
        records.append((record_key(source.video, "rgb", t), encode_rgb(frame, settings.rgb_quality)))
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if prev_grey is not None:
            pending.append((t - 1, prev_grey, grey))
            if len(pending) >= method.max_batch:
                flush()
        prev_grey = grey
    reader.check_complete()
    frames = reader.frames_read
    if frames < 2:
        raise VideoError("only one frame decodes; optical flow needs at least two")
    flush()
    info = reader.info
    rgb_prefix = f"{source.video}/rgb/".encode()
    rgb_bytes = sum(len(v) for k, v in records if k.startswith(rgb_prefix))
    meta = VideoMeta(
        video=source.video, source=os.path.abspath(source.path), num_frames=frames, num_flows=frames - 1,
        num_backward=frames - 1 if settings.bidirectional else 0, width=reader.size[0], height=reader.size[1],
        source_width=info.width, source_height=info.height, header_frames=info.header_frames, fps=info.fps,
        flow=FlowInfo(method.name, method.implementation, method.params), bound=settings.bound,
        quality=settings.quality, rgb_quality=settings.rgb_quality, short_side=settings.short_side,
        rgb_bytes=rgb_bytes, flow_bytes=sum(len(v) for _, v in records) - rgb_bytes, versions=library_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return ExtractedVideo(source.video, records, meta)


_PROCESS_SETUP: dict = {}


def _claim_gpu(count: int, run_dir: str) -> int:
    """Pin this worker process to one of ``count`` GPUs no other worker of the run holds."""
    if "gpu" not in _PROCESS_SETUP:
        for gpu in range(count):
            handle = open(os.path.join(run_dir, f"gpu-{gpu}.lock"), "w")  # noqa: SIM115 - kept open
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _PROCESS_SETUP["gpu"], _PROCESS_SETUP["gpu_lock"] = gpu, handle
            break
        else:
            raise RuntimeError(f"more worker processes than the {count} GPUs")
    return _PROCESS_SETUP["gpu"]


def _exit_with(parent: int) -> None:
    """Exit this worker process soon after ``parent`` (the run's writer) dies: a kill -9 of the writer
    must not leave workers of hundreds of MB blocked on a pipe for good."""
    if _PROCESS_SETUP.get("watch") or os.getpid() == parent:
        return
    _PROCESS_SETUP["watch"] = True
    direct = os.getppid() == parent

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if direct and os.getppid() != parent:
                os._exit(1)
            if not direct:
                try:
                    os.kill(parent, 0)
                except ProcessLookupError:
                    os._exit(1)
                except PermissionError:
                    pass

    threading.Thread(target=watch, name="flowprep-exit-with-parent", daemon=True).start()


def _work(source: VideoSource, settings: ExtractSettings, single_thread: bool,
          gpus: int, run_dir: str, compute: Compute = Compute(), parent: int | None = None) -> ExtractedVideo | Failure:
    if parent is not None:
        _exit_with(parent)
    if single_thread and not _PROCESS_SETUP.get("threads"):
        cv2.setNumThreads(1)  # several single-threaded processes beat threads; set once per process
        _PROCESS_SETUP["threads"] = True
    try:
        gpu = _claim_gpu(gpus, run_dir) if gpus else None
        return extract_video(source, settings, gpu, compute)
    except VideoError as exc:
        return Failure(source.video, source.path, str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad video must not end a dataset-wide run
        return Failure(source.video, source.path, f"{type(exc).__name__}: {exc}")


ProgressCallback = Callable[[int, RunReport], None]


def _results(todo: list[VideoSource], settings: ExtractSettings, workers: int, gpus: int, run_dir: str,
             scheduler: str | None, compute: Compute) -> Iterator[ExtractedVideo | Failure]:
    """Extracted videos in completion order, from local worker processes or a Dask cluster."""
    if _QUIET_TRACKER not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), _QUIET_TRACKER]))
    if scheduler is None:
        n_jobs = gpus if gpus else min(workers, max(1, len(todo)))
        yield from Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="2*n_jobs")(
            delayed(_work)(s, settings, n_jobs > 1, gpus, run_dir, compute, os.getpid()) for s in todo)
        return
    try:
        from distributed import Client
    except ImportError:
        raise SourceError("--scheduler needs Dask: pip install 'dask[distributed]'") from None
    from joblib import parallel_config

    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise SourceError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    with client, parallel_config(backend="dask", retries=2):
        # a task whose worker dies is run again elsewhere; the writer skips a video it already has
        yield from Parallel(return_as="generator_unordered", batch_size=1)(
            delayed(_work)(s, settings, True, 0, run_dir, compute) for s in todo)


def run_extract(source: str | os.PathLike, out: str | os.PathLike, settings: ExtractSettings,
                workers: int = 1, gpus: int = 0, shard_bytes: int = 8 << 30,
                on_start: Callable[[int, int], None] | None = None,
                on_progress: ProgressCallback | None = None, scheduler: str | None = None,
                compute: Compute = Compute()) -> RunReport:
    """Extract every video of SOURCE not yet complete in OUT.

    ``workers`` CPU processes (or, with ``gpus`` > 0, one process per GPU; or, with ``scheduler``,
    the workers of a Dask cluster) decode and compute; this process is the only writer. Cluster
    workers must see the videos at the same paths. ``on_start(to_do, skipped)`` is called once the
    store is open and ``on_progress(done, report)`` after each video. Failures are recorded in
    ``OUT/failures.json`` and in the report; a later successful run of a video clears its entry.
    """
    sources = find_videos(source)
    out = Path(out)
    if gpus < 0 or workers < 1:
        raise SettingError("workers" if workers < 1 else "gpus", "must be >= 1" if workers < 1 else "must be >= 0",
                           workers if workers < 1 else gpus)
    if gpus and scheduler:
        raise SettingError("scheduler", "cannot be combined with gpus", scheduler)
    if compute.device == "auto":  # decide once, not in every worker
        _, where = resolve_implementation(settings.algo, "auto")
        compute = Compute("cpu" if where == "cpu" else "cuda", compute.max_batch)
    params = check_params(settings.algo, settings.flow_params, compute.device)
    try_params(settings.algo, params, compute.device)
    settings = dataclasses.replace(settings, flow_params=params)
    report = RunReport(total=len(sources))
    start = time.perf_counter()
    # the lock first: the settings are read, rebuilt or written only by the store's one writer
    with ShardWriter(out, shard_bytes=shard_bytes, what="flowprep extract") as writer:
        failures = begin_run(writer, out, settings, [s.video for s in sources], report)
        todo = [s for s in sources if s.video not in writer.complete]
        if on_start is not None:
            on_start(len(todo), report.skipped)
        run_dir = out / RUN_DIR  # GPU claims of the workers; inside OUT, so a killed run leaves nothing in /tmp
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        try:
            results = _results(todo, settings, workers, gpus, str(run_dir), scheduler, compute)
            try:
                for done, result in enumerate(results, start=1):
                    if isinstance(result, Failure):
                        record_failure(out, failures, report, result)
                    elif result.video in writer.complete:
                        continue  # a task run twice (a cluster worker died after finishing it)
                    else:
                        writer.put_video(result.video, result.records, result.meta)
                        report.count_stored(result.meta)
                        if failures.pop(result.video, None) is not None:
                            write_json_atomic(out / FAILURES_FILE, failures)
                    report.seconds = time.perf_counter() - start
                    if on_progress is not None:
                        on_progress(done, report)
            except KeyboardInterrupt:
                report.interrupted = True
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        write_json_atomic(out / FAILURES_FILE, failures)
    report.failures.sort(key=lambda f: f.video)
    report.seconds = time.perf_counter() - start
    return report
