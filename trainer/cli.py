"""The ``trainer`` command: parses arguments and calls the library."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from flowprep.errors import UserError
from flowprep.logs import log_to_stderr
from flowprep.storage.atomic import atomic_write
from flowprep.video import VideoError
from trainer.config import load_config
from trainer.evaluate import run_test
from trainer.fit import fit
from trainer.fusion import format_table, fuse_files, report_files


def _one_line(message: str) -> str:
    """An error re-raised from a DataLoader worker carries the worker's traceback: keep its last line,
    the error's own message."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return re.sub(r"^[\w.]*(Error|Exception): ", "", last)


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="twostream")
def main() -> None:
    """Train two-stream ConvNets (Simonyan & Zisserman 2014) from flowprep shards.

    \b
    trainer fit configs/temporal.yaml                 train the temporal stream
    trainer fit configs/synthetic-spatial.yaml --set optim.scale=0.5
    torchrun --nproc_per_node=2 -m trainer fit CONFIG  data-parallel training
    trainer test RUN/checkpoint.pt --train-scores     25 frames x 10 crops per video
    trainer fuse RUN1/scores-*-test.npz RUN2/...      Table 3: streams and fusions
    trainer report runs/*/scores-ucf101-*-test.npz    Table 4: mean over splits
    trainer predict clip.avi --spatial A.pt --temporal B.pt
    """
    log_to_stderr("trainer")


@main.command(name="fit")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config value (YAML syntax), e.g. --set optim.lr=0.001 (repeatable).")
@click.option("--resume", is_flag=True,
              help="Continue from the run folder's checkpoint (a fresh start if there is none).")
def fit_command(config: Path, overrides: tuple[str, ...], resume: bool) -> None:
    """Train the spatial or temporal ConvNet described by CONFIG.

    Writes to the config's run.dir: config.yaml, metrics.csv (training loss, LR and samples/s every
    train.log_every iterations, validation accuracy every train.val_every), checkpoint.pt (every
    train.checkpoint_every iterations and at the end, written atomically) and curves.png.
    """
    try:
        cfg = load_config(config, overrides)
        summary = fit(cfg, resume=resume)
    except UserError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted: run the same command with --resume to continue from the last checkpoint", 130)
    if int(os.environ.get("RANK", "0")) == 0:
        accuracy = ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in summary["val"].items()) or "- (no test video)"
        click.echo(f"done: {summary['iterations']} iterations; validation top-1 {accuracy}; "
                   f"checkpoint {summary['checkpoint']}")


@main.command(name="test")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--split", type=click.IntRange(1, 3), default=None,
              help="Official split to test [default: the one the net was trained on].")
@click.option("--train-scores", is_flag=True, help="Also score the training videos (needed by SVM fusion).")
@click.option("--frames", type=click.IntRange(min=1), default=25, show_default=True,
              help="Frames per video at equal spacing; each gives 10 inputs (corners, centre, flips).")
