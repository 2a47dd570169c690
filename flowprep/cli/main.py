"""The ``flowprep`` command: parses arguments and calls the library."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import click
import cv2
from click.core import ParameterSource

from flowprep.algorithms.registry import ALGORITHMS, DEVICES, check_gpus
from flowprep.cli.common import bound_value, exit_for, fail, human_bytes, parse_size, run_with_bar
from flowprep.datasets.pipeline import DATA_ENV, Pipeline, is_pipeline_file, load_pipeline, prepare
from flowprep.datasets.splits import SplitError, match_videos, read_split
from flowprep.datasets.synthetic import SynthConfig, write_dataset
from flowprep.errors import UserError
from flowprep.extract import Compute, run_extract
from flowprep.logs import log_to_stderr
from flowprep.storage.settings import ExtractSettings, describe_settings
from flowprep.storage.shard import StoreError
from flowprep.storage.store import FlowStore
from flowprep.verify import refuse_while_written, summarize, verify
from flowprep.visualize import figure

DATA_ROOT_OPTION = click.option(
    "--data-root", type=click.Path(path_type=Path), envvar=DATA_ENV, default=None,
    help=f"Folder the pipeline's paths are relative to [env {DATA_ENV}; default: data/ beside pipelines/].")


def _params(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: use KEY=VALUE, e.g. alpha=3")
        value = value.strip()
        for parse in (int, float, str):
            try:
                out[key.strip()] = parse(value)
                break
            except ValueError:
                continue
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="twostream")
def main() -> None:
    """Optical flow for whole video datasets, stored as JPEG-compressed LMDB shards.

    \b
    flowprep extract videos/ out/       decode, compute flow, store (resumable)
    flowprep extract pipelines/ucf101.yaml   the same for a dataset's pipeline file
    flowprep data pipelines/ucf101.yaml      unpack (or, built-in, generate) a dataset
    flowprep splits pipelines/ucf101.yaml    official splits: counts, missing videos
    flowprep synth out/                 write the built-in dataset
    flowprep info out/                  counts, sizes, compression, failures
    flowprep verify out/ --workers 8    decode every record, check counts and checksums
    flowprep verify out/ --content      also check that each video's flow explains its frames
    flowprep upgrade out/               index a store written by flowprep 0.1 (fast to open)
    flowprep show out/ VIDEO -o f.png   frame, dx, dy and colour-coded flow
    flowprep import frames/ out/        frames and flow extracted by another tool, as they are
    flowprep export out/ files/ --layout mmaction   a store back as another tool's files
    """
    log_to_stderr("flowprep")


def _load_pipeline(path: Path, data_root: Path | None) -> Pipeline:
    try:
        return load_pipeline(path, data_root)
    except UserError as exc:
        fail(exc)


def _split_reports(pipeline: Pipeline, available: list[str], where: str) -> tuple[list[str], bool]:
    """One line per split of the pipeline (counts, videos missing from ``where``); True if a
    split file could not be read."""
    lines, broken = [], False
    for number in pipeline.split_numbers:
        try:
            split = read_split(pipeline.split_format, pipeline.splits, number)
        except SplitError as exc:
            lines.append(f"split {number}: {exc}")
            broken = True
            continue
        split.dataset = pipeline.name
        matched = match_videos(split, available)
        lines.append(f"{split.describe()}; {matched.report(where)}")
    return lines, broken


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path), required=False)
@DATA_ROOT_OPTION
@click.option("--algo", type=click.Choice(ALGORITHMS), default="brox", show_default=True,
              help="Flow algorithm. brox: OpenCV CUDA Brox where OpenCV has CUDA, else the CPU pyramid.")
@click.option("--bound", default="20", show_default=True, callback=bound_value,
              help="Pixels: flow clipped to ±BOUND and mapped to [0,255] with 0 at 128; "
                   "or 'adaptive': each field's own min/max, kept in the record.")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True,
              help="JPEG quality of the flow fields.")
@click.option("--rgb-quality", type=click.IntRange(1, 100), default=90, show_default=True,
              help="JPEG quality of the RGB frames.")
@click.option("--short-side", type=click.IntRange(min=0), default=256, show_default=True,
              help="Pixels of each frame's smaller side after rescaling (0: keep the video's size).")
@click.option("--bidirectional", is_flag=True, help="Also store backward flow (frame t+1 to t).")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="CPU worker processes (each single-threaded when more than one).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="brox implementation: auto = OpenCV CUDA Brox if OpenCV has CUDA, else the PyTorch Brox on "
                   "a GPU torch sees (as fused Triton kernels where triton is installed; --param kernel=eager: "
                   "the eager one), else the CPU pyramid; cpu = the CPU pyramid; cuda = a GPU one; torch-cpu = "
                   "the PyTorch Brox on the CPU.")
@click.option("--gpus", type=click.IntRange(min=0), default=0, show_default=True,
              help="One worker per GPU (OpenCV CUDA Brox, or the PyTorch Brox); frames are decoded on the CPU.")
@click.option("--batch", "max_batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most frame pairs per GPU call of the PyTorch Brox (also capped by free GPU memory; "
                   "halved after an out-of-memory error).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
              help="Send the per-video work to this Dask scheduler's workers (pip install 'dask[distributed]'); "
                   "this process still writes every video.")
@click.option("--shard-size", default="8GB", show_default=True,
              help="Start a new shard-NNNNN.lmdb once a shard holds this much.")
@click.option("--param", "flow_params", multiple=True, callback=_params, metavar="KEY=VALUE",
              help="Override a flow parameter, e.g. --param alpha=4 (repeatable; see README).")
def extract(source: Path, out: Path | None, data_root: Path | None, algo: str, bound: float | str,
            quality: int, rgb_quality: int, short_side: int, bidirectional: bool, workers: int, device: str,
            gpus: int, max_batch: int, scheduler: str | None, shard_size: str, flow_params: dict) -> None:
    """Extract RGB frames and optical flow of every video in SOURCE into OUT.

    SOURCE is a video, a folder searched recursively for videos, a text file listing one video
    path per line, or a pipeline file (pipelines/ucf101.yaml), whose videos, output folder and flow
    settings are then used; flags given on the command line override the pipeline's settings.
    A video's id in OUT is its path relative to SOURCE without extension. Running the same command
    again skips videos already stored, so an interrupted or killed run resumes where it stopped.
    Videos that cannot be read are listed at the end and the exit status is 1.
    """
    ctx = click.get_current_context()
    given = {name: value for name, value in [
        ("algo", algo), ("bound", bound), ("quality", quality), ("rgb_quality", rgb_quality),
        ("short_side", short_side), ("bidirectional", bidirectional), ("flow_params", flow_params),
    ] if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    pipeline, source, out, settings = _extract_settings(source, out, data_root, given)
    algo = settings.algo
    try:
        check_gpus(algo, gpus)
    except UserError as exc:
        fail(exc)

    where = f"Dask cluster {scheduler}" if scheduler else f"{gpus or workers} worker(s)"
    report = run_with_bar(
        lambda on_start, on_progress: run_extract(
            source, out, settings, workers=workers, gpus=gpus, shard_bytes=parse_size(shard_size),
            on_start=on_start, on_progress=on_progress, scheduler=scheduler, compute=Compute(device, max_batch)),
        lambda todo, skipped: f"{todo} videos to extract ({skipped} already in {out}), {where}, algo {algo}",
        "pairs", 1)
    if pipeline is not None and not report.interrupted:
        store = FlowStore(out)
        for line in _split_reports(pipeline, store.videos(), str(out))[0]:
            click.echo(line, err=True)
        store.close()
    exit_for(report)


def _extract_settings(source: Path, out: Path | None, data_root: Path | None, given: dict
                      ) -> tuple[Pipeline | None, Path, Path, ExtractSettings]:
    """(pipeline or None, videos, store, settings) of ``flowprep extract``: from a pipeline file with the
    flags ``given`` over its settings, or from the flags alone."""
    try:
        if is_pipeline_file(source):
            pipeline = _load_pipeline(source, data_root)
            pipeline.check_present()
            return pipeline, pipeline.videos, out or pipeline.out, dataclasses.replace(pipeline.flow, **given)
        if out is None:
            fail("OUT is required unless SOURCE is a pipeline file")
        return None, source, out, ExtractSettings(**given)
    except UserError as exc:
        fail(exc)


def _open(out: Path, strict: bool = True) -> FlowStore:
    """The store at OUT; ``strict=False`` (info, verify): damaged shards are reported, not fatal. A store
    that another process is writing is refused: what it holds now is not what it will hold."""
    try:
        refuse_while_written(out)
        store = FlowStore(out, strict=strict)
        store.shard_indices()
        return store
    except UserError as exc:
        fail(exc)


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
def info(out: Path) -> None:
    """Videos, frames, bytes, compression ratio, algorithms and failures of the store OUT."""
    store = _open(out, strict=False)
    s = summarize(store)
    try:
        settings = store.settings()
        settings_line = describe_settings(settings, out) if settings else None
    except StoreError as exc:
        s.problems.append(str(exc))
        settings_line = None
    click.echo(f"store       {out} ({s.shards} shard(s), {human_bytes(s.disk_bytes)} on disk)")
    click.echo(f"videos      {s.videos}")
    click.echo(f"frames      {s.frames} RGB JPEGs, {human_bytes(s.rgb_bytes)}")
    fields = f"{s.flow_fields} forward" + (f" + {s.backward_fields} backward" if s.backward_fields else "")
    click.echo(f"flow        {fields} fields, {human_bytes(s.flow_bytes)} "
               f"({human_bytes(s.flow_bytes / max(1, s.flow_fields + s.backward_fields))} per field)")
    click.echo(f"compression {s.compression_ratio:.1f}x smaller than float32 "
               f"({human_bytes(s.float32_flow_bytes)} as float32)")
    if settings_line:
        click.echo(f"settings    {settings_line}")
    for name, count in sorted(s.algorithms.items()):
        click.echo(f"algorithm   {name}: {count} videos")
    click.echo(f"failures    {len(s.failures)}")
    for _, failure in sorted(s.failures.items()):
        click.echo(f"  {failure['path']}: {failure['reason']}")
    if s.problems:
        click.echo(f"damage      {len(s.problems)} problem(s) reading the store (`flowprep verify {out}` checks all):")
        for problem in s.problems:
            click.echo(f"  {problem}")
        sys.exit(1)


@main.command(name="verify")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--no-decode", is_flag=True, help="Only check keys, counts and checksums, do not decode every JPEG.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Shards checked at once, each in its own process (decoding takes ~0.8 s a 300-frame video on "
                   "one core: use the machine's cores on a large store).")
@click.option("--content", is_flag=True,
              help="Also check that each video's flow explains its frames (warping frame t+1 back by field t onto "
                   "frame t): catches pairing off by one, x/y swapped, sign flipped, bound or zero level wrong.")
def verify_command(out: Path, no_decode: bool, workers: int, content: bool) -> None:
    """Check every video of OUT: all records present and numbered as the metadata says, its index and
    checksum entries, each record's CRC-32, the metadata against flowprep.json, and (unless
    --no-decode) every JPEG decodes to the stored frame size. Damaged shards or metadata are
    reported, and the check goes on. Shard by shard: memory does not grow with the store. Exit
    status 1 on any problem."""
    store = _open(out, strict=False)
    try:
        records = store.num_records()
        with click.progressbar(length=records, label="records", file=sys.stderr, show_pos=True, show_eta=True,
                               item_show_func=lambda text: text) as bar:
            rate = RecordRate()

            def on_record(n: int) -> None:
                bar.update(n, rate.add(n))

            result = verify(store, decode=not no_decode, on_record=on_record, workers=workers)
    except UserError as exc:
        fail(exc)
    if content:
        result.problems += _content_problems(store, result.notes)
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.problems:
        for problem in result.problems:
            click.echo(f"problem: {problem}")
        click.echo(f"{len(result.problems)} problem(s) in {out} ({result.videos} videos)")
        sys.exit(1)
    click.echo(f"ok: {result.videos} videos, {result.records} records in {out} ({rate.describe()})")


def _content_problems(store: FlowStore, notes: list[str]) -> list[str]:
    """``verify --content``: one problem per video whose flow does not explain its frames; the count of
    videos without a verdict as a note."""
    from flowprep.content import check_store

    with click.progressbar(length=len(store), label="content", file=sys.stderr, show_pos=True) as bar:
        results = check_store(store, on_video=lambda _: bar.update(1))
    wrong = [r for r in results if r.problem]
    still = [r.video for r in results if r.verdict == "still"]
    short = [r.video for r in results if r.verdict == "short"]
    ok = len(results) - len(wrong) - len(still) - len(short)
    if still:
        notes.append(f"content: {len(still)} video(s) barely move, no verdict (e.g. {still[0]})")
    if short:
        notes.append(f"content: {len(short)} video(s) too short or without both streams, not checked "
                     f"(e.g. {short[0]})")
    notes.append(f"content: {ok} videos ok, {len(still)} without a verdict (still), {len(wrong)} wrong")
    return [f"{r.video}: content: {r.message}" for r in wrong]


class RecordRate:
    """Records checked per second, for the progress bar and the summary line."""

    def __init__(self) -> None:
        self.start, self.count = time.monotonic(), 0

    def add(self, n: int) -> str:
        self.count += n
        return self.describe()

    def describe(self) -> str:
        seconds = max(time.monotonic() - self.start, 1e-9)
        return f"{self.count / seconds:,.0f} records/s"


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
def upgrade(out: Path) -> None:
    """Give a store written by flowprep 0.1 the index and binary checksums of 0.2, so that opening it
    reads a few bytes a video instead of every video's metadata. Records and metadata are left as
    they are; a video stored without checksums gets them from its records, each decoded first (one
    that does not decode is named and left as it was). Safe to rerun; stops other writers meanwhile."""
    from flowprep.upgrade import upgrade_store

    store = _open(out)
    try:
        todo = store.count_unindexed()
    except UserError as exc:
        fail(exc)
    store.close()
    if not todo:
        click.echo(f"{out}: every video has its index and checksum entries; nothing to do")
        return
    try:
        with click.progressbar(length=todo, label="videos", file=sys.stderr, show_pos=True) as bar:
            report = upgrade_store(out, on_video=bar.update)
    except UserError as exc:
        fail(exc)
    computed = f" ({report.computed} of them without checksums: computed from their records)" if report.computed else ""
    click.echo(f"{out}: {report.indexed} videos indexed{computed}")
    for _, problem in sorted(report.failed.items()):
        click.echo(f"  not indexed: {problem}")
    if report.failed:
        click.echo(f"{len(report.failed)} video(s) left as they were: `flowprep verify {out}` lists their damage")
        sys.exit(1)


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("video")
@click.option("--frame", "t", type=int, default=0, show_default=True, help="Frame / flow index t (0-based).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="PNG to write [default: VIDEO-tT.png in the current folder].")
def show(out: Path, video: str, t: int, output: Path | None) -> None:
    """Write a picture of VIDEO at frame T: the frame, dx and dy as grey images (mid-grey: 0 px) and the
    flow colour-coded (hue: direction, brightness: magnitude), like the paper's Figure 2."""
    store = _open(out)
    if video not in store:
        matches = [v for v in store.videos() if v.rsplit("/", 1)[-1] == video]
        if len(matches) != 1:
            fail(f"video {video!r} is not in {out}" + (f" (did you mean {matches}?)" if matches else ""))
        video = matches[0]
    try:
        picture = figure(store, video, t)
    except UserError as exc:
        fail(exc)
    output = output or Path(f"{video.rsplit('/', 1)[-1]}-t{t}.png")
    if output.is_dir() or output.suffix.lower() != ".png":
        fail(f"{output}: -o names the PNG file to write (NAME.png)")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(output), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    except (OSError, cv2.error):
        written = False
    if not written:
        fail(f"{output}: cannot write the PNG")
    click.echo(f"wrote {output}")


