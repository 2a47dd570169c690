"""``trainer fit``: SGD training of one stream (spatial or temporal) as in section 5 of the paper.

Counted in iterations: each builds a class-balanced batch (see :func:`trainer.data.batch_items`).
Runs on CUDA when present (bf16 autocast, channels_last), else on the CPU; under ``torchrun`` the
global batch is split over the processes (DDP; gloo on CPU, NCCL on GPUs) and only rank 0 writes
logs, metrics and checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn

from flowprep.errors import UserError
from flowprep.storage.atomic import atomic_write
from flowprep.storage.lock import FolderBusyError, FolderLock
from trainer import checkpoint as ckpt
from trainer.config import Config
from trainer.data import CentreInputs, StepBatches, TrainingSet, TrainInputs, open_datasets
from trainer.encoded import collate
from trainer.inputs import InputSpec, to_device
from trainer.metrics import append_row, drop_rows_after, plot_curves
from trainer.models import build_model, count_parameters
from trainer.optim import lr_at, lr_schedule, parameter_groups, task_loss
from trainer.processes import Processes, setup_processes
from trainer.progress import Progress, log
from trainer.weights import RGBInput, load_weights


class TrainError(UserError):
    """Training cannot start or go on; one line saying why."""


@torch.no_grad()
def validate(model: nn.Module, datasets: list[TrainingSet], spec: InputSpec, limit: int, workers: int,
             device: torch.device, batch_size: int = 64) -> dict[str, float]:
    """Top-1 accuracy per dataset: centre crop of the middle frame of (up to ``limit``) test videos."""
    inputs = CentreInputs(datasets, spec, limit)
    if len(inputs) == 0:
        return {}
    loader = torch.utils.data.DataLoader(inputs, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                         generator=loader_generator(0))
    names = [ds.name for ds in datasets]
    correct, seen = [0] * len(names), [0] * len(names)
    was_training = model.training
    model.eval()
    for x, y, task in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = model(to_device(x, device))
        for d, name in enumerate(names):
            mask = task == d
            if bool(mask.any()):
                pred = outputs[name][mask.to(device)].argmax(1).cpu()
                correct[d] += int((pred == y[mask]).sum())
                seen[d] += int(mask.sum())
    model.train(was_training)
    return {name: correct[d] / seen[d] for d, name in enumerate(names) if seen[d]}


def _build(cfg: Config, datasets: list[TrainingSet], log: Callable[[str], None]) -> tuple[nn.Module, set[str]]:
    """The net, with its starting weights loaded; and the names of the parameters those weights gave."""
    heads = {ds.name: len(ds.classes) for ds in datasets}
    model = build_model(cfg.data.stream, cfg.data.flow_stack, heads, cfg.model.width, cfg.model.dropout,
                        cfg.data.crop, cfg.model.arch, cfg.model.partial_bn)
    pretrained: set[str] = set()
    if cfg.model.pretrained:
        rgb = RGBInput(tuple(cfg.data.rgb_mean), tuple(cfg.data.rgb_std),
                       cfg.model.caffe_mean if isinstance(cfg.model.caffe_mean, str) else tuple(cfg.model.caffe_mean))
        report = load_weights(model, cfg.model.pretrained, rgb, cfg.model.pretrained_partial)
        log(report.summary())
        pretrained = set(report.loaded) | set(report.adapted)
    if cfg.model.train == "last_layer":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.head_parameters():
            p.requires_grad_(True)
    return model, pretrained


def lock_run_dir(run_dir: Path) -> FolderLock:
    """The run folder's lock: one ``trainer fit`` writes a run folder at a time (rank 0 holds it)."""
    try:
        return FolderLock(run_dir, "trainer fit")
    except FolderBusyError as exc:
        raise TrainError(str(exc)) from None
    except OSError as exc:
        raise TrainError(f"{run_dir}: cannot create the run folder: {exc.strerror or exc}") from None