@click.option("--train-frames", type=click.IntRange(min=1), default=None,
              help="Frames per training video with --train-scores [default: --frames].")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader worker processes.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the score files and plots [default: the checkpoint's folder].")
def test_command(checkpoint: Path, split: int | None, train_scores: bool, frames: int, train_frames: int | None,
                 workers: int, out: Path | None) -> None:
    """Test a trained net with the paper's protocol: per video, class scores averaged over FRAMES
    frames x 10 crops. Writes scores-DATASET-splitN-STREAM-test.npz (video ids, labels, class names,
    softmax scores) and a confusion matrix PNG; prints top-1, top-5 and mean class accuracy."""

    def progress(total: int):
        bar = click.progressbar(length=total, label="videos", file=sys.stderr, show_pos=True, show_eta=True)
        bar.__enter__()

        def tick() -> None:
            bar.update(1)
            if bar.pos >= total:
                bar.__exit__(None, None, None)

        return tick

    try:
        summaries = run_test(checkpoint, split, out, train_scores, frames, workers, train_frames, progress,
                             )
    except UserError as exc:
        _fail(str(exc))
    for s in summaries:
        click.echo(f"{s['dataset']} split {s['split']} {s['subset']} ({s['videos']} videos): "
                   f"top-1 {100 * s['top1']:.1f}%, top-5 {100 * s['top5']:.1f}%, "
                   f"mean class accuracy {100 * s['mean_class']:.1f}%")
        click.echo(f"  scores: {s['scores']}" + (f"\n  confusion matrix: {s['confusion']}" if "confusion" in s else ""))


def _write_table(path: Path, text: str) -> None:
    """Write a table to ``-o PATH`` (a file, written then renamed) or say in one line why not."""
    if path.is_dir():
        _fail(f"{path}: a folder; -o names the file to write the table to")
    try:
        with atomic_write(path, "w") as f:
            f.write(text + "\n")
    except OSError as exc:
        _fail(f"{path}: cannot write ({exc.strerror or exc})")


def _groups(path: Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        _fail(f"{path}: not a JSON file ({exc})")
    groups = data.get("classes", data) if isinstance(data, dict) else None
    if not isinstance(groups, dict) or not all(isinstance(v, str) for v in groups.values()):
        _fail(f"{path}: expected {{class: group}} (or the built-in dataset's classes.json)")
    return groups


@main.command()
@click.argument("scores", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--method", type=click.Choice(["avg", "svm", "both"]), default="both", show_default=True,
              help="Late fusion: average of softmax scores, linear SVM (Crammer-Singer) on L2-normalised "
                   "softmax scores of the training videos, or both.")
@click.option("--groups", type=click.Path(exists=True, path_type=Path), default=None,
              help="JSON {class: group} for per-group accuracy columns (e.g. data/synthetic/classes.json).")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Write the table here too [default: fusion.md beside the first score file].")
def fuse(scores: tuple[Path, ...], method: str, groups: Path | None, out: Path | None) -> None:
    """Fuse the softmax scores of the spatial and temporal nets (test score files of trainer test;
    SVM fusion also reads the -train.npz files beside them). Prints the paper's Table 3 layout."""
    try:
        tables = fuse_files(scores, method, _groups(groups))
    except UserError as exc:
        _fail(str(exc))
    text = "\n\n".join(format_table(rows, title) for title, rows in tables)
    click.echo(text)
    out = out or scores[0].parent / "fusion.md"
    _write_table(out, text)
    click.echo(f"\nwritten to {out}", err=True)


@main.command()
@click.argument("scores", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Also write the table here.")
def report(scores: tuple[Path, ...], out: Path | None) -> None:
    """Gather test score files of splits 1-3 and print the paper's Table 4 layout: mean class accuracy
    of each stream and fusion per split, and the mean over splits."""
    try:
        text = report_files(scores)
    except UserError as exc:
        _fail(str(exc))
    click.echo(text)
    if out:
        _write_table(out, text)


@main.command(name="predict")
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--spatial", type=click.Path(path_type=Path), default=None, help="Spatial net checkpoint.")
@click.option("--temporal", type=click.Path(path_type=Path), default=None, help="Temporal net checkpoint.")
@click.option("--head", default=None, help="Dataset head of a multi-task net [default: the first].")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--allow-other-flow", is_flag=True,
              help="Where the flow implementation the temporal net was trained on cannot run here, use this "
                   "machine's implementation of the same algorithm instead of refusing.")
def predict_command(video: Path, spatial: Path | None, temporal: Path | None, head: str | None, top: int,
                    allow_other_flow: bool) -> None:
    """Classify VIDEO: decode it, compute its flow as the temporal net's training data was made, run
    both nets with the test protocol and print the top classes with fused (averaged) probabilities."""
    from trainer.predict import predict

    try:
        result = predict(video, spatial, temporal, head, allow_other_flow)
    except VideoError as exc:
        _fail(f"{video}: {exc}")
    except UserError as exc:
        _fail(str(exc))
    click.echo(f"{video}: {result.frames} frames, flow {result.flow}, 25 frames x 10 crops per net")
    order = result.fused.argsort()[::-1][:top]
    width = max(len(result.classes[i]) for i in order)
    for rank, i in enumerate(order, 1):
        parts = " ".join(f"{name} {scores[i]:.3f}" for name, scores in result.per_stream.items())
        click.echo(f"{rank}. {result.classes[i]:<{width}}  fused {result.fused[i]:.3f}  ({parts})")
