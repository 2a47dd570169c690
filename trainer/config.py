"""Training configuration: YAML files loaded into dataclasses and checked on load.

Every error names the file and the key (``configs/temporal.yaml: unknown key 'optim.lrr'``).
``--set section.key=value`` overrides a value after loading, with the same checks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flowprep.errors import UserError
from trainer.models import arch_problem


class ConfigError(UserError):
    """A configuration that cannot be used; one line naming the file and the key."""


@dataclass
class DatasetConfig:
    """One dataset: a pipeline file (its output store and split files), or a store and split files."""

    name: str = ""
    pipeline: str | None = None  # pipelines/ucf101.yaml: store = its output, splits = its split files
    store: str | None = None  # a flowprep output folder (overrides the pipeline's)
    splits: str | None = None  # folder of official split files (overrides the pipeline's)
    split_format: str | None = None  # ucf101 | hmdb51 (with splits)


@dataclass
class RunConfig:
    dir: str = "runs/run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class DataConfig:
    datasets: list[DatasetConfig] = field(default_factory=list)
    split: int = 1  # official split number (1-3) of every dataset
    stream: str = "temporal"  # spatial (one RGB frame) | temporal (2L flow channels)
    flow_stack: int = 10  # L: flow fields per input
    stacking: str = "optical_flow"  # optical_flow (eq. 1) | trajectory (eq. 2)
    bidirectional: bool = False  # L/2 forward flows from τ, L/2 backward flows before τ
    mean_subtraction: bool = True  # subtract each field's mean displacement
    crop: int = 224  # pixels: side of the square input cropped from the whole frame
    flip: bool = True  # random horizontal flip (flow: mirror and negate dx)
    rgb_jitter: float = 0.1  # standard deviation of the PCA colour jitter (Krizhevsky et al.); 0: off
    rgb_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # of [0, 1] RGB
    rgb_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    flow_scale: float = 0.05  # flow in pixels is multiplied by this (±20 px → ±1)
    workers: int = 2  # DataLoader worker processes per training process
    decode: str = "auto"  # cpu: workers decode JPEGs | device: the training device does | auto: device on CUDA


@dataclass
class ModelConfig:
    arch: str = "cnn_m_2048"  # or a torchvision classification model (resnet50, ...) or timm/<name>
    width: float = 1.0  # channel multiplier of cnn_m_2048 (1.0: the paper's net); other archs ignore it
    dropout: float = 0.9  # after full6 and full7 (cnn_m_2048); before the heads (other archs)
    pretrained: str | None = None  # local weights file: .caffemodel, state dict (.pth/.safetensors), checkpoint
    pretrained_partial: bool = False  # load what fits even where more than the classifier is new
    caffe_mean: list[float] | str = field(default_factory=lambda: [103.939, 116.779, 123.68])  # B,G,R or file
    train: str = "all"  # all (fine-tune or from scratch) | last_layer
    partial_bn: bool = False  # BN archs: freeze the BN statistics of every layer but the first (TSN)


@dataclass
class OptimConfig:
    batch_size: int = 256  # global: split over processes
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "scratch"  # scratch (÷10 at 50K and 70K, stop 80K) | finetune (÷10 at 14K, stop 20K) | custom
    milestones: list[int] = field(default_factory=list)  # with schedule: custom
    iterations: int = 0  # with schedule: custom
    scale: float = 1.0  # multiplies the preset's iteration counts (e.g. 0.01 for a short run)
    pretrained_lr: float = 1.0  # LR multiplier of the layers model.pretrained gives (new layers: 1)


@dataclass
class TrainConfig:
    log_every: int = 20  # iterations between log lines / CSV rows
    val_every: int = 1000  # iterations between validations (0: only at the end)
    val_videos: int = 0  # test videos per validation (0: all), evenly spread over the list
    checkpoint_every: int = 1000  # iterations between checkpoints (and one at the end)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str = field(default="", repr=False)  # file the config was loaded from

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


STREAMS = ("spatial", "temporal")
CROP_RANGE = (32, 512)  # pixels; frames smaller than the crop are enlarged to it
STACKINGS = ("optical_flow", "trajectory")
SCHEDULES = ("scratch", "finetune", "custom")


def _type_name(tp: object) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _a(name: str) -> str:
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def _convert(value: object, tp: object, where: str, source: str) -> object:
    """``value`` checked (and, for ints given to float fields, widened) against type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where, source)
            except ConfigError:
                pass
        raise ConfigError(f"{source}: {where} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {where} must be a list, got {value!r}")
        return [_convert(v, item_type, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where} must be a mapping, got {value!r}")
        return _build(tp, value, where, source)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 (PyYAML) reads 1e-3 as a string: it needs a dot (1.0e-3)
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: {where} must be true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{source}: {where} must be an int, got {value!r}")
    if not isinstance(value, tp):  # type: ignore[arg-type]
        raise ConfigError(f"{source}: {where} must be {_a(_type_name(tp))}, got {value!r}")
    return value


def _build(cls: type, raw: dict, prefix: str, source: str) -> object:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    values = {}
    for key, value in raw.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise ConfigError(f"{source}: unknown key {where!r} (known: {', '.join(sorted(known))})")
        values[key] = _convert(value, hints[key], where, source)
    return cls(**values)


def _parse_scalar(text: str) -> object:
    return yaml.safe_load(text) if text.strip() else ""


def apply_override(raw: dict, assignment: str, source: str = "--set") -> None:
    """Apply ``section.key=value`` (value parsed as YAML) to the raw config mapping."""
    path, sep, text = assignment.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    keys = path.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {key!r} is not a section")
    node[keys[-1]] = _parse_scalar(text)


def validate(cfg: Config) -> None:
    src = cfg.source or "config"
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    checks = [
        (d.stream in STREAMS, f"data.stream must be one of {', '.join(STREAMS)}, got {d.stream!r}"),
        (d.stacking in STACKINGS, f"data.stacking must be one of {', '.join(STACKINGS)}, got {d.stacking!r}"),
        (d.flow_stack >= 1, f"data.flow_stack must be >= 1, got {d.flow_stack}"),
        (not d.bidirectional or d.flow_stack % 2 == 0, "data.flow_stack must be even with data.bidirectional"),
        (d.split in (1, 2, 3), f"data.split must be 1, 2 or 3, got {d.split}"),
        (CROP_RANGE[0] <= d.crop <= CROP_RANGE[1],
         f"data.crop must be in {CROP_RANGE[0]}..{CROP_RANGE[1]} pixels, got {d.crop}"),
        (d.workers >= 0, f"data.workers must be >= 0, got {d.workers}"),
        (d.decode in ("auto", "cpu", "device"), f"data.decode must be auto, cpu or device, got {d.decode!r}"),
        (d.decode != "device" or d.stream == "spatial" or d.stacking == "optical_flow",
         "data.decode: device needs data.stacking: optical_flow (trajectories sample float fields; use cpu)"),
        (len(d.rgb_mean) == 3 and len(d.rgb_std) == 3, "data.rgb_mean and data.rgb_std need 3 values"),
        (all(s > 0 for s in d.rgb_std), f"data.rgb_std must be > 0, got {d.rgb_std}"),
        (0 <= d.rgb_jitter < math.inf, f"data.rgb_jitter must be a finite number >= 0, got {d.rgb_jitter}"),
        (0 < d.flow_scale <= 100, f"data.flow_scale must be in (0, 100] (input units per pixel), got {d.flow_scale}"),
        (len(d.datasets) >= 1, "data.datasets must list at least one dataset"),
        (0 < m.width <= 4, f"model.width must be in (0, 4], got {m.width}"),
        (isinstance(m.caffe_mean, str) or len(m.caffe_mean) == 3,
         f"model.caffe_mean must be 3 numbers (B, G, R in 0..255) or a .binaryproto file, got {m.caffe_mean}"),
        (0 <= o.pretrained_lr <= 10, f"optim.pretrained_lr must be in [0, 10] (a multiplier), got {o.pretrained_lr}"),
        (0 <= m.dropout < 1, f"model.dropout must be in [0, 1), got {m.dropout}"),
        (m.train in ("all", "last_layer"), f"model.train must be all or last_layer, got {m.train!r}"),
        (m.train == "all" or m.pretrained, "model.train: last_layer needs model.pretrained (a weights file)"),
        (o.schedule in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}"),
        (o.schedule != "custom" or o.iterations > 0, "optim.iterations must be > 0 with optim.schedule: custom"),
        (o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}"),
        (0 < o.lr < math.inf, f"optim.lr must be a finite number > 0, got {o.lr}"),
        (0 <= o.momentum < 1, f"optim.momentum must be in [0, 1), got {o.momentum}"),
        (0 <= o.weight_decay < 1, f"optim.weight_decay must be in [0, 1), got {o.weight_decay}"),
        (all(m > 0 for m in o.milestones), f"optim.milestones must be > 0 iterations, got {o.milestones}"),
        (o.iterations >= 0, f"optim.iterations must be >= 0, got {o.iterations}"),
        (0 < o.scale < math.inf, f"optim.scale must be a finite number > 0, got {o.scale}"),
        (cfg.run.device in ("auto", "cpu", "cuda"), f"run.device must be auto, cpu or cuda, got {cfg.run.device!r}"),
        (t.log_every >= 1 and t.checkpoint_every >= 1, "train.log_every and train.checkpoint_every must be >= 1"),
        (t.val_every >= 0, f"train.val_every must be >= 0 iterations (0: only at the end), got {t.val_every}"),
        (t.val_videos >= 0, f"train.val_videos must be >= 0 (0: all test videos), got {t.val_videos}"),
        (0 <= cfg.run.seed < 2**32, f"run.seed must be in 0..{2**32 - 1}, got {cfg.run.seed}"),
    ]
    problem = arch_problem(m.arch)
    if problem:
        raise ConfigError(f"{src}: {problem}")
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{src}: {message}")
    names = [ds.name for ds in d.datasets]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"{src}: data.datasets need distinct, non-empty names, got {names}")
    for i, ds in enumerate(d.datasets):
        where = f"data.datasets[{i}]"
        if ds.pipeline is None and (ds.store is None or ds.splits is None or ds.split_format is None):
            raise ConfigError(f"{src}: {where} needs a pipeline, or store + splits + split_format")
        for key in ("pipeline", "store", "splits"):
            value = getattr(ds, key)
            if value is not None and not Path(value).exists():
                raise ConfigError(f"{src}: {where}.{key}: {value} not found")
    if m.pretrained is not None and Path(m.pretrained).is_dir():
        raise ConfigError(f"{src}: model.pretrained: {m.pretrained} is a folder; give the weights file in it")
    if m.pretrained is not None and not Path(m.pretrained).is_file():
        raise ConfigError(f"{src}: model.pretrained: {m.pretrained} not found")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as one line with its position (1-based line and column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"not valid YAML: {where}{problem}"


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config, apply ``section.key=value`` overrides, check every key, type and path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}); a config is YAML text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (run, data, model, optim, train)")
    for assignment in overrides:
        apply_override(raw, assignment)
    cfg = _build(Config, raw, "", str(path))
    assert isinstance(cfg, Config)
    cfg.source = str(path)
    validate(cfg)
    return cfg


def config_from_dict(raw: dict, source: str = "checkpoint") -> Config:
    cfg = _build(Config, raw, "", source)
    assert isinstance(cfg, Config)
    cfg.source = source
    return cfg