@main.command()
@click.argument("pipeline_file", metavar="PIPELINE", type=click.Path(path_type=Path))
@DATA_ROOT_OPTION
def data(pipeline_file: Path, data_root: Path | None) -> None:
    """Make a dataset present in the data root: generate the built-in one, or unpack the official
    archives (UCF101.rar, ...) that you put in the data root (needs unrar, 7z, unar or bsdtar for
    .rar files). Says where to get the archives when they are not there."""
    pipeline = _load_pipeline(pipeline_file, data_root)
    try:
        prepare(pipeline)
        pipeline.check_present()
    except UserError as exc:
        fail(exc)
    click.echo(f"{pipeline.name}: videos in {pipeline.videos}, splits in {pipeline.splits}")


@main.command()
@click.argument("pipeline_file", metavar="PIPELINE", type=click.Path(path_type=Path))
@DATA_ROOT_OPTION
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="Check the splits against this store [default: the pipeline's output, else its videos].")
def splits(pipeline_file: Path, data_root: Path | None, store: Path | None) -> None:
    """Read the official splits of a dataset: train/test counts per split, and which videos the
    splits name that are missing from the store (or the videos folder)."""
    pipeline = _load_pipeline(pipeline_file, data_root)
    if not pipeline.splits.is_dir():
        fail(pipeline.missing_message())
    store = store or (pipeline.out if pipeline.out.is_dir() else None)
    if store is not None:
        flow_store = _open(store)
        available, where = flow_store.videos(), str(store)
    else:
        from flowprep.extract import SourceError, find_videos

        try:
            available = [v.video for v in find_videos(pipeline.videos)] if pipeline.videos.is_dir() else []
        except SourceError:
            available = []
        where = str(pipeline.videos)
    lines, broken = _split_reports(pipeline, available, where)
    for line in lines:
        click.echo(line)
    if broken:
        sys.exit(1)


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--motion-classes", type=click.IntRange(0, 8), default=8, show_default=True,
              help="Classes that differ only in motion (left/right, up/down, rotations, expand/contract).")
