"""Late fusion of the two streams (section 2) and the paper's tables: ``trainer fuse`` and
``trainer report``.

Fusion: the average of the two streams' softmax scores, or a multi-class linear SVM (Crammer &
Singer) trained on the stacked L2-normalised softmax scores of the training videos.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.scores import EvaluationError, Scores, mean_class_accuracy


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