def fit(cfg: Config, resume: bool = False) -> dict:
    """Train as configured; returns {"iterations", "val", "checkpoint", "run_dir"}."""
    procs = setup_processes(cfg.run.device)
    lock = lock_run_dir(Path(cfg.run.dir)) if procs.main else None
    try:
        return _fit(cfg, resume, procs)
    finally:
        if lock is not None:
            lock.release()
        if procs.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _config_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every config value that differs (nested sections flattened)."""
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


@dataclass
class Run:
    """What the steps of one training run share."""

    cfg: Config
    procs: Processes
    datasets: list[TrainingSet]
    spec: InputSpec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    milestones: list[int]
    total: int
    start: int = 0
    last_val: dict[str, float] = field(default_factory=dict)
    last_saved: int | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / ckpt.CHECKPOINT

    def log(self, message: str) -> None:
        if self.procs.main:
            log.info(message)


def describe_datasets(datasets: list[TrainingSet], cfg: Config) -> None:
    """Videos and classes of each dataset, and what will not be trained or validated."""
    for ds in datasets:
        log.info(f"{ds.name}: {len(ds.train)} train / {len(ds.test)} test videos, {len(ds.classes)} classes"
                 + (f"; {ds.missing_report}" if ds.missing_report else ""))
        unsampled = [ds.classes[c] for c, videos in enumerate(ds.train_by_class) if not len(videos)]
        if unsampled:
            log.info(f"warning: {ds.name}: {len(unsampled)} class(es) have no training video and are never trained "
                     f"on: {', '.join(unsampled[:5])}{', ...' if len(unsampled) > 5 else ''}")
        if not ds.test:
            log.info(f"warning: {ds.name}: no test video of split {cfg.data.split} is in the store: no validation")


def build(cfg: Config, datasets: list[TrainingSet], procs: Processes, spec: InputSpec
          ) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The net on its device (channels_last on CUDA) with its starting weights, and its SGD optimizer."""
    torch.manual_seed(cfg.run.seed)
    model, pretrained = _build(cfg, datasets, log.info if procs.main else lambda _: None)
    arch = "CNN-M-2048" if cfg.model.arch == "cnn_m_2048" else cfg.model.arch
    if procs.main:
        if cfg.model.arch != "cnn_m_2048" and cfg.model.width != 1.0:
            log.info(f"note: model.width {cfg.model.width} scales cnn_m_2048 only; {arch} is built as its library "
                     "defines it")
        log.info(f"{cfg.data.stream} {arch} ({f'width {cfg.model.width}, ' if arch == 'CNN-M-2048' else ''}"
                 f"{spec.channels} input channels, "
                 f"{cfg.data.crop}x{cfg.data.crop}): {count_parameters(model) / 1e6:.1f}M parameters on "
                 f"{procs.device}" + (f", {procs.world} processes" if procs.world > 1 else ""))
    cuda = procs.device.type == "cuda"
    model.to(procs.device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    optimizer = torch.optim.SGD(parameter_groups(model, pretrained, cfg.optim.pretrained_lr), lr=cfg.optim.lr,
                                momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    return model, optimizer


def resume(run: Run, resume_asked: bool) -> None:
    """Continue from the run folder's checkpoint where there is one (and ``--resume`` was given):
    weights, optimizer, RNG, the iteration, the last validation; metrics rows after it are dropped."""
    path = run.checkpoint_path
    if run.procs.main:
        for tmp in ckpt.remove_partial(path):
            run.log(f"removed {tmp} (a checkpoint write that a killed run left unfinished)")
    if not path.exists():
        if resume_asked:
            run.log(f"no checkpoint in {run.run_dir}: starting at iteration 0")
        _drop_metrics_after(run, 0)  # rows of a run killed before its first checkpoint
        return
    try:
        state = ckpt.read(path)
    except ckpt.CheckpointError as exc:
        raise TrainError(f"{exc}; move it away to start again, or restore it") from None
    if not resume_asked:
        raise TrainError(f"{path} exists (iteration {state.step}): add --resume to continue "
                         "it, or set run.dir to start a new run")
    try:
        run.model.load_state_dict(state.model)
        run.optimizer.load_state_dict(state.optimizer)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise TrainError(f"{path} does not fit this config's model: {ckpt.state_dict_problem(exc)}") from None
    if state.torch_rng is not None:
        torch.set_rng_state(state.torch_rng)
    run.start, run.last_val, run.last_saved = state.step, state.val, state.step
    run.log(f"resumed from {path} at iteration {run.start}")
    changes = _config_changes(state.config, run.cfg.to_dict())
    if changes:
        run.log(f"note: the config differs from the checkpoint's, the new values apply from iteration {run.start}: "
                + "; ".join(changes))
    _drop_metrics_after(run, run.start)


def _drop_metrics_after(run: Run, step: int) -> None:
    if run.procs.main:
        dropped = drop_rows_after(run.run_dir / "metrics.csv", step)
        if dropped:
            run.log(f"dropped {dropped} metrics.csv row(s) after iteration {step} (they are redone)")


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: creating its iterator draws a seed for its workers, and from the
    global torch RNG that draw would shift every later dropout mask, so a resumed run (which restores
    the global RNG from its checkpoint) would differ from an uninterrupted one."""
    return torch.Generator().manual_seed(seed)


def training_loader(run: Run) -> torch.utils.data.DataLoader:
    """This process's batches from ``run.start`` to the end (see :class:`trainer.data.StepBatches`)."""
    cfg, workers = run.cfg, run.cfg.data.workers
    return torch.utils.data.DataLoader(
        TrainInputs(run.datasets, run.spec),
        batch_sampler=StepBatches(run.datasets, cfg.optim.batch_size, cfg.run.seed, run.start, run.total,
                                  run.procs.rank, run.procs.world),
        num_workers=workers, pin_memory=run.procs.device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None, collate_fn=collate,
        generator=loader_generator(cfg.run.seed + run.start),
    )


def train_one_step(run: Run, net: nn.Module, batch: tuple, step: int) -> tuple[float, float]:
    """One SGD step at iteration ``step`` (0-based) on ``batch``; returns (loss, LR). A loss that is not
    finite on any process stops the run (TrainError naming the last good checkpoint)."""
    x, y, task = batch
    procs, cfg = run.procs, run.cfg
    lr = lr_at(step, cfg.optim.lr, run.milestones)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)  # checkpoints before parameter groups have none
    x = to_device(x, procs.device)
    y, task = y.to(procs.device, non_blocking=True), task.to(procs.device, non_blocking=True)
    with torch.autocast(procs.device.type, dtype=torch.bfloat16, enabled=procs.device.type == "cuda"):
        outputs = net(x)
    loss = task_loss(outputs, y, task, [ds.name for ds in run.datasets])
    finite = torch.isfinite(loss.detach()).float()
    if procs.world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite.item() < 1:
        where = (f"last good checkpoint: {run.checkpoint_path} (iteration {run.last_saved})"
                 if run.last_saved is not None else "no checkpoint was written")
        raise TrainError(f"loss became {loss.item()} at iteration {step + 1} (lr {lr:g}); stopped; {where}. "
                         "Lower optim.lr or check the input data")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss.item(), lr


def run_validation(run: Run, step: int) -> None:
    """Validate on the first process, record the accuracies in metrics.csv; every process waits."""
    if run.procs.main:
        cfg = run.cfg
        run.last_val = validate(run.model, run.datasets, run.spec, cfg.train.val_videos, cfg.data.workers,
                                run.procs.device)
        if not run.last_val:
            run.log(f"validation at iteration {step}: skipped, no test video in the store")
        for name, acc in run.last_val.items():
            append_row(run.run_dir / "metrics.csv", iteration=step, kind="val", dataset=name, accuracy=f"{acc:.4f}")
        if run.last_val:
            run.log(f"validation at iteration {step}: "
                    + ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in run.last_val.items()))
    if run.procs.world > 1:
        dist.barrier()


