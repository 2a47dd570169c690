"""Testing as the paper (section 5), late fusion of the two streams (section 2) and reports.

Test protocol: 25 frames at equal temporal spacing; from each, 10 inputs (the four corners and the
centre, and their horizontal flips, flow dx negated); the softmax scores of all 250 are averaged
into the video's scores. Fusion: the average of the two streams' softmax scores, or a multi-class
linear SVM (Crammer & Singer) trained on the stacked L2-normalised softmax scores of the training
videos.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowprep.store import StoreError
from trainer import checkpoint as ckpt
from trainer.config import Config, config_from_dict
from trainer.data import TrainingSet, damaged, open_datasets
from trainer.encoded import EncodedBatch, EncodedInput
from trainer.inputs import InputSpec, PackedInput, VideoEntry, as_input
from trainer.models import build_model

TEST_FRAMES = 25


class EvaluationError(Exception):
    """Scores or checkpoints that cannot be evaluated together; one line."""


def frame_positions(lo: int, hi: int, count: int = TEST_FRAMES) -> list[int]:
    """``count`` values of τ at equal spacing over [lo, hi] (repeats when the clip is short)."""
    return [int(round(v)) for v in np.linspace(lo, hi, count)]


def protocol_inputs(spec: InputSpec, store, entry: VideoEntry, frames: int = TEST_FRAMES) -> torch.Tensor:
    """All frames × 10 normalised inputs of one video: (frames·10)×C×crop×crop."""
    return torch.cat([spec.test_crops(store, entry, tau) for tau in frame_positions(*spec.tau_range(entry), frames)])


@dataclass
class LoadedNet:
    model: torch.nn.Module
    cfg: Config
    state: dict
    spec: InputSpec

    @property
    def stream(self) -> str:
        return self.state["stream"]


def load_checkpoint(path: str | os.PathLike, device: torch.device | None = None) -> LoadedNet:
    """A trained net from a ``trainer fit`` checkpoint, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: checkpoint not found")
    try:
        state = ckpt.load(path)
        cfg = config_from_dict(state["config"], str(path))
    except Exception as exc:  # noqa: BLE001 - anything unreadable gets one line
        raise EvaluationError(f"{path}: not a trainer checkpoint ({type(exc).__name__}: {exc})") from None
    heads = {name: len(classes) for name, classes in state["classes"].items()}
    model = build_model(cfg.data.stream, cfg.data.flow_stack, heads, cfg.model.width, cfg.model.dropout,
                        cfg.data.crop, cfg.model.arch, cfg.model.partial_bn)
    model.load_state_dict(state["model"])
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
        except (StoreError, IndexError) as exc:
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
    loader = torch.utils.data.DataLoader(crops, batch_size=frames_per_batch, num_workers=workers, collate_fn=_concat)
    sums = torch.zeros(len(entries), len(dataset.classes), dtype=torch.float64)
    counts = torch.zeros(len(entries), dtype=torch.int64)
    for inputs, owners in loader:
        inputs = as_input(inputs, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net.model(inputs)[dataset.name]
        sums.index_add_(0, owners, torch.softmax(logits.float(), dim=1).cpu().double())
        before = counts.clone()
        counts.index_add_(0, owners, torch.ones_like(owners))
        if on_video is not None:
            for _ in range(int(((counts == frames * 10) & (before < frames * 10)).sum())):
                on_video()
    return (sums / counts.clamp(min=1)[:, None]).float().numpy()


# ---------------------------------------------------------------------------------------------
# Score files


@dataclass
class Scores:
    """Per-video softmax scores of one stream on one split's train or test videos."""

    dataset: str
    split: int
    subset: str  # "test" or "train"
    stream: str
    videos: list[str]
    labels: np.ndarray  # int, index into classes
    classes: list[str]
    scores: np.ndarray  # videos × classes, float32
    checkpoint: str = ""

    def save(self, path: str | os.PathLike) -> None:
        meta = {"dataset": self.dataset, "split": self.split, "subset": self.subset, "stream": self.stream,
                "checkpoint": self.checkpoint}
        tmp = Path(path).with_name(f".{Path(path).name}.tmp.npz")
        np.savez_compressed(tmp, videos=np.array(self.videos), labels=self.labels, classes=np.array(self.classes),
                            scores=self.scores, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scores:
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                return cls(meta["dataset"], int(meta["split"]), meta["subset"], meta["stream"],
                           [str(v) for v in f["videos"]], f["labels"].astype(np.int64),
                           [str(c) for c in f["classes"]], f["scores"].astype(np.float32), meta["checkpoint"])
        except (OSError, KeyError, ValueError) as exc:
            raise EvaluationError(f"{path}: not a scores file written by trainer test ({exc})") from None


def scores_name(dataset: str, split: int, stream: str, subset: str) -> str:
    return f"scores-{dataset}-split{split}-{stream}-{subset}.npz"


def accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([label in row for row, label in zip(top, labels, strict=True)]))


def mean_class_accuracy(predictions: np.ndarray, labels: np.ndarray, classes: int) -> float:
    per_class = [np.mean(predictions[labels == c] == c) for c in range(classes) if np.any(labels == c)]
    return float(np.mean(per_class))


def confusion(predictions: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, classes: list[str], path: str | os.PathLike, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = max(5.0, min(24.0, 0.25 * n + 3))
    fig, ax = plt.subplots(figsize=(size, size))
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Fusion


def _aligned(a: Scores, b: Scores) -> None:
    if (a.dataset, a.split, a.subset) != (b.dataset, b.split, b.subset) or a.videos != b.videos:
        raise EvaluationError(f"scores of {a.dataset} split {a.split} ({a.subset}, {a.stream}) and {b.dataset} "
                              f"split {b.split} ({b.subset}, {b.stream}) are not of the same videos")
    if a.classes != b.classes:
        raise EvaluationError(f"the {a.stream} and {b.stream} scores have different class lists")


def fuse_average(streams: Sequence[Scores]) -> np.ndarray:
    for other in streams[1:]:
        _aligned(streams[0], other)
    return np.mean([s.scores for s in streams], axis=0)


def _l2_stack(streams: Sequence[Scores]) -> np.ndarray:
    parts = [s.scores / np.maximum(np.linalg.norm(s.scores, axis=1, keepdims=True), 1e-12) for s in streams]
    return np.concatenate(parts, axis=1)


def fuse_svm(train: Sequence[Scores], test: Sequence[Scores], c: float = 1.0) -> np.ndarray:
    """Decision values (test videos × classes) of a Crammer-Singer multi-class linear SVM trained on
    the stacked L2-normalised softmax scores of the training videos."""
    from sklearn.svm import LinearSVC

    for group in (train, test):
        for other in group[1:]:
            _aligned(group[0], other)
    if [s.stream for s in train] != [s.stream for s in test]:
        raise EvaluationError("train and test scores must come from the same streams, in the same order")
    svm = LinearSVC(multi_class="crammer_singer", C=c, max_iter=10_000, random_state=0)  # same table every run
    svm.fit(_l2_stack(train), train[0].labels)
    decision = svm.decision_function(_l2_stack(test))
    full = np.full((len(test[0].videos), len(test[0].classes)), -np.inf, np.float32)
    full[:, svm.classes_] = decision if decision.ndim == 2 else np.stack([-decision, decision], 1)
    return full


@dataclass
class FusionRow:
    method: str
    top1: float
    mean_class: float
    groups: dict[str, float]


def fusion_table(test: Sequence[Scores], train: Sequence[Scores] | None, groups: dict[str, str] | None = None
                 ) -> list[FusionRow]:
    """Rows of the paper's Table 3: each stream alone, fusion by averaging, and by SVM (with train)."""
    labels, classes = test[0].labels, test[0].classes
    results = [(f"{s.stream} ConvNet", s.scores) for s in test]
    if len(test) > 1:
        results.append(("fusion by averaging", fuse_average(test)))
        if train:
            results.append(("fusion by SVM", fuse_svm(train, test)))
    rows = []
    for method, scores in results:
        predictions = scores.argmax(1)
        per_group = {}
        if groups:
            for group in sorted(set(groups.values())):
                ids = [classes.index(c) for c, g in groups.items() if g == group and c in classes]
                mask = np.isin(labels, ids)
                if mask.any():
                    per_group[group] = float(np.mean(predictions[mask] == labels[mask]))
        rows.append(FusionRow(method, float(np.mean(predictions == labels)),
                              mean_class_accuracy(predictions, labels, len(classes)), per_group))
    return rows


def format_table(rows: Sequence[FusionRow], title: str) -> str:
    groups = list(rows[0].groups) if rows else []
    header = "| method | top-1 | mean class accuracy |" + "".join(f" {g} classes |" for g in groups)
    lines = [f"{title}", "", header, "|---" * (3 + len(groups)) + "|"]
    for row in rows:
        lines.append(f"| {row.method} | {100 * row.top1:.1f}% | {100 * row.mean_class:.1f}% |"
                     + "".join(f" {100 * row.groups[g]:.1f}% |" for g in groups))
    return "\n".join(lines)


def run_test(checkpoint: str | os.PathLike, split: int | None, out: str | os.PathLike | None = None,
             train_scores: bool = False, frames: int = TEST_FRAMES, workers: int = 2, train_frames: int | None = None,
             progress: Callable[[int], Callable[[], None]] | None = None,
             log: Callable[[str], None] = print) -> list[dict]:
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
        if ds.classes != net.state["classes"][ds.name]:
            raise EvaluationError(f"{checkpoint}: the classes of {ds.name} differ from the checkpoint's")
        if ds.missing_report:
            log(f"{ds.name}: {ds.missing_report}")
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


def train_scores_path(test_path: str | os.PathLike) -> Path:
    path = Path(test_path)
    return path.with_name(path.name.replace("-test.npz", "-train.npz"))


def load_pairs(paths: Sequence[str | os.PathLike]) -> dict[tuple[str, int], dict[str, tuple[Scores, Scores | None]]]:
    """Test score files grouped by (dataset, split) → stream → (test scores, train scores or None)."""
    grouped: dict[tuple[str, int], dict[str, tuple[Scores, Scores | None]]] = {}
    for path in paths:
        test = Scores.load(path)
        if test.subset != "test":
            raise EvaluationError(f"{path}: holds {test.subset} scores; pass the test score files")
        train_path = train_scores_path(path)
        train = Scores.load(train_path) if train_path.is_file() else None
        streams = grouped.setdefault((test.dataset, test.split), {})
        if test.stream in streams:
            raise EvaluationError(f"two {test.stream} score files for {test.dataset} split {test.split}")
        streams[test.stream] = (test, train)
    return grouped


def stream_order(streams: dict) -> list[str]:
    return sorted(streams, key=lambda s: (s != "spatial", s))


def fuse_files(paths: Sequence[str | os.PathLike], method: str = "both", groups: dict[str, str] | None = None
               ) -> list[tuple[str, list[FusionRow]]]:
    """Table 3 for each (dataset, split) among the score files: each stream, then the fusions asked."""
    tables = []
    for (dataset, split), streams in sorted(load_pairs(paths).items()):
        order = stream_order(streams)
        test = [streams[s][0] for s in order]
        train = [streams[s][1] for s in order]
        if method in ("svm", "both") and len(order) > 1 and any(t is None for t in train):
            missing = [s for s in order if streams[s][1] is None]
            if method == "svm":
                raise EvaluationError(f"SVM fusion needs training-video scores beside the test scores (trainer test "
                                      f"--train-scores); missing for the {', '.join(missing)} net of {dataset} "
                                      f"split {split}")
            train = None
        rows = fusion_table(test, train if method in ("svm", "both") else None, groups)
        if method == "avg":
            rows = [r for r in rows if r.method != "fusion by SVM"]
        if method == "svm":
            rows = [r for r in rows if r.method != "fusion by averaging"]
        tables.append((f"{dataset} split {split}", rows))
    return tables


def report_files(paths: Sequence[str | os.PathLike]) -> str:
    """The paper's Table 4 layout: each split's spatial, temporal and fused accuracy, and the mean."""
    per_dataset: dict[str, dict[int, dict[str, float]]] = {}
    for (dataset, split), streams in sorted(load_pairs(paths).items()):
        order = stream_order(streams)
        test = [streams[s][0] for s in order]
        train = [streams[s][1] for s in order]
        rows = fusion_table(test, None if any(t is None for t in train) else train)
        per_dataset.setdefault(dataset, {})[split] = {row.method: row.mean_class for row in rows}
    out = []
    for dataset, splits in per_dataset.items():
        methods = []
        for values in splits.values():
            methods += [m for m in values if m not in methods]
        header = "| method | " + " | ".join(f"split {s}" for s in sorted(splits)) + " | mean over splits |"
        lines = [f"{dataset}: mean class accuracy", "", header, "|---" * (len(splits) + 2) + "|"]
        for method in methods:
            values = [splits[s].get(method) for s in sorted(splits)]
            cells = " | ".join("-" if v is None else f"{100 * v:.1f}%" for v in values)
            known = [v for v in values if v is not None]
            lines.append(f"| {method} | {cells} | {100 * np.mean(known):.1f}% |")
        out.append("\n".join(lines))
    return "\n\n".join(out)
