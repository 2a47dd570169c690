"""``flowprep import`` and ``flowprep export``: parse arguments, call :mod:`flowprep.importer` and
:mod:`flowprep.exporter`."""

from __future__ import annotations

import dataclasses
import sys
from contextlib import ExitStack
from pathlib import Path

import click
import numpy as np

from flowprep.algorithms.registry import ALGORITHMS
from flowprep.cli.common import exit_for, fail, human_bytes, parse_size, run_with_bar
from flowprep.errors import UserError
from flowprep.exporter import EXPORT_FILE, ExportReport, run_export
from flowprep.import_plan import (
    ZeroLevel,
    describe,
    exported_mapping,
    guess_zero_level,
    refuse_unread_flow,
    refuse_wrong_numbering,
    survey,
)
from flowprep.importer import run_import
from flowprep.layouts import LAYOUTS, detect_layout, find_video_folders, split_archives
from flowprep.storage.settings import ImportSettings

STREAMS = {"auto": None, "both": ("rgb", "flow"), "rgb": ("rgb",), "flow": ("flow",)}


@click.command(name="import")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--layout", type=click.Choice(["auto", *LAYOUTS]), default="auto", show_default=True,
              help="File names of the tool that wrote SOURCE: mmaction (mmaction2 flow_extraction.py: img_00001, "
                   "x_00001, y_00001), mmaction-opencv (mmaction2 build_rawframes.py --use-opencv: img_00001, "
                   "flow_x_00000), tsn (TSN dense_flow: img_00001, flow_x_00001, field k ends at img_k), denseflow "
                   "(img_00000, flow_x_00000), uv (gpu_flow: SOURCE/u/<video>/frame000001.jpg, SOURCE/v/... or x/, "
                   "y/; RGB in --rgb DIR or SOURCE/rgb); auto: from the files.")
@click.option("--rgb", "rgb_tree", type=click.Path(path_type=Path), default=None,
              help="RGB frames are in this tree (same <class>/<video> folders) rather than beside the flow.")
@click.option("--streams", type=click.Choice(list(STREAMS)), default="auto", show_default=True,
              help="What to import; auto: whatever the tree holds (RGB, flow or both).")
@click.option("--bound", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Pixels the other tool mapped onto [0,255] as ±BOUND [default: 20, what each layout's tool "
                   "writes as its users run it; denseflow run by hand: 32]. The files are kept as they are; this "
                   "says what they mean.")
@click.option("--zero-level", type=click.FloatRange(0, 255), default=None,
              help="Grey level of 0 px [default: read from the files: still pixels at 127 alone mean a tool "
                   "that floors (127: mmaction2's flow_extraction.py), at 127 and 128 one that rounds (127.5: "
                   "dense_flow, denseflow, gpu_flow); with too few still pixels, the layout's].")
@click.option("--flow-algo", type=click.Choice(ALGORITHMS), default="tvl1", show_default=True,
              help="The algorithm the other tool ran (recorded; `trainer predict` needs it).")
@click.option("--trim-rgb", is_flag=True,
              help="Where a video has more RGB frames than flow fields + 1, keep only the first fields + 1 frames "
                   "(otherwise such a video is a failure).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Reader threads (files are read and checked, not decoded). More help where files are slow to "
                   "reach (a cold cache, a network disk); with a warm cache one is fastest (bench/import.py).")
@click.option("--shard-size", default="8GB", show_default=True,
              help="Start a new shard-NNNNN.lmdb once a shard holds this much.")
@click.option("--no-data-check", "check_data", is_flag=True, default=True, flag_value=False,
              help="Only read each file's JPEG header, do not decode it: faster, but JPEG data damaged in a way "
                   "that still decodes is stored (see README).")
@click.option("--no-content-check", "content_check", is_flag=True, default=True, flag_value=False,
              help="Skip the check, after the import, that the flow of 5 sampled videos explains their frames.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (layout, numbering, pairing, counts, levels, files not read) and stop: "
                   "nothing is written. A real run prints it first too.")
def import_command(source: Path, out: Path, layout: str, rgb_tree: Path | None, streams: str,
                   bound: float | None, zero_level: float | None, flow_algo: str, trim_rgb: bool, workers: int,
                   shard_size: str, check_data: bool, content_check: bool, dry_run: bool) -> None:
    """Import frames and flow that another tool extracted as JPEG files (a folder per video) into the
    store OUT, byte for byte: no decoding, no second JPEG loss.

    A video's id is its folder's path under SOURCE (<class>/<video>), as `flowprep extract` names
    videos. A video of N frames must have N-1 flow fields (N fields: the last is dropped, and said);
    gaps, a missing dx or dy, a truncated or non-JPEG file, or frames of different sizes make the video
    a failure, listed at the end (exit status 1) and in OUT/failures.json. Running the same command
    again resumes.
    """
    for tree in (source, rgb_tree):
        if tree is not None and not tree.is_dir():
            fail(f"{tree}: no such folder")
    try:
        archives = split_archives(source, rgb_tree)
        if archives is not None:  # the folder that holds tvl1_flow/ and jpegs_256/
            click.echo(f"{source}: flow from {archives[0]} (u/, v/)"
                       + (f", RGB frames from {archives[1]}" if archives[1] else ", no RGB tree found beside it"),
                       err=True)
            source, rgb_tree = archives
        chosen = LAYOUTS[layout] if layout != "auto" else detect_layout(source, rgb_tree)
        found, videos = find_video_folders(source, chosen, rgb_tree, STREAMS[streams])
        exported = exported_mapping(source)
        if zero_level is not None:
            zero = ZeroLevel(zero_level, "--zero-level")
        elif exported is not None:
            zero = ZeroLevel(exported[1], f"written by flowprep export, as {source / EXPORT_FILE} says")
        else:
            zero = guess_zero_level(videos, chosen)
        bound = bound if bound is not None else exported[0] if exported is not None else chosen.bound
        settings = ImportSettings(chosen.name, bound, zero.level, flow_algo, found)
        files = survey(videos, chosen)
        plan = describe(chosen, "--layout" if layout != "auto" else "auto: from the file names", settings, videos,
                        files, zero_why=zero.why)
        for line in plan:
            click.echo(f"plan: {line}" if not dry_run else line, err=not dry_run)
        refuse_unread_flow(files, chosen)
        refuse_wrong_numbering(files, chosen)
    except UserError as exc:
        fail(exc)
    if dry_run:
        click.echo(f"dry run: nothing written to {out}")
        return
    report = run_with_bar(
        lambda on_start, on_progress: run_import(source, out, chosen, settings, rgb_tree, workers,
                                                 parse_size(shard_size), on_start, on_progress, videos, trim_rgb,
                                                 check_data),
        lambda todo, skipped: (f"{todo} videos to import ({skipped} already in {out}), {chosen.name} layout, "
                               f"{' + '.join(settings.streams)}, {workers} reader(s)"), "fields", 0)
    if content_check and not report.interrupted and {"rgb", "flow"} <= set(settings.streams):
        warn_on_content(out)
    exit_for(report)


def warn_on_content(out: Path, sample: int = 5) -> None:
    """The content check (``flowprep verify --content``) of a few videos spread over the store, right
    after an import: a wrong pairing, x/y swap, sign or bound shows here, before hours of training.
    Warnings only (on stderr); the import's exit status is unchanged."""
    from flowprep.content import check_store
    from flowprep.storage.store import FlowStore

    try:
        store = FlowStore(out)
        videos = store.videos()
        picked = sorted({videos[int(i)] for i in np.linspace(0, len(videos) - 1, min(sample, len(videos)))})
        results = check_store(store, picked) if videos else []
    except UserError as exc:
        click.echo(f"warning: content check not run: {exc}", err=True)
        return
    wrong = [r for r in results if r.problem]
    for result in wrong:
        click.echo(f"warning: {result.video}: {result.message}", err=True)
    judged = sum(1 for r in results if r.verdict not in ("still", "short"))
    click.echo(f"content check of {len(results)} sampled videos: {judged - len(wrong)} ok, {len(wrong)} wrong, "
               f"{len(results) - judged} without a verdict" + (f"; check the import's --layout, --bound and "
                                                              f"--zero-level, then `flowprep verify {out} "
                                                              "--content` checks every video" if wrong else ""),
               err=True)


@click.command(name="export")
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--layout", type=click.Choice(list(LAYOUTS)), required=True,
              help="File names to write (see `flowprep import --help`); uv writes OUT/u, OUT/v and RGB in OUT/rgb.")
