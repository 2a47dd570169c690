"""Testing as the paper (section 5): ``trainer test``.

Test protocol: 25 frames at equal temporal spacing; from each, 10 inputs (the four corners and the
centre, and their horizontal flips, flow dx negated); the softmax scores of all 250 are averaged
into the video's scores, written as score files (:mod:`trainer.scores`) that fusion reads
(:mod:`trainer.fusion`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowprep.storage.shard import StoreError
from trainer import checkpoint as ckpt
from trainer.config import Config, config_from_dict
from trainer.data import TrainingSet, damaged, open_datasets
from trainer.encoded import EncodedBatch, EncodedInput
from trainer.inputs import InputSpec, to_device
from trainer.models import build_model
from trainer.planes import PackedInput
from trainer.progress import log
from trainer.scores import (
    EvaluationError,
    Scores,
    accuracy,
    confusion,
    mean_class_accuracy,
    plot_confusion,
    scores_name,
)
from trainer.volumes import VideoEntry

TEST_FRAMES = 25


def frame_positions(lo: int, hi: int, count: int = TEST_FRAMES) -> list[int]:
    """``count`` values of τ at equal spacing over [lo, hi] (repeats when the clip is short)."""
    return [int(round(v)) for v in np.linspace(lo, hi, count)]


def protocol_inputs(spec: InputSpec, store, entry: VideoEntry, frames: int = TEST_FRAMES) -> torch.Tensor:
    """All frames × 10 normalised inputs of one video: (frames·10)×C×crop×crop."""
    return torch.cat([spec.test_crops(store, entry, tau) for tau in frame_positions(*spec.tau_range(entry), frames)])


@dataclass
class LoadedNet:
    """A trained net in eval mode, with its config, its checkpoint and how its inputs are built."""

    model: torch.nn.Module
    cfg: Config
    checkpoint: ckpt.Checkpoint
    spec: InputSpec

    @property
    def stream(self) -> str:
        return self.checkpoint.stream


def load_checkpoint(path: str | os.PathLike, device: torch.device | None = None) -> LoadedNet:
    """A trained net from a ``trainer fit`` checkpoint, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: checkpoint not found")
    try:
        state = ckpt.read(path)
    except ckpt.CheckpointError as exc:
        raise EvaluationError(str(exc)) from None
    try:
        cfg = config_from_dict(state.config, str(path))
    except Exception as exc:  # noqa: BLE001 - anything unreadable gets one line
        raise EvaluationError(f"{path}: not a trainer checkpoint ({type(exc).__name__}: {exc})") from None
    try:
        heads = {name: len(classes) for name, classes in state.classes.items()}
        model = build_model(cfg.data.stream, cfg.data.flow_stack, heads, cfg.model.width, cfg.model.dropout,
                            cfg.data.crop, cfg.model.arch, cfg.model.partial_bn)
        model.load_state_dict(state.model)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EvaluationError(f"{path}: its weights do not fit the net its config describes "
                              f"({ckpt.state_dict_problem(exc)})") from None
    model.to(device or torch.device("cpu")).eval()
    return LoadedNet(model, cfg, state, InputSpec.from_config(cfg.data, (device or torch.device("cpu")).type))


class _FrameCrops(torch.utils.data.Dataset):
    """One item per (video, test frame): the frame's 10 normalised inputs and the video's index."""

    def __init__(self, spec: InputSpec, store, entries: Sequence[VideoEntry], frames: int, dataset: str = ""):
        self.spec, self.store, self.entries, self.dataset = spec, store, entries, dataset
        self.items = [(v, tau) for v, entry in enumerate(entries) for tau in frame_positions(*spec.tau_range(entry),
                                                                                             frames)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | PackedInput, int]:
        v, tau = self.items[i]
        try:
            return self.spec.test_crops(self.store, self.entries[v], tau, packed=True), v
        except StoreError as exc:
            raise damaged(self.dataset, self.store, exc) from None


