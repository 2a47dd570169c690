"""ConvNet inputs read from flowprep shards, and the paper's class-balanced sampling.

Spatial input: one RGB frame. Temporal input: the volume I_τ of 2L channels built from L flow
fields (section 3.1): channel 2k (0-based) holds dx and 2k+1 holds dy of field k, i.e. the paper's
channels 2k−1 and 2k (1-based) hold d^x and d^y of d_{τ+k−1}. Fields are

* optical flow stacking (eq. 1): the fields sampled at the same pixel;
* trajectory stacking (eq. 2): the fields sampled bilinearly along p_1 = (u, v),
  p_k = p_{k−1} + d_{τ+k−2}(p_{k−1});
* bi-directional: L/2 forward fields d_τ … d_{τ+L/2−1}, then L/2 backward fields going back from τ
  (frame τ → τ−1, then τ−1 → τ−2, …), each half traced from frame τ for trajectories.

With mean subtraction each field's mean displacement is subtracted first. τ is drawn so every field
exists; a clip with fewer fields than needed repeats its last (or first) field.

Augmentation (section 5): a random crop of ``crop``×``crop`` pixels from the whole frame, a random
horizontal flip (for flow: mirror and negate every dx channel), PCA colour jitter on RGB.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from flowprep.codec import decode_flow_components
from flowprep.pipeline import load_pipeline
from flowprep.splits import match_videos, read_split
from flowprep.store import FlowStore
from trainer.config import Config, DataConfig

# Krizhevsky et al.'s colour jitter: eigenvalues and eigenvectors of the RGB covariance of ImageNet.
_PCA_VALUES = np.array([0.2175, 0.0188, 0.0045], np.float32)
_PCA_VECTORS = np.array([[-0.5675, 0.7192, 0.4009],
                         [-0.5808, -0.0045, -0.8140],
                         [-0.5836, -0.6948, 0.4203]], np.float32)


class DataError(Exception):
    """Data that cannot be trained on; one line naming the dataset and the problem."""


@dataclass
class VideoEntry:
    video: str
    label: int
    num_frames: int
    num_flows: int
    num_backward: int


@dataclass
class TrainingSet:
    """One dataset of a run: its store, class names, and train/test videos of one split."""

    name: str
    store: FlowStore
    classes: list[str]
    train: list[VideoEntry]
    test: list[VideoEntry]
    missing: int = 0
    missing_report: str = ""
    flow_meta: dict = field(default_factory=dict)  # how the store's flow was made (for prediction)
    train_by_class: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.train_by_class = [[] for _ in self.classes]
        for i, entry in enumerate(self.train):
            self.train_by_class[entry.label].append(i)
        self.sampled_classes = [c for c, videos in enumerate(self.train_by_class) if videos]


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
        store = FlowStore(store_path)
        split = read_split(split_format, splits, cfg.data.split)
        matched = match_videos(split, store.videos())
        metas = {m["video"]: m for m in store.iter_meta()}

        train, test = (
            [VideoEntry(v.video, v.label, metas[v.video]["num_frames"], metas[v.video]["num_flows"],
                        metas[v.video]["num_backward"]) for v in videos]
            for videos in (matched.split.train, matched.split.test)
        )
        if not train:
            raise DataError(f"dataset {ds.name}: {matched.report(str(store_path))}; no training video left")
        if cfg.data.stream == "temporal" and cfg.data.bidirectional and any(e.num_backward == 0 for e in train):
            raise DataError(f"dataset {ds.name}: data.bidirectional needs backward flow, but {store_path} was "
                            "extracted without --bidirectional")
        first = metas[train[0].video]
        out.append(TrainingSet(ds.name, store, split.classes, train, test, len(matched.missing),
                               matched.report(str(store_path)) if matched.missing else "",
                               {key: first[key] for key in ("flow", "bound", "quality", "rgb_quality", "short_side")}))
    return out


# ---------------------------------------------------------------------------------------------
# Temporal input volumes


def field_indices(tau: int, num_flows: int, length: int, bidirectional: bool) -> list[tuple[str, int]]:
    """(kind, t) of the fields of I_τ in channel order; kind is "flow" (forward) or "back"."""
    last = max(0, num_flows - 1)
    if not bidirectional:
        return [("flow", min(tau + k, last)) for k in range(length)]
    half = length // 2
    forward = [("flow", min(tau + k, last)) for k in range(half)]
    backward = [("back", min(max(tau - 1 - k, 0), last)) for k in range(half)]
    return forward + backward


def tau_range(num_flows: int, length: int, bidirectional: bool) -> tuple[int, int]:
    """Inclusive range of τ for which every field of I_τ exists (a single τ = 0 for short clips).

    Forward fields d_τ … d_{τ+L−1} need τ ≤ num_flows − L. Bi-directional volumes need L/2 backward
    fields before τ (τ ≥ L/2) and L/2 forward fields from τ (τ ≤ num_flows − L/2).
    """
    if bidirectional:
        half = length // 2
        lo, hi = half, num_flows - half
    else:
        lo, hi = 0, num_flows - length
    if hi < lo:
        mid = min(max(num_flows // 2, 0), max(num_flows - 1, 0))
        return mid, mid
    return lo, hi


def _sample(component: np.ndarray, points_x: np.ndarray, points_y: np.ndarray) -> np.ndarray:
    return cv2.remap(component, points_x, points_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


Field = tuple[np.ndarray, np.ndarray]  # (dx, dy): float32 H×W pixels


def stack_fields(fields: Sequence[Field], stacking: str = "optical_flow", mean_subtraction: bool = True,
                 restart_at: int | None = None) -> np.ndarray:
    """2L×H×W volume (channel 2k: dx, 2k+1: dy of field k) from L fields. ``restart_at``: index
    where trajectories start again from frame τ (the backward half of a bi-directional volume)."""
    h, w = fields[0][0].shape
    volume = np.empty((2 * len(fields), h, w), np.float32)
    if stacking == "optical_flow":
        for k, (dx, dy) in enumerate(fields):
            volume[2 * k], volume[2 * k + 1] = dx, dy
    else:
        grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float32)
        px, py = grid_x, grid_y
        for k, (dx, dy) in enumerate(fields):
            if k == restart_at:
                px, py = grid_x, grid_y
            volume[2 * k] = _sample(dx, px, py)
            volume[2 * k + 1] = _sample(dy, px, py)
            px, py = px + volume[2 * k], py + volume[2 * k + 1]
    if mean_subtraction:
        # each field's own mean (sampling a field minus a constant gives the samples minus that constant)
        means = np.array([[dx.mean(), dy.mean()] for dx, dy in fields], np.float32).reshape(-1)
        volume -= means[:, None, None]
    return volume


def read_fields(store: FlowStore, video: str, indices: Sequence[tuple[str, int]]) -> list[Field]:
    """Decoded (dx, dy) of the given (kind, t) fields, in order, one read transaction per kind."""
    out: dict[tuple[str, int], Field] = {}
    for kind in ("flow", "back"):
        ts = sorted({t for k, t in indices if k == kind})
        if ts:
            for t, record in zip(ts, store.records(video, kind, ts), strict=True):
                out[(kind, t)] = decode_flow_components(record)
    return [out[i] for i in indices]


def flow_volume(store: FlowStore, entry: VideoEntry, tau: int, length: int, stacking: str,
                bidirectional: bool, mean_subtraction: bool) -> np.ndarray:
    """The temporal input I_τ of one video: 2L×H×W float32 pixels."""
    fields = read_fields(store, entry.video, field_indices(tau, entry.num_flows, length, bidirectional))
    return stack_fields(fields, stacking, mean_subtraction, restart_at=length // 2 if bidirectional else None)


# ---------------------------------------------------------------------------------------------
# Cropping, flipping, normalisation (inputs are C×H×W float32)


def flip_horizontal(array: np.ndarray, is_flow: bool) -> np.ndarray:
    """Mirror a C×H×W input; for a flow volume also negate every dx channel (0, 2, 4, ...)."""
    out = array[:, :, ::-1].copy()
    if is_flow:
        out[0::2] *= -1
    return out


def fit_to_crop(array: np.ndarray, crop: int, is_flow: bool) -> np.ndarray:
    """Enlarge an input whose smaller side is below ``crop`` (flow values scale with it)."""
    h, w = array.shape[1:]
    if min(h, w) >= crop:
        return array
    scale = crop / min(h, w)
    size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
    out = np.stack([cv2.resize(channel, size, interpolation=cv2.INTER_LINEAR) for channel in array])
    return out * np.float32(scale) if is_flow else out


def random_crop(array: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    h, w = array.shape[1:]
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    return array[:, top:top + crop, left:left + crop]


def centre_crop(array: np.ndarray, crop: int) -> np.ndarray:
    h, w = array.shape[1:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return array[:, top:top + crop, left:left + crop]


def corner_crops(array: np.ndarray, crop: int) -> list[np.ndarray]:
    """The four corners and the centre (the test protocol's 5 crops)."""
    h, w = array.shape[1:]
    return [array[:, :crop, :crop], array[:, :crop, w - crop:], array[:, h - crop:, :crop],
            array[:, h - crop:, w - crop:], centre_crop(array, crop)]


def colour_jitter(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add a random multiple of the RGB principal components (3×H×W RGB in [0, 1])."""
    alpha = rng.normal(0, sigma, 3).astype(np.float32)
    return rgb + (_PCA_VECTORS @ (alpha * _PCA_VALUES))[:, None, None]


@dataclass(frozen=True)
class InputSpec:
    """Everything needed to build one input, picklable for DataLoader workers."""

    stream: str
    flow_stack: int
    stacking: str
    bidirectional: bool
    mean_subtraction: bool
    crop: int
    flip: bool
    rgb_jitter: float
    rgb_mean: tuple[float, float, float]
    rgb_std: tuple[float, float, float]
    flow_scale: float

    @classmethod
    def from_config(cls, data: DataConfig) -> InputSpec:
        return cls(data.stream, data.flow_stack, data.stacking, data.bidirectional, data.mean_subtraction,
                   data.crop, data.flip, data.rgb_jitter, tuple(data.rgb_mean), tuple(data.rgb_std),
                   data.flow_scale)

    @property
    def channels(self) -> int:
        return 3 if self.stream == "spatial" else 2 * self.flow_stack

    def raw(self, store: FlowStore, entry: VideoEntry, tau: int) -> np.ndarray:
        """The whole-frame C×H×W input at τ before cropping: RGB in [0, 1] or the flow volume in pixels."""
        if self.stream == "spatial":
            array = store.rgb(entry.video, tau).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        else:
            array = flow_volume(store, entry, tau, self.flow_stack, self.stacking, self.bidirectional,
                                self.mean_subtraction)
        return fit_to_crop(array, self.crop, self.stream == "temporal")

    def normalise(self, array: np.ndarray) -> torch.Tensor:
        if self.stream == "spatial":
            mean = np.array(self.rgb_mean, np.float32)[:, None, None]
            array = (array - mean) / np.array(self.rgb_std, np.float32)[:, None, None]
        else:
            array = array * np.float32(self.flow_scale)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def tau_range(self, entry: VideoEntry) -> tuple[int, int]:
        if self.stream == "spatial":
            return 0, entry.num_frames - 1
        return tau_range(entry.num_flows, self.flow_stack, self.bidirectional)

    def training_input(self, store: FlowStore, entry: VideoEntry, seed: int) -> torch.Tensor:
        rng = np.random.default_rng(seed)
        lo, hi = self.tau_range(entry)
        array = random_crop(self.raw(store, entry, int(rng.integers(lo, hi + 1))), self.crop, rng)
        if self.flip and rng.random() < 0.5:
            array = flip_horizontal(array, self.stream == "temporal")
        if self.stream == "spatial" and self.rgb_jitter > 0:
            array = colour_jitter(array, self.rgb_jitter, rng)
        return self.normalise(array)

    def centre_input(self, store: FlowStore, entry: VideoEntry) -> torch.Tensor:
        lo, hi = self.tau_range(entry)
        return self.normalise(centre_crop(self.raw(store, entry, (lo + hi) // 2), self.crop))


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
        items.append(Item(d, videos[int(r * len(videos))], int(s)))
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
    """Map-style dataset indexed by :class:`Item`: (input, label, dataset index)."""

    def __init__(self, datasets: Sequence[TrainingSet], spec: InputSpec):
        self.datasets, self.spec = datasets, spec

    def __len__(self) -> int:
        return sum(len(ds.train) for ds in self.datasets)

    def __getitem__(self, item: Item) -> tuple[torch.Tensor, int, int]:
        ds = self.datasets[item.dataset]
        entry = ds.train[item.video]
        return self.spec.training_input(ds.store, entry, item.seed), entry.label, item.dataset


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
        return self.spec.centre_input(ds.store, ds.test[i]), ds.test[i].label, d