def save_checkpoint(run: Run, step: int) -> None:
    """The run's state at ``step``, written atomically by the first process."""
    if run.procs.main:
        ckpt.save(ckpt.Checkpoint(
            model=run.model.state_dict(), optimizer=run.optimizer.state_dict(), step=step, total=run.total,
            milestones=run.milestones, config=run.cfg.to_dict(), classes={ds.name: ds.classes for ds in run.datasets},
            stream=run.cfg.data.stream, flow={ds.name: ds.flow_meta for ds in run.datasets}, val=run.last_val,
            torch_rng=torch.get_rng_state()), run.checkpoint_path)
    run.last_saved = step


def _start(cfg: Config, procs: Processes) -> Run:
    """Datasets, inputs, net and optimizer of a new run (nothing resumed yet)."""
    milestones, total = lr_schedule(cfg)
    if cfg.optim.batch_size % procs.world:
        raise TrainError(f"optim.batch_size {cfg.optim.batch_size} does not split over {procs.world} processes")
    datasets = open_datasets(cfg)
    if procs.main:
        describe_datasets(datasets, cfg)
    spec = InputSpec.from_config(cfg.data, procs.device.type)
    model, optimizer = build(cfg, datasets, procs, spec)
    return Run(cfg, procs, datasets, spec, model, optimizer, milestones, total)


