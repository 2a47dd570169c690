"""The datasets of a run and the paper's class-balanced sampling, as DataLoader datasets.

Each dataset is a flowprep store and one official split matched against it; inputs are built by
:mod:`trainer.inputs`. A record that cannot be read (damaged, failing its checksum) stops training
with a :class:`DataError` naming dataset, video and record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flowprep.datasets.pipeline import load_pipeline
from flowprep.datasets.splits import match_videos, read_split
from flowprep.errors import UserError
from flowprep.storage.shard import StoreError
from flowprep.storage.store import FlowStore
from trainer.checkpoint import StoreFlow
from trainer.config import Config
from trainer.inputs import InputSpec
from trainer.planes import PackedInput
from trainer.volumes import VideoEntries


class DataError(UserError):
    """Data that cannot be trained on; one line naming the dataset and the problem."""


def damaged(dataset: str, store: FlowStore, exc: Exception) -> DataError:
    """A record or shard that cannot be read, as one line naming dataset, video and record, and the
    command that lists every damaged record of the store."""
    return DataError(f"dataset {dataset}: {exc}; `flowprep verify {store.root}` lists every damaged record")


@dataclass
class TrainingSet:
    """One dataset of a run: its store, class names, and train/test videos of one split."""

    name: str
    store: FlowStore
    classes: list[str]
    train: VideoEntries  # a list of VideoEntry is made one
    test: VideoEntries
    missing: int = 0
    missing_report: str = ""
    flow_meta: StoreFlow = field(default_factory=StoreFlow)  # how the store's records were made (for prediction)
    train_by_class: list[np.ndarray] = field(default_factory=list)  # indices into train, per class

    def __post_init__(self) -> None:
        self.train, self.test = (videos if isinstance(videos, VideoEntries) else
                                 VideoEntries.build((e.video, e.label, e) for e in videos)
                                 for videos in (self.train, self.test))
        labels = self.train.labels
        order = np.argsort(labels, kind="stable").astype(np.int32)  # 4 bytes a video, not an int object
        bounds = np.searchsorted(labels[order], np.arange(len(self.classes) + 1))
        self.train_by_class = [order[bounds[c]:bounds[c + 1]] for c in range(len(self.classes))]
        self.sampled_classes = [c for c, videos in enumerate(self.train_by_class) if len(videos)]


def open_datasets(cfg: Config) -> list[TrainingSet]:
    """Resolve every configured dataset to its store and split, matched against the store."""
    out = []
    for ds in cfg.data.datasets:
        store_path, splits, split_format = ds.store, ds.splits, ds.split_format
        if ds.pipeline is not None:
            pipeline = load_pipeline(ds.pipeline)
            store_path = store_path or str(pipeline.out)
            splits = splits or str(pipeline.splits)
            split_format = split_format or pipeline.split_format
            if not Path(store_path).is_dir():
                hint = (f"extract it with `flowprep extract {ds.pipeline}`" if pipeline.videos.is_dir()
                        else pipeline.missing_message())
                raise DataError(f"dataset {ds.name}: no flow store at {store_path}; {hint}")
        store = FlowStore(store_path, readahead=cfg.data.stream == "temporal")  # runs of fields vs single frames
        split = read_split(split_format, splits, cfg.data.split)
        try:
            _check_streams(ds.name, store_path, cfg.data.stream, store)
            matched = match_videos(split, store.videos())
            train, test = (VideoEntries.build((v.video, v.label, store.entry(v.video)) for v in videos)
                           for videos in (matched.split.train, matched.split.test))
        except StoreError as exc:
            raise damaged(ds.name, store, exc) from None
        if not train:
            raise DataError(f"dataset {ds.name}: {matched.report(str(store_path))}; no training video left")
        if cfg.data.stream == "temporal" and cfg.data.bidirectional and any(e.num_backward == 0 for e in train):
            raise DataError(f"dataset {ds.name}: data.bidirectional needs backward flow, but {store_path} was "
                            "extracted without --bidirectional")
        try:
            first = store.video_meta(train[0].video)
        except StoreError as exc:
            raise damaged(ds.name, store, exc) from None
        out.append(TrainingSet(ds.name, store, split.classes, train, test, len(matched.missing),
                               matched.report(str(store_path)) if matched.missing else "",
                               StoreFlow.of(first)))
    return out


def _check_streams(dataset: str, store_path: str, stream: str, store: FlowStore) -> None:
    """Refuse a stream the store lacks (an imported RGB-only or flow-only store) in one line."""
    need = "rgb" if stream == "spatial" else "flow"
    lacking, first = store.count_without(need)
    if lacking:
        held = " + ".join(store.entry(first).streams) or "nothing"
        raise DataError(f"dataset {dataset}: {store_path} holds no {'RGB frames' if need == 'rgb' else 'flow'} "
                        f"({lacking} of {len(store)} videos have {held} only, e.g. {first}); a {stream} "
                        f"net needs {'them' if need == 'rgb' else 'it'}: import {'them' if need == 'rgb' else 'it'} "
                        "too, or train the other stream")


# ---------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class Item:
    dataset: int
    video: int
    seed: int


def batch_items(step: int, seed: int, datasets: Sequence[TrainingSet], batch_size: int) -> list[Item]:
    """The global batch of iteration ``step``: ``batch_size`` videos drawn uniformly across the classes
    of all datasets (a class, then one of its videos), one random frame each (``Item.seed`` decides τ,
    crop, flip and jitter). A pure function of (seed, step): the same at any number of processes, and
    a resumed run continues with exactly the batches it would have had."""
    rng = np.random.default_rng([seed, step])
    classes = [(d, c) for d, ds in enumerate(datasets) for c in ds.sampled_classes]
    picks = rng.integers(0, len(classes), batch_size)
    items = []
    for pick, r, s in zip(picks, rng.random(batch_size), rng.integers(0, 2**62, batch_size), strict=True):
        d, c = classes[pick]
        videos = datasets[d].train_by_class[c]
        items.append(Item(d, int(videos[int(r * len(videos))]), int(s)))
    return items


class StepBatches:
    """Batch sampler: this process's share (items rank::world) of each global batch, from
    ``start`` to ``stop`` iterations."""

    def __init__(self, datasets: Sequence[TrainingSet], batch_size: int, seed: int, start: int, stop: int,
                 rank: int = 0, world: int = 1):
        self.datasets, self.batch_size, self.seed = datasets, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world

    def __iter__(self) -> Iterator[list[Item]]:
        for step in range(self.start, self.stop):
            yield batch_items(step, self.seed, self.datasets, self.batch_size)[self.rank::self.world]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class TrainInputs(torch.utils.data.Dataset):
    """Map-style dataset indexed by :class:`Item`: (input, label, dataset index); inputs packed as 8-bit
    levels where they allow (expand batches with :func:`as_input`)."""

    def __init__(self, datasets: Sequence[TrainingSet], spec: InputSpec):
        self.datasets, self.spec = datasets, spec

    def __len__(self) -> int:
        return sum(len(ds.train) for ds in self.datasets)

    def __getitem__(self, item: Item) -> tuple[torch.Tensor | PackedInput, int, int]:
        ds = self.datasets[item.dataset]
        entry = ds.train[item.video]
        try:
            return self.spec.training_input(ds.store, entry, item.seed, packed=True), entry.label, item.dataset
        except StoreError as exc:
            raise damaged(ds.name, ds.store, exc) from None


class CentreInputs(torch.utils.data.Dataset):
    """Validation: the centre crop of the middle frame of test videos (``limit`` spread evenly)."""

    def __init__(self, datasets: Sequence[TrainingSet], spec: InputSpec, limit: int = 0):
        self.datasets, self.spec = datasets, spec
        self.items: list[tuple[int, int]] = []
        for d, ds in enumerate(datasets):
            count = len(ds.test) if not limit else min(limit, len(ds.test))
            picks = np.linspace(0, len(ds.test) - 1, count).round().astype(int) if ds.test else []
            self.items += [(d, int(i)) for i in sorted(set(picks))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        d, i = self.items[index]
        ds = self.datasets[d]
        try:
            return self.spec.centre_input(ds.store, ds.test[i], packed=True), ds.test[i].label, d
        except StoreError as exc:
            raise damaged(ds.name, ds.store, exc) from None