def _concat(batch: list[tuple[torch.Tensor | PackedInput, int]]) -> tuple[torch.Tensor | PackedInput, torch.Tensor]:
    crops = [x for x, _ in batch]
    if isinstance(crops[0], EncodedInput):
        inputs, sizes = EncodedBatch(crops), torch.tensor([len(x.crops) for x in crops])
    elif isinstance(crops[0], PackedInput):
        inputs = PackedInput(*(torch.cat(parts) for parts in zip(*crops, strict=True)))
        sizes = torch.tensor([len(x.levels) for x in crops])
    else:
        inputs, sizes = torch.cat(crops), torch.tensor([len(x) for x in crops])
    return inputs, torch.repeat_interleave(torch.tensor([v for _, v in batch]), sizes)


@torch.no_grad()
def score_videos(net: LoadedNet, dataset: TrainingSet, entries: Sequence[VideoEntry], frames: int = TEST_FRAMES,
                 workers: int = 2, frames_per_batch: int = 10, on_video: Callable[[], None] | None = None
                 ) -> np.ndarray:
    """Softmax scores (videos × classes) of ``dataset``'s head, averaged over frames × 10 crops."""
    device = next(net.model.parameters()).device
    crops = _FrameCrops(net.spec, dataset.store, entries, frames, dataset.name)
    loader = torch.utils.data.DataLoader(crops, batch_size=frames_per_batch, num_workers=workers, collate_fn=_concat,
                                         generator=torch.Generator().manual_seed(0))
    sums = torch.zeros(len(entries), len(dataset.classes), dtype=torch.float64)
    counts = torch.zeros(len(entries), dtype=torch.int64)
    for inputs, owners in loader:
        inputs = to_device(inputs, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net.model(inputs)[dataset.name]
        sums.index_add_(0, owners, torch.softmax(logits.float(), dim=1).cpu().double())
        before = counts.clone()
        counts.index_add_(0, owners, torch.ones_like(owners))
        if on_video is not None:
            for _ in range(int(((counts == frames * 10) & (before < frames * 10)).sum())):
                on_video()
    return (sums / counts.clamp(min=1)[:, None]).float().numpy()


def run_test(checkpoint: str | os.PathLike, split: int | None, out: str | os.PathLike | None = None,
             train_scores: bool = False, frames: int = TEST_FRAMES, workers: int = 2, train_frames: int | None = None,
             progress: Callable[[int], Callable[[], None]] | None = None,
             ) -> list[dict]:
    """Score the test (and with ``train_scores`` the training) videos of every dataset of a checkpoint
    with the test protocol; write score files and a confusion matrix PNG; return a summary per dataset."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = load_checkpoint(checkpoint, device)
    cfg = net.cfg
    if split is not None:
        cfg.data.split = split
    out_dir = Path(out) if out else Path(checkpoint).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for ds in open_datasets(cfg):
        if ds.classes != net.checkpoint.classes[ds.name]:
            raise EvaluationError(f"{checkpoint}: the classes of {ds.name} differ from the checkpoint's")
        if ds.missing_report:
            log.info(f"{ds.name}: {ds.missing_report}")
        subsets = [("test", ds.test, frames)] + ([("train", ds.train, train_frames or frames)] if train_scores else [])
        for subset, entries, subset_frames in subsets:
            if not entries:
                raise EvaluationError(f"{ds.name} split {cfg.data.split} has no {subset} video in its store")
            tick = progress(len(entries)) if progress else None
            scores = score_videos(net, ds, entries, subset_frames, workers, on_video=tick)
            labels = np.array([e.label for e in entries], np.int64)
            result = Scores(ds.name, cfg.data.split, subset, net.stream, [e.video for e in entries], labels,
                            ds.classes, scores, str(checkpoint))
            path = out_dir / scores_name(ds.name, cfg.data.split, net.stream, subset)
            result.save(path)
            summary = {"dataset": ds.name, "split": cfg.data.split, "subset": subset, "videos": len(entries),
                       "top1": accuracy(scores, labels, 1), "top5": accuracy(scores, labels, 5),
                       "mean_class": mean_class_accuracy(scores.argmax(1), labels, len(ds.classes)),
                       "scores": str(path)}
            if subset == "test":
                png = out_dir / f"confusion-{ds.name}-split{cfg.data.split}-{net.stream}.png"
                plot_confusion(confusion(scores.argmax(1), labels, len(ds.classes)), ds.classes, png,
                               f"{net.stream} ConvNet, {ds.name} split {cfg.data.split}: "
                               f"top-1 {100 * summary['top1']:.1f}%")
                summary["confusion"] = str(png)
            summaries.append(summary)
    return summaries