def _fit(cfg: Config, resume_asked: bool, procs: Processes) -> dict:
    run = _start(cfg, procs)
    resume(run, resume_asked)
    if procs.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(run.run_dir / "config.yaml", "w") as f:
            f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    net = run.model
    if procs.world > 1:
        net = nn.parallel.DistributedDataParallel(run.model, device_ids=[procs.device.index]
                                                  if procs.device.type == "cuda" else None)
    progress = Progress(run.total, cfg.train.log_every, procs.main)
    progress.begin(run.start)
    net.train()
    window_loss, window_count, window_t = 0.0, 0, time.perf_counter()
    step = run.start
    try:
        for batch in training_loader(run):
            loss, lr = train_one_step(run, net, batch, step)
            step += 1
            window_loss += loss
            window_count += 1
            elapsed = time.perf_counter() - window_t
            samples_per_s = window_count * cfg.optim.batch_size / max(elapsed, 1e-9)
            progress.update(step, window_loss / window_count, lr, samples_per_s)
            if step % cfg.train.log_every == 0 or step == run.total:
                if procs.main:
                    append_row(run.run_dir / "metrics.csv", iteration=step, kind="train", lr=f"{lr:g}",
                               loss=f"{window_loss / window_count:.5f}", samples_per_s=f"{samples_per_s:.1f}",
                               seconds=f"{elapsed:.2f}")
                window_loss, window_count, window_t = 0.0, 0, time.perf_counter()
            if cfg.train.val_every and step % cfg.train.val_every == 0 and step != run.total:
                run_validation(run, step)
            if step % cfg.train.checkpoint_every == 0 and step != run.total:
                save_checkpoint(run, step)
    finally:
        progress.close()
    if step != run.total:
        raise TrainError(f"the data loader stopped at iteration {step} of {run.total}")
    if run.start < run.total or not run.last_val:
        run_validation(run, run.total)
    save_checkpoint(run, run.total)
    names = [ds.name for ds in run.datasets]
    if procs.main and (run.run_dir / "metrics.csv").exists():
        plot_curves(run.run_dir / "metrics.csv", run.run_dir / "curves.png",
                    f"{cfg.data.stream} stream, {', '.join(names)} split {cfg.data.split}")
    return {"iterations": run.total, "val": run.last_val, "checkpoint": str(run.checkpoint_path),
            "run_dir": str(run.run_dir), "milestones": run.milestones,
            "lr_final": lr_at(run.total - 1, cfg.optim.lr, run.milestones)}