@click.option("--bound", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Pixels the target tool reads [0,255] as ±BOUND [default: the imported files' own bound, "
                   "else the store's].")
@click.option("--zero-level", type=click.FloatRange(0, 255), default=None,
              help="Grey level of 0 px the target tool reads [default: the imported files' own, else the "
                   "layout's: 127 for mmaction, 127.5 for the others].")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="JPEG quality of flow fields whose levels must be mapped anew (not of files kept as they are).")
@click.option("--video", "videos", multiple=True, help="Export only this video id (repeatable).")
@click.option("--digits", type=click.IntRange(1, 12), default=None,
              help="Digits of the numbers in file names, as the tree the store was imported from had them "
                   "(img_000001.jpg: 6) [default: the layout's, 5; uv 6].")
def export_command(store: Path, out: Path, layout: str, bound: float | None, zero_level: float | None,
                   quality: int, videos: tuple[str, ...], digits: int | None) -> None:
    """Write the videos of STORE into OUT as another tool's files: a folder per video (OUT/<class>/<video>)
    of RGB frames and dx/dy flow JPEGs. Imported videos come back byte for byte; flow whose levels mean
    other pixels than the target's (stores made by `flowprep extract`: 0 px at level 128) is mapped onto
    the target's levels and encoded again. Backward flow is not exported. OUT must be empty or an
    earlier export with the same options, which the same command resumes."""
    with ExitStack() as stack:
        bar = None

        def on_start(todo: int, skipped: int) -> None:
            nonlocal bar
            click.echo(f"{todo} videos to export ({skipped} already in {out}), {layout} layout", err=True)
            bar = stack.enter_context(click.progressbar(length=todo, label="videos", file=sys.stderr,
                                                        show_pos=True, show_eta=True))

        def on_progress(done: int, report: ExportReport) -> None:
            bar.update(1)

        try:
            target = LAYOUTS[layout] if digits is None else dataclasses.replace(LAYOUTS[layout], digits=digits)
            report = run_export(store, out, target, bound, zero_level, quality, list(videos) or None,
                                on_start, on_progress)
        except UserError as exc:
            fail(exc)
    again = (f"; {report.reencoded} flow fields mapped onto the target's levels and encoded again (quality "
             f"{quality})" if report.reencoded else "")
    click.echo(f"exported {report.exported} videos ({report.files} files, {human_bytes(report.bytes)}) in "
               f"{report.seconds:.1f} s; skipped {report.skipped} already exported{again}", err=True)
    if layout == "uv":
        click.echo(f"RGB frames are in {out / 'rgb'}, where `flowprep import {out} STORE` finds them", err=True)