@click.option("--appearance-classes", type=click.IntRange(0, 6), default=4, show_default=True,
              help="Classes that differ only in appearance (shape and colour).")
@click.option("--clips-per-class", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--frames", type=click.IntRange(min=2), default=24, show_default=True, help="Frames per clip.")
@click.option("--width", type=click.IntRange(min=48), default=170, show_default=True, help="Pixels.")
@click.option("--height", type=click.IntRange(min=48), default=128, show_default=True, help="Pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
def synth(out: Path, motion_classes: int, appearance_classes: int, clips_per_class: int, frames: int,
          width: int, height: int, seed: int) -> None:
    """Write the built-in dataset to OUT: AVI clips in the UCF-101 layout (OUT/videos/<Class>/...)
    and split files (OUT/splits/classInd.txt, trainlist01.txt, testlist01.txt)."""
    try:
        cfg = SynthConfig(motion_classes=motion_classes, appearance_classes=appearance_classes,
                          clips_per_class=clips_per_class, frames=frames, width=width, height=height,
                          seed=seed)
    except UserError as exc:
        fail(exc)
    total = (motion_classes + appearance_classes) * clips_per_class
    with click.progressbar(length=total, label="clips", file=sys.stderr, show_pos=True) as bar:
        summary = write_dataset(out, cfg, on_clip=lambda: bar.update(1))
    click.echo(f"wrote {total} clips of {len(summary['classes'])} classes to {out}/videos "
               f"({summary['train']} train, {summary['test']} test in {out}/splits)")


def _add_file_commands() -> None:
    from flowprep.cli.files import export_command, import_command

    main.add_command(import_command)
    main.add_command(export_command)


_add_file_commands()
